"""Seeded draws from the loaders: the training inputs that calibrate the converters, the labelled
subsets of the compressors and the allocation, and the test subset the chips are evaluated on.
Each draw is a pure function of (data set, n, seed): the same on every call, whatever the
loaders' shuffle state."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from memxbar.experiments.checks import import_target
from memxbar.experiments.datasets import (
    INPUT_SHAPES,
    NUM_CLASSES,
    DatasetInfo,
    check_files,
    make_loaders,
)
from memxbar.experiments.settings import DatasetSettings


def load_data(d: DatasetSettings, seed: int) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Seeded train/test loaders of the dataset group (a built-in data set or the user's)."""
    splits = None if d.target is None else user_splits(d.target, d.args)
    return make_loaders(d.name, d.data_dir, batch_size=d.batch_size, seed=seed,
                        subset=d.subset, test_subset=d.test_subset,
                        test_batch_size=d.test_batch_size, verify=d.verify, splits=splits)


def data_shape(d: DatasetSettings) -> tuple[tuple[int, ...], int]:
    """The shape of one input of the dataset group and its class count, the data checked
    before any work (a built-in data set's files: ``experiments.datasets.check_files``; a
    user's data set is loaded for them)."""
    if d.target is None:
        check_files(d.name, d.data_dir, d.verify)
        return INPUT_SHAPES[d.name], NUM_CLASSES
    train, test = user_splits(d.target, d.args)
    classes = 1 + max(int(train.tensors[1].max()), int(test.tensors[1].max()))
    return tuple(int(n) for n in train.tensors[0].shape[1:]), classes


_USER: dict[str, tuple[TensorDataset, TensorDataset]] = {}


def user_splits(target: str, args: Mapping) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` of the user's data set: the function ``target`` names, called with
    ``args``, returns two splits, each a ``TensorDataset`` of (inputs, labels), an
    ``(inputs, labels)`` pair of tensors (or numpy arrays), or a map-style dataset of
    ``(input, label)`` items (stacked here). Inputs are finite floats of one shape ``(N, ...)``
    in both splits, labels integer class indices ``0..C-1``, every class present in the train
    split. Loaded once per process and arguments."""
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
        train, test = (_as_tensors(target, split, ds)
                       for split, ds in zip(("train", "test"), got, strict=True))
        _check_splits(target, train, test)
        _USER[key] = (train, test)
    return _USER[key]


def _check_splits(target: str, train: TensorDataset, test: TensorDataset) -> None:
    """The two splits of a user's data set agree: inputs of one shape, labels numbered
    ``0..C-1`` with at least two classes, each present in the train split (an absent class's
    output would never be trained; a test label above them would be a class never seen)."""
    where = f"dataset._target_={target!r}"
    (x, y), (xt, yt) = train.tensors, test.tensors
    if x.shape[1:] != xt.shape[1:]:
        raise ValueError(f"{where}: train inputs of shape {tuple(x.shape[1:])}, test inputs of "
                         f"{tuple(xt.shape[1:])}; allowed: one input shape in both splits")
    present = set(torch.unique(y).tolist())
    top = max(int(y.max()), int(yt.max()))
    if len(present) < 2:
        raise ValueError(f"{where}: the train split holds one class only ({sorted(present)}); "
                         "allowed: labels of at least two classes")
    if len(present) != top + 1:
        absent = next(k for k in range(top + 1) if k not in present)
        raise ValueError(f"{where}: the train split has no sample of class {absent} (labels "
                         f"run 0..{top}); allowed: labels 0..C-1 numbered from 0, every class "
                         "present in the train split (renumber the classes)")


def _as_tensors(target: str, split: str, ds: object) -> TensorDataset:
    where = f"dataset._target_={target!r}: the {split} split"
    if isinstance(ds, TensorDataset):
        tensors = ds.tensors
    elif isinstance(ds, (tuple, list)) and len(ds) == 2 and all(
            isinstance(t, (torch.Tensor, np.ndarray)) for t in ds):
        tensors = tuple(_tensor(where, "its arrays", t) for t in ds)
    elif hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        tensors = _stacked(where, ds)
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
    if x.dim() < 2:
        raise ValueError(f"{where}: inputs of shape {tuple(x.shape)}, one number per sample; "
                         "allowed: inputs shaped (N, ...), a sample's shape after N (e.g. "
                         "(N, 1) for one feature)")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool \
            or y.dim() != 1 or int(y.min()) < 0:
        raise ValueError(f"{where}: labels of dtype {y.dtype}, shape {tuple(y.shape)}; allowed: "
                         "a 1-D integer tensor of class indices >= 0")
    return TensorDataset(x.float(), y.long())


def _tensor(where: str, what: str, value: object) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where}: {what} do not convert to a tensor ({exc}); allowed: "
                         "numbers: float inputs, integer labels") from None


def _stacked(where: str, ds: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A map-style dataset's ``(input, label)`` items as (inputs, labels) tensors."""
    items = [ds[i] for i in range(len(ds))]  # type: ignore[index, arg-type]
    if not items:
        raise ValueError(f"{where} has no samples; allowed: a non-empty data set")
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{where}: item {i} is a {type(item).__name__}; allowed: "
                             "(input, label) pairs")
    inputs = [_tensor(where, "its inputs", x) for x, _ in items]
    if len({tuple(t.shape) for t in inputs}) > 1:
        shapes = sorted({tuple(t.shape) for t in inputs})
        raise ValueError(f"{where}: inputs of shapes {shapes[:3]}; allowed: inputs of one "
                         "shape")
    labels = _tensor(where, "its labels", [y.item() if isinstance(y, torch.Tensor)
                                           and y.numel() == 1 else y for _, y in items])
    return torch.stack(inputs), labels


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
