"""The device study (``python -m memxbar.experiments.device_study``): accuracy of the dense and the
compressed model across device and periphery settings, Monte Carlo over programmed chips per
point: one setting at a time, crossed pairs (heat maps) and one layer at a time. Every finished
point is kept (``study_points.json``), so an interrupted study resumes where it stopped."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from memxbar.admm.pipeline import load_model_state
from memxbar.crossbar import CrossbarConfig, DeviceModel
from memxbar.crossbar.convert import layer_devices
from memxbar.crossbar.io import atomic_write_text
from memxbar.experiments.chips import ideal_device
from memxbar.experiments.compressors.admm import compress_stage
from memxbar.experiments.compressors.registry import compress_inputs
from memxbar.experiments.config import load_study_config
from memxbar.experiments.data import crossbar_test_loader
from memxbar.experiments.estimators import chip_yield
from memxbar.experiments.guard import (
    CHECKPOINT_KEYS,
    DENSE_KEYS,
    check_weights,
    fingerprint,
    load_checkpoint,
    meta_model,
    open_run,
)
from memxbar.experiments.plots import ci95, plot_yield
from memxbar.experiments.reports import held_fixed, plot_study, study_markdown, summary_row
from memxbar.experiments.runtime import accept_run, environment, timed, write_json
from memxbar.experiments.settings import RobustnessSettings, StudyExperiment
from memxbar.experiments.stages import Prepared, preflight, prepare
from memxbar.experiments.study_chips import StudyChips
from memxbar.experiments.train import evaluate

_log = logging.getLogger("memxbar.experiments.study")


def apply_setting(device: DeviceModel, xbar: CrossbarConfig, rob: RobustnessSettings, key: str,
                  value: object) -> tuple[DeviceModel, CrossbarConfig, RobustnessSettings]:
    """``device``, ``xbar`` and ``rob`` with one setting changed (``sa_rate``: SA0 = SA1 =
    value / 2; ``robustness.<field>``: a repair or calibration step, applied to the device and
    crossbar config)."""
    try:
        if key == "sa_rate":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= 1:
                raise ValueError(f"sa_rate={value!r} is invalid; allowed: a number in [0, 1] "
                                 "(the total stuck-at rate, split evenly over SA0 and SA1)")
            return device.with_(sa0_rate=value / 2, sa1_rate=value / 2), xbar, rob
        head, _, field_ = key.partition(".")
        if head == "robustness":
            if field_ in ("hardware_aware", "ablation", "ablation_chips"):
                raise ValueError(f"{value!r} is not sweepable here; allowed: repair and "
                                 "calibration steps (hardware_aware changes the compressed "
                                 "model: compare two compress runs)")
            fields = [f.name for f in dataclasses.fields(RobustnessSettings)]
            if field_ not in fields:
                raise ValueError(f"{value!r}: robustness has no field {field_!r}; allowed: "
                                 "robustness." + ", robustness.".join(
                                     f for f in fields if f not in ("hardware_aware",
                                                                     "ablation",
                                                                     "ablation_chips")))
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


def check_axes(base: tuple[DeviceModel, CrossbarConfig, RobustnessSettings],
               keys: Sequence[str], values: Sequence) -> None:
    """A grid point's second setting must not overwrite its first (two names of one setting,
    e.g. ``prog_sigma`` and ``programming.sigma``): the heat map would show the second alone
    along both axes."""
    (xk, yk), (xv, yv) = keys, values
    if study_settings(*base, xk, xv) != base and \
            study_settings(*base, keys, values) == study_settings(*base, yk, yv):
        raise ValueError(f"study.grids point {{{xk}: {xv!r}, {yk}: {yv!r}}}: {yk} overwrites "
                         f"{xk} (two names of one setting); allowed: two different settings "
                         "on a grid's axes")


def run_device_study(cfg: DictConfig | Mapping, run_dir: str | os.PathLike) -> dict:
    """Accuracy of the dense and compressed model across device/periphery settings, Monte
    Carlo over ``eval.chips`` programmed chips per setting: one setting at a time
    (``study.sweeps``), crossed pairs (``study.grids``, heat maps) and one layer at a time
    (``study.layer_sensitivity``). Writes study.csv (one row per chip), study.json (mean, std
    and 95 % CI per point), metrics.json, study.md and plots (PNG + PDF)."""
    exp = load_study_config(cfg)
    preflight(exp)
    check_source(exp.study.source, fingerprint(exp), meta_model(exp.model, exp.dataset),
                 exp.train.checkpoint)
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
        check_axes(base, keys, values)
    run_dir = Path(run_dir)
    if exp.resume and (run_dir / "study_points.json").exists():  # named now, not after work
        finished_points(run_dir / "study_points.json", study_fingerprint(exp.raw))
    with open_run(run_dir, exp, lambda: accept_run(cfg, run_dir)):
        return _run_device_study(exp, run_dir, grid_jobs)


SOURCE_KEYS = (*DENSE_KEYS, "compressor")
"""What ``study.source``'s models and the study must share: the model, data, pretraining and
compressor (the device, crossbar and compression settings may differ: evaluating a model on
other devices is what a study is for)."""


def check_source(given: str | None, mine: Mapping, model: nn.Module,
                 checkpoint: str | None = None) -> None:
    """``study.source`` (``given``) is a finished compress run's folder whose ``dense.pt``
    and ``compressed.pt`` were made from this study's model, data, pretraining and compressor
    (:data:`SOURCE_KEYS` of the study's fingerprint ``mine``; ``dense.pt``:
    :data:`DENSE_KEYS`) and hold finite weights of ``model`` (on the meta device); checked
    before any work, the first difference named. ``train.checkpoint`` (``checkpoint``) is not
    read with a source: set, it must be the source's own."""
    if given is None:
        return
    source = Path(to_absolute_path(given))
    where = f"study.source={given!r}"
    allowed = "allowed: the folder of a finished compress run (dense.pt, compressed.pt)"
    if not source.is_dir():
        raise FileNotFoundError(f"{where}: {source} is {'a file' if source.exists() else 'missing'}"
                                f"; {allowed}")
    for name in ("dense.pt", "compressed.pt"):
        if not (source / name).is_file():
            raise FileNotFoundError(f"{where}: {source / name} is missing; {allowed}")
    for name, keys in (("dense.pt", DENSE_KEYS), ("compressed.pt", SOURCE_KEYS)):
        try:
            state = load_checkpoint(source / name)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        stored = state.get("fingerprint") if isinstance(state, Mapping) else None
        lacking = [k for k in CHECKPOINT_KEYS[name] if not isinstance(state, Mapping)
                   or k not in state]
        if not isinstance(stored, Mapping) or lacking:
            raise ValueError(f"{where}: {source / name} holds no "
                             + ", ".join((["settings fingerprint"] if not isinstance(
                                 stored, Mapping) else []) + lacking)
                             + f"; {allowed}, written by this version")
        _same_settings(f"{where} ({name})", stored, mine, keys)
        check_weights(f"{where}: {source / name}", state["model"], model)
    train = stored.get("train")  # compressed.pt's (checked above): the source's settings
    theirs = train.get("checkpoint") if isinstance(train, Mapping) else None
    if checkpoint is not None and checkpoint != theirs:
        raise ValueError(f"train.checkpoint={checkpoint!r} is invalid with {where}: the study "
                         f"loads the source's dense.pt, not this file; allowed: null, or the "
                         f"source run's own train.checkpoint ({theirs!r})")


