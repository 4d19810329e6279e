"""The stages of a run as plain functions (DESIGN.md "Data flow"): checks before any work,
pretrain (or load), allocation bounds, masked mapping and the cost report. Every stage writes a
plain artifact into the run directory, so a run can be stopped, inspected and resumed."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import to_absolute_path
from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import DivergenceError, LayerConstraint, save_atomic
from memxbar.crossbar import CrossbarConfig, DeviceModel, MappingPlan, plan_model
from memxbar.crossbar.activity import READ_VOLTAGE_V, array_activity
from memxbar.crossbar.convert import layer_devices, match_layers
from memxbar.crossbar.cost import CostConfig, load_table
from memxbar.crossbar.digital import digital_work, input_zero_fractions
from memxbar.crossbar.plan import crossbar_layers as mappable
from memxbar.crossbar.report import write_cost_report
from memxbar.experiments.allocation import budget_range, check_budget, layer_candidates
from memxbar.experiments.cache import cache_lock, cached, check_cache_dir, reuse, store
from memxbar.experiments.compressors.settings import RETRAINING
from memxbar.experiments.compressors.structure import check_decompose, decompose_block
from memxbar.experiments.data import (
    calibration_batch,
    collapse_floor,
    data_shape,
    load_data,
    user_splits,
)
from memxbar.experiments.datasets import DatasetInfo
from memxbar.experiments.guard import (
    DENSE_KEYS,
    check_constraints_fit,
    dense_state,
    fingerprint,
    load_checkpoint,
    restore_dense,
)
from memxbar.experiments.models import build_model
from memxbar.experiments.runtime import setup_runtime, timed
from memxbar.experiments.settings import (
    AllocationSettings,
    CompressExperiment,
    ModelSettings,
    TrainSettings,
)
from memxbar.experiments.train import evaluate, fit

_log = logging.getLogger("memxbar.experiments.stages")


def check_dense(dense_acc: float, test: DataLoader, train: TrainSettings,
                test_key: str = "dataset.test_subset") -> None:
    """Stop before compression when pretraining (``train`` settings) left the dense model at
    chance, naming the likely causes the settings point to: a learning rate far out of the
    usual range (too low for the weights to move, or high enough to diverge), few epochs, a
    wrong ``train.checkpoint``, or a test set too small to measure anything."""
    floor = collapse_floor(test)
    if dense_acc > floor:
        return
    raise DivergenceError(
        f"the dense model is at chance after pretraining: {dense_acc:.2f}% test accuracy "
        f"(collapse floor {floor:.2f}%); compressing it would be meaningless. Likely causes: "
        + "; ".join(_dense_causes(train, len(test.dataset), test_key))
        + "; start a new run directory with other settings")


def _dense_causes(t: TrainSettings, n_test: int, test_key: str) -> list[str]:
    """What in the settings can leave a dense model at chance, most likely first."""
    causes = []
    if t.checkpoint:
        causes.append(f"train.checkpoint={t.checkpoint!r} is not a trained model of this "
                      "dataset")
    if n_test < MIN_TEST_SAMPLES:
        causes.append(f"the test set holds only {n_test} samples ({test_key}): too few to "
                      "measure an accuracy")
    if t.lr < 1e-5:
        causes.append(f"train.lr={t.lr} is too low for the weights to move")
    elif t.lr > 0.5:
        causes.append(f"train.lr={t.lr} is too high (training diverged)")
    if t.epochs < 3:
        causes.append(f"train.epochs={t.epochs} is too few")
    if not causes:
        causes.append(f"train.lr={t.lr} or train.epochs={t.epochs} do not suit this model and "
                      "data")
    return causes


MIN_TEST_SAMPLES = 100
"""Fewer test samples than this (each worth 1 point or more of accuracy) get a warning: the
binomial 95 % interval of an accuracy near 90 % is then wider than +-6 points."""


def small_test_warnings(sets: Mapping[str, int]) -> list[str]:
    """A warning per test set (``key -> samples``) below :data:`MIN_TEST_SAMPLES`, with the
    95 % interval half-width of an accuracy of 90 % on it (normal approximation)."""
    out = []
    for key, n in sets.items():
        if n < MIN_TEST_SAMPLES:
            half = 196.0 * math.sqrt(0.9 * 0.1 / n)
            out.append(f"the test set of {key} holds only {n} samples: each is "
                       f"{100.0 / n:.3g} points of accuracy and an accuracy of 90 % has a 95 % "
                       f"interval of +-{half:.1f} points; differences smaller than that are "
                       f"noise (raise {key} or leave it null)")
    for message in out:
        _log.warning(message)
    return out


def collapse_warnings(dense_acc: float, compressed_acc: float, num_classes: int,
                      compressor: str) -> list[str]:
    """Loud warnings when compression destroyed the model: accuracy within 1.5x of chance
    (100 / classes) or more than 20 points below the dense model."""
    chance = 100.0 / num_classes
    out = []
    if compressed_acc <= 1.5 * chance:
        out.append(f"the compressed model collapsed: {compressed_acc:.2f}% test accuracy, chance "
                   f"is {chance:.2f}% (dense {dense_acc:.2f}%); the admm group's constraints "
                   f"(which compressor={compressor!r} meets) are more than it can meet here: "
                   "loosen the pruning ratios or levels"
                   + (", or use compressor=admm (retrains) instead of post-training "
                      "compression" if compressor not in RETRAINING else ""))
    elif dense_acc - compressed_acc > 20.0:
        out.append(f"compression cost {dense_acc - compressed_acc:.2f} points (dense "
                   f"{dense_acc:.2f}% -> compressed {compressed_acc:.2f}%); check the admm "
                   f"group's constraints (met by compressor={compressor!r})")
    for message in out:
        _log.warning(message)
    return out


def pretrain_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                   train: TrainSettings, fp: Mapping, run_dir: Path, *, seed: int,
                   progress: bool = False, cache_dir: str | None = None) -> float:
    """Dense model: load ``train.checkpoint`` (or a ``dense.pt`` already in ``run_dir``, to
    resume; or the cache's model of fingerprint ``fp``), else train with
    ``experiments.train.fit`` (checkpointed every epoch to ``pretrain_state.pt``); save
    ``dense.pt`` with ``fp``. Returns the dense test accuracy (%)."""
    shared = cached(cache_dir, "dense", fp)
    with cache_lock(shared):  # parallel sweep jobs: one trains, the others wait and reuse
        _dense_model(model, loaders, train, fp, run_dir, seed, progress, shared)
    return evaluate(model, loaders[1])


def _dense_model(model: nn.Module, loaders: tuple[DataLoader, DataLoader], train: TrainSettings,
                 fp: Mapping, run_dir: Path, seed: int, progress: bool, shared: Path | None
                 ) -> None:
    device = next(model.parameters()).device
    target = run_dir / "dense.pt"
    source = to_absolute_path(train.checkpoint) if train.checkpoint else None
    if source is None and target.exists():
        source = target
    if source is None and reuse(shared, fp, target, "dense"):
        source = target
    if source is not None:
        restore_dense(model, loaders[0], load_checkpoint(source, device), source,
                      fp if source == target else None)
        _log.info("dense model loaded from %s: pretraining skipped", source)
    else:
        fit(model, loaders, train.epochs, train.lr, train.optimizer, seed=seed,
            weight_decay=train.weight_decay, progress=progress,
            checkpoint=run_dir / "pretrain_state.pt", fingerprint=fp)
    if source != target:
        save_atomic(dense_state(model, loaders[0], fp), target)
    store(shared, target)


def map_stage(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, xbar: CrossbarConfig,
              example: torch.Tensor, path: Path | None = None,
              exclude: Sequence[str] = ()) -> MappingPlan:
    """Masked mapping (``crossbar.plan_model`` with the ADMM masks, without the ``exclude``d
    digital layers); saved to ``path``."""
    masks = None if masks is None else {k: v for k, v in masks.items() if k not in exclude}
    plan = plan_model(model, xbar, masks=masks, example_input=example, exclude=exclude)
    if path is not None:
        plan.save(path)
    return plan


def mapped_layers(model: nn.Module, digital: Sequence[str], devices: Mapping[str, DeviceModel],
                  device: DeviceModel) -> tuple[list[str], list[str]]:
    """``(mapped, digital)`` layer names of ``model`` under the ``layers`` section
    (``digital`` patterns, per-layer ``devices``; ``device``: the others' device); fails
    naming the ``layers`` pattern that matches no layer (checked before any work)."""
    names = [n for n, _ in mappable(model)]
    patterns = digital
    try:
        digital = sorted(match_layers("layers.digital", patterns, names)) if patterns else []
        mapped = [n for n in names if n not in digital]
        if not mapped:
            raise ValueError(f"layers.digital={patterns!r} keeps every layer digital; "
                             "allowed: patterns that leave at least one layer to map")
        layer_devices(devices, mapped, device)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"layers: {exc}") from None
    return mapped, digital


def cost_stage(plan: MappingPlan, xbar: CrossbarConfig, cost: CostConfig, out_dir: Path,
               model: nn.Module | None = None, example: torch.Tensor | None = None,
               chip: nn.Module | None = None, baseline: MappingPlan | None = None) -> dict:
    """``crossbar.report.write_cost_report`` into ``out_dir``, with the work of ``model`` off
    the crossbars and its zero inputs counted on ``example`` (a few real inputs) when given,
    and the array reads of ``chip`` (a programmed chip of the plan) measured on them;
    ``baseline``: the plan of the model before the compressor changed its structure (its
    dense mapping is the cost baseline); returns cost.json's content."""
    names = [layer.name for layer in plan]
    digital = None if model is None else digital_work(model, names, example)
    zeros = None if model is None else input_zero_fractions(model, names, example)
    activity = None
    if chip is not None and example is not None:
        pulse = load_table(cost.table).get("crossbar", rows=xbar.tile_rows,
                                           cols=xbar.tile_cols).latency_s or 100e-9
        volts = getattr(xbar.array, "read_voltage_V", READ_VOLTAGE_V)
        activity = array_activity(chip, example, volts, pulse)
    write_cost_report(plan, xbar, out_dir, cost=cost, digital=digital, input_zeros=zeros,
                      activity=activity, baseline_plan=baseline)
    return json.loads((out_dir / "cost.json").read_text())


def budget_bounds(model: nn.Module, example: torch.Tensor, a: AllocationSettings,
                  constraints: Sequence[LayerConstraint], xbar: CrossbarConfig, cost: CostConfig
                  ) -> tuple[float, float]:
    """``(loose, tight)`` budgets of ``a``'s candidates: no compression and the cheapest
    choice (costs depend on the kept counts only, so a freshly built ``model`` prices them;
    no distortion is computed)."""
    return budget_range(layer_candidates(model, a, constraints, xbar, cost, example,
                                         errors=False), a)


def preflight(exp: CompressExperiment) -> None:
    """Checks that need the model, before the run directory is touched: the model builds
    from its settings and the dataset's input shape (on the ``meta`` device: no memory, no
    compute), every ``admm`` constraint matches a layer and fits it, the ``layers`` patterns
    match layers, and the files the run reads exist (``dataset.data_dir``,
    ``train.checkpoint``, ``study.source``)."""
    d, t = exp.dataset, exp.train
    if d.data_dir is not None and not Path(to_absolute_path(d.data_dir)).is_dir():
        raise ValueError(f"dataset.data_dir={d.data_dir!r} is invalid; allowed: an existing "
                         f"directory holding the {d.name} files (relative to the directory the "
                         "run starts in; the shipped configs read <root>/" + d.name + ", the "
                         "root from the environment variable MEMXBAR_DATA, default "
                         "../shared/data: put the official files there or set MEMXBAR_DATA)")
    if t.checkpoint is not None and not Path(to_absolute_path(t.checkpoint)).is_file():
        raise ValueError(f"train.checkpoint={t.checkpoint!r} is invalid; allowed: an existing "
                         "dense checkpoint file (relative to the directory the run starts in), "
                         "or null to train")
    check_cache_dir(exp.runtime.cache_dir)
    shape = data_shape(exp.dataset)
    with torch.device("meta"):
        try:
            model = make_model(exp.model, *shape)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ValueError(f"model: {exp.model.name} does not build with "
                             f"{exp.model.kwargs or 'its defaults'} for {exp.dataset.name} "
                             f"inputs {shape[0]}: {exc}") from None
        dtype = torch.float32
        if exp.dataset.target is not None:  # the user's own inputs, e.g. token ids (int64)
            dtype = user_splits(exp.dataset.target, exp.dataset.args)[0].tensors[0].dtype
        _dry_run(model, shape, dtype, exp.model.name, exp.dataset.name)
    check_constraints_fit(model, exp.admm)
    mapped_layers(model, exp.layers.digital, exp.layer_devices, exp.device)
    check_decompose(model, decompose_block(exp.compressor, exp.decompose), exp.layers.digital,
                    exp.admm.layer_constraints(), exp.raw.get("allocation"), exp.layers.devices)


def _dry_run(model: nn.Module, shape: tuple, dtype: torch.dtype, model_name: str,
             data_name: str) -> None:
    """One forward pass of the ``meta``-device model on a batch of the data's input shape
    (``(input_shape, classes)``) and ``dtype`` (no memory, no compute): a model that builds
    but does not take the data (a first layer of another width, a wrong flatten size) fails
    here, naming the model and the shape, not after the run started; its outputs must be one
    score per class. An operation the meta device does not implement skips the check."""
    input_shape, classes = shape
    batch = torch.zeros((2, *input_shape), dtype=dtype, device="meta")
    try:
        out = model.eval()(batch)
    except NotImplementedError:
        return
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model: {model_name} does not take {data_name} inputs of shape "
                         f"(N, {', '.join(map(str, input_shape))}): {first}; allowed: a model "
                         "whose forward accepts the data set's inputs") from None
    finally:
        model.train()
    if isinstance(out, torch.Tensor) and (out.dim() != 2 or out.shape[1] != classes):
        raise ValueError(f"model: {model_name} gives outputs of shape {tuple(out.shape)} for "
                         f"{data_name}; allowed: (N, {classes}), one score per class")


@dataclass
class Prepared:
    """What every run has once its dense model stands: the torch device, the loaders and the
    data set's description, the dense ``model`` and its test accuracy, the converters'
    ``calibration`` batch, and the layers ``mapped`` on crossbars and kept ``digital``."""

    torch_device: torch.device
    train: DataLoader
    test: DataLoader
    info: DatasetInfo
    model: nn.Module
    dense_acc: float
    calibration: torch.Tensor
    mapped: list[str]
    digital: list[str]
    warnings: list[str]


def prepare(exp: CompressExperiment, run_dir: Path, timings: dict) -> Prepared:
    """Data, model and dense model (pretrained, loaded or reused from the cache) of a run
    whose settings :func:`preflight` checked."""
    device = setup_runtime(exp.runtime, exp.seed)
    with timed(timings, "data"):
        train, test, info = load_data(exp.dataset, exp.seed)
    sets = {"dataset.test_subset": len(test.dataset)}
    if exp.eval.test_subset is not None:
        sets["eval.test_subset"] = min(exp.eval.test_subset, len(test.dataset))
    warnings = small_test_warnings(sets)
    model = make_model(exp.model, info.input_shape, info.num_classes)
    model.to(device)
    mapped, digital = mapped_layers(model, exp.layers.digital, exp.layer_devices, exp.device)
    check_budget(model, exp.allocation, exp.admm.layer_constraints(), exp.crossbar, exp.cost,
                 train.dataset[0][0][None].to(device))
    with timed(timings, "pretrain"):
        dense_acc = pretrain_stage(model, (train, test), exp.train,
                                   fingerprint(exp, DENSE_KEYS), run_dir, seed=exp.seed,
                                   progress=exp.runtime.progress,
                                   cache_dir=exp.runtime.cache_dir)
    check_dense(dense_acc, test, exp.train)
    rob, wv = exp.robustness, exp.device.write_verify
    _log.info("the robustness group sets on the chip: %d spare rows and %d spare columns per "
              "tile, output calibration %s, write-verify %s (the device and crossbar of "
              "metrics.json include them)", rob.spare_rows, rob.spare_cols,
              "on" if rob.output_calibration else "off",
              "off" if wv is None else f"tolerance {wv.tolerance_uS} uS, at most "
              f"{wv.max_pulses} pulses")
    calibration = calibration_batch(train, exp.eval.calibration_samples, device, exp.seed)
    return Prepared(device, train, test, info, model, dense_acc, calibration, mapped, digital,
                    warnings)



def make_model(m: ModelSettings, input_shape: tuple[int, ...], num_classes: int
               ) -> nn.Module:
    """The model group's model for inputs of ``input_shape`` and ``num_classes`` classes: a
    built-in one by ``model.name`` or the user's by ``model._target_``."""
    return build_model(m.name, input_shape=input_shape, target=m.target,
                       data_classes=num_classes, **m.kwargs)
