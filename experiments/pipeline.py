"""The main pipeline of DESIGN.md as plain functions, composed from ``admm`` and ``crossbar``.

pretrain (or load) -> ADMM prune -> masked retrain -> ADMM quantize -> retrain -> masked mapping
(``plan.json``) -> device-aware evaluation (Monte Carlo over programmed chips) -> cost report.

Every stage writes a plain artifact into the run directory, so a run can be stopped, inspected
and resumed: ``dense.pt`` (state dict), ``admm_state.pt`` (resumable ADMM state),
``compressed.pt`` (state dict, masks, scales, levels), ``plan.json``, ``cost/`` (cost report),
``metrics.json``, ``report.md`` and plots. Checkpoints are written atomically (temporary file +
``os.replace``) and read with ``torch.load(weights_only=True)``. The Hydra entry points
(``experiments.compress``, ``experiments.device_study``) only call :func:`run_compress` and
:func:`run_device_study`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import torch  # noqa: E402
from hydra.utils import to_absolute_path  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from admm import (  # noqa: E402
    CompressResult,
    DivergenceError,
    LayerConstraint,
    compress,
    save_atomic,
)
from admm.pipeline import check_fingerprint, load_model_state  # noqa: E402
from crossbar import (  # noqa: E402
    CrossbarConfig,
    DeviceModel,
    MappingPlan,
    RepairConfig,
    calibrate_outputs,
    plan_model,
    programming_cost,
    programming_stats,
    to_crossbar,
)
from crossbar.convert import crossbar_modules  # noqa: E402
from crossbar.cost import CostConfig  # noqa: E402
from crossbar.hardware_aware import HardwareAware  # noqa: E402
from crossbar.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from crossbar.report import write_cost_report  # noqa: E402
from experiments.allocation import (  # noqa: E402
    allocation_markdown,
    allocation_stage,
    budget_range,
    check_budget,
    layer_candidates,
)
from experiments.config import (  # noqa: E402
    AllocationSettings,
    CompressExperiment,
    DatasetSettings,
    RobustnessSettings,
    RuntimeSettings,
    StudyExperiment,
    TrainSettings,
    load_compress_config,
    load_study_config,
    to_container,
)
from experiments.datasets import INPUT_SHAPES, DatasetInfo, make_loaders  # noqa: E402
from experiments.guard import (  # noqa: E402
    DENSE_KEYS,
    RunLockedError,
    Terminated,
    check_constraints_fit,
    dense_state,
    fingerprint,
    load_checkpoint,
    open_run,
    restore_dense,
    sigterm_as_exit,
)
from experiments.models import build_model  # noqa: E402
from experiments.plots import (  # noqa: E402
    caption,
    ci95,
    plot_distributions,
    plot_heatmap,
    plot_layer_sensitivity,
    plot_sweep,
    plt,
    write_png,
)
from experiments.posttraining import result_of  # noqa: E402
from experiments.registry import SETTINGS_BLOCK, CompressInputs, get_compressor  # noqa: E402
from experiments.schema import drop_missing  # noqa: E402
from experiments.search import budget_search  # noqa: E402
from experiments.train import evaluate, fit  # noqa: E402

_log = logging.getLogger("experiments.pipeline")

__all__ = [
    "CONF_DIR",
    "chip_accuracies",
    "compress_stage",
    "cost_stage",
    "load_data",
    "map_stage",
    "pretrain_stage",
    "run_compress",
    "run_device_study",
    "setup_runtime",
]


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The repository's Hydra config directory."""


# ---------------------------------------------------------------------------------- set-up
def setup_runtime(runtime: RuntimeSettings, seed: int) -> torch.device:
    """Seed torch, set CPU threads and pick the torch device (``auto``: cuda if available)."""
    torch.manual_seed(seed)
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    name = runtime.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device='cuda' is invalid here; allowed: 'cpu' or 'auto' "
                         "(no CUDA device is available)")
    return torch.device(name)


def load_data(d: DatasetSettings, seed: int) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Seeded train/test loaders of the dataset group."""
    return make_loaders(d.name, d.data_dir, batch_size=d.batch_size, seed=seed,
                        subset=d.subset, test_subset=d.test_subset,
                        test_batch_size=d.test_batch_size, verify=d.verify)


def calibration_batch(loader: DataLoader, n: int, device: torch.device, seed: int = 0
                      ) -> torch.Tensor:
    """``n`` training inputs drawn with ``seed`` (DAC/ADC calibration and MVM counting); the
    same on every call, whatever the loader's shuffle state."""
    ds = loader.dataset
    index = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([ds[int(i)][0] for i in index]).to(device)


def crossbar_test_loader(test: DataLoader, n: int | None, seed: int) -> DataLoader:
    """The test loader, or a seeded subset of ``n`` test samples for the slower simulator."""
    ds = test.dataset
    if n is None or n >= len(ds):
        return test
    index = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    subset = TensorDataset(*(t[index] for t in ds.tensors))
    return DataLoader(subset, batch_size=test.batch_size, shuffle=False)


def _load(path: str | os.PathLike, device: torch.device) -> dict:
    return load_checkpoint(path, device)


def _timed(timings: dict, key: str):
    """Time a stage into ``timings[key]`` and log its start and end."""
    class _Timer:
        def __enter__(self):
            _log.info("stage %s: started", key)
            self.t0 = time.perf_counter()

        def __exit__(self, exc_type, *exc):
            timings[key] = round(time.perf_counter() - self.t0, 3)
            if exc_type is None:
                _log.info("stage %s: done in %.1f s", key, timings[key])
            else:
                _log.warning("stage %s: stopped after %.1f s (%s)", key, timings[key],
                             exc_type.__name__)
    return _Timer()


def collapse_floor(test: DataLoader) -> float:
    """1.5x chance accuracy (%) on ``test``'s labels: a model at or below it has collapsed."""
    labels = test.dataset.tensors[1] if isinstance(test.dataset, TensorDataset) \
        else torch.as_tensor([int(y) for _, y in test.dataset])
    return 1.5 * 100.0 / max(int(labels.max()) + 1, 2)


def check_dense(dense_acc: float, test: DataLoader, train: TrainSettings) -> None:
    """Stop before compression when pretraining (``train`` settings) left the dense model at
    chance (a diverged learning rate, too few epochs, or a wrong ``train.checkpoint``)."""
    floor = collapse_floor(test)
    if dense_acc <= floor:
        t = train
        raise DivergenceError(
            f"the dense model is at chance after pretraining: {dense_acc:.2f}% test accuracy "
            f"(collapse floor {floor:.2f}%); compressing it would be meaningless. Likely "
            f"causes: train.lr={t.lr} too high or train.epochs={t.epochs} too few"
            + (f", or train.checkpoint={t.checkpoint!r} is not a trained model of this "
               "dataset" if t.checkpoint else "")
            + "; start a new run directory with other settings")


def collapse_warnings(dense_acc: float, compressed_acc: float, num_classes: int,
                      compressor: str) -> list[str]:
    """Loud warnings when compression destroyed the model: accuracy within 1.5x of chance
    (100 / classes) or more than 20 points below the dense model."""
    chance = 100.0 / num_classes
    out = []
    if compressed_acc <= 1.5 * chance:
        out.append(f"the compressed model collapsed: {compressed_acc:.2f}% test accuracy, chance "
                   f"is {chance:.2f}% (dense {dense_acc:.2f}%); the {compressor!r} constraints "
                   "are more than it can meet here: loosen the pruning ratios or levels, or use "
                   "compressor=admm (retrains) instead of post-training compression")
    elif dense_acc - compressed_acc > 20.0:
        out.append(f"compression cost {dense_acc - compressed_acc:.2f} points (dense "
                   f"{dense_acc:.2f}% -> compressed {compressed_acc:.2f}%); check the "
                   f"constraints of {compressor!r}")
    for message in out:
        _log.warning(message)
    return out


# ---------------------------------------------------------------------------------- stages
def pretrain_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                   train: TrainSettings, fp: Mapping, run_dir: Path, *, seed: int,
                   progress: bool = False, cache_dir: str | None = None) -> float:
    """Dense model: load ``train.checkpoint`` (or a ``dense.pt`` already in ``run_dir``, to
    resume; or the cache's model of fingerprint ``fp``), else train with
    ``experiments.train.fit`` (checkpointed every epoch to ``pretrain_state.pt``); save
    ``dense.pt`` with ``fp``. Returns the dense test accuracy (%)."""
    device = next(model.parameters()).device
    target = run_dir / "dense.pt"
    source = to_absolute_path(train.checkpoint) if train.checkpoint else None
    if source is None and target.exists():
        source = target
    shared = cached(cache_dir, "dense", fp)
    if source is None and shared is not None and shared.exists():
        _log.info("dense model reused from the cache: %s", shared)
        atomic_write_bytes(target, shared.read_bytes())
        source = target
    if source is not None:
        restore_dense(model, loaders[0], _load(source, device), source,
                      fp if source == target else None)
        _log.info("dense model loaded from %s: pretraining skipped", source)
    else:
        fit(model, loaders, train.epochs, train.lr, train.optimizer, seed=seed,
            weight_decay=train.weight_decay, progress=progress,
            checkpoint=run_dir / "pretrain_state.pt", fingerprint=fp)
    if source != target:
        save_atomic(dense_state(model, loaders[0], fp), target)
    if shared is not None and not shared.exists():
        atomic_write_bytes(shared, target.read_bytes())
    return evaluate(model, loaders[1])