def _same_settings(where: str, stored: Mapping, mine: Mapping, keys: Sequence[str]) -> None:
    """The first of ``keys`` where a source's ``stored`` fingerprint and the study's differ
    (``train.checkpoint`` aside: the dense weights themselves are compared)."""
    for key in keys:
        theirs, ours = stored.get(key, "<unset>"), mine.get(key, "<unset>")
        if key == "train" and isinstance(theirs, Mapping) and isinstance(ours, Mapping):
            theirs, ours = ({k: v for k, v in d.items() if k != "checkpoint"}
                            for d in (theirs, ours))
        if key == "compressor":
            theirs = theirs if theirs != "<unset>" else "admm"
            ours = ours if ours != "<unset>" else "admm"
        if theirs != ours:
            raise ValueError(f"{where} was made with {key}={theirs!r}, this study has "
                             f"{key}={ours!r}; allowed: the compress run's own {key} settings "
                             "repeated here")


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
    p = prepare(exp, run_dir, timings)
    chips, compressed_acc = _study_chips(exp, p, run_dir)
    points = StudyPoints(run_dir / "study_points.json", study_fingerprint(exp.raw), exp.resume)
    quiet = not exp.runtime.progress
    with timed(timings, "sweeps"):
        summary, chip_rows = _sweeps(exp, chips, points, quiet)
    with timed(timings, "grids"):
        grids = _grids(exp, chips, points, grid_jobs, quiet)
    reference = _software_reference(chips)
    sensitivity: list[dict] = []
    severity = None
    if study.layer_sensitivity:
        with timed(timings, "layer_sensitivity"):
            sensitivity, severity = _layer_sensitivity(exp, chips, points, p.mapped,
                                                       reference, quiet)
    lifetime = None
    if study.lifetime is not None:
        from memxbar.experiments.lifetime import lifetime_study

        dense = reference[f"dense, software, same {len(chips.test.dataset)} test samples"]
        with timed(timings, "lifetime"):
            lifetime = lifetime_study(exp, chips, dense, held_fixed(
                exp, len(chips.test.dataset), exp.eval.chips), run_dir)
    return _write_study(exp, run_dir, chips, p, points, timings, compressed_acc=compressed_acc,
                        summary=summary, chip_rows=chip_rows, grids=grids,
                        sensitivity=sensitivity, reference=reference, lifetime=lifetime,
                        severity=severity)


