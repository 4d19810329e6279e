"""Accuracy budget: search the resource budget that keeps the chips within ``max_drop`` points.

The user states the largest allowed drop of the mean chip accuracy from dense
(``allocation.max_drop``) instead of a compression ratio or a tile count. The search runs the
whole pipeline (budgeted allocation, compression, mapping, chips on the configured device and
converters) at one resource budget after another and bisects on a log scale between a loose
budget (assumed to meet the drop) and a tight one (assumed to miss it):

    b_k = sqrt(loose_k * tight_k);   drop(b_k) <= max_drop  ->  loose_{k+1} = b_k
                                     otherwise              ->  tight_{k+1} = b_k

for ``allocation.search_steps`` steps (after ``s`` steps the bracket is ``(tight/loose)^(2^-s)``
wide). The chosen budget is the tightest one tried that met the drop (the most accurate one,
with a warning, when none did). Every point is a run folder of its own
(``search/step<k>_<budget>/``, resumable), all of them share the dense model through the model
cache, and the run folder itself then evaluates the chosen point on ``eval.chips`` chips (its
compressed model comes from the cache: nothing is trained twice). ``search.json`` records the
points as they finish; a resumed search reuses them.

The drop is measured as the run measures it: dense test accuracy minus the mean accuracy of
``search_chips`` programmed chips on the crossbar test set (``eval.test_subset``). A point whose
drop lies within ``search_confirm`` standard errors of the chip mean of ``max_drop``
(:func:`borderline`) is measured again on ``eval.chips`` chips, the count the chosen point is
reported on, in ``search/step<k>_<budget>_confirm/`` (the model from the cache), and that
measurement decides it; the first one stays in the point's record. Choosing on
the test set is what the user asks for when they state a budget on the chip accuracy; report
the held-out number separately if the choice must not see it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from memxbar.admm import DivergenceError
from memxbar.crossbar.io import atomic_write_text
from memxbar.experiments.compressors.settings import SEARCH_KEYS
from memxbar.experiments.plots import plot_budget_search
from memxbar.experiments.settings import AllocationSettings, CompressExperiment

__all__ = ["SEARCH_FILE", "bisect_budgets", "borderline", "budget_search", "search_markdown"]

SEARCH_FILE = "search.json"

_log = logging.getLogger("memxbar.experiments.search")


def bisect_budgets(loose: float, tight: float, meets: Callable[[float], bool], steps: int
                   ) -> list[tuple[float, bool]]:
    """The budgets tried, in order, with whether each met the drop: bisection on
    ``log(budget)`` between ``loose`` and ``tight`` (module docstring). ``meets(b)`` runs or
    looks up one point."""
    tried: list[tuple[float, bool]] = []
    lo, hi = math.log(loose), math.log(tight)
    for _ in range(steps):
        b = float(f"{math.exp((lo + hi) / 2):.4g}")  # 4 significant digits: readable names
        ok = meets(b)
        tried.append((b, ok))
        lo, hi = (math.log(b), hi) if ok else (lo, math.log(b))
    return tried


def _point_config(raw: dict, budget: float, chips: int, cache_dir: str) -> dict:
    """The run's settings at one resource ``budget``: the allocation fixed (no search keys,
    :data:`SEARCH_KEYS`), ``chips`` chips, no robustness ablation, the shared model cache."""
    point = copy.deepcopy(raw)
    allocation = {k: v for k, v in point["allocation"].items() if k not in SEARCH_KEYS}
    point["allocation"] = {**allocation, "budget": budget, "max_drop": None}
    point["eval"] = {**point["eval"], "chips": chips}
    point["robustness"] = {**(point.get("robustness") or {}), "ablation": False}
    point["runtime"] = {**point["runtime"], "cache_dir": cache_dir}
    point["resume"] = False
    return point


def _record(step: int, budget: float, m: dict, max_drop: float) -> dict:
    drop = m["dense_accuracy"] - m["crossbar_accuracy_mean"]
    return {"step": step, "budget": budget, "compression_ratio": m["compression_ratio"],
            "tiles": m["tiles"], "area_mm2": m["area_mm2"], "energy_nJ": m["energy_nJ"],
            "energy_reduction_pct": m.get("energy_reduction_pct"),
            "dense_accuracy": m["dense_accuracy"],
            "compressed_accuracy": m["compressed_accuracy"],
            "crossbar_ideal_accuracy": m["crossbar_ideal_accuracy"],
            "chip_mean": m["crossbar_accuracy_mean"], "chip_std": m["crossbar_accuracy_std"],
            "chip_ci95": m["crossbar_accuracy_ci95"], "chips": m["chips"], "drop": drop,
            "meets": drop <= max_drop}


def budget_search(exp: CompressExperiment, run_dir: Path, budget_range: tuple[float, float],
                  run_point: Callable[[dict, Path], dict],
                  finish: Callable[[CompressExperiment, Path], dict],
                  load: Callable[[dict], CompressExperiment]) -> dict:
    """Search the budget for ``exp.allocation.max_drop`` (module docstring) and evaluate the
    chosen point in ``run_dir``; returns its metrics with a ``search`` record.

    ``budget_range``: ``(loose, tight)`` from the candidates (``allocation.search_range``
    overrides it); ``run_point(config, folder)``: one whole run (``run_compress``);
    ``finish(exp, run_dir)``: the pipeline inside the accepted run folder; ``load``: config
    validation (``load_compress_config``)."""
    a: AllocationSettings = exp.allocation
    started = time.monotonic()
    loose, tight = a.search_range or budget_range
    cache = exp.runtime.cache_dir or str((run_dir / "search" / "cache").resolve())
    state_path = run_dir / "search" / SEARCH_FILE
    settings = {**_point_config(exp.raw, 0.0, a.search_chips, cache),  # every point's but
                "confirm": a.search_confirm}                               # the budget
    done: dict[float, dict] = {}
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("settings") == settings:
            done = {float(k): v for k, v in saved.get("points", {}).items()}
    points: list[dict] = []

    def meets(budget: float) -> bool:
        step = len(points) + 1
        if budget in done:
            record = {**done[budget], "step": step}
            _log.info("budget search step %d/%d: %s budget %.4g reused from %s", step,
                      a.search_steps, a.resource, budget, state_path)
        else:
            folder = run_dir / "search" / f"step{step}_{budget:g}"
            config = _point_config(exp.raw, budget, a.search_chips, cache)
            config["resume"] = (folder / "config.yaml").exists()
            _log.info("budget search step %d/%d: %s budget %.4g (searched %.4g .. %.4g)",
                      step, a.search_steps, a.resource, budget, loose, tight)
            try:
                record = _record(step, budget, run_point(config, folder), a.max_drop)
            except DivergenceError as exc:  # the model collapsed at this budget: too tight
                record = {"step": step, "budget": budget, "meets": False, "failed": str(exc)}
            record["folder"] = str(folder.relative_to(run_dir))
            record = _confirmed(exp.raw, a, exp.eval.chips, record, run_dir, folder, cache,
                                run_point)
            done[budget] = record
        points.append(record)
        if "failed" in record:
            _log.warning("budget search step %d: the model collapsed at %s budget %.4g: misses",
                         step, a.resource, budget)
        else:
            _log.info("budget search step %d: %.2fx, chip mean %.2f%% (drop %.2f, allowed "
                      "%.2f): %s", step, record["compression_ratio"], record["chip_mean"],
                      record["drop"], a.max_drop, "meets" if record["meets"] else "misses")
        atomic_write_text(state_path, json.dumps(
            {"settings": settings, "points": {str(k): v for k, v in done.items()}}, indent=2))
        return record["meets"]

    bisect_budgets(loose, tight, meets, a.search_steps)
    best, warning = _choose(points, a)
    met = [p for p in points if p["meets"]]
    ran = [p for p in points if "failed" not in p]
    chosen = _point_config(exp.raw, best["budget"], exp.eval.chips, cache)
    chosen["eval"] = dict(exp.raw["eval"])
    chosen["robustness"] = dict(exp.raw.get("robustness") or {})
    chosen["runtime"] = {**exp.raw["runtime"], "cache_dir": cache}
    metrics = finish(load(chosen), run_dir)
    metrics["search"] = {"max_drop": a.max_drop, "resource": a.resource,
                         "range": [loose, tight], "steps": a.search_steps,
                         "chips_per_point": a.search_chips, "confirm": a.search_confirm,
                         "chosen_budget": best["budget"],
                         "met": bool(met), "warning": warning, "points": points,
                         "wall_s": time.monotonic() - started}
    if warning:
        metrics["warnings"] = [*metrics.get("warnings", []), warning]
    plot_budget_search(ran, metrics["dense_accuracy"], a.max_drop, best["budget"],
                       run_dir / "budget_search.png", note=metrics.get("settings_caption", ""))
    report = run_dir / "report.md"
    atomic_write_text(report, report.read_text() + "\n" + search_markdown(
        metrics["search"], "budget_search.png"))
    return metrics


def _confirmed(raw: dict, a: AllocationSettings, chips: int, record: dict, run_dir: Path,
               folder: Path, cache: str, run_point: Callable[[dict, Path], dict]) -> dict:
    """``record`` as it is, or, for a borderline point (:func:`borderline`) of the run ``raw``,
    measured again on ``chips`` (the run's ``eval.chips``) in ``<folder>_confirm`` (its model
    from the cache), the first measurement kept in the record."""
    if not borderline(record, a, chips):
        return record
    _log.info("budget search step %d: drop %.3f is within %g standard errors of the budget "
              "%.2f on %d chips: measuring it on %d chips", record["step"], record["drop"],
              a.search_confirm, a.max_drop, record["chips"], chips)
    again = folder.with_name(folder.name + "_confirm")
    config = _point_config(raw, record["budget"], chips, cache)
    config["resume"] = (again / "config.yaml").exists()
    first = {k: record[k] for k in ("chips", "chip_mean", "chip_std", "drop", "meets")}
    return {**_record(record["step"], record["budget"], run_point(config, again), a.max_drop),
            "folder": str(again.relative_to(run_dir)), "first_measurement": first}


def borderline(record: dict, a: AllocationSettings, final_chips: int) -> bool:
    """Whether a point's decision is within the chip-to-chip noise of its measurement:
    ``|drop - max_drop| <= search_confirm * std / sqrt(chips)`` (the standard error of the mean
    of ``chips`` chips), measured on fewer chips than the run's ``eval.chips``. Such a point
    is measured again on ``eval.chips`` chips, as the chosen point will be, so that the
    search does not decide on chip noise (module docstring)."""
    if "failed" in record or a.search_confirm <= 0 or record["chips"] >= final_chips:
        return False
    error = record["chip_std"] / math.sqrt(record["chips"])
    return abs(record["drop"] - a.max_drop) <= a.search_confirm * error


def _choose(points: list[dict], a: AllocationSettings) -> tuple[dict, str | None]:
    """The tightest point that met the accuracy budget; else the most accurate one, with a
    warning; a DivergenceError when every point collapsed."""
    met = [p for p in points if p["meets"]]
    ran = [p for p in points if "failed" not in p]
    if met:
        return max(met, key=lambda p: a.tighter * p["budget"]), None
    if not ran:
        raise DivergenceError(
            "budget search: the model collapsed at every budget tried ("
            + ", ".join(f"{p['budget']:g}" for p in points) + f" {a.resource}); give "
            "allocation.search_range a looser end, or more retraining epochs")
    best = max(ran, key=lambda p: p["chip_mean"])
    warning = (f"no budget tried met allocation.max_drop={a.max_drop}: the most accurate "
               f"point ({a.resource} {best['budget']:g}) drops {best['drop']:.2f} points; "
               "widen allocation.search_range toward looser budgets or allow a larger drop")
    _log.warning(warning)
    return best, warning


def search_markdown(search: dict, figure: str | None) -> str:
    """report.md's section of a budget search: every point tried and the chosen one."""
    rows = sorted(search["points"], key=lambda p: p["budget"] * (1 if search["resource"]
                                                                 == "compression" else -1))
    lines = ["## Budget search", "",
             f"Accuracy budget: mean chip accuracy at most {search['max_drop']:g} point(s) below "
             f"dense. Bisection on log({search['resource']}) over "
             f"{search['range'][0]:.4g} .. {search['range'][1]:.4g}, {search['steps']} steps, "
             f"{search['chips_per_point']} chips per point (a point within "
             f"{search.get('confirm', 0):g} standard errors of the budget measured again on "
             f"the run's chips); chosen: {search['resource']} "
             f"{search['chosen_budget']:g}" + ("" if search["met"] else
                                               " (**no point met the budget**)")
             + (f"; {search['wall_s'] / 60:.1f} min" if "wall_s" in search else "") + ".", "",
             "| step | budget | compression | tiles | energy (nJ) | software | chips (mean +- std)"
             " | drop | meets |", "|---:|---:|---:|---:|---:|---:|---:|---:|:--|"]
    for p in rows:
        mark = " **(chosen)**" if p["budget"] == search["chosen_budget"] else ""
        if "failed" in p:
            lines.append(f"| {p['step']} | {p['budget']:g} | | | | collapsed | | | no |")
            continue
        first = p.get("first_measurement")
        again = (f" ({p['chips']} chips; on {first['chips']}: {first['drop']:.2f})"
                 if first else "")
        lines.append(f"| {p['step']} | {p['budget']:g}{mark} | {p['compression_ratio']:.2f}x | "
                     f"{p['tiles']} | {p['energy_nJ']:.2f} | {p['compressed_accuracy']:.2f} % | "
                     f"{p['chip_mean']:.2f} +- {p['chip_std']:.2f} % | {p['drop']:.2f}{again} | "
                     f"{'yes' if p['meets'] else 'no'} |")
    if figure:
        lines += ["", f"![budget search]({figure})"]
    return "\n".join(lines + [""])