CACHE_FORMAT = 2
"""Bumped when the same settings train another model (2: the training order of
``experiments.datasets.PassSampler``), so older cache entries are not reused."""


def cached(cache_dir: str | None, name: str, fp: Mapping) -> Path | None:
    """``<runtime.cache_dir>/<name>-<hash>.pt``: a model shared by every run whose settings
    ``fp`` (the checkpoint's fingerprint: only the sections it depends on) are the same;
    ``None`` without a cache."""
    if cache_dir is None:
        return None
    keyed = {"cache_format": CACHE_FORMAT, **dict(fp)}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
    return Path(to_absolute_path(cache_dir)) / f"{name}-{key[:20]}.pt"


def compress_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                   inputs: CompressInputs) -> CompressResult:
    """The ``admm`` compressor (``experiments.registry``; ``inputs.settings``: the ``admm``
    group): ADMM prune, masked retrain, ADMM quantize, retrain (``admm.compress``; resumable
    from ``admm_state.pt``); saves ``compressed.pt``."""
    run_dir, fp, admm = inputs.run_dir, inputs.fingerprint, inputs.settings
    target = run_dir / "compressed.pt"
    device = next(model.parameters()).device
    shared = cached(inputs.cache_dir, "compressed", fp)
    if not target.exists() and shared is not None and shared.exists():
        _log.info("compressed model reused from the cache: %s", shared)
        atomic_write_bytes(target, shared.read_bytes())
    if target.exists():
        state = _load(target, device)
        check_fingerprint(target, state.get("fingerprint"), fp)
        load_model_state(model, state["model"], target)
        _log.info("%s holds the compressed model of these settings: compression skipped; "
                  "mapping, evaluation and cost run with the current settings", target)
        return result_of(state)
    config = dataclasses.replace(admm.compress_config(progress=inputs.progress),
                                 collapse_floor=collapse_floor(loaders[1]))
    perturbation = None
    if inputs.hardware_aware:  # the chip in the forward pass of the retraining stages
        chip = inputs.hardware_aware_effects == "chip"
        device = inputs.device if chip else ideal_device(inputs.device)
        perturbation = HardwareAware(device, inputs.crossbar,
                                     repair=inputs.repair if chip else None,
                                     layers=list(inputs.mapped))
        _log.info("hardware-aware retraining in stages %s (%s): %s", ", ".join(
            config.perturb_stages), "the chip" if chip else "converters and conductance grid",
            device.describe())
    result = compress(model, loaders[0], config, eval_fn=lambda m: evaluate(m, loaders[1]),
                      checkpoint=run_dir / "admm_state.pt", fingerprint=fp,
                      perturbation=perturbation)
    state = {"model": model.state_dict(), "masks": result.masks, "scales": result.scales,
             "levels": result.levels, "history": result.history, "fingerprint": fp}
    save_atomic(state, target)
    if shared is not None:
        atomic_write_bytes(shared, target.read_bytes())
    return result


def compress_inputs(exp: CompressExperiment, run_dir: Path, mapped: Sequence[str],
                    compressor: str | None = None) -> CompressInputs:
    """What the compressor (default ``exp.compressor``) reads of the validated experiment,
    unpacked once by the run's orchestrator (after the allocation, which sets the ``admm``
    constraints); ``mapped``: the layers on crossbars (:func:`mapped_layers`)."""
    name = exp.compressor if compressor is None else compressor
    rob = exp.robustness
    return CompressInputs(
        run_dir=run_dir, fingerprint=fingerprint(exp), settings=getattr(exp, SETTINGS_BLOCK[name]),
        constraints=exp.admm.layer_constraints(), seed=exp.seed, device=exp.device,
        crossbar=exp.crossbar, hardware_aware=rob.hardware_aware,
        hardware_aware_effects=rob.hardware_aware_effects, repair=rob.repair(),
        mapped=tuple(mapped), progress=exp.runtime.progress, cache_dir=exp.runtime.cache_dir)


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


def chip_accuracies(model: nn.Module, plan: MappingPlan, device: DeviceModel,
                    xbar: CrossbarConfig, calibration: torch.Tensor, test: DataLoader,
                    chips: int, seed: int, progress: bool = False, desc: str = "chips",
                    scales: Mapping[str, float | torch.Tensor] | None = None,
                    programming: list[dict] | None = None, repair: RepairConfig | None = None,
                    outputs: torch.Tensor | None = None,
                    repairs: list[dict] | None = None,
                    calibrations: list[dict] | None = None, digital: Sequence[str] = (),
                    devices: Mapping[str, DeviceModel] | None = None) -> list[float]:
    """Test accuracy (%) of ``model`` on ``chips`` programmed crossbar chips (seeds
    ``seed .. seed + chips - 1``), each repaired (``repair``) and calibrated on
    ``calibration`` right after programming, its output columns then calibrated against
    ``model`` on ``outputs`` (when ``xbar.output_calibration``), and evaluated
    ``device.t_inference_s`` later (drift). ``scales``: the quantizer's scales, so a
    quantized model's level grid is the device's. ``programming`` / ``repairs``: lists that
    receive each chip's programming cost (pulses, energy, time) / repair and calibration
    statistics; ``calibrations``: receives the first chip's fitted output calibration (per
    layer: gain range, largest offset, output error before and after)."""
    calibrations = [] if calibrations is None else calibrations
    if xbar.output_calibration and outputs is None:
        raise ValueError("chip_accuracies: output_calibration needs calibration images "
                         "(outputs=...)")
    # converters are calibrated when a chip is programmed (t = 0); the chip then drifts
    t_inference = device.t_inference_s
    xmodel = to_crossbar(model, device.with_(t_inference_s=0.0), xbar, calibration=calibration,
                         seed=seed, plan=plan, scales=scales, repair=repair, digital=digital,
                         devices={k: d.with_(t_inference_s=0.0)
                                  for k, d in (devices or {}).items()})
    accs = []
    for i in tqdm(range(chips), desc=desc, disable=not progress, leave=False):
        if i:
            xmodel.set_inference_time(0.0)
            xmodel.program(seed + i)  # recalibrates on the stored calibration batch
        if xbar.output_calibration:  # digital gain/offset per output, once after programming
            fitted = calibrate_outputs(xmodel, model, outputs)
        if t_inference > 0:
            xmodel.set_inference_time(t_inference)
        if repairs is not None:
            stats = [m.repair_stats for _, m in crossbar_modules(xmodel)]
            repairs.append({k: sum(s.get(k, 0) for s in stats)
                            for k in ("stuck", "detected", "compensated",
                                      "placement_error_identity", "placement_error")}
                           | ({"output_rmse_before": sum(f["rmse_before"]
                                                         for f in fitted.values()),
                               "output_rmse_after": sum(f["rmse_after"]
                                                        for f in fitted.values())}
                              if xbar.output_calibration else {}))
            if xbar.output_calibration and not i:  # the first chip's fitted gains, per layer
                calibrations.append(fitted)
        if programming is not None:
            cost = programming_cost(programming_stats(xmodel),
                                    verified=device.write_verify is not None)
            programming.append({k: v for k, v in cost.items() if k != "assumptions"})
        accs.append(evaluate(xmodel, test))
    return accs


def robustness_ablation(model: nn.Module, plan: MappingPlan, calibration: torch.Tensor,
                        outputs: torch.Tensor | None, test: DataLoader, scales: Mapping,
                        accs: list[float], *, device: DeviceModel, xbar: CrossbarConfig,
                        rob: RobustnessSettings, chips: int, seed: int,
                        digital: Sequence[str] = (),
                        devices: Mapping[str, DeviceModel] | None = None) -> list[dict]:
    """Chip accuracy on the first ``rob.ablation_chips`` chips (at most ``chips``, the run's
    count, whose accuracies are ``accs``) as the repair steps are added one at a time (as
    mapped -> + compensation -> + placement -> + output calibration, each only when the
    configuration uses it), and without write-verify when it is on; the last step is the
    configured procedure (the main result's chips). ``digital`` / ``devices``: the ``layers``
    section (:func:`layer_args`). Hardware-aware retraining changes the model itself: its
    effect is measured by a second run with ``robustness.hardware_aware=false``."""
    n = min(rob.ablation_chips, chips)
    if not rob.ablation or ideal_device(device) == device.with_(t_inference_s=0.0):
        return []
    compensates = rob.repair().compensates(device)
    steps = [("as mapped", RepairConfig(compensation=False), False)]
    if compensates:
        steps.append(("+ pair compensation", RepairConfig(compensation=True,
                                                          miss_rate=rob.miss_rate), False))
    if rob.placement and device.active("faults"):
        steps.append(("+ fault-aware placement", rob.repair(), False))
    rows = []
    for name, repair, _ in steps:
        got = chip_accuracies(model, plan, device, xbar.with_(output_calibration=False),
                              calibration, test, n, seed, scales=scales, repair=repair,
                              **layer_args(digital, devices))
        rows.append({"step": name, "accuracies": got})
    if device.write_verify is not None and rob.write_verify is not None:
        got = chip_accuracies(model, plan, device.with_(write_verify=None), xbar, calibration,
                              test, n, seed, scales=scales, repair=rob.repair(),
                              outputs=outputs, **layer_args(digital, devices))
        rows.append({"step": "all but write-verify", "accuracies": got})
    last = "+ output calibration" if xbar.output_calibration else "configured procedure"
    rows.append({"step": last + " (configured)", "accuracies": accs[:n]})
    for row in rows:
        row["mean"], row["std"] = _stats(row["accuracies"])
        _log.info("ablation %-32s %.2f +- %.2f%% on %d chips", row["step"], row["mean"],
                  row["std"], n)
    return rows