def _study_chips(exp: StudyExperiment, p: Prepared, run_dir: Path) -> tuple[StudyChips, float]:
    """The compressed model (from ``study.source`` or compressed here with ``admm``) beside
    the dense one, ready for the chips; and its software test accuracy."""
    model, study = p.model, exp.study
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    if study.source is not None:
        source = Path(to_absolute_path(study.source)) / "compressed.pt"
        state = load_checkpoint(source, p.torch_device)
        load_model_state(model, state["model"], source)
        masks, scales = state["masks"], state["scales"]
    else:
        result = compress_stage(model, (p.train, p.test),
                                compress_inputs(exp, run_dir, p.mapped, compressor="admm"))
        masks, scales = result.masks, result.scales
    compressed_acc = evaluate(model, p.test)
    compressed = {k: v.clone() for k, v in model.state_dict().items()}
    xtest = crossbar_test_loader(p.test, exp.eval.test_subset, exp.seed)
    chips = StudyChips(model, dense, compressed, masks, scales, p.calibration, p.train, xtest,
                       torch_device=p.torch_device, chips=exp.eval.chips, seed=exp.seed,
                       exclude=p.digital, digital=exp.layers.digital,
                       devices=exp.layer_devices, sampling=exp.eval.sampling,
                       workers=exp.eval.workers)
    return chips, compressed_acc


def _sweeps(exp: StudyExperiment, chips: StudyChips, points: StudyPoints, quiet: bool
            ) -> tuple[list[dict], list[dict]]:
    """One setting at a time: a summary row per point and model, and a row per chip."""
    base = (exp.device, exp.crossbar, exp.robustness)
    jobs = [(k, v) for k, vs in exp.study.sweeps.items() for v in vs]
    summary, chip_rows = [], []
    for key, value in tqdm(jobs, desc="settings", disable=quiet):
        point = study_settings(*base, key, value)
        for name in exp.study.models:
            accs = points.run(["sweep", key, value, name], partial(
                chips.accuracies, name, *point, f"{key}={value} {name}"))
            if accs is None:
                continue
            chip_rows += [{"setting": key, "value": value, "model": name, "chip": i,
                           "accuracy": a} for i, a in enumerate(accs)]
            summary.append(summary_row(accs, setting=key, value=value, model=name,
                                       tiles=chips.plan(name, point[1]).n_tiles))
            _log.info("%s=%s %s: %.2f +- %.2f %% (95 %% CI)", key, value, name,
                      summary[-1]["mean"], summary[-1]["ci95"])
    return summary, chip_rows


