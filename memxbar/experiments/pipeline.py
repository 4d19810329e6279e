"""The compress run (``python -m memxbar.experiments.compress``), DESIGN.md "Data flow":

pretrain (or load) -> allocation (a budget's per-layer rows x columns) -> compressor (ADMM
prune / retrain / quantize / retrain, or another of ``experiments.compressors``) -> masked
mapping (``plan.json``) -> Monte Carlo over programmed chips (``experiments.chips``) -> cost
report -> metrics.json and report.md.

Every stage writes a plain artifact into the run directory, so a run can be stopped, inspected
and resumed: ``dense.pt``, ``admm_state.pt``, ``compressed.pt``, ``plan.json``, ``cost/``,
``metrics.json``, ``report.md`` and plots. An accuracy budget (``allocation.max_drop``) runs
the budget search (``experiments.search``), one such run per point tried.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig

from memxbar.admm import CompressResult, DivergenceError
from memxbar.crossbar import MappingPlan
from memxbar.crossbar.plan import unmapped_layers
from memxbar.experiments.allocation import allocation_stage
from memxbar.experiments.chips import ChipDesign, ChipRun, evaluate_chips, robustness_ablation
from memxbar.experiments.compressors.registry import compress_inputs, get_compressor
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.data import calibration_batch, crossbar_test_loader, data_shape
from memxbar.experiments.estimators import chip_yield, chips_for_width
from memxbar.experiments.guard import open_run
from memxbar.experiments.plots import ci95
from memxbar.experiments.reports import held_fixed, plot_conductances, write_compress_report
from memxbar.experiments.runtime import accept_run, environment, timed, write_json
from memxbar.experiments.search import budget_search
from memxbar.experiments.selective_verify import with_selective_verify
from memxbar.experiments.settings import CompressExperiment
from memxbar.experiments.stages import (
    Prepared,
    budget_bounds,
    collapse_warnings,
    cost_stage,
    make_model,
    map_stage,
    preflight,
    prepare,
)
from memxbar.experiments.tile_map import plot_tile_map
from memxbar.experiments.train import evaluate

__all__ = ["chip_design", "run_compress"]

_log = logging.getLogger("memxbar.experiments.pipeline")


def run_compress(cfg: DictConfig | Mapping, run_dir: str | os.PathLike) -> dict:
    """The whole pipeline for a composed ``memxbar/conf/config.yaml``; returns metrics.json's
    content.

    The config is validated before any work (``experiments.config.load_compress_config``).
    """
    exp = load_compress_config(cfg)
    preflight(exp)
    run_dir = Path(run_dir)
    with open_run(run_dir, exp, lambda: accept_run(cfg, run_dir)):
        if exp.allocation is None or exp.allocation.max_drop is None:
            return compress_run(exp, run_dir)
        shape, classes = data_shape(exp.dataset)
        bounds = budget_bounds(make_model(exp.model, shape, classes), torch.zeros(1, *shape),
                               exp.allocation,
                               exp.admm.layer_constraints(), exp.crossbar, exp.cost)
        metrics = budget_search(exp, run_dir, bounds, run_compress, compress_run,
                                load_compress_config)
        write_json(run_dir / "metrics.json", metrics)
        return metrics


def chip_design(exp: CompressExperiment) -> ChipDesign:
    """The chip of a validated experiment: its device, crossbar, repair and ``layers``."""
    return ChipDesign(exp.device, exp.crossbar, exp.robustness.repair(),
                      tuple(exp.layers.digital), dict(exp.layer_devices))


def compress_run(exp: CompressExperiment, run_dir: Path) -> dict:
    """One compress run of a validated experiment with a fixed budget (or none) in the
    (open, locked) ``run_dir``."""
    timings: dict[str, float] = {}
    p = prepare(exp, run_dir, timings)
    # the model as pretrained, before a compressor changes its structure (decompose): its
    # dense mapping is the cost baseline and its weights the dense count
    original = map_stage(p.model, None, exp.crossbar, p.calibration, exclude=p.digital)
    try:
        exp, result, allocation = _compress(exp, p, run_dir, timings)
    except DivergenceError as exc:  # a collapse measured on too few test samples says so
        small = [w.split(":")[0] for w in p.warnings]
        if not small:
            raise
        raise DivergenceError(f"{exc}; also likely: {'; '.join(small)} (too few to measure "
                              "an accuracy)") from exc
    compressed_acc = evaluate(p.model, p.test)
    _log.info("dense accuracy %.2f%%, compressed (software) %.2f%%", p.dense_acc, compressed_acc)
    warnings_ = (p.warnings + collapse_warnings(
        p.dense_acc, compressed_acc, p.info.num_classes, exp.compressor)
        + unmapped_warnings(p.model))
    plan = map_stage(p.model, result.masks, exp.crossbar, p.calibration, run_dir / "plan.json",
                     exclude=p.digital)
    chips = _chips(exp, p, plan, result, run_dir, timings)
    with timed(timings, "cost"):
        cost = cost_stage(plan, exp.crossbar, exp.cost, run_dir / "cost", p.model,
                          p.calibration[:4], chip=chips.pop("first_chip"), baseline=original)
    metrics = _metrics(exp, p, plan, chips, cost, dense_weights=original.dense_weights,
                       compressed_acc=compressed_acc,
                       allocation=allocation, warnings_=warnings_, timings=timings)
    write_json(run_dir / "metrics.json", metrics)
    write_compress_report(metrics, plan, result.history, run_dir)
    _log.info("result: dense %.2f%%, compressed %.2f%% (software), mean %.2f%% on %d chips "
              "(sample std over chips %.2f, 95 %% CI of the mean +- %.2f); %.2fx compression, "
              "area %+.1f%%, energy %+.1f%% vs the dense baseline", p.dense_acc, compressed_acc,
              metrics["crossbar_accuracy_mean"], exp.eval.chips, metrics["crossbar_accuracy_std"],
              metrics["crossbar_accuracy_ci95"],
              metrics["compression_ratio"], -metrics["area_reduction_pct"],
              -metrics["energy_reduction_pct"])
    return metrics


def unmapped_warnings(model: torch.nn.Module) -> list[str]:
    """A warning per weighted layer that stays digital because no crossbar mapping exists for
    its type (``crossbar.plan.unmapped_layers``): not simulated, not costed."""
    out = [f"layer {name!r} stays digital, neither simulated on the chips nor costed: {why}"
           for name, why in unmapped_layers(model)]
    for message in out:
        _log.warning(message)
    return out


def _compress(exp: CompressExperiment, p: Prepared, run_dir: Path, timings: dict
              ) -> tuple[CompressExperiment, CompressResult, dict | None]:
    """The allocation (a budget's per-layer constraints replace the group's), then the
    compressor; returns the experiment as compressed, the result and the allocation record."""
    with timed(timings, "allocation"):
        chosen, allocation = allocation_stage(
            p.model, p.train, exp.allocation, exp.admm.layer_constraints(), exp.crossbar,
            exp.cost, p.calibration, exp.seed, lr=exp.admm.lr)
        if chosen is not None:
            exp = dataclasses.replace(exp, admm=dataclasses.replace(exp.admm, constraints=chosen))
    with timed(timings, exp.compressor):
        result = get_compressor(exp.compressor)(p.model, (p.train, p.test),
                                                compress_inputs(exp, run_dir, p.mapped))
    return exp, result, allocation


def _chips(exp: CompressExperiment, p: Prepared, plan: MappingPlan, result: CompressResult,
           run_dir: Path, timings: dict) -> dict:
    """The compressed model on ideal devices (with and without its output calibration), on
    ``eval.chips`` programmed chips, and the repair ablation; the first chip's conductance
    histogram and the tile map."""
    xtest = crossbar_test_loader(p.test, exp.eval.test_subset, exp.seed)
    rob = exp.robustness
    design = with_selective_verify(chip_design(exp), rob, p.model, plan, train=p.train,
                                   calibration=p.calibration, scales=result.scales,
                                   seed=exp.seed)
    outputs = calibration_batch(p.train, rob.calibration_samples, p.torch_device, exp.seed + 1) \
        if exp.crossbar.output_calibration else None
    common = {"calibration": p.calibration, "test": xtest, "seed": exp.seed,
              "scales": result.scales}
    with timed(timings, "crossbar_eval"):
        ideal = evaluate_chips(p.model, plan, design.ideal().with_(repair=None), chips=1,
                               outputs=outputs, **common).mean
        ideal_plain = ideal if not exp.crossbar.output_calibration else evaluate_chips(
            p.model, plan, design.ideal().with_(repair=None, crossbar=exp.crossbar.with_(
                output_calibration=False)), chips=1, **common).mean
        run = evaluate_chips(p.model, plan, design, chips=exp.eval.chips, outputs=outputs,
                             progress=exp.runtime.progress, sampling=exp.eval.sampling,
                             spec_floor=exp.eval.spec_floor(p.dense_acc),
                             workers=exp.eval.workers, **common)
    with timed(timings, "ablation"):
        ablation = robustness_ablation(p.model, plan, design, rob, run, outputs=outputs,
                                       calibration=p.calibration, test=xtest,
                                       scales=result.scales, seed=exp.seed,
                                       sampling=exp.eval.sampling)
    first = plot_conductances(p.model, plan, p.calibration, result.scales,
                              run_dir / "conductances.png", design=design, seed=exp.seed)
    plot_tile_map(plan, run_dir / "tile_map.png")
    return {"ideal": ideal, "ideal_plain": ideal_plain, "run": run, "ablation": ablation,
            "test_samples": len(xtest.dataset), "first_chip": first}


def _yield(accs: list[float], dense_acc: float, e) -> dict | None:
    """The chips that meet ``eval``'s specification (``experiments.estimators.chip_yield``)
    and how many chips an interval 10 points wide would need at that yield; None without a
    specification."""
    if e.spec_max_drop is None and e.spec_min_accuracy is None:
        return None
    est = chip_yield(accs, dense_accuracy=dense_acc, max_drop=e.spec_max_drop,
                     min_accuracy=e.spec_min_accuracy).to_dict()
    est["chips_for_10_points"] = chips_for_width(est["yield_pct"] / 100.0, 0.10)
    return est


def _metrics(exp: CompressExperiment, p: Prepared, plan: MappingPlan, chips: dict, cost: dict,
             *, dense_weights: int, compressed_acc: float, allocation: dict | None,
             warnings_: list[str], timings: dict) -> dict:
    """metrics.json of a compress run; ``dense_weights``: those of the model as pretrained
    (before a change of structure)."""
    run: ChipRun = chips["run"]
    accs, dense_acc, ideal = run.accuracies, p.dense_acc, chips["ideal"]
    comp, base = cost["compressed"]["totals"], cost["baseline"]["totals"]
    first = run[0].calibration
    return {
        "model": exp.model.name, "dataset": p.info.name,
        "parameters": sum(t.numel() for t in p.model.parameters()),
        "dense_accuracy": dense_acc, "compressed_accuracy": compressed_acc,
        "crossbar_ideal_accuracy": ideal,
        "crossbar_ideal_uncalibrated_accuracy": chips["ideal_plain"],
        "crossbar_accuracy_mean": run.mean, "crossbar_accuracy_std": run.std,
        "crossbar_accuracy_ci95": ci95(accs),
        "crossbar_accuracies": accs, "chips": exp.eval.chips,
        "yield": _yield(run.decided, dense_acc, exp.eval),
        "chip_test": {"mode": exp.eval.chip_test, **(run.sampling or {}),
                      "workers": exp.eval.workers},
        "crossbar_test_samples": chips["test_samples"],
        "accuracy_drop_ideal": dense_acc - ideal, "accuracy_drop_mean": dense_acc - run.mean,
        "dense_weights": dense_weights, "mapped_weights": plan.mapped_weights,
        "compression_ratio": dense_weights / max(plan.mapped_weights, 1),
        "levels": exp.admm.levels, "device_levels": exp.device.level_count,
        "tiles": plan.n_tiles, "baseline_tiles": base["tiles"],
        "area_mm2": comp["area_mm2"], "energy_nJ": comp["energy_nJ"],
        "power_mW": comp["power_mW"], "baseline_area_mm2": base["area_mm2"],
        "baseline_energy_nJ": base["energy_nJ"], "baseline_power_mW": base["power_mW"],
        "cost_baseline": cost["baseline_description"],
        "cost_attribution": cost.get("attribution"),
        "cost_ranges": {k: v for k, v in (cost.get("ranges") or {}).items() if k != "kinds"},
        "digital_energy_nJ": (cost.get("digital") or {}).get("energy_nJ"),
        **{k: v for k, v in cost["reduction"].items()
           if k.endswith("_pct") or k.endswith("_ratio")},
        "compressor": exp.compressor, "allocation": allocation,
        "device": exp.device.to_dict(), "crossbar": exp.crossbar.to_dict(),
        "layers": {"digital": p.digital,
                   "devices": {k: d.to_dict() for k, d in exp.layer_devices.items()}},
        "environment": environment(p.torch_device), "warnings": warnings_,
        "settings_caption": held_fixed(exp, chips["test_samples"], exp.eval.chips,
                                       prefix="Run settings"),
        "programming": run.mean_of("programming"),
        "programming_total": {k: v * len(run) for k, v in run.mean_of("programming").items()
                              if k != "pulses_per_cell"},
        "robustness": {"settings": dataclasses.asdict(exp.robustness),
                       "repair_mean": run.mean_of("repair"),
                       "output_calibration_chip0": first,
                       "ablation": chips["ablation"]},
        "timings_s": timings,
    }