def plot_conductances(model: nn.Module, plan: MappingPlan, calibration: torch.Tensor,
                      scales: Mapping, path: Path, *, device: DeviceModel,
                      xbar: CrossbarConfig, repair: RepairConfig, seed: int,
                      digital: Sequence[str] = (),
                      devices: Mapping[str, DeviceModel] | None = None) -> None:
    """Histogram of the target and the programmed conductances of every live cell of the first
    chip (seed ``seed``, repaired with ``repair`` as the run repairs; ``digital`` /
    ``devices``: the ``layers`` section): the level grid, the programming spread around it,
    and the stuck cells at the window's edges."""
    xmodel = to_crossbar(model, device.with_(t_inference_s=0.0),
                         xbar.with_(output_calibration=False), calibration=calibration,
                         seed=seed, plan=plan, scales=scales, repair=repair,
                         **layer_args(digital, devices))
    target, programmed = [], []
    for _, layer in crossbar_modules(xmodel):
        live = layer.cell_mask.bool().expand_as(layer.g_uS)
        target.append(layer.g_nominal_uS[live].cpu())
        programmed.append(layer.g_uS[live].cpu())
    target_t, programmed_t = torch.cat(target), torch.cat(programmed)
    levels = torch.unique(target_t)
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    bins = torch.linspace(float(min(target_t.min(), programmed_t.min())),
                          float(max(target_t.max(), programmed_t.max())), 161).numpy()
    if len(levels) <= 32:  # one colour per target level: the spread each level programs to
        cmap = plt.get_cmap("viridis")
        for k, level in enumerate(levels):
            sel = programmed_t[target_t == level].numpy()
            ax.hist(sel, bins=bins, histtype="stepfilled", alpha=0.55,
                    color=cmap(k / max(len(levels) - 1, 1)))
            ax.axvline(float(level), color="k", linewidth=0.4, alpha=0.6)
        ax.plot([], [], color=cmap(0.5), linewidth=6, alpha=0.55,
                label="programmed, coloured by target level (chip 0)")
        ax.plot([], [], color="k", linewidth=0.6, label=f"targets ({len(levels)} levels)")
    else:
        ax.hist(target_t.numpy(), bins=bins, histtype="step", color="k", label="targets")
        ax.hist(programmed_t.numpy(), bins=bins, alpha=0.6, color="C0",
                label="programmed (chip 0)")
    ax.set_yscale("log")
    ax.set_xlabel("conductance (uS)")
    ax.set_ylabel("cells")
    ax.set_title(f"Target vs programmed conductance of the {len(target_t)} live cells")
    ax.legend(fontsize=7)
    caption(fig, f"Device: {device.describe().splitlines()[0]}; "
                 + "; ".join(line for line in device.describe().splitlines()[1:]
                             if not line.endswith(": none"))
                 + f"; repair as the run repairs; chip seed {seed}.")
    write_png(path, fig)


def layer_args(digital: Sequence[str] = (), devices: Mapping[str, DeviceModel] | None = None,
               ideal: bool = False) -> dict:
    """The ``layers`` section's ``digital`` patterns and per-layer ``devices`` (pattern ->
    device, ``CompressExperiment.layer_devices``) as ``to_crossbar`` and
    :func:`chip_accuracies` take them (``ideal``: every device without variation, noise,
    drift or faults)."""
    devices = {k: ideal_device(d) if ideal else d for k, d in (devices or {}).items()}
    return {"digital": list(digital), "devices": devices}


def mapped_layers(model: nn.Module, digital: Sequence[str], devices: Mapping[str, DeviceModel],
                  device: DeviceModel) -> tuple[list[str], list[str]]:
    """``(mapped, digital)`` layer names of ``model`` under the ``layers`` section
    (``digital`` patterns, per-layer ``devices``; ``device``: the others' device); fails
    naming the ``layers`` pattern that matches no layer (checked before any work)."""
    from crossbar.convert import _layer_devices, _select
    from crossbar.plan import crossbar_layers as mappable

    names = [n for n, _ in mappable(model)]
    patterns = digital
    try:
        digital = sorted(_select("layers.digital", patterns, names)) if patterns else []
        mapped = [n for n in names if n not in digital]
        if not mapped:
            raise ValueError(f"layers.digital={patterns!r} keeps every layer digital; "
                             "allowed: patterns that leave at least one layer to map")
        _layer_devices(devices, mapped, device)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"layers: {exc}") from None
    return mapped, digital


def plot_tile_map(plan: MappingPlan, path: Path) -> None:
    """One panel per mapped layer: its matrix ``[out, in]`` with the live weights (dark) and
    the tiles the plan puts them on (outlines: each tile's rows x outputs, not necessarily
    contiguous in the matrix, drawn over their span)."""
    from matplotlib.patches import Rectangle

    layers = list(plan)
    cols = min(3, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.8 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers, strict=False):
        mask = layer.cell_mask().float().numpy()
        ax.imshow(mask, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        for t, tile in enumerate(layer.tiles):
            r0, r1 = min(tile.rows), max(tile.rows)
            c0, c1 = min(tile.cols), max(tile.cols)
            ax.add_patch(Rectangle((r0 - 0.5, c0 - 0.5), r1 - r0 + 1, c1 - c0 + 1, fill=False,
                                   edgecolor=f"C{t % 10}", linewidth=1.2))
        ax.set_title(f"{layer.name}: {layer.n_tiles} tiles, {layer.mapped_weights} weights",
                     fontsize=8)
        ax.set_xlabel("input row (word line)", fontsize=7)
        ax.set_ylabel("output", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle("Mapping plan: live weights (dark) and tiles (outlines)", fontsize=9)
    fig.tight_layout()
    write_png(path, fig)


def ideal_device(device: DeviceModel) -> DeviceModel:
    """The same conductance range and levels without variation, read noise, drift or faults."""
    return device.with_(programming=None, read_noise=None, drift=None, faults=None,
                        write_verify=None, t_inference_s=0.0)


def cost_stage(plan: MappingPlan, xbar: CrossbarConfig, cost: CostConfig, out_dir: Path) -> dict:
    """``crossbar.report.write_cost_report`` into ``out_dir``; returns cost.json's content."""
    write_cost_report(plan, xbar, out_dir, cost=cost)
    return json.loads((out_dir / "cost.json").read_text())


# --------------------------------------------------------------------------------- outputs
def write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable))