def _grids(exp: StudyExperiment, chips: StudyChips, points: StudyPoints, grid_jobs: list,
           quiet: bool) -> list[dict]:
    """Crossed pairs of settings: a row per grid point and model."""
    base = (exp.device, exp.crossbar, exp.robustness)
    grids = []
    for (xk, yk), (xv, yv) in tqdm(grid_jobs, desc="grid points", disable=quiet):
        point = study_settings(*base, (xk, yk), (xv, yv))
        for name in exp.study.models:
            accs = points.run(["grid", xk, xv, yk, yv, name], partial(
                chips.accuracies, name, *point, f"{xk}={xv}, {yk}={yv} {name}"))
            if accs is None:
                continue
            grids.append(summary_row(accs, x_setting=xk, x=xv, y_setting=yk, y=yv,
                                     model=name, accuracies=accs))
            _log.info("%s=%s, %s=%s %s: %.2f +- %.2f %% (95 %% CI)", xk, xv, yk, yv, name,
                      grids[-1]["mean"], grids[-1]["ci95"])
    return grids


def _software_reference(chips: StudyChips) -> dict:
    """The software accuracies on the very samples the chips are evaluated on."""
    same = f"software, same {len(chips.test.dataset)} test samples"
    out = {}
    for name in ("compressed", "dense"):
        chips._load(name)
        out[f"{name}, {same}"] = evaluate(chips.model, chips.test)
    return out


SEVERITY_FIELDS = {"programming": ("sigma", "scale"), "read_noise": ("sigma", "scale"),
                   "faults": ("sa0_rate", "sa1_rate")}
"""What a harsher device scales: the spread of programming and read noise, the fault rates
(drift is a function of time, swept as ``t_inference_s``)."""
SEVERITY_CAPS = {"sigma": 1.0, "scale": 100.0, "sa0_rate": 0.25, "sa1_rate": 0.25}
SEVERITIES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
"""The factors the per-layer sensitivity tries, mildest first."""


def harsher(device: DeviceModel, factor: float) -> DeviceModel:
    """``device`` with its programming spread, read noise and fault rates ``factor`` times
    larger (each capped at what the device model accepts)."""
    data = device.to_dict()
    for effect, fields in SEVERITY_FIELDS.items():
        part = data.get(effect)
        for key in fields if isinstance(part, dict) else ():
            if key in part:
                part[key] = min(part[key] * factor, SEVERITY_CAPS[key])
    return DeviceModel.from_dict(data)


