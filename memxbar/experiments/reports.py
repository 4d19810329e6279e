"""Figures and Markdown of the runs, from their metrics: report.md of the compress run, study.md
and the figures of the device study (``experiments.replot`` redraws them from a finished
run's files through these public names), and the settings captions."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator
from torch import nn

from memxbar.crossbar import CrossbarConfig, DeviceModel, MappingPlan, to_crossbar
from memxbar.crossbar.convert import crossbar_modules
from memxbar.crossbar.io import atomic_write_text
from memxbar.experiments.allocation import allocation_markdown
from memxbar.experiments.chips import ChipDesign, mean_std
from memxbar.experiments.compressors.settings import RETRAINING
from memxbar.experiments.plots import (
    caption,
    chip_accuracy_figure,
    ci95,
    plot_distributions,
    plot_heatmap,
    plot_layer_sensitivity,
    plot_sweep,
    plt,
    write_png,
)
from memxbar.experiments.settings import CompressExperiment, RobustnessSettings


def plot_conductances(model: nn.Module, plan: MappingPlan, calibration: torch.Tensor,
                      scales: Mapping, path: Path, *, design: ChipDesign, seed: int
                      ) -> nn.Module:
    """Histogram of the target and the programmed conductances of every live cell of the first
    chip (seed ``seed``) of ``design``, repaired as the run repairs: the level grid, the
    programming spread around it, and the stuck cells at the window's edges. Returns that
    chip (the cost stage measures its array reads)."""
    device = design.device
    xmodel = to_crossbar(model, device.with_(t_inference_s=0.0),
                         design.crossbar.with_(output_calibration=False), calibration=calibration,
                         seed=seed, plan=plan, scales=scales, repair=design.repair,
                         digital=list(design.digital), devices=dict(design.devices))
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
    return xmodel


def chip_test_markdown(m: dict) -> list[str]:
    """How each chip's accuracy was measured, when not on every test image."""
    t = m.get("chip_test") or {}
    if t.get("mode") != "stratified":
        return []
    exact = (f"; the {t['exact_chips']} chips within {t['exact_within_se']:g} standard errors "
             f"of the specification's {t['spec_floor']:.2f} % were measured on all "
             f"{t['test_images']} images and pass or fail on that" if t.get("spec_floor")
             is not None else "")
    return [f"Each chip's accuracy is a stratified, unbiased estimate (eval.chip_test="
            f"stratified, memxbar/experiments/chip_test.py): the {t['risky_images']} test images "
            f"the model is least sure of and {t['safe_sample']} of the other {t['safe_images']}, "
            f"{t['images_per_chip']} of {t['test_images']} per chip; standard error of one "
            f"chip's estimate {t['standard_error']:.3f} points (its square is part of the "
            f"sample variance over chips){exact}.", ""]


def plots_compress(metrics: dict, history: list[dict], run_dir: Path) -> list[str]:
    fig = chip_accuracy_figure(metrics)
    caption(fig, metrics.get("settings_caption", ""))
    write_png(run_dir / "chip_accuracy.png", fig)
    plots = ["chip_accuracy.png", "stage_accuracy.png"]
    rounds = [h for h in history if h.get("event") == "admm_round"]
    if rounds:
        _plot_admm_residuals(rounds, run_dir)
        plots.append("admm_residuals.png")
    plots += [name for name in ("conductances.png", "tile_map.png")
              if (run_dir / name).exists()]
    _plot_stage_accuracy(metrics, history, run_dir)
    _plot_ablation(metrics, run_dir)
    return plots


_STAGE_LABELS = {
    "dense": "dense (pretrained)",
    "prune": "pruned: after hard projection\n(before retraining)",
    "prune_retrain": "pruned, retrained",
    "quant": "quantized: after hard projection\n(before retraining)",
    "quant_retrain": "quantized, retrained\n(software compressed)",
    "obc": "OBC compressed\n(software)",
}
"""Tick labels of the software stages (``eval`` events of the compression history): the
accuracy right after a hard projection onto the constraint set is the one before the retraining
recovers it."""