def _jsonable(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def save_config(cfg: DictConfig | Mapping, run_dir: Path) -> None:
    """The resolved config as ``config.yaml`` in the run directory."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(
        to_container(cfg))))


def accept_run(cfg: DictConfig | Mapping, run_dir: Path) -> None:
    """Write what records an accepted run: ``config.yaml`` and, under Hydra, ``.hydra/``
    (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``, as Hydra writes them; the configs set
    ``hydra.output_subdir: null`` so that Hydra itself writes nothing before the run directory
    is checked)."""
    save_config(cfg, run_dir)
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    task = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False) \
        if isinstance(cfg, DictConfig) else dict(cfg)
    task.pop("hydra", None)
    task = drop_missing(task)  # keys a group schema declares but no option sets
    files = {"config.yaml": OmegaConf.to_yaml(OmegaConf.create(task)),
             "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})),
             "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task)))}
    for name, text in files.items():
        atomic_write_text(run_dir / ".hydra" / name, text)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _plots_compress(metrics: dict, history: list[dict], run_dir: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    accs = metrics["crossbar_accuracies"]
    # points, not bars: accuracy axes are zoomed, and a bar on a zoomed axis misleads
    ax.plot(range(len(accs)), accs, "o", color="#1f77b4", label="one programmed chip")
    mean, half = statistics.fmean(accs), ci95(accs)
    ax.axhspan(mean - half, mean + half, color="C1", alpha=0.3,
               label=f"mean {mean:.2f} % (95 % CI +- {half:.2f})")
    for y, label, style in ((metrics["compressed_accuracy"], "compressed (software)", "--"),
                            (metrics["dense_accuracy"], "dense (software)", ":")):
        ax.axhline(y, color="k", linestyle=style, label=label)
    ax.set_xlabel("programmed chip")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0.0, min(accs + [metrics["dense_accuracy"]]) - 2), 100)
    ax.set_title(f"Accuracy per programmed chip ({len(accs)} chips)")
    ax.legend(fontsize=7)
    caption(fig, metrics.get("settings_caption", ""))
    write_png(run_dir / "chip_accuracy.png", fig)
    plots = ["chip_accuracy.png", "stage_accuracy.png"]
    rounds = [h for h in history if h.get("event") == "admm_round"]
    if rounds:
        stages = list(dict.fromkeys(h["stage"] for h in rounds))
        fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 3.4),
                                 squeeze=False)
        for ax, stage in zip(axes[0], stages, strict=True):
            sel = [h for h in rounds if h["stage"] == stage]
            for name in sel[0]["layers"]:
                ax.plot(range(1, len(sel) + 1), [h["layers"][name]["primal"] for h in sel],
                        label=name)
            ax.set_yscale("log")
            ax.set_xlabel(f"ADMM round ({stage})")
            ax.set_ylabel("primal residual ||W - Z||")
            rho = ax.twinx()
            rho.plot(range(1, len(sel) + 1), [next(iter(h["layers"].values()))["rho"]
                                              for h in sel], "k--", label="rho")
            rho.set_yscale("log")
            rho.set_ylabel("rho (dashed)")
            ax.legend(fontsize=6, loc="lower left")
        fig.suptitle("ADMM convergence: residual per layer and penalty rho")
        fig.tight_layout()
        write_png(run_dir / "admm_residuals.png", fig)
        plots.append("admm_residuals.png")
    plots += [name for name in ("conductances.png", "tile_map.png")
              if (run_dir / name).exists()]

    evals = [h for h in history if h.get("event") == "eval"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels = [h["stage"] for h in evals] + ["crossbar ideal", "crossbar chips"]
    values = [h["metric"] for h in evals] + [metrics["crossbar_ideal_accuracy"],
                                             metrics["crossbar_accuracy_mean"]]
    ax.plot(range(len(values)), values, marker="o")
    ax.errorbar([len(values) - 1], [values[-1]], yerr=[metrics["crossbar_accuracy_std"]],
                capsize=4, color="C1")
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy through the pipeline")
    write_png(run_dir / "stage_accuracy.png", fig)
    ablation = (metrics.get("robustness") or {}).get("ablation")
    if ablation:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        means = [r["mean"] for r in ablation]
        ax.errorbar(range(len(ablation)), means, yerr=[ci95(r["accuracies"]) for r in ablation],
                    fmt="o", capsize=4, color="#2ca02c", label="mean, 95 % CI")
        for r_i, r in enumerate(ablation):
            ax.plot([r_i] * len(r["accuracies"]), r["accuracies"], ".", color="#777777",
                    markersize=3)
        for y, label, style in ((metrics["dense_accuracy"], "dense (software)", ":"),
                                (metrics["crossbar_ideal_accuracy"], "ideal devices", "--")):
            ax.axhline(y, color="k", linestyle=style, label=label)
        ax.set_xticks(range(len(ablation)), [r["step"] for r in ablation], rotation=20,
                      ha="right", fontsize=7)
        low = min(min(r["accuracies"]) for r in ablation)
        ax.set_ylim(max(0.0, low - 2), 100)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Chip accuracy as repair steps are added "
                     f"({len(ablation[0]['accuracies'])} chips)")
        ax.legend(fontsize=7)
        caption(fig, metrics.get("settings_caption", ""))
        write_png(run_dir / "robustness_ablation.png", fig)
    return plots


def _robustness_markdown(m: dict) -> list[str]:
    """report.md's robustness section: the steps used and the ablation."""
    rob = m.get("robustness")
    if not rob:
        return []
    s, rep = rob["settings"], rob["repair_mean"]
    calib = f"on ({s['calibration_samples']} images)" if s["output_calibration"] else "off"
    lines = ["## Robustness (robustness group)", "",
             f"- hardware-aware retraining: {'on' if s['hardware_aware'] else 'off'}; "
             f"pair compensation: {s['compensation'] if s['compensation'] is not None else 'auto'}"
             f"; fault-aware placement: {'on' if s['placement'] else 'off'}; test-read miss "
             f"rate {s['miss_rate']}; spares per tile: {s['spare_rows']} rows, "
             f"{s['spare_cols']} output columns; output calibration: "
             f"{calib}"
             f"; write-verify: {s['write_verify'] or 'the device setting'}",
             f"- ideal devices: {m['crossbar_ideal_accuracy']:.2f} % with the design's "
             f"digital calibration, {m['crossbar_ideal_uncalibrated_accuracy']:.2f} % without",
             "- per chip (mean): " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}"
                                               for k, v in rep.items())]
    cal = rob.get("output_calibration_chip0")
    if cal:
        lines += ["", "Output calibration of the first chip (per layer, least squares against "
                  "the software model's pre-activations):", "",
                  "| layer | gain min | gain max | largest offset | output RMSE before | after |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['gain_min']:.3f} | {c['gain_max']:.3f} | "
                  f"{c['offset_max']:.3g} | {c['rmse_before']:.3g} | {c['rmse_after']:.3g} |"
                  for name, c in cal.items()]
    if rob["ablation"]:
        n = len(rob["ablation"][0]["accuracies"])
        lines += ["", f"Chip accuracy as the steps are added (the same {n} chips):", "",
                  "| step | mean (%) | std | min |", "|---|---:|---:|---:|"]
        lines += [f"| {r['step']} | {r['mean']:.2f} | {r['std']:.2f} | "
                  f"{min(r['accuracies']):.2f} |" for r in rob["ablation"]]
        other = "false" if s["hardware_aware"] else "true"
        lines += ["", "Hardware-aware retraining changes the model: compare with a run with "
                  f"`robustness.hardware_aware={other}`.", "![ablation](robustness_ablation.png)"]
    return lines + [""]