def _layer_sensitivity(exp: StudyExperiment, chips: StudyChips, points: StudyPoints,
                       mapped: list[str], reference: dict, quiet: bool
                       ) -> tuple[list[dict], dict | None]:
    """Only one mapped layer at a time on a non-ideal device, the others on its ideal
    version; the every-layer and no-layer references go into ``reference``. With
    ``study.sensitivity_drop``, the device is the base device made harsher (:func:`harsher`,
    factors :data:`SEVERITIES`) until every layer on it drops the chips' mean that many
    points below the ideal chip, so the layers' drops are large enough to rank; returns the
    rows and that search (None without one)."""
    name = "compressed" if "compressed" in exp.study.models else "dense"
    base = (exp.device, exp.crossbar, exp.robustness)
    per_layer = layer_devices(exp.layer_devices, mapped, exp.device)
    ideal = ideal_device(exp.device)
    none = points.run(["layers", "none", name], partial(
        chips.accuracies, name, ideal, *base[1:], "no layer",
        {n: ideal_device(d) for n, d in per_layer.items()}))
    factor, search = 1.0, None
    target = exp.study.sensitivity_drop
    if target is not None and none is not None:
        search = {"target_drop": target, "tried": []}

        def drop_at(k: float) -> float | None:
            accs = points.run(["layers", f"every x{k:g}", name], partial(
                chips.accuracies, name, harsher(exp.device, k), *base[1:],
                f"every layer x{k:g}", {n: harsher(d, k) for n, d in per_layer.items()}))
            if accs is None:
                return None
            drop = statistics.fmean(none) - statistics.fmean(accs)
            search["tried"].append({"factor": k, "mean": statistics.fmean(accs),
                                    "drop": drop})
            _log.info("layer sensitivity: every layer at x%g severity: %.2f %% (%.2f points "
                      "below the ideal chip; target %.1f)", k, statistics.fmean(accs), drop,
                      target)
            return drop

        previous = None
        for factor in SEVERITIES:
            drop = drop_at(factor)
            if drop is None or drop >= target:
                break
            previous = factor
        else:
            _log.warning("layer sensitivity: even at x%g severity every layer drops %.2f "
                         "points, less than study.sensitivity_drop=%g; the layers are ranked "
                         "at x%g", factor, drop, target, factor)
        if drop is not None and drop >= target and previous is not None:
            middle = round(math.sqrt(previous * factor), 2)  # one geometric bisection step
            low = drop_at(middle)
            if low is not None and low >= target:
                factor = middle
        search["factor"] = factor
    device = {n: harsher(d, factor) for n, d in per_layer.items()}
    every = points.run(["layers", "every", name], partial(
        chips.accuracies, name, harsher(exp.device, factor), *base[1:], "every layer",
        device))
    sensitivity = []
    for layer in tqdm(mapped, desc="layers", disable=quiet):
        devices = {n: device[n] if n == layer else ideal_device(d)
                   for n, d in per_layer.items()}
        accs = points.run(["layers", layer, name], partial(
            chips.accuracies, name, ideal, *base[1:], layer, devices))
        if accs is not None:
            sensitivity.append(summary_row(accs, layer=layer, model=name, accuracies=accs))
    for label, accs in ((f"every layer non-ideal ({name})", every),
                        (f"ideal devices ({name})", none)):
        if accs is not None:
            reference[label] = (statistics.fmean(accs), ci95(accs))
    return sensitivity, search


def _write_study(exp: StudyExperiment, run_dir: Path, chips: StudyChips, p: Prepared,
                 points: StudyPoints, timings: dict, *, compressed_acc: float,
                 summary: list[dict], chip_rows: list[dict], grids: list[dict],
                 sensitivity: list[dict], reference: dict,
                 lifetime: tuple[dict, list[str], list[str]] | None = None,
                 severity: dict | None = None) -> dict:
    """study.csv, study.json, the figures, metrics.json and study.md (and the lifetime
    study's summary, figures and report lines, ``experiments.lifetime``); raises
    :class:`StudyPointsFailed` after writing them when a point failed."""
    if not points.path.exists():  # a study without points (a lifetime alone) still has one
        write_json(points.path, {"fingerprint": points.fp, "points": points.done})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["setting", "value", "model", "chip", "accuracy"])
    writer.writeheader()
    writer.writerows(chip_rows)
    atomic_write_text(run_dir / "study.csv", buf.getvalue())
    write_json(run_dir / "study.json", {"sweeps": summary, "grids": grids,
                                        "layer_sensitivity": sensitivity,
                                        "failed": points.failed})
    n_test = len(chips.test.dataset)
    note = held_fixed(exp, n_test, exp.eval.chips)
    plots = plot_study(summary, chip_rows, grids, sensitivity, reference, note, run_dir,
                       severity)
    same = f"software, same {n_test} test samples"
    spec, yields, names = yield_figures(exp.eval, chip_rows, reference[f"dense, {same}"],
                                        note, run_dir)
    plots += names
    if lifetime is not None:
        plots += lifetime[1]
    metrics = {"model": exp.model.name, "dense_accuracy": p.dense_acc,
               "compressed_accuracy": compressed_acc,
               "dense_accuracy_chip_samples": reference[f"dense, {same}"],
               "compressed_accuracy_chip_samples": reference[f"compressed, {same}"],
               "chips": exp.eval.chips, "crossbar_test_samples": n_test, "held_fixed": note,
               "device": exp.device.to_dict(), "crossbar": exp.crossbar.to_dict(),
               "environment": environment(p.torch_device), "study": summary, "grids": grids,
               "layer_sensitivity": sensitivity, "layer_sensitivity_severity": severity,
               "layer_sensitivity_reference": {k: v for k, v in reference.items()
                                               if isinstance(v, tuple)},
               "failed": points.failed, "reused_points": points.reused, "timings_s": timings,
               "yield_spec": spec, "study_yield": yields,
               "lifetime": None if lifetime is None else lifetime[0]}
    write_json(run_dir / "metrics.json", metrics)
    md = study_markdown(metrics, plots)
    if lifetime is not None:
        md = md.rstrip("\n") + "\n\n" + "\n".join(lifetime[2]) + "\n"
    atomic_write_text(run_dir / "study.md", md)
    _log.info("device study done: %d sweep points, %d grid points, %d layers (%d reused from "
              "an earlier attempt, %d failed); plots in %s", len(summary), len(grids),
              len(sensitivity), points.reused, len(points.failed), run_dir)
    if points.failed:
        raise StudyPointsFailed(
            f"{len(points.failed)} study point(s) failed: "
            + "; ".join(f"{f['point']}: {f['error']}" for f in points.failed[:5])
            + f". The finished points are in {run_dir / 'study.json'} and study.md; after a "
            f"fix, python -m memxbar.experiments.device_study resume=true hydra.run.dir={run_dir} "
            "<same overrides> computes only the missing ones")
    return metrics