def _plot_stage_accuracy(metrics: dict, history: list[dict], run_dir: Path) -> None:
    """stage_accuracy.png: the accuracy after each stage as categorical markers (no line joins
    the stages), the programmed chips as individual points with their mean and 95 % CI, and the
    dense and software-compressed accuracies as reference lines."""
    evals = [h for h in history if h.get("event") == "eval"]
    accs = list(metrics["crossbar_accuracies"])
    labels = [_STAGE_LABELS.get(h["stage"], h["stage"].replace("_", " ")) for h in evals]
    labels += ["crossbar,\nideal devices", f"crossbar chips\n({len(accs)} programmed)"]
    values = [h["metric"] for h in evals] + [metrics["crossbar_ideal_accuracy"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for y, label, style in ((metrics["dense_accuracy"], "dense (software)", ":"),
                            (metrics["compressed_accuracy"], "compressed (software)", "--")):
        ax.axhline(y, color="#555555", linestyle=style, linewidth=0.9, label=label, zorder=1)
    ax.plot(range(len(values)), values, linestyle="none", marker="o", color="#1f77b4",
            label="accuracy after the stage", zorder=3)
    chip_x = len(values)
    offsets = [-0.05] if len(accs) == 1 else [-0.25 + 0.35 * i / (len(accs) - 1)
                                              for i in range(len(accs))]   # jitter, by chip
    ax.plot([chip_x + d for d in offsets], accs, linestyle="none", marker=".", markersize=4,
            color="#777777", alpha=0.8, label="one programmed chip", zorder=2)
    mean, half = statistics.fmean(accs), ci95(accs)
    ax.errorbar([chip_x + 0.3], [mean], yerr=[half], fmt="D", markersize=4, capsize=3,
                color="C1", label=f"chips: mean {mean:.2f} % (95 % CI +- {half:.2f})",
                zorder=4)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=6.5)
    ax.set_xlim(-0.5, chip_x + 0.6)
    points = values + accs + [mean - half, mean + half, metrics["dense_accuracy"],
                              metrics["compressed_accuracy"]]
    low, high = min(points), max(points)
    margin = max(0.08 * (high - low), 1.0)
    low, high = low - margin, high + margin
    if high - low < 5.0:   # never so zoomed that a fraction of a point looks huge
        centre = (low + high) / 2
        low, high = centre - 2.5, centre + 2.5
    ax.set_ylim(max(0.0, low), min(100.0, high))
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("pipeline stage (categories, in order)")
    ax.set_title("Accuracy through the pipeline")
    ax.grid(axis="y", color="#dddddd", linewidth=0.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    caption(fig, metrics.get("settings_caption", ""), width=110)
    write_png(run_dir / "stage_accuracy.png", fig)


def _dense_weight_norms(run_dir: Path, layers: list[str]) -> dict[str, float] | None:
    """``||W_dense||_F`` of each of ``layers``, from the run's ``dense.pt``; ``None`` where
    the file or a layer's weight is missing or unreadable."""
    try:
        state = torch.load(run_dir / "dense.pt", map_location="cpu", weights_only=True)
        weights = state["model"] if "model" in state else state
        norms = {name: float(weights[f"{name}.weight"].float().norm()) for name in layers}
    except Exception:  # noqa: BLE001  (no norms: the figure falls back to absolute residuals)
        return None
    return norms if all(n > 0 for n in norms.values()) else None


def _log_if_decades(ax, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_yscale("log")


def _plot_admm_residuals(rounds: list[dict], run_dir: Path) -> None:
    """admm_residuals.png: per ADMM stage (columns) the primal and dual residual of each layer,
    relative to the layer's dense weight norm, and the penalty rho (rows). One colour per layer
    in every panel, one legend for the figure."""
    stages = list(dict.fromkeys(h["stage"] for h in rounds))
    layers = list(dict.fromkeys(name for h in rounds for name in h["layers"]))
    colours = {name: plt.get_cmap("tab10" if len(layers) <= 10 else "tab20")(i % 20)
               for i, name in enumerate(layers)}
    norms = _dense_weight_norms(run_dir, layers)
    if norms is not None:
        rows = (("primal", lambda name, e: e["primal"] / norms[name],
                 "primal residual\n||W - Z||_F / ||W_dense||_F"),
                ("dual", lambda name, e: e["dual"] / (e["rho"] * norms[name]),
                 "dual residual / (rho ||W_dense||_F)\n= ||Z - Z_prev||_F / ||W_dense||_F"))
    else:   # no dense weights to divide by: say that the residuals are absolute
        rows = (("primal", lambda name, e: e["primal"],
                 "primal residual\n||W - Z||_F (absolute)"),
                ("dual", lambda name, e: e["dual"],
                 "dual residual\nrho ||Z - Z_prev||_F (absolute)"))
    fig, axes = plt.subplots(3, len(stages), figsize=(3.4 * len(stages) + 0.6, 6.2),
                             squeeze=False, sharex="col")
    handles = {}
    for col, stage in enumerate(stages):
        sel = [h for h in rounds if h["stage"] == stage]
        x = list(range(1, len(sel) + 1))
        for row, (_, scale, label) in enumerate(rows):
            ax, drawn = axes[row][col], []
            for name in layers:
                if name not in sel[0]["layers"]:
                    continue
                ys = [scale(name, h["layers"][name]) for h in sel]
                drawn += ys
                (handles[name],) = ax.plot(x, ys, marker=".", markersize=3, linewidth=1.0,
                                           color=colours[name], label=name)
            _log_if_decades(ax, drawn)
            if col == 0:
                ax.set_ylabel(label, fontsize=7)
            if row == 0:
                ax.set_title(f"{stage} stage (ADMM)", fontsize=8)
        ax = axes[2][col]
        rho = {name: [h["layers"][name]["rho"] for h in sel] for name in sel[0]["layers"]}
        series = list(rho.values())
        if all(s == series[0] for s in series):
            (handles["__rho__"],) = ax.plot(x, series[0], "k--", marker=".", markersize=3,
                                        linewidth=1.0, label="penalty rho (all layers)")
        else:
            for name, ys in rho.items():
                ax.plot(x, ys, "--", color=colours[name], linewidth=1.0)
            handles["__rho__"] = plt.Line2D([], [], color="k", linestyle="--",
                                        label="penalty rho (dashed, colour of its layer)")
        _log_if_decades(ax, [v for s in series for v in s])
        if col == 0:
            ax.set_ylabel("ADMM penalty rho", fontsize=7)
        ax.set_xlabel("ADMM round in the stage")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("ADMM convergence per layer: relative residuals and penalty rho"
                 if norms is not None else "ADMM convergence per layer: residuals and penalty rho",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    ordered = [handles[n] for n in layers if n in handles] + [handles["__rho__"]]
    fig.legend(ordered, [h.get_label() for h in ordered], loc="lower center",
               ncol=min(len(ordered), 4), fontsize=7, frameon=False)
    write_png(run_dir / "admm_residuals.png", fig)


def _plot_ablation(metrics: dict, run_dir: Path) -> None:
    """robustness_ablation.png: chip accuracy as the repair steps are added."""
    ablation = (metrics.get("robustness") or {}).get("ablation")
    if not ablation:
        return
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


def yield_markdown(y: dict | None) -> list[str]:
    """The chips that meet the specification (``experiments.estimators.chip_yield``)."""
    if not y:
        return []
    q = y["quantiles"]
    return ["## Yield", "",
            f"- specification: {y['spec']}",
            f"- **{y['passed']} of {y['chips']} chips pass: yield {y['yield_pct']:.1f} %** "
            f"(Clopper-Pearson {100 * y['level']:.0f} % interval {y['ci_low_pct']:.1f}-"
            f"{y['ci_high_pct']:.1f} %)",
            f"- worst chip {y['worst']:.2f} %; chip accuracy quantiles: 1 % {q['q01']:.2f}, "
            f"5 % {q['q05']:.2f}, 50 % {q['q50']:.2f}",
            f"- chips for an interval 10 points wide at this yield: "
            f"{y['chips_for_10_points']}", ""]


def attribution_markdown(steps: list[dict] | None) -> list[str]:
    """Where the cost reduction comes from: the baseline reached step by step to the design
    (``crossbar.cost.attribution``), as report.md lines."""
    if not steps:
        return []
    lines = ["", "Where the reduction comes from (one change per step, each with the earlier "
             "ones applied; changes in percent of the baseline):", "",
             "| step | change | tiles | area (mm2) | area change | energy (nJ) | energy change |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in steps:
        lines.append(f"| {s['step']} | {s['change']} | {s['tiles']} | {s['area_mm2']:.4g} | "
                     f"{s['area_change_pct']:+.1f}% | {s['energy_nJ']:.4g} | "
                     f"{s['energy_change_pct']:+.1f}% |")
    return lines


def cost_markdown(m: dict) -> list[str]:
    """report.md's hardware-cost section: the totals against the baseline with the reduction's
    low-high range, the digital layers' energy and where the reduction comes from."""
    ranges = m.get("cost_ranges") or {}
    lines = ["## Hardware cost (vs dense baseline)", "",
             "| | compressed | dense baseline | reduction | reduction, low-high |",
             "|---|---:|---:|---:|---:|"]
    for key, unit in (("area", "mm2"), ("energy", "nJ"), ("power", "mW")):
        span = ranges.get(f"{key}_reduction_pct")
        lines.append(f"| {key} ({unit}) | {fmt(m[f'{key}_{unit}'])} | "
                     f"{fmt(m[f'baseline_{key}_{unit}'])} | {m[f'{key}_reduction_pct']:.2f}% | "
                     + (f"{span[0]:.1f}-{span[1]:.1f}% |" if span else "|"))
    return lines + [
        "", f"Baseline: {m['cost_baseline']}." if "cost_baseline" in m else "",
        *([f"Low-high: every component at the low / high value of other published sources "
           f"(design energy {fmt(ranges['compressed']['energy_nJ'][0])}-"
           f"{fmt(ranges['compressed']['energy_nJ'][1])} nJ; cost/report.md, 'Ranges')."]
          if ranges.get("compressed") else []),
        *([f"Layers off the crossbars (digital): {fmt(m['digital_energy_nJ'])} nJ per "
           "inference besides the crossbars' (cost/report.md lists them and what the estimate "
           "leaves out)."] if m.get("digital_energy_nJ") is not None else []),
        *attribution_markdown(m.get("cost_attribution")),
        "", "Full cost report: [cost/report.md](cost/report.md).", ""]


def robustness_markdown(m: dict) -> list[str]:
    """report.md's robustness section: the steps used and the ablation."""
    rob = m.get("robustness")
    if not rob:
        return []
    s, rep = rob["settings"], rob["repair_mean"]
    retraining = ("on" if s["hardware_aware"] else "off") if m.get("compressor", "admm") \
        in RETRAINING else f"none ({m.get('compressor')} does not retrain)"
    calib = f"on ({s['calibration_samples']} images)" if s["output_calibration"] else "off"
    lines = ["## Robustness (robustness group)", "",
             f"- hardware-aware retraining: {retraining}; "
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


def fmt(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def array_line(xbar: Mapping) -> str:
    """The array model of a crossbar config (as a dict) in words."""
    array = xbar.get("array")
    if array is None:
        return "ideal (no wire resistance)"
    return ", ".join(f"{k}={v}" for k, v in array.items())


def write_compress_report(metrics: dict, plan: MappingPlan, history: list[dict],
                          run_dir: Path) -> None:
    """report.md: accuracy, compression, cost and per-layer mapping, with plots."""
    plots = plots_compress(metrics, history, run_dir)
    m = metrics
    lines = [
        f"# Compression run: {m['model']} on {m['dataset']}", "",
        *[f"> **Warning:** {w}\n" for w in m.get("warnings", [])],
        "## Accuracy (test set, %)", "", "| | accuracy |", "|---|---:|",
        f"| dense (software) | {m['dense_accuracy']:.2f} |",
        f"| compressed (software) | {m['compressed_accuracy']:.2f} |",
        f"| compressed on ideal crossbar | {m['crossbar_ideal_accuracy']:.2f} |",
        f"| compressed on {m['chips']} programmed chips | mean {m['crossbar_accuracy_mean']:.2f}"
        f" (sample std over chips {m['crossbar_accuracy_std']:.2f}; 95 % CI of the mean +- "
        f"{m.get('crossbar_accuracy_ci95', 0.0):.2f}; min {min(m['crossbar_accuracies']):.2f}) |",
        "", f"Drop vs dense: {m['accuracy_drop_ideal']:.2f} points (ideal devices), "
        f"{m['accuracy_drop_mean']:.2f} points (mean over chips).", "",
        *chip_test_markdown(m),
        *yield_markdown(m.get("yield")),
        *robustness_markdown(m),
        "## Compression", "",
        f"- weights: {m['dense_weights']} dense, {m['mapped_weights']} on live crossbar rows "
        f"and columns: **{m['compression_ratio']:.2f}x**",
        f"- conductance levels per device: {m['levels']}",
        f"- tiles: {m['tiles']} (dense baseline {m['baseline_tiles']})",
        f"- compressor: {m['compressor']} ({m['timings_s'][m['compressor']]:.1f} s)", "",
        *([allocation_markdown(m["allocation"])] if m.get("allocation") else []),
        *cost_markdown(m),
    ]
    prog = m["programming"]
    lines += ["## Programming a chip (mean over chips)", "",
              f"- {prog['cells']:.0f} cells, " + (
                  f"write-verify: {prog['pulses_per_cell']:.2f} pulses per cell, "
                  f"{prog['failed_cells']:.1f} cells left outside the band"
                  if m["device"]["write_verify"] else "single-shot (one pulse per cell)"),
              f"- energy {prog['energy_uJ']:.3g} uJ (cell-only lower bound), time "
              f"{prog['time_serial_s']:.3g} s one cell at a time, "
              f"{prog['time_tiles_parallel_s']:.3g} s with tiles in parallel "
              "(docs/crossbar.md, 'Programming cost')",
              *([f"- all {m['chips']} chips of this run: {tot['pulses']:.4g} pulses, "
                 f"{tot['energy_uJ']:.4g} uJ, {tot['time_tiles_parallel_s']:.4g} s with "
                 "tiles in parallel"] if (tot := m.get("programming_total")) else []),
              *([f"- selective write-verify: {m['robustness']['settings']['verify_fraction']:g}"
                 f" of the live weights verified, chosen by "
                 f"{m['robustness']['settings']['verify_ranking']} "
                 "(memxbar/experiments/selective_verify.py)"]
                if m["device"]["write_verify"] and m.get("robustness", {}).get(
                    "settings", {}).get("verify_fraction", 1.0) < 1.0 else []), "",
              "## Device", "", "```", DeviceModel.from_dict(m["device"]).describe(), "```", "",
              f"Array model: {array_line(m['crossbar'])}.", "",
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
    lines += [f"![{p}](cost/{p})" for p in ("tiles_per_layer.png", "energy_breakdown.png",
                                             "reduction_waterfall.png")
              if (run_dir / "cost" / p).is_file()]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")


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
            f"array {array_line(xbar.to_dict())}; repair: {', '.join(steps) or 'none'}. "
            f"{chips} programmed chips{per_point}, {n_test} test samples; error bands: 95 % CI "
            f"of the mean over chips.")


def summary_row(accs: list[float], **fields: object) -> dict:
    mean, std = mean_std(accs)
    return {**fields, "mean": mean, "std": std, "ci95": ci95(accs), "min": min(accs),
            "max": max(accs), "chips": len(accs)}


def plot_study(rows: list[dict], chip_rows: list[dict], grids: list[dict],
                sensitivity: list[dict], reference: dict, note: str, run_dir: Path,
                severity: dict | None = None) -> list[str]:
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
                               {k: v for k, v in reference.items() if isinstance(v, tuple)},
                               severity)
        names.append("layer_sensitivity.png")
    return names


def study_markdown(m: dict, plots: list[str]) -> str:
    lines = [f"# Device study: {m['model']}", "",
             f"Software accuracy: dense {m['dense_accuracy']:.2f}%, compressed "
             f"{m['compressed_accuracy']:.2f}% (whole test set); dense "
             f"{m['dense_accuracy_chip_samples']:.2f}%, compressed "
             f"{m['compressed_accuracy_chip_samples']:.2f}% on the "
             f"{m['crossbar_test_samples']} test samples the chips see. Each point: mean, std "
             f"and 95 % CI of the mean over {m['chips']} programmed chips.",
             "", m["held_fixed"]]
    if m["study"]:
        lines += ["", "## One setting at a time", "",
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
        lines += ["", "## Per-layer sensitivity (only this layer on the non-ideal device)", ""]
        sev = m.get("layer_sensitivity_severity")
        if sev:
            tried = ", ".join(f"x{t['factor']:g}: {t['drop']:.2f}" for t in sev["tried"])
            lines += [f"The non-ideal device: the study's device with its programming spread, "
                      f"read noise and fault rates x{sev['factor']:g}, the mildest tried at "
                      f"which every layer on it drops the chips' mean at least "
                      f"{sev['target_drop']:g} points below the ideal chip "
                      f"(study.sensitivity_drop; drops tried: {tried}).", ""]
        lines += ["| layer | mean (%) | 95 % CI | min | max |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['layer']} | {r['mean']:.2f} | +-{r['ci95']:.2f} | {r['min']:.2f} | "
                  f"{r['max']:.2f} |" for r in m["layer_sensitivity"]]
        lines += [f"| *{k}* | {mean:.2f} | +-{half:.2f} | | |"
                  for k, (mean, half) in m["layer_sensitivity_reference"].items()]
    if m["failed"]:
        lines += ["", "## Failed points", "", "| point | error |", "|---|---|"]
        lines += [f"| {f['point']} | {f['error']} |" for f in m["failed"]]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