def _fmt(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def environment(torch_device: torch.device) -> dict:
    """What produced a run: Python, torch and package versions, the git commit of the code
    (``None`` outside a git checkout), the torch device and thread count."""
    import importlib.metadata
    import platform
    import subprocess

    versions = {}
    for package in ("memxbar", "numpy", "hydra-core", "cvxpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
        git = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"python": platform.python_version(), "torch": torch.__version__, **versions,
            "git_commit": git, "torch_device": str(torch_device),
            "torch_threads": torch.get_num_threads()}


def _array_line(xbar: Mapping) -> str:
    """The array model of a crossbar config (as a dict) in words."""
    array = xbar.get("array")
    if array is None:
        return "ideal (no wire resistance)"
    return ", ".join(f"{k}={v}" for k, v in array.items())


def write_compress_report(metrics: dict, plan: MappingPlan, history: list[dict],
                          run_dir: Path) -> None:
    """report.md: accuracy, compression, cost and per-layer mapping, with plots."""
    plots = _plots_compress(metrics, history, run_dir)
    m = metrics
    lines = [
        f"# Compression run: {m['model']} on {m['dataset']}", "",
        *[f"> **Warning:** {w}\n" for w in m.get("warnings", [])],
        "## Accuracy (test set, %)", "", "| | accuracy |", "|---|---:|",
        f"| dense (software) | {m['dense_accuracy']:.2f} |",
        f"| compressed (software) | {m['compressed_accuracy']:.2f} |",
        f"| compressed on ideal crossbar | {m['crossbar_ideal_accuracy']:.2f} |",
        f"| compressed on {m['chips']} programmed chips | {m['crossbar_accuracy_mean']:.2f}"
        f" +- {m['crossbar_accuracy_std']:.2f} (95 % CI of the mean +- "
        f"{m.get('crossbar_accuracy_ci95', 0.0):.2f}; min {min(m['crossbar_accuracies']):.2f}) |",
        "", f"Drop vs dense: {m['accuracy_drop_ideal']:.2f} points (ideal devices), "
        f"{m['accuracy_drop_mean']:.2f} points (mean over chips).", "",
        *_robustness_markdown(m),
        "## Compression", "",
        f"- weights: {m['dense_weights']} dense, {m['mapped_weights']} on live crossbar rows "
        f"and columns: **{m['compression_ratio']:.2f}x**",
        f"- conductance levels per device: {m['levels']}",
        f"- tiles: {m['tiles']} (dense baseline {m['baseline_tiles']})",
        f"- compressor: {m['compressor']} ({m['timings_s'][m['compressor']]:.1f} s)", "",
        *([allocation_markdown(m["allocation"])] if m.get("allocation") else []),
        "## Hardware cost (vs dense baseline)", "",
        "| | compressed | dense baseline | reduction |", "|---|---:|---:|---:|",
    ]
    for key, unit in (("area", "mm2"), ("energy", "nJ"), ("power", "mW")):
        lines.append(f"| {key} ({unit}) | {_fmt(m[f'{key}_{unit}'])} | "
                     f"{_fmt(m[f'baseline_{key}_{unit}'])} | {m[f'{key}_reduction_pct']:.2f}% |")
    prog = m["programming"]
    lines += ["", f"Baseline: {m['cost_baseline']}." if "cost_baseline" in m else "",
              "", "Full cost report: [cost/report.md](cost/report.md).", "",
              "## Programming a chip (mean over chips)", "",
              f"- {prog['cells']:.0f} cells, " + (
                  f"write-verify: {prog['pulses_per_cell']:.2f} pulses per cell, "
                  f"{prog['failed_cells']:.1f} cells left outside the band"
                  if m["device"]["write_verify"] else "single-shot (one pulse per cell)"),
              f"- energy {prog['energy_uJ']:.3g} uJ (cell-only lower bound), time "
              f"{prog['time_serial_s']:.3g} s one cell at a time, "
              f"{prog['time_tiles_parallel_s']:.3g} s with tiles in parallel "
              "(docs/crossbar.md, 'Programming cost')", "",
              "## Device", "", "```", DeviceModel.from_dict(m["device"]).describe(), "```", "",
              f"Array model: {_array_line(m['crossbar'])}.", "",
              *([f"Layers kept digital (not simulated or costed): "
                 f"{', '.join(m['layers']['digital'])}.", ""]
                if m.get("layers", {}).get("digital") else []),
              *[f"Layers `{k}` on their own device: {DeviceModel.from_dict(d).describe()}"
                for k, d in m.get("layers", {}).get("devices", {}).items()],
              "## Crossbar and periphery", "",
              "| setting | value |", "|---|---|",
              *[f"| {k} | {v} |" for k, v in m["crossbar"].items() if k != "array"], "",
              "## Environment", "",
              *[f"- {k}: {v}" for k, v in m["environment"].items()], "",
              "## Mapping plan (plan.json)", "",
              "| layer | shape | live rows | live cols | tiles | mapped weights |",
              "|---|---|---:|---:|---:|---:|"]
    for row in plan.summary():
        lines.append(f"| {row['layer']} | {row['shape'][0]}x{row['shape'][1]} | "
                     f"{row['live_rows']} | {row['live_cols']} | {row['tiles']} | "
                     f"{row['mapped_weights']} |")
    lines += ["", "## Stage timings (s)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in m["timings_s"].items()]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += [f"![{p}](cost/{p})" for p in ("tiles_per_layer.png", "energy_breakdown.png")]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- compress run
def _prepare(exp: CompressExperiment, run_dir: Path, timings: dict):
    device = setup_runtime(exp.runtime, exp.seed)
    with _timed(timings, "data"):
        train, test, info = load_data(exp.dataset, exp.seed)
    model = build_model(exp.model.name, input_shape=info.input_shape, **exp.model.kwargs)
    model.to(device)
    check_constraints_fit(model, exp.admm)
    # layers.digital / layers.devices patterns fit the model
    mapped_layers(model, exp.layers.digital, exp.layer_devices, exp.device)
    check_budget(model, exp.allocation, exp.admm.layer_constraints(), exp.crossbar, exp.cost,
                 train.dataset[0][0][None].to(device))
    with _timed(timings, "pretrain"):
        dense_acc = pretrain_stage(model, (train, test), exp.train,
                                   fingerprint(exp, DENSE_KEYS), run_dir, seed=exp.seed,
                                   progress=exp.runtime.progress,
                                   cache_dir=exp.runtime.cache_dir)
    check_dense(dense_acc, test, exp.train)
    calibration = calibration_batch(train, exp.eval.calibration_samples, device, exp.seed)
    return device, train, test, info, model, dense_acc, calibration


def run_compress(cfg: DictConfig | Mapping, run_dir: str | os.PathLike) -> dict:
    """The whole pipeline for a composed ``conf/config.yaml``; returns metrics.json's content.

    The config is validated before any work (``experiments.config.load_compress_config``).
    """
    exp = load_compress_config(cfg)
    preflight(exp)
    run_dir = Path(run_dir)
    with open_run(run_dir, exp, lambda: accept_run(cfg, run_dir)):
        if exp.allocation is None or exp.allocation.max_drop is None:
            return _run_compress(exp, run_dir)
        shape = INPUT_SHAPES[exp.dataset.name]
        bounds = budget_bounds(build_model(exp.model.name, input_shape=shape, **exp.model.kwargs),
                               torch.zeros(1, *shape), exp.allocation,
                               exp.admm.layer_constraints(), exp.crossbar, exp.cost)
        metrics = budget_search(exp, run_dir, bounds, run_compress, _run_compress,
                                load_compress_config)
        write_json(run_dir / "metrics.json", metrics)
        return metrics


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
                         "run starts in)")
    if t.checkpoint is not None and not Path(to_absolute_path(t.checkpoint)).is_file():
        raise ValueError(f"train.checkpoint={t.checkpoint!r} is invalid; allowed: an existing "
                         "dense checkpoint file (relative to the directory the run starts in), "
                         "or null to train")
    with torch.device("meta"):
        try:
            model = build_model(exp.model.name, input_shape=INPUT_SHAPES[exp.dataset.name],
                                **exp.model.kwargs)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ValueError(f"model: {exp.model.name} does not build with "
                             f"{exp.model.kwargs or 'its defaults'} for {exp.dataset.name} "
                             f"inputs {INPUT_SHAPES[exp.dataset.name]}: {exc}") from None
    check_constraints_fit(model, exp.admm)
    mapped_layers(model, exp.layers.digital, exp.layer_devices, exp.device)


def _run_compress(exp: CompressExperiment, run_dir: Path) -> dict:
    timings: dict[str, float] = {}
    torch_device, train, test, info, model, dense_acc, calibration = _prepare(exp, run_dir,
                                                                              timings)
    n_dense = sum(p.numel() for p in model.parameters())
    with _timed(timings, "allocation"):
        chosen, allocation = allocation_stage(
            model, train, exp.allocation, exp.admm.layer_constraints(), exp.crossbar, exp.cost,
            calibration, exp.seed)
        if chosen is not None:  # the allocation's per-layer constraints replace the group's
            exp = dataclasses.replace(exp, admm=dataclasses.replace(exp.admm, constraints=chosen))
    mapped, digital = mapped_layers(model, exp.layers.digital, exp.layer_devices, exp.device)
    with _timed(timings, exp.compressor):
        result = get_compressor(exp.compressor)(model, (train, test),
                                                compress_inputs(exp, run_dir, mapped))
    masks, scales, history = result.masks, result.scales, result.history
    compressed_acc = evaluate(model, test)
    _log.info("dense accuracy %.2f%%, compressed (software) %.2f%%", dense_acc, compressed_acc)
    warnings_ = collapse_warnings(dense_acc, compressed_acc, info.num_classes, exp.compressor)
    plan = map_stage(model, masks, exp.crossbar, calibration, run_dir / "plan.json",
                     exclude=digital)
    xtest = crossbar_test_loader(test, exp.eval.test_subset, exp.seed)
    rob, layers = exp.robustness, {"digital": exp.layers.digital, "devices": exp.layer_devices}
    outputs = calibration_batch(train, rob.calibration_samples, torch_device, exp.seed + 1) \
        if exp.crossbar.output_calibration else None
    with _timed(timings, "crossbar_eval"):
        ideal = chip_accuracies(model, plan, ideal_device(exp.device), exp.crossbar,
                                calibration, xtest, 1, exp.seed, scales=scales,
                                outputs=outputs, **layer_args(**layers, ideal=True))[0]
        ideal_plain = ideal if not exp.crossbar.output_calibration else chip_accuracies(
            model, plan, ideal_device(exp.device), exp.crossbar.with_(output_calibration=False),
            calibration, xtest, 1, exp.seed, scales=scales,
            **layer_args(**layers, ideal=True))[0]
        programming: list[dict] = []
        repairs: list[dict] = []
        fitted: list[dict] = []
        accs = chip_accuracies(model, plan, exp.device, exp.crossbar, calibration, xtest,
                               exp.eval.chips, exp.seed, exp.runtime.progress, scales=scales,
                               programming=programming, repair=rob.repair(), outputs=outputs,
                               repairs=repairs, calibrations=fitted, **layer_args(**layers))
    with _timed(timings, "ablation"):
        ablation = robustness_ablation(model, plan, calibration, outputs, xtest, scales, accs,
                                       device=exp.device, xbar=exp.crossbar, rob=rob,
                                       chips=exp.eval.chips, seed=exp.seed, **layers)
    plot_conductances(model, plan, calibration, scales, run_dir / "conductances.png",
                      device=exp.device, xbar=exp.crossbar, repair=rob.repair(),
                      seed=exp.seed, **layers)
    plot_tile_map(plan, run_dir / "tile_map.png")
    with _timed(timings, "cost"):
        cost = cost_stage(plan, exp.crossbar, exp.cost, run_dir / "cost")
    mean, std = _stats(accs)
    comp, base = cost["compressed"]["totals"], cost["baseline"]["totals"]
    red = cost["reduction"]
    metrics = {
        "model": exp.model.name, "dataset": info.name, "parameters": n_dense,
        "dense_accuracy": dense_acc, "compressed_accuracy": compressed_acc,
        "crossbar_ideal_accuracy": ideal,
        "crossbar_ideal_uncalibrated_accuracy": ideal_plain,
        "crossbar_accuracy_mean": mean, "crossbar_accuracy_std": std,
        "crossbar_accuracy_ci95": ci95(accs),
        "crossbar_accuracies": accs, "chips": exp.eval.chips,
        "crossbar_test_samples": len(xtest.dataset),
        "accuracy_drop_ideal": dense_acc - ideal, "accuracy_drop_mean": dense_acc - mean,
        "dense_weights": plan.dense_weights, "mapped_weights": plan.mapped_weights,
        "compression_ratio": plan.dense_weights / max(plan.mapped_weights, 1),
        "levels": exp.admm.levels, "device_levels": exp.device.level_count,
        "tiles": plan.n_tiles, "baseline_tiles": base["tiles"],
        "area_mm2": comp["area_mm2"], "energy_nJ": comp["energy_nJ"],
        "power_mW": comp["power_mW"], "baseline_area_mm2": base["area_mm2"],
        "baseline_energy_nJ": base["energy_nJ"], "baseline_power_mW": base["power_mW"],
        "cost_baseline": cost["baseline_description"],
        **{k: v for k, v in red.items() if k.endswith("_pct") or k.endswith("_ratio")},
        "compressor": exp.compressor, "allocation": allocation,
        "device": exp.device.to_dict(), "crossbar": exp.crossbar.to_dict(),
        "layers": {"digital": digital,
                   "devices": {k: d.to_dict() for k, d in exp.layer_devices.items()}},
        "environment": environment(torch_device), "warnings": warnings_,
        "settings_caption": held_fixed(exp, len(xtest.dataset), exp.eval.chips,
                                       prefix="Run settings"),
        "programming": {k: sum(c[k] for c in programming) / len(programming)
                        for k in programming[0]},
        "robustness": {"settings": dataclasses.asdict(rob),
                       "repair_mean": {k: sum(r[k] for r in repairs) / len(repairs)
                                       for k in repairs[0]},
                       "output_calibration_chip0": fitted[0] if fitted else None,
                       "ablation": ablation},
        "timings_s": timings,
    }
    write_json(run_dir / "metrics.json", metrics)
    write_compress_report(metrics, plan, history, run_dir)
    _log.info("result: dense %.2f%%, compressed %.2f%% (software), %.2f +- %.2f%% on %d chips; "
              "%.2fx compression, area -%.1f%%, energy -%.1f%%", dense_acc, compressed_acc,
              mean, std, exp.eval.chips, metrics["compression_ratio"],
              metrics["area_reduction_pct"], metrics["energy_reduction_pct"])
    return metrics


# ------------------------------------------------------------------------------ device study
def apply_setting(device: DeviceModel, xbar: CrossbarConfig, rob: RobustnessSettings, key: str,
                  value: object) -> tuple[DeviceModel, CrossbarConfig, RobustnessSettings]:
    """``device``, ``xbar`` and ``rob`` with one setting changed (``sa_rate``: SA0 = SA1 =
    value / 2; ``robustness.<field>``: a repair or calibration step, applied to the device and
    crossbar config)."""
    try:
        if key == "sa_rate":
            return device.with_(sa0_rate=value / 2, sa1_rate=value / 2), xbar, rob
        head, _, field_ = key.partition(".")
        if head == "robustness":
            if field_ in ("hardware_aware", "ablation", "ablation_chips"):
                raise ValueError(f"{value!r} is not sweepable here; allowed: repair and "
                                 "calibration steps (hardware_aware changes the compressed "
                                 "model: compare two compress runs)")
            if field_ not in {f.name for f in dataclasses.fields(RobustnessSettings)}:
                raise ValueError(f"{value!r}: robustness has no field {field_!r}")
            new = dataclasses.replace(rob, **{field_: value})
            if new.write_verify is None and rob.write_verify is not None:
                device = device.with_(write_verify=None)
            device, xbar = new.apply(device, xbar)
            return device, xbar, new
        if key in CrossbarConfig.__dataclass_fields__ or key == "r_wire_ohm" \
                or key.startswith("array."):
            return device, xbar.with_setting(key, value), rob
        return device.with_setting(key, value), xbar, rob
    except (ValueError, TypeError) as exc:
        raise ValueError(f"study.sweeps.{key}: {exc}") from None


def study_settings(device: DeviceModel, xbar: CrossbarConfig, rob: RobustnessSettings,
                   key: str | Sequence[str], value: object
                   ) -> tuple[DeviceModel, CrossbarConfig, RobustnessSettings]:
    """The study's base ``device``, crossbar config and robustness settings with one setting
    changed, or (``key`` and ``value`` pairs) a grid point's two settings."""
    keys, values = ([key], [value]) if isinstance(key, str) else (list(key), list(value))
    state = (device, xbar, rob)
    for k, v in zip(keys, values, strict=True):
        state = apply_setting(*state, k, v)
    return state


def held_fixed(exp: CompressExperiment, n_test: int, chips: int,
               prefix: str = "Held fixed unless swept") -> str:
    """:func:`settings_caption` of a validated experiment (for ``experiments.replot``, which
    rebuilds the experiment from a run's ``config.yaml``, and the orchestrators)."""
    return settings_caption(n_test, chips, prefix, model=exp.model.name,
                            dataset=exp.dataset.name, device=exp.device, xbar=exp.crossbar,
                            rob=exp.robustness)


def settings_caption(n_test: int, chips: int, prefix: str = "Held fixed unless swept", *,
                     model: str, dataset: str, device: DeviceModel, xbar: CrossbarConfig,
                     rob: RobustnessSettings) -> str:
    """The settings a study holds fixed (or a run used), in words: the caption of figures."""
    described = "; ".join(line for line in device.describe().splitlines()
                          if not line.endswith(": none"))
    dac = "ideal DAC" if xbar.dac_bits is None else f"{xbar.dac_bits}-bit {xbar.dac} DAC"
    adc = "ideal ADC" if xbar.adc_bits is None else f"{xbar.adc_bits}-bit ADC ({xbar.adc_range})"
    compensation = rob.compensation if rob.compensation is not None \
        else device.faults is not None  # auto: on when the device has faults
    steps = [k for k, on in (("pair compensation", compensation),
                             ("fault-aware placement", rob.placement),
                             ("output calibration", xbar.output_calibration)) if on]
    per_point = " per point" if prefix.startswith("Held") else ""
    return (f"{prefix}: {model} on {dataset}; device {described}; "
            f"{xbar.tile_rows}x{xbar.tile_cols} tiles, {xbar.mapping} mapping, {dac}, {adc}, "
            f"array {_array_line(xbar.to_dict())}; repair: {', '.join(steps) or 'none'}. "
            f"{chips} programmed chips{per_point}, {n_test} test samples; error bands: 95 % CI "
            f"of the mean over chips.")


def _summary_row(accs: list[float], **fields: object) -> dict:
    mean, std = _stats(accs)
    return {**fields, "mean": mean, "std": std, "ci95": ci95(accs), "min": min(accs),
            "max": max(accs), "chips": len(accs)}


def _plot_study(rows: list[dict], chip_rows: list[dict], grids: list[dict],
                sensitivity: list[dict], reference: dict, note: str, run_dir: Path
                ) -> list[str]:
    names = []
    software = {k: v for k, v in reference.items() if not isinstance(v, tuple)}
    for key in dict.fromkeys(r["setting"] for r in rows):
        plot_sweep([r for r in rows if r["setting"] == key], key, run_dir / f"study_{key}.png",
                   note, software)
        plot_distributions([r for r in chip_rows if r["setting"] == key], key,
                           run_dir / f"study_{key}_chips.png", note)
        names += [f"study_{key}.png", f"study_{key}_chips.png"]
    for xkey, ykey in dict.fromkeys((g["x_setting"], g["y_setting"]) for g in grids):
        name = f"grid_{xkey}_{ykey}.png"
        plot_heatmap([g for g in grids if (g["x_setting"], g["y_setting"]) == (xkey, ykey)],
                     xkey, ykey, run_dir / name, note)
        names.append(name)
    if sensitivity:
        plot_layer_sensitivity(sensitivity, run_dir / "layer_sensitivity.png", note,
                               {k: v for k, v in reference.items() if isinstance(v, tuple)})
        names.append("layer_sensitivity.png")
    return names


def run_device_study(cfg: DictConfig | Mapping, run_dir: str | os.PathLike) -> dict:
    """Accuracy of the dense and compressed model across device/periphery settings, Monte
    Carlo over ``eval.chips`` programmed chips per setting: one setting at a time
    (``study.sweeps``), crossed pairs (``study.grids``, heat maps) and one layer at a time
    (``study.layer_sensitivity``). Writes study.csv (one row per chip), study.json (mean, std
    and 95 % CI per point), metrics.json, study.md and plots (PNG + PDF)."""
    exp = load_study_config(cfg)
    preflight(exp)
    study = exp.study
    swept = [*study.sweeps, *(k for grid in study.grids for k in grid)]
    idle = sorted({k for k in swept if k in ("t_inference_s", "drift_compensation")})
    if idle and not exp.device.active("drift"):
        _log.warning("study sweeps %s on a device with no drift model (device.drift is null): "
                     "its points will not differ; choose a device with drift (e.g. device="
                     "rram_cmo or device=pcm_aihwkit) or set device.drift", ", ".join(idle))
    base = (exp.device, exp.crossbar, exp.robustness)
    for key, values in study.sweeps.items():  # every point is valid before any training
        for value in values:
            study_settings(*base, key, value)
    grid_jobs = [((xk, yk), (xv, yv)) for grid in study.grids
                 for (xk, xs), (yk, ys) in [tuple(grid.items())] for xv in xs for yv in ys]
    for keys, values in grid_jobs:  # every combination (a pair can clash, e.g. g_min > g_max)
        try:
            study_settings(*base, keys, values)
        except ValueError as exc:
            raise ValueError(f"study.grids point {dict(zip(keys, values, strict=True))}: "
                             + str(exc).removeprefix("study.sweeps.")
                             + " (the default grid sweeps the lognormal prog_sigma: set "
                             "study.grids=[] to drop it)") from None
    run_dir = Path(run_dir)
    with open_run(run_dir, exp, lambda: accept_run(cfg, run_dir)):
        return _run_device_study(exp, run_dir, grid_jobs)


def _run_device_study(exp: StudyExperiment, run_dir: Path, grid_jobs: list) -> dict:
    study = exp.study
    if study.source is not None:
        source = Path(to_absolute_path(study.source))
        for name in ("dense.pt", "compressed.pt"):
            if not (source / name).is_file():
                raise FileNotFoundError(f"study.source={study.source!r}: {source / name} is "
                                        "missing; point it at a finished compress run")
        exp = dataclasses.replace(exp, train=dataclasses.replace(
            exp.train, checkpoint=str(source / "dense.pt")))
    timings: dict[str, float] = {}
    device, train, test, _, model, dense_acc, calibration = _prepare(exp, run_dir, timings)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    mapped, digital = mapped_layers(model, exp.layers.digital, exp.layer_devices, exp.device)
    if study.source is not None:
        source = Path(to_absolute_path(study.source)) / "compressed.pt"
        state = _load(source, device)
        load_model_state(model, state["model"], source)
        masks, scales = state["masks"], state["scales"]
    else:
        result = compress_stage(model, (train, test),
                                compress_inputs(exp, run_dir, mapped, compressor="admm"))
        masks, scales = result.masks, result.scales
    compressed_acc = evaluate(model, test)
    compressed = {k: v.clone() for k, v in model.state_dict().items()}
    xtest = crossbar_test_loader(test, exp.eval.test_subset, exp.seed)
    study_chips = StudyChips(model, dense, compressed, masks, scales, calibration, train, xtest,
                          torch_device=device, chips=exp.eval.chips, seed=exp.seed,
                          exclude=digital, digital=exp.layers.digital,
                          devices=exp.layer_devices)
    base = (exp.device, exp.crossbar, exp.robustness)
    jobs = [(k, v) for k, vs in study.sweeps.items() for v in vs]
    chip_rows, summary, grids, sensitivity = [], [], [], []
    quiet = not exp.runtime.progress
    points = StudyPoints(run_dir / "study_points.json", study_fingerprint(exp.raw),
                         exp.resume)
    with _timed(timings, "sweeps"):
        for key, value in tqdm(jobs, desc="settings", disable=quiet):
            point = study_settings(*base, key, value)
            for name in study.models:
                accs = points.run(["sweep", key, value, name], partial(
                    study_chips.accuracies, name, *point, f"{key}={value} {name}"))
                if accs is None:
                    continue
                chip_rows += [{"setting": key, "value": value, "model": name, "chip": i,
                               "accuracy": a} for i, a in enumerate(accs)]
                summary.append(_summary_row(accs, setting=key, value=value, model=name,
                                            tiles=study_chips.plan(name, point[1]).n_tiles))
                _log.info("%s=%s %s: %.2f +- %.2f %% (95 %% CI)", key, value, name,
                          summary[-1]["mean"], summary[-1]["ci95"])
    with _timed(timings, "grids"):
        for (xk, yk), (xv, yv) in tqdm(grid_jobs, desc="grid points", disable=quiet):
            point = study_settings(*base, (xk, yk), (xv, yv))
            for name in study.models:
                accs = points.run(["grid", xk, xv, yk, yv, name], partial(
                    study_chips.accuracies, name, *point, f"{xk}={xv}, {yk}={yv} {name}"))
                if accs is None:
                    continue
                grids.append(_summary_row(accs, x_setting=xk, x=xv, y_setting=yk, y=yv,
                                          model=name, accuracies=accs))
                _log.info("%s=%s, %s=%s %s: %.2f +- %.2f %% (95 %% CI)", xk, xv, yk, yv, name,
                          grids[-1]["mean"], grids[-1]["ci95"])
    # the software accuracies on the very samples the chips are evaluated on
    same = f"software, same {len(xtest.dataset)} test samples"
    model.load_state_dict(compressed)
    software = {"compressed": evaluate(model, xtest)}
    model.load_state_dict(dense)
    software["dense"] = evaluate(model, xtest)
    reference: dict = {f"{m}, {same}": software[m] for m in ("compressed", "dense")}
    if study.layer_sensitivity:
        name = "compressed" if "compressed" in study.models else "dense"
        from crossbar.convert import _layer_devices

        per_layer = _layer_devices(exp.layer_devices, mapped, exp.device)
        ideal = ideal_device(exp.device)
        with _timed(timings, "layer_sensitivity"):
            every = points.run(["layers", "every", name], partial(
                study_chips.accuracies, name, *base, "every layer"))
            for layer in tqdm(mapped, desc="layers", disable=quiet):
                devices = {n: d if n == layer else ideal_device(d) for n, d in per_layer.items()}
                accs = points.run(["layers", layer, name], partial(
                    study_chips.accuracies, name, ideal, *base[1:], layer, devices))
                if accs is not None:
                    sensitivity.append(_summary_row(accs, layer=layer, model=name,
                                                    accuracies=accs))
            none = points.run(["layers", "none", name], partial(
                study_chips.accuracies, name, ideal, *base[1:], "no layer",
                {n: ideal_device(d) for n, d in per_layer.items()}))
        for label, accs in ((f"every layer non-ideal ({name})", every),
                            (f"ideal devices ({name})", none)):
            if accs is not None:
                reference[label] = (statistics.fmean(accs), ci95(accs))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["setting", "value", "model", "chip", "accuracy"])
    writer.writeheader()
    writer.writerows(chip_rows)
    atomic_write_text(run_dir / "study.csv", buf.getvalue())
    write_json(run_dir / "study.json", {"sweeps": summary, "grids": grids,
                                        "layer_sensitivity": sensitivity,
                                        "failed": points.failed})
    note = held_fixed(exp, len(xtest.dataset), exp.eval.chips)
    plots = _plot_study(summary, chip_rows, grids, sensitivity, reference, note, run_dir)
    metrics = {"model": exp.model.name, "dense_accuracy": dense_acc,
               "compressed_accuracy": compressed_acc,
               "dense_accuracy_chip_samples": software["dense"],
               "compressed_accuracy_chip_samples": software["compressed"],
               "chips": exp.eval.chips,
               "crossbar_test_samples": len(xtest.dataset), "held_fixed": note,
               "device": exp.device.to_dict(), "crossbar": exp.crossbar.to_dict(),
               "environment": environment(device), "study": summary, "grids": grids,
               "layer_sensitivity": sensitivity,
               "layer_sensitivity_reference": {k: v for k, v in reference.items()
                                               if isinstance(v, tuple)},
               "failed": points.failed, "reused_points": points.reused, "timings_s": timings}
    write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "study.md", _study_markdown(metrics, plots))
    _log.info("device study done: %d sweep points, %d grid points, %d layers (%d reused from "
              "an earlier attempt, %d failed); plots in %s", len(summary), len(grids),
              len(sensitivity), points.reused, len(points.failed), run_dir)
    if points.failed:
        raise StudyPointsFailed(
            f"{len(points.failed)} study point(s) failed: "
            + "; ".join(f"{f['point']}: {f['error']}" for f in points.failed[:5])
            + f". The finished points are in {run_dir / 'study.json'} and study.md; after a "
            f"fix, python -m experiments.device_study resume=true hydra.run.dir={run_dir} "
            "<same overrides> computes only the missing ones")
    return metrics