def study_yields(e, chip_rows: list[dict], dense_accuracy: float
                 ) -> tuple[str | None, list[dict]]:
    """The yield of every swept point and model against ``eval``'s specification
    (``spec_max_drop`` below ``dense_accuracy``, the dense model in software on the chips' test
    samples, and/or ``spec_min_accuracy``): the spec in words and a row per point (``setting``,
    ``value``, ``model`` and :func:`experiments.estimators.chip_yield`'s fields); no rows
    without a specification."""
    if e.spec_max_drop is None and e.spec_min_accuracy is None:
        return None, []
    groups: dict[tuple, list[float]] = {}
    for r in chip_rows:
        groups.setdefault((r["setting"], repr(r["value"]), r["model"]), []).append(
            r["accuracy"])
    values = {(r["setting"], repr(r["value"])): r["value"] for r in chip_rows}
    rows, spec = [], None
    for (setting, value, model), accs in groups.items():
        est = chip_yield(accs, dense_accuracy=dense_accuracy, max_drop=e.spec_max_drop,
                         min_accuracy=e.spec_min_accuracy)
        spec = est.spec
        rows.append({"setting": setting, "value": values[setting, value], "model": model,
                     **{k: v for k, v in est.to_dict().items() if k != "spec"}})
    return spec, rows


def yield_figures(e, chip_rows: list[dict], dense_accuracy: float, note: str, run_dir: Path
                  ) -> tuple[str | None, list[dict], list[str]]:
    """:func:`study_yields` and one figure per swept setting, ``study_<key>_yield.png``
    (:func:`experiments.plots.plot_yield`); returns the spec, the rows and the figure names."""
    spec, yields = study_yields(e, chip_rows, dense_accuracy)
    names = []
    for key in dict.fromkeys(r["setting"] for r in yields):
        plot_yield([r for r in yields if r["setting"] == key], key,
                   run_dir / f"study_{key}_yield.png", spec, note)
        names.append(f"study_{key}_yield.png")
    return spec, yields, names


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


def finished_points(path: Path, fp: dict) -> dict[str, list[float]] | None:
    """The finished points ``path`` (a study_points.json) holds for settings ``fp``, or None
    when it was written with other settings; a file this program did not write (unreadable,
    or accuracies that are not numbers in [0, 100]) is refused naming it."""
    allowed = "allowed: a study_points.json written by this program (or delete it to " \
        "recompute every point)"
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fp:
            return None
        points = data.get("points")
    except (ValueError, AttributeError, OSError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); {allowed}") from None
    if not isinstance(points, dict):
        raise ValueError(f"{path} holds no 'points' mapping; {allowed}")
    for key, accs in points.items():
        if not isinstance(accs, list) or not accs or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                and 0 <= a <= 100 for a in accs):
            raise ValueError(f"{path}: point {key} holds {accs!r}; {allowed}: lists of chip "
                             "accuracies in [0, 100] (%)")
    return dict(points)


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
            done = finished_points(path, fp)
            if done is not None:
                self.done = done
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
