"""Seeded draws from the loaders: the training inputs that calibrate the converters, the labelled
subsets of the compressors and the allocation, and the test subset the chips are evaluated on.
Each draw is a pure function of (data set, n, seed): the same on every call, whatever the
loaders' shuffle state."""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader, TensorDataset

from experiments.checks import import_target
from experiments.datasets import INPUT_SHAPES, NUM_CLASSES, DatasetInfo, make_loaders
from experiments.settings import DatasetSettings


def load_data(d: DatasetSettings, seed: int) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Seeded train/test loaders of the dataset group (a built-in data set or the user's)."""
    splits = None if d.target is None else user_splits(d.target, d.args)
    return make_loaders(d.name, d.data_dir, batch_size=d.batch_size, seed=seed,
                        subset=d.subset, test_subset=d.test_subset,
                        test_batch_size=d.test_batch_size, verify=d.verify, splits=splits)


def data_shape(d: DatasetSettings) -> tuple[tuple[int, ...], int]:
    """The shape of one input of the dataset group and its class count (a user's data set is
    loaded for them)."""
    if d.target is None:
        return INPUT_SHAPES[d.name], NUM_CLASSES
    train, test = user_splits(d.target, d.args)
    classes = 1 + max(int(train.tensors[1].max()), int(test.tensors[1].max()))
    return tuple(int(n) for n in train.tensors[0].shape[1:]), classes


_USER: dict[str, tuple[TensorDataset, TensorDataset]] = {}


def user_splits(target: str, args: Mapping) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` of the user's data set: the function ``target`` names, called with
    ``args``, returns two splits, each a ``TensorDataset`` of (inputs, labels), an
    ``(inputs, labels)`` pair of tensors, or a map-style dataset of ``(input, label)`` items
    (stacked here). Inputs are finite floats, labels integers >= 0. Loaded once per process
    and arguments."""
    key = json.dumps([target, dict(args)], sort_keys=True, default=str)
    if key not in _USER:
        factory = import_target("dataset._target_", target)
        try:
            got = factory(**args)
        except Exception as exc:  # noqa: BLE001 - the user's code: one clear message
            raise ValueError(f"dataset._target_={target!r} failed with arguments {dict(args)}: "
                             f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ValueError(f"dataset._target_={target!r} is invalid; allowed: a function "
                             f"returning (train, test); it returned {type(got).__name__}")
        _USER[key] = tuple(_as_tensors(target, split, ds)
                           for split, ds in zip(("train", "test"), got, strict=True))
    return _USER[key]


def _as_tensors(target: str, split: str, ds: object) -> TensorDataset:
    where = f"dataset._target_={target!r}: the {split} split"
    if isinstance(ds, TensorDataset):
        tensors = ds.tensors
    elif isinstance(ds, (tuple, list)) and len(ds) == 2 and all(
            isinstance(t, torch.Tensor) for t in ds):
        tensors = tuple(ds)
    elif hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        items = [ds[i] for i in range(len(ds))]
        if not items:
            raise ValueError(f"{where} has no samples; allowed: a non-empty data set")
        tensors = (torch.stack([torch.as_tensor(x) for x, _ in items]),
                   torch.as_tensor([int(y) for _, y in items]))
    else:
        raise ValueError(f"{where} is a {type(ds).__name__}; allowed: a TensorDataset, an "
                         "(inputs, labels) pair of tensors or a map-style dataset")
    if len(tensors) != 2:
        raise ValueError(f"{where} holds {len(tensors)} tensors; allowed: (inputs, labels)")
    x, y = tensors
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"{where} has {len(x)} inputs and {len(y)} labels; allowed: the same "
                         "number, at least one")
    if not x.is_floating_point() or not torch.isfinite(x).all():
        raise ValueError(f"{where}: inputs of dtype {x.dtype} with non-finite values or not "
                         "floating point; allowed: finite float tensors")
    if y.dtype.is_floating_point or y.dim() != 1 or int(y.min()) < 0:
        raise ValueError(f"{where}: labels of dtype {y.dtype}, shape {tuple(y.shape)}; allowed: "
                         "a 1-D integer tensor of class indices >= 0")
    return TensorDataset(x.float(), y.long())


def seeded_draw(size: int, n: int, seed: int) -> torch.Tensor:
    """``n`` distinct indices of ``range(size)`` drawn with ``seed``: the one draw behind the
    calibration batches, the labelled subsets and the chips' test subset (a pure function of
    its arguments, whatever the loaders' shuffle state)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]


def calibration_batch(loader: DataLoader, n: int, device: torch.device, seed: int = 0
                      ) -> torch.Tensor:
    """``n`` training inputs drawn with ``seed`` (DAC/ADC calibration and MVM counting); the
    same on every call, whatever the loader's shuffle state."""
    ds = loader.dataset
    index = seeded_draw(len(ds), n, seed)
    return torch.stack([ds[int(i)][0] for i in index]).to(device)


def crossbar_test_loader(test: DataLoader, n: int | None, seed: int) -> DataLoader:
    """The test loader, or a seeded subset of ``n`` test samples for the slower simulator."""
    ds = test.dataset
    if n is None or n >= len(ds):
        return test
    index = seeded_draw(len(ds), n, seed)
    subset = TensorDataset(*(t[index] for t in ds.tensors))
    return DataLoader(subset, batch_size=test.batch_size, shuffle=False)


def collapse_floor(test: DataLoader) -> float:
    """1.5x chance accuracy (%) on ``test``'s labels: a model at or below it has collapsed."""
    labels = test.dataset.tensors[1] if isinstance(test.dataset, TensorDataset) \
        else torch.as_tensor([int(y) for _, y in test.dataset])
    return 1.5 * 100.0 / max(int(labels.max()) + 1, 2)


def labelled_subset(loader: DataLoader, n: int, device: torch.device, seed: int,
                    batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (input, label) pairs of ``loader``'s dataset drawn with ``seed``, as batches of
    ``batch_size`` on ``device``: the same draw on every call, whatever the loader's shuffle
    state."""
    ds = loader.dataset
    index = seeded_draw(len(ds), n, seed)
    pairs = [ds[int(i)] for i in index]
    x = torch.stack([p[0] for p in pairs]).to(device)
    y = torch.as_tensor([int(p[1]) for p in pairs], device=device)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