class StudyChips:
    """Chip accuracies of a device study's points: ``model`` with its ``dense`` or
    ``compressed`` state on ``chips`` programmed chips (seeds ``seed`` on), evaluated on
    ``test``, under one point's device, crossbar and robustness settings. A crossbar
    geometry's mapping plan (without the ``exclude``d digital layers) is made once, an
    output-calibration size's batch of ``train`` images drawn once, not once per point;
    ``digital`` / ``devices``: the ``layers`` section (:func:`layer_args`)."""

    def __init__(self, model: nn.Module, dense: Mapping[str, torch.Tensor],
                 compressed: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                 scales: Mapping, calibration: torch.Tensor, train: DataLoader,
                 test: DataLoader, *, torch_device: torch.device, chips: int, seed: int,
                 exclude: Sequence[str] = (), digital: Sequence[str] = (),
                 devices: Mapping[str, DeviceModel] | None = None) -> None:
        self.model, self.dense, self.compressed = model, dense, compressed
        self.masks, self.scales, self.calibration = masks, scales, calibration
        self.train, self.test, self.torch_device = train, test, torch_device
        self.chips, self.seed, self.exclude = chips, seed, exclude
        self.digital, self.devices = digital, devices
        self.plans: dict[tuple[str, str], MappingPlan] = {}
        self.output_batches: dict[int, torch.Tensor] = {}

    def _load(self, name: str) -> None:
        self.model.load_state_dict(self.dense if name == "dense" else self.compressed)

    def plan(self, name: str, xbar: CrossbarConfig) -> MappingPlan:
        """The mapping plan depends on the model and the crossbar geometry: made once."""
        key = (name, json.dumps(xbar.to_dict(), sort_keys=True, default=str))
        if key not in self.plans:
            self._load(name)
            self.plans[key] = map_stage(self.model, self.masks if name == "compressed"
                                        else None, xbar, self.calibration,
                                        exclude=self.exclude)
        return self.plans[key]

    def accuracies(self, name: str, dev: DeviceModel, xbar: CrossbarConfig,
                   rob: RobustnessSettings, desc: str,
                   devices: Mapping[str, DeviceModel] | None = None) -> list[float]:
        """Model ``name``'s accuracy on each chip of device ``dev`` (``devices``: per-layer
        devices instead of the ``layers`` section's)."""
        outputs = None
        if xbar.output_calibration:  # drawn once per size, not once per point
            n = rob.calibration_samples
            if n not in self.output_batches:
                self.output_batches[n] = calibration_batch(self.train, n, self.torch_device,
                                                           self.seed + 1)
            outputs = self.output_batches[n]
        plan = self.plan(name, xbar)
        self._load(name)
        args = layer_args(self.digital, self.devices)
        if devices is not None:
            args["devices"] = devices
        return chip_accuracies(self.model, plan, dev, xbar, self.calibration, self.test,
                               self.chips, self.seed, desc=desc,
                               scales=self.scales if name == "compressed" else None,
                               repair=rob.repair(), outputs=outputs, **args)


class StudyPointsFailed(ValueError):
    """Some points of a device study failed; the others were written."""


def study_fingerprint(config: Mapping) -> dict:
    """What a study point's accuracies depend on besides the point itself: every section of
    the resolved ``config`` (``StudyExperiment.raw``) but ``runtime``, ``resume`` and the
    lists of points (``study.sweeps``, ``grids``, ``layer_sensitivity``)."""
    raw = {k: v for k, v in config.items() if k not in ("runtime", "resume")}
    raw["study"] = {k: v for k, v in dict(raw.get("study") or {}).items()
                    if k not in ("sweeps", "grids", "layer_sensitivity")}
    return json.loads(json.dumps(raw, sort_keys=True, default=str))


class StudyPoints:
    """The finished points of a device study (chip accuracies by point), written to ``path``
    after every point, so an interrupted or partly failed study keeps them: with ``resume``
    and the same :func:`study_fingerprint` they are reused, not recomputed. A point that
    raises is recorded in :attr:`failed` and the study goes on."""

    def __init__(self, path: Path, fp: dict, resume: bool) -> None:
        self.path, self.fp = path, fp
        self.done: dict[str, list[float]] = {}
        self.failed: list[dict] = []
        self.reused = 0
        if resume and path.exists():
            try:
                data = json.loads(path.read_text())
                same = data.get("fingerprint") == fp
                points = data.get("points") if same else None
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"{path} is unreadable ({exc}); allowed: a study_points.json "
                                 "written by this program (or delete it to recompute)") from None
            if same and isinstance(points, dict):
                self.done = {k: v for k, v in points.items() if isinstance(v, list)}
                _log.info("resume: %d finished study points reused from %s", len(self.done),
                          path)
            else:
                _log.info("resume: the settings changed since %s; every point is recomputed",
                          path)

    def run(self, point: list, compute: Callable[[], list[float]]) -> list[float] | None:
        key = json.dumps(point, default=str)
        if key in self.done:
            self.reused += 1
            return self.done[key]
        try:
            accs = compute()
        except Exception as exc:  # noqa: BLE001 - recorded, reported at the end; Ctrl-C/SIGTERM pass
            label = " ".join(map(str, point))
            self.failed.append({"point": label, "error": f"{type(exc).__name__}: {exc}"})
            _log.error("study point %s failed: %s: %s", label, type(exc).__name__, exc)
            return None
        self.done[key] = accs
        write_json(self.path, {"fingerprint": self.fp, "points": self.done})
        return accs


def _study_markdown(m: dict, plots: list[str]) -> str:
    lines = [f"# Device study: {m['model']}", "",
             f"Software accuracy: dense {m['dense_accuracy']:.2f}%, compressed "
             f"{m['compressed_accuracy']:.2f}% (whole test set); dense "
             f"{m['dense_accuracy_chip_samples']:.2f}%, compressed "
             f"{m['compressed_accuracy_chip_samples']:.2f}% on the "
             f"{m['crossbar_test_samples']} test samples the chips see. Each point: mean, std "
             f"and 95 % CI of the mean over {m['chips']} programmed chips.",
             "", m["held_fixed"], "", "## One setting at a time", "",
             "| setting | value | model | mean (%) | 95 % CI | std | min | max | tiles |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['value']} | {r['model']} | {r['mean']:.2f} | "
              f"+-{r['ci95']:.2f} | {r['std']:.2f} | {r['min']:.2f} | {r['max']:.2f} | "
              f"{r['tiles']} |" for r in m["study"]]
    if m["grids"]:
        lines += ["", "## Crossed settings (heat maps)", "",
                  "| x | value | y | value | model | mean (%) | 95 % CI |",
                  "|---|---|---|---|---|---:|---:|"]
        lines += [f"| {g['x_setting']} | {g['x']} | {g['y_setting']} | {g['y']} | "
                  f"{g['model']} | {g['mean']:.2f} | +-{g['ci95']:.2f} |" for g in m["grids"]]
    if m["layer_sensitivity"]:
        lines += ["", "## Per-layer sensitivity (only this layer on the non-ideal device)", "",
                  "| layer | mean (%) | 95 % CI | min | max |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['layer']} | {r['mean']:.2f} | +-{r['ci95']:.2f} | {r['min']:.2f} | "
                  f"{r['max']:.2f} |" for r in m["layer_sensitivity"]]
        lines += [f"| *{k}* | {mean:.2f} | +-{half:.2f} | | |"
                  for k, (mean, half) in m["layer_sensitivity_reference"].items()]
    if m["failed"]:
        lines += ["", "## Failed points", "", "| point | error |", "|---|---|"]
        lines += [f"| {f['point']} | {f['error']} |" for f in m["failed"]]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s context/cause chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_run_dir() -> Path:
    """The current Hydra job's output directory."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RunLockedError)
"""What a run raises for bad settings, inputs or files (the messages name the key or file, the
value and what is allowed): printed as one message, the traceback only with
``HYDRA_FULL_ERROR=1``."""


def entry(run: Callable[[DictConfig, Path], dict], report: str) -> Callable[[DictConfig], dict]:
    """Wrap ``run`` as a Hydra task function that prints where its report is; SIGTERM and
    Ctrl-C print how to resume (exit 143 / 130); a bad setting or file is one error message
    (exit 1)."""
    command = "experiments." + run.__name__.removeprefix("run_")

    def task(cfg: DictConfig) -> dict:
        run_dir = hydra_run_dir()
        print(f"run dir: {run_dir}", flush=True)
        with sigterm_as_exit(run_dir, command), logging_redirect_tqdm():
            try:
                metrics = run(cfg, run_dir)
            except KeyboardInterrupt:
                print(f"Interrupted (Ctrl-C): the last checkpoint in {run_dir} is kept. Resume "
                      f"with: python -m {command} resume=true hydra.run.dir={run_dir} <same "
                      "overrides>", file=sys.stderr, flush=True)
                raise SystemExit(130) from None
            except Exception as exc:
                # a library clean-up that fails after SIGTERM hides the Terminated it unwound
                # from; exit as terminated (143, resume hint printed) rather than as a failure
                terminated = _cause(exc, Terminated)
                if terminated is not None:
                    raise terminated from exc
                with contextlib.suppress(OSError):  # refused before any work: no empty folder
                    run_dir.rmdir()  # (Hydra creates it); only succeeds when empty
                if isinstance(exc, USER_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                    print(f"Error: {exc}\n(the run in {run_dir} stopped; set HYDRA_FULL_ERROR=1 "
                          "for the traceback)", file=sys.stderr, flush=True)
                    if not _multirun():  # a sweep goes on with its other jobs; Hydra reports
                        raise SystemExit(1) from None  # the failure after the last one
                raise
        print(f"report: {run_dir / report}")
        return metrics
    return task
