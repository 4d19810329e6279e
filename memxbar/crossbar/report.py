"""Cost reports: report.md, cost.csv, cost.json and plots from a mapping plan.

Command line::

    python -m memxbar.crossbar.report --plan plan.json --config crossbar.json --out DIR \
        [--table isaac]
    python -m memxbar.crossbar.report --isaac-check          # model vs ISAAC Table 6 tile totals
    python -m memxbar.crossbar.report --validate             # model vs published chips (TOPS/W)

``--config`` is a JSON of :class:`~crossbar.config.CrossbarConfig` fields; ``--cost`` an
optional JSON of :class:`~crossbar.cost.CostConfig` fields. Every file is written atomically,
after every input is checked; ``--out`` is a new or empty folder, or an earlier cost report's
(never a folder of other files named report.md, cost.csv...). An option given twice is refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import style  # noqa: E402
from ._validate import fail  # noqa: E402
from .activity import ArrayActivity  # noqa: E402
from .config import CrossbarConfig  # noqa: E402
from .cost import (  # noqa: E402
    PARTS,
    ComponentTable,
    CostConfig,
    CostEstimate,
    LayerCost,
    ModelCost,
    available_tables,
    baseline_description,
    estimate,
    load_table,
)
from .cost_range import total_range  # noqa: E402
from .digital import DigitalWork, digital_energy_pJ  # noqa: E402
from .io import (  # noqa: E402
    Once,
    atomic_write_bytes,
    atomic_write_text,
    check_out_folder,
    one_line,
    run_cli,
)
from .plan import MappingPlan, check_plan  # noqa: E402
from .validate import isaac_tile_comparison, validation_markdown  # noqa: E402

style.apply()  # Type 42 fonts in PDFs, 300 dpi PNGs

LAYER_COLUMNS = ("tiles", "arrays", "live_rows", "live_cols", "word_lines", "bit_lines",
                 "devices", "spare_devices", "weight_slices", "dacs", "adcs", "mvms_per_sample",
                 "input_cycles", "dac_drives", "adc_conversions", "array_reads", "cells_read",
                 "calibration_register_bits", "calibration_ops", "latency_ns")


# ------------------------------------------------------------------------------ csv / md
def cost_rows(est: CostEstimate) -> list[dict]:
    """One row per layer and variant (``compressed``, ``baseline``), plus a ``TOTAL`` row
    each: counts, area (um^2) and energy (pJ) per component, latency (ns)."""
    rows = []
    for variant, mc in (("compressed", est.compressed), ("baseline", est.baseline)):
        if mc is None:
            continue
        for layer in mc.layers:
            row = {"variant": variant, "layer": layer.name}
            row.update({k: getattr(layer, k) for k in LAYER_COLUMNS})
            row.update({f"area_um2_{k}": v for k, v in layer.area_um2.items()})
            row.update({f"energy_pJ_{k}": v for k, v in layer.energy_pJ.items()})
            row["area_um2"] = layer.total_area_um2
            row["energy_pJ"] = layer.total_energy_pJ
            rows.append(row)
        total = {"variant": variant, "layer": "TOTAL"}
        total.update({k: sum(r[k] for r in rows if r["variant"] == variant)
                      for k in LAYER_COLUMNS if k not in ("weight_slices", "mvms_per_sample",
                                                          "input_cycles", "latency_ns")})
        total["latency_ns"] = mc.latency_ns
        total.update({f"area_um2_{k}": v for k, v in mc.area_um2.items()})
        total.update({f"energy_pJ_{k}": v for k, v in mc.energy_pJ.items()})
        total["area_um2"] = mc.total_area_mm2 * 1e6
        total["energy_pJ"] = mc.total_energy_nJ * 1e3
        rows.append(total)
    return rows


def _csv_text(rows: list[dict]) -> str:
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def digital_summary(work: Sequence[DigitalWork], table: ComponentTable, cost: CostConfig
                    ) -> dict:
    """The energy per inference of the work off the crossbars (:mod:`crossbar.digital`):
    MACs at the table's ``multiply_add``, simple operations at ``digital_op``, look-ups at
    ``cost.output_bits`` bits of ``buffer``; ``priced`` False (no energies) when the table has
    no such entries. Energy only: the area of digital logic depends on how many units a design
    provisions."""
    kinds = {c.kind for c in table.components}
    priced = {"multiply_add", "digital_op", "buffer"} <= kinds
    rows, ends = [], [0.0, 0.0]
    for w in work:
        row = w.to_dict()
        if priced and w.counted:
            energies = [table.get(k).energy_J for k in ("multiply_add", "digital_op", "buffer")]
            energies[2] *= cost.output_bits
            row["energy_nJ"] = digital_energy_pJ(w, *energies) * 1e-3
            for end in (0, 1):  # every kind at its low / high end (crossbar.cost_range)
                f = [table.ranges[k].energy[end] if k in table.ranges else 1.0
                     for k in ("multiply_add", "digital_op", "buffer")]
                ends[end] += digital_energy_pJ(
                    w, *(e * x for e, x in zip(energies, f, strict=True))) * 1e-3
        rows.append(row)
    total = sum(r.get("energy_nJ", 0.0) for r in rows) if priced else None
    return {"priced": priced, "layers": rows, "energy_nJ": total,
            "energy_nJ_range": ends if priced else None,
            "not_counted": [f"{w.name} ({w.kind})" for w in work if not w.counted]}


PER_CONVERSION = ("adc", "sample_hold", "shift_add", "output_register")
"""Components whose energy is paid once per ADC conversion."""


def energy_drivers(est: CostEstimate, input_zeros: Mapping[str, float] | None = None,
                   activity: Mapping[str, ArrayActivity] | None = None) -> list[dict]:
    """Per layer of the compressed design, what its energy is made of and what would lower it:
    its share of the total, the largest component (the per-conversion parts counted together)
    with its count, the MVMs per sample, the share of the opened cells that hold weights, and
    a hint naming the setting or pruning that acts on the largest part. ``input_zeros``
    (:func:`crossbar.digital.input_zero_fractions`, measured on real inputs) adds each layer's
    share of zero inputs and the DAC drive energy a design skipping them would save;
    ``activity`` (:func:`crossbar.activity.array_activity`, on a programmed chip) adds the
    array's measured ``V^2 G t`` as a share of its full-scale read, and the array energy of
    the table at that activity (unless ``cost.data_dependent``, the estimate itself stays the
    worst case: every input driven, every cell read at full scale)."""
    c, x = est.compressed, est.xbar
    total = c.total_energy_nJ * 1e3
    out = []
    for layer in c.layers:
        e = layer.energy_pJ
        groups = {"ADC conversions": sum(e[k] for k in PER_CONVERSION),
                  "DAC drives": e["dac"] + e["input_register"],
                  "array reads": e["crossbar"], "buffer traffic": e["buffer"],
                  "output calibration": e["multiply_add"] + e["calibration_register"]}
        top = max(groups, key=groups.get)
        count = {"ADC conversions": layer.adc_conversions, "DAC drives": layer.dac_drives,
                 "array reads": layer.cells_read, "buffer traffic": None,
                 "output calibration": layer.calibration_ops}[top]
        opened = layer.arrays * x.tile_rows * x.tile_cols
        use = layer.devices / opened if opened else 0.0
        hint = {"ADC conversions": "fewer ADC bits or more bit lines per ADC "
                                   "(cost.cols_per_adc), or prune this layer's output columns",
                "DAC drives": "fewer DAC bits, or prune this layer's input rows (word lines)",
                "array reads": "prune rows and columns (every cell of a live line is read)",
                "buffer traffic": "fewer live inputs and outputs (prune rows and columns)",
                "output calibration": "output calibration costs a multiply-add per output "
                                      "(robustness.output_calibration)"}[top]
        if layer.mvms_per_sample > 1:
            hint += f"; it runs {layer.mvms_per_sample} MVMs per sample, so each saving counts "\
                    f"{layer.mvms_per_sample} times"
        if use < 0.25:
            hint += f"; only {100 * use:.0f} % of its opened cells hold weights: smaller tiles"
        layer_pJ = layer.total_energy_pJ
        zero = None if input_zeros is None else input_zeros.get(layer.name)
        skippable = None if zero is None else zero * groups["DAC drives"] * 1e-3
        if zero is not None and zero >= 0.25:
            hint += (f"; {100 * zero:.0f} % of its inputs are zero: skipping their drives "
                     f"would save {_fmt(skippable)} nJ")
        act = None if activity is None else activity.get(layer.name)
        if act is not None and not est.cost.data_dependent and act.activity < 0.5 \
                and top == "array reads":
            hint += (f"; its arrays dissipate {100 * act.activity:.0f} % of a full-scale "
                     "read on real inputs (cost.data_dependent=true prices that)")
        out.append({"layer": layer.name, "energy_nJ": layer_pJ * 1e-3,
                    "array_activity_pct": None if act is None else 100 * act.activity,
                    "array_v2gt_nJ": None if act is None else act.energy_pJ * 1e-3,
                    "zero_inputs_pct": None if zero is None else 100 * zero,
                    "skippable_drive_nJ": skippable,
                    "share_pct": 100 * layer_pJ / total if total else 0.0, "largest": top,
                    "largest_share_pct": 100 * groups[top] / layer_pJ if layer_pJ else 0.0,
                    "count": count, "mvms_per_sample": layer.mvms_per_sample,
                    "cell_use_pct": 100 * use, "hint": hint})
    return sorted(out, key=lambda r: -r["energy_nJ"])


def _driver_lines(drivers: Sequence[Mapping], data_dependent: bool = False) -> list[str]:
    measured = any(r["zero_inputs_pct"] is not None for r in drivers)
    active = any(r.get("array_activity_pct") is not None for r in drivers)
    priced = ("the estimate skips the zero inputs and reads the arrays at the measured "
              "activity (cost.data_dependent)" if data_dependent else
              "the estimate still drives every input and reads every cell at full scale "
              "(the worst case; cost.data_dependent=true prices what was measured)")
    lines = ["", "## What drives the energy", "",
             "Per layer, largest first: the part of its energy that dominates (the parts paid "
             "per ADC conversion counted together), how often it is paid per inference, and "
             "what acts on it."
             + (" Zero inputs: measured on real inputs." if measured else "")
             + (" Array activity: the array's V^2 G t on real inputs on the first programmed "
                "chip, in percent of a full-scale read (every cell at g_max, every line at the "
                "read voltage); V^2 G t: that energy itself (crossbar.activity)."
                if active else "") + (f" Here {priced}." if measured or active else ""), "",
             "| layer | energy (nJ) | share | largest part | of the layer | count | MVMs / "
             "sample | opened cells used |" + (" zero inputs |" if measured else "")
             + (" array activity | V^2 G t (nJ) |" if active else "") + " what lowers it |",
             "|---|---:|---:|---|---:|---:|---:|---:|" + ("---:|" if measured else "")
             + ("---:|---:|" if active else "") + "---|"]
    for r in drivers:
        count = "" if r["count"] is None else f"{r['count']:,}"
        zero = "" if r["zero_inputs_pct"] is None else f"{r['zero_inputs_pct']:.0f} %"
        act = "" if r.get("array_activity_pct") is None else \
            f" {r['array_activity_pct']:.1f} % | {_fmt(r['array_v2gt_nJ'])} |"
        lines.append(f"| {r['layer']} | {_fmt(r['energy_nJ'])} | {r['share_pct']:.1f} % | "
                     f"{r['largest']} | {r['largest_share_pct']:.0f} % | {count} | "
                     f"{r['mvms_per_sample']} | {r['cell_use_pct']:.0f} % |"
                     + (f" {zero} |" if measured else "")
                     + ((act or " | |") if active else "") + f" {r['hint']} |")
    return lines


def _range_lines(est: CostEstimate) -> list[str]:
    r, c, b = est.ranges, est.compressed, est.baseline
    lines = ["", "## Ranges (low / typical / high)", "",
             "Each component kind at the low and at the high value of other published sources "
             "(factors and sources below). Totals are sums of non-negative parts, so all kinds "
             "at one end together bound them; a reduction's range is its extreme over every "
             "combination of ends, the same component in the design and the baseline. Bounds "
             "across different designs, not a confidence interval (docs/cost_model.md, "
             "'Ranges').", "", "| | low | typical | high |", "|---|---:|---:|---:|"]
    rows = [("energy / inference, design (nJ)", "compressed", "energy_nJ", c.total_energy_nJ),
            ("area, design (mm2)", "compressed", "area_mm2", c.total_area_mm2),
            ("power, design (mW)", "compressed", "power_mW", c.power_mW)]
    if b is not None:
        rows += [("energy / inference, baseline (nJ)", "baseline", "energy_nJ",
                  b.total_energy_nJ),
                 ("area, baseline (mm2)", "baseline", "area_mm2", b.total_area_mm2)]
    for label, who, key, typical in rows:
        lo, hi = r[who][key]
        lines.append(f"| {label} | {_fmt(lo)} | {_fmt(typical)} | {_fmt(hi)} |")
    if b is not None:
        for key in ("energy", "area", "power"):
            lo, hi = r[f"{key}_reduction_pct"]
            typical = est.reduction[f"{key}_reduction_pct"]
            lines.append(f"| {key} reduction | {lo:.1f} % | {typical:.1f} % | {hi:.1f} % |")
    lines += ["", "| kind | energy low | energy high | area low | area high | sources |",
              "|---|---:|---:|---:|---:|---|"]
    for kind, k in r["kinds"].items():
        (el, eh), (al, ah) = k["energy_factor"], k["area_factor"]
        src = "; ".join(f"{end.replace('_', ' ')}: {text}" for end, text in k["sources"].items())
        lines.append(f"| {kind} | {el:.2f}x | {eh:.2f}x | {al:.2f}x | {ah:.2f}x | {src} |")
    if r["without_range"]:
        lines += ["", "No second source, taken as exact: " + ", ".join(r["without_range"])
                  + "."]
    return lines


def _digital_lines(dig: Mapping, crossbar_nJ: float) -> list[str]:
    lines = ["", "## Layers off the crossbars (digital)", ""]
    if not dig["priced"]:
        return lines + ["The component table has no `multiply_add`/`digital_op` entries: the "
                        "digital work below is counted, not priced."]
    total = dig["energy_nJ"]
    lo, hi = dig.get("energy_nJ_range") or (total, total)
    lines += [f"Counted on a real input with forward hooks (crossbar.digital): "
              f"{_fmt(total)} nJ per inference (range {_fmt(lo)}-{_fmt(hi)}), "
              f"{100 * total / (total + crossbar_nJ):.1f} % "
              f"of {_fmt(total + crossbar_nJ)} nJ with the crossbar part. Energy only (their "
              "logic area depends on how many units a design provisions). MACs at "
              "`multiply_add`, simple operations at `digital_op`, look-ups as buffer reads.",
              "", "| module | type | MACs | other ops | look-ups | energy (nJ) |",
              "|---|---|---:|---:|---:|---:|"]
    for r in dig["layers"]:
        if r["counted"]:
            lines.append(f"| {r['name']} | {r['kind']} | {r['macs']:.0f} | {r['ops']:.0f} | "
                         f"{r['lookups']:.0f} | {_fmt(r['energy_nJ'])} |")
    if dig["not_counted"]:
        lines += ["", "Not counted (no counting rule for their type): "
                  + ", ".join(dig["not_counted"]) + "."]
    return lines


def markdown_report(est: CostEstimate, plots: Sequence[str] = (),
                    digital: Mapping | None = None,
                    drivers: Sequence[Mapping] | None = None) -> str:
    """report.md: settings, per-layer table, totals, reductions against the baseline, and the
    layers off the crossbars when ``digital`` (:func:`digital_summary`) is given."""
    c, b = est.compressed, est.baseline
    x = est.xbar
    lines = [
        "# Hardware cost report",
        "",
        f"Component table: `{c.table}`; clock {est.cost.clock_MHz:g} MHz; "
        f"{est.cost.cols_per_adc} bit lines per ADC; tiles {x.tile_rows}x{x.tile_cols}, "
        f"{x.mapping} mapping, weight slices {x.weight_slices}, "
        f"DAC {x.dac_bits if x.dac_bits is not None else est.cost.default_dac_bits} bit"
        f"{' (bit-serial)' if x.bit_serial else ''}, "
        f"ADC {x.adc_bits if x.adc_bits is not None else est.cost.default_adc_bits} bit"
        f"{' (ideal in the simulator; costed at the default)' if x.adc_bits is None else ''}; "
        f"spare word lines / output column groups per tile {x.spare_rows} / {x.spare_cols}; "
        f"output calibration {'on' if x.output_calibration else 'off'}.",
        "Equations and assumptions: docs/cost_model.md.",
        "",
        f"Baseline: {baseline_description(est.cost)}." if b else "No baseline was costed.",
        "",
        "## Per layer (compressed)",
        "",
        "| layer | tiles | live rows | live cols | DACs | ADCs | slices | ADC conv. | "
        "spare devices | calib. MACs | area (mm2) | energy (nJ) | latency (us) |"
        + (" dense tiles | dense energy (nJ) |" if b else ""),
        "|---|" + "---:|" * 12 + ("---:|---:|" if b else ""),
    ]
    base_by_name = {layer.name: layer for layer in b.layers} if b else {}
    shown: set[str] = set()
    for layer in c.layers:
        row = (f"| {layer.name} | {layer.tiles} | {layer.live_rows} | {layer.live_cols} | "
               f"{layer.dacs} | {layer.adcs} | {layer.weight_slices} | {layer.adc_conversions} | "
               f"{layer.spare_devices} | {layer.calibration_ops} | "
               f"{_fmt(layer.total_area_um2 * 1e-6)} | {_fmt(layer.total_energy_pJ * 1e-3)} | "
               f"{_fmt(layer.latency_ns * 1e-3)} |")
        if b:
            row += _dense_cells(layer.name, base_by_name, shown)
        lines.append(row)
    lines += ["", "## Totals", "",
              "| | compressed |" + (" dense baseline | reduction |" if b else ""),
              "|---|---:|" + ("---:|---:|" if b else "")]
    items = [("tiles", "tiles", lambda m: m.tiles),
             ("area (mm2)", "area", lambda m: m.total_area_mm2),
             ("energy / inference (nJ)", "energy", lambda m: m.total_energy_nJ),
             ("latency / inference (us)", "latency", lambda m: m.latency_ns * 1e-3),
             ("power (mW)", "power", lambda m: m.power_mW)]
    for label, key, get in items:
        row = f"| {label} | {_fmt(get(c))} |"
        if b:
            red = est.reduction
            row += (f" {_fmt(get(b))} | {_fmt(red[key + '_reduction_pct'])}% "
                    f"({_fmt(red[key + '_ratio'])}x) |")
        lines.append(row)
    if est.ranges is not None:
        lines += _range_lines(est)
    lines += ["", "## Breakdown by component (compressed)", "",
              "| component | area (mm2) | energy (nJ) |", "|---|---:|---:|"]
    for k in PARTS:
        lines.append(f"| {k} | {_fmt(c.area_um2[k] * 1e-6)} | {_fmt(c.energy_pJ[k] * 1e-3)} |")
    if est.attribution:
        lines += ["", "## Where the reduction comes from", "",
                  "One change per step from the baseline to the design, each with the earlier "
                  "ones applied; changes in percent of the baseline (they add up to the total).",
                  "", "| step | change | tiles | area (mm2) | area change | energy (nJ) | "
                  "energy change |", "|---|---|---:|---:|---:|---:|---:|"]
        for a in est.attribution:
            lines.append(f"| {a['step']} | {a['change']} | {a['tiles']} | "
                         f"{_fmt(a['area_mm2'])} | {a['area_change_pct']:+.1f}% | "
                         f"{_fmt(a['energy_nJ'])} | {a['energy_change_pct']:+.1f}% |")
    lines += _driver_lines(drivers if drivers is not None else energy_drivers(est),
                           est.cost.data_dependent)
    excluded = list(EXCLUDED)
    if digital is not None:
        lines += _digital_lines(digital, c.total_energy_nJ)
        if digital["priced"]:
            excluded[2] = DIGITAL_EXCLUDED
    lines += ["", "## Not in this estimate", "",
              *[f"- {item}" for item in excluded]]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


EXCLUDED = (
    "static (leakage) power of the periphery and buffers: energies are dynamic, per "
    "inference; power is energy over latency",
    "interconnect between tiles (an on-chip network or bus) and off-chip data movement",
    "every layer not in the plan: layers kept digital (`layers.digital`), BatchNorm, pooling, "
    "activations, residual adds, softmax, attention's activation products (Q K^T, x V), the "
    "gate arithmetic of recurrent layers, embeddings (lookups) and layer types with no crossbar "
    "mapping (ConvTranspose, Conv3d, Bilinear; warned by name when a model is converted)",
    "programming and write-verify energy (reported per chip in the run's report.md, "
    "docs/crossbar.md 'Programming cost'), refresh or recalibration over a chip's life",
    "control logic, clock distribution and I/O pads; area of unused tile space beyond the "
    "tiles the plan opens",
)
"""What the cost report leaves out, listed in every report.md (issue 23)."""

DIGITAL_EXCLUDED = (
    "the area of the digital logic of the layers off the crossbars (their energy is above), "
    "and what runs outside modules: residual adds, functional activations and softmax "
    "called as functions, reshapes")
"""EXCLUDED's third item when the layers off the crossbars are costed."""


def _dense_cells(name: str, base: Mapping[str, LayerCost], shown: set[str]) -> str:
    """The dense baseline's tiles and energy of layer ``name``; for a part ``<layer>.<part>``
    of a layer the compression replaced (a decomposed convolution), that layer's, named, on
    its first part only."""
    whole = name if name in base else next((n for n in base if name.startswith(n + ".")), None)
    if whole is None or whole in shown:
        return " - | - |"
    shown.add(whole)
    d, label = base[whole], "" if whole == name else f" ({whole})"
    return f" {d.tiles}{label} | {_fmt(d.total_energy_pJ * 1e-3)}{label} |"


# ----------------------------------------------------------------------------------- plots
FIGURE_FORMATS = ("png", "pdf")
"""Every cost figure is written as PNG (for report.md) and PDF (vector, for papers)."""


def _encode(fig) -> dict[str, bytes]:
    out = {}
    for fmt in FIGURE_FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=style.PNG_DPI, bbox_inches="tight")
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out


def _layer_slots(c: ModelCost, b: ModelCost | None) -> tuple[list[str], list[int], list[int]]:
    """One x slot per layer name: ``(names, slots of c's layers, slots of b's layers)``. The
    same layers share slots; a baseline layer that the compression replaced by parts named
    ``<layer>.<part>`` (a decomposed convolution) is followed by its parts' slots."""
    design = [layer.name for layer in c.layers]
    base = [layer.name for layer in b.layers] if b else []
    names: list[str] = []
    for n in base:
        names += [x for x in (n, *(d for d in design if d.startswith(n + "."))) if x not in names]
    names += [x for x in design if x not in names]
    slot = {n: i for i, n in enumerate(names)}
    return names, [slot[n] for n in design], [slot[n] for n in base]


def _per_layer_plot(c: ModelCost, b: ModelCost | None, get, ylabel: str, title: str,
                    integer: bool = False):
    names, c_idx, b_idx = _layer_slots(c, b)
    idx = range(len(names))
    width = 0.4 if b else 0.8
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 3.5))
    if b:
        ax.bar([i - width / 2 for i in b_idx], [get(layer) for layer in b.layers], width,
               label="dense baseline", color="#bbbbbb")
    ax.bar([i + (width / 2 if b else 0) for i in c_idx], [get(layer) for layer in c.layers],
           width, label="compressed", color="#1f77b4")
    ax.set_xticks(list(idx), names, rotation=45, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    if integer:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.legend()
    return fig


def _stack(ax, positions, models: Sequence, attr: str, scale: float, width: float,
           labels: bool, hatch: str | None = None) -> None:
    """Bars at ``positions`` stacked by component (one colour per component)."""
    bottoms = [0.0] * len(models)
    colors = plt.get_cmap("tab20").colors  # one distinct colour per component (> 10 parts)
    for k, comp in enumerate(PARTS):
        vals = [getattr(m, attr).get(comp, 0.0) * scale for m in models]
        if not any(vals):
            continue
        ax.bar(positions, vals, width, bottom=bottoms, label=comp if labels else None,
               color=colors[k % len(colors)], hatch=hatch, edgecolor="white" if hatch else None)
        bottoms = [x + y for x, y in zip(bottoms, vals, strict=True)]


def _breakdown_plot(c: ModelCost, b: ModelCost | None, attr: str, scale: float,
                    ylabel: str, title: str, table: ComponentTable | None = None):
    """Whole-model bars stacked by component; with ``table``'s ranges, a whisker from the
    total at every kind's low value to the total at every kind's high value."""
    variants = [("compressed", c)] + ([("dense baseline", b)] if b else [])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    _stack(ax, [v for v, _ in variants], [m for _, m in variants], attr, scale, 0.8, True)
    if table is not None and table.ranges:
        quantity = "energy" if attr == "energy_pJ" else "area"
        for x, (_, m) in enumerate(variants):
            parts = getattr(m, attr)
            lo, hi = (v * scale for v in total_range(parts, table, quantity))
            mid = sum(parts.values()) * scale
            ax.errorbar(x, mid, yerr=[[mid - lo], [hi - mid]], color="black", capsize=6,
                        lw=1.2, label="low-high range" if x == 0 else None)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _layer_breakdown_plot(c: ModelCost, b: ModelCost | None, attr: str, scale: float,
                          ylabel: str, title: str):
    """Per layer, stacked by component: the compressed design (left bar of each pair) and the
    dense baseline (right, hatched)."""
    names, c_idx, b_idx = _layer_slots(c, b)
    width = 0.4 if b else 0.8
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 3), 3.8))
    idx = list(range(len(names)))
    _stack(ax, [i - (width / 2 if b else 0) for i in c_idx], list(c.layers), attr, scale, width,
           True)
    if b:
        _stack(ax, [i + width / 2 for i in b_idx], list(b.layers), attr, scale, width, False,
               hatch="//")
    ax.set_xticks(idx, names, rotation=45, ha="right")
    ax.set_xlabel("layer" + (" (left: compressed, right hatched: dense baseline)" if b else ""))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def cost_figures(est: CostEstimate, table: ComponentTable | None = None) -> dict[str, object]:
    """Matplotlib figures by PNG file name: per-layer tiles and energy (dense vs compressed),
    area and energy by component (whole model and per layer), and the reduction's waterfall
    when the attribution was computed."""
    c, b = est.compressed, est.baseline
    table = load_table(est.cost.table) if table is None else table
    return {
        "tiles_per_layer.png": _per_layer_plot(c, b, lambda layer: layer.tiles, "tiles",
                                               "Crossbar tiles per layer", integer=True),
        "energy_per_layer.png": _per_layer_plot(c, b, lambda layer: layer.total_energy_pJ * 1e-3,
                                                "energy / inference (nJ)", "Energy per layer"),
        "area_breakdown.png": _breakdown_plot(c, b, "area_um2", 1e-6, "area (mm2)",
                                              "Area by component", table),
        "energy_breakdown.png": _breakdown_plot(c, b, "energy_pJ", 1e-3,
                                                "energy / inference (nJ)",
                                                "Energy by component", table),
        "area_per_layer_breakdown.png": _layer_breakdown_plot(
            c, b, "area_um2", 1e-6, "area (mm2)", "Area per layer by component"),
        "energy_per_layer_breakdown.png": _layer_breakdown_plot(
            c, b, "energy_pJ", 1e-3, "energy / inference (nJ)",
            "Energy per layer by component"),
    } | ({"reduction_waterfall.png": waterfall_plot(est.attribution, est.ranges)}
         if est.attribution else {})


def waterfall_plot(attribution: Sequence[Mapping], ranges: Mapping | None = None):
    """Where the reduction comes from, for area and energy: the baseline's bar (100 %), one
    floating bar per step of :func:`crossbar.cost.attribution` (green: it saves, red: it
    adds; the change in percent of the baseline written on it) and the design's bar, with
    the range of the design in percent of the baseline (:mod:`crossbar.cost_range`) as a
    whisker when ``ranges`` has it."""
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    steps = list(attribution)
    names = [a["step"] for a in steps[1:]]
    for ax, key, label in ((axes[0], "area_change_pct", "area"),
                           (axes[1], "energy_change_pct", "energy / inference")):
        level = 100.0
        ax.bar(0, level, color="#888888")
        for i, a in enumerate(steps[1:], start=1):
            change = a[key]
            ax.bar(i, change, bottom=level, color="#2ca02c" if change < 0 else "#d62728")
            ax.text(i, level + max(change, 0) + 1.5, f"{change:+.1f}", ha="center",
                    va="bottom", fontsize=7)
            level += change
        ax.bar(len(steps), level, color="#1f77b4")
        span = (ranges or {}).get(f"{key.split('_')[0]}_of_baseline_pct")
        top = level
        if span:
            ax.errorbar(len(steps), level, yerr=[[max(level - span[0], 0.0)],
                                                 [max(span[1] - level, 0.0)]],
                        color="black", capsize=5, lw=1.2)
            top = max(level, span[1])
        ax.text(len(steps), top + 1.5, f"{level:.1f}" + (
            f"\n({span[0]:.1f}-{span[1]:.1f})" if span else ""), ha="center", va="bottom",
            fontsize=7)
        ax.set_xticks(range(len(steps) + 1), ["baseline", *names, "design"], rotation=30,
                      ha="right", fontsize=7)
        ax.set_ylabel(f"{label} (% of the baseline)")
        ax.set_ylim(0, max(110.0, max(100.0 + sum(max(a[key], 0) for a in steps), level) + 10))
        ax.set_title(label.capitalize(), fontsize=9)
    fig.suptitle("Where the reduction comes from (each step with the earlier ones applied)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def cost_plots(est: CostEstimate, table: ComponentTable | None = None) -> dict[str, bytes]:
    """File bytes by name: every figure of :func:`cost_figures` as ``.png`` and ``.pdf``."""
    out = {}
    for name, fig in cost_figures(est, table).items():
        for fmt, data in _encode(fig).items():
            out[str(Path(name).with_suffix("." + fmt))] = data
    return out


# ---------------------------------------------------------------------------------- writer
def _non_finite(data, path: str = "") -> tuple[str, float] | None:
    """The first ``(path, value)`` in nested ``data`` that is a NaN or an infinity."""
    if isinstance(data, float) and not math.isfinite(data):
        return path, data
    items = (data.items() if isinstance(data, Mapping) else
             enumerate(data) if isinstance(data, (list, tuple)) else ())
    for key, value in items:
        found = _non_finite(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def write_cost_report(
    plan: MappingPlan,
    config: CrossbarConfig,
    out_dir: str | os.PathLike,
    cost: CostConfig | None = None,
    table: str | os.PathLike | Mapping | ComponentTable | None = None,
    baseline: bool = True,
    plots: bool = True,
    digital: Sequence[DigitalWork] | None = None,
    input_zeros: Mapping[str, float] | None = None,
    activity: Mapping[str, ArrayActivity] | None = None,
    baseline_plan: MappingPlan | None = None,
) -> dict[str, Path]:
    """Estimate the cost of ``plan`` (and of its dense baseline) and write report.md,
    cost.csv, cost.json and the plots into ``out_dir``; returns the written paths by name.
    ``digital``: the model's work off the crossbars (:func:`crossbar.digital.digital_work`),
    priced in its own section and in cost.json's ``digital``; ``input_zeros``: each mapped
    layer's share of zero inputs (:func:`crossbar.digital.input_zero_fractions`), shown with
    what skipping them would save; ``activity``: each layer's array read measured on a
    programmed chip (:func:`crossbar.activity.array_activity`). With ``cost.data_dependent``
    both price the design (:func:`crossbar.cost.estimate`'s ``measured``). ``baseline_plan``:
    the model before a change of structure, whose dense mapping is the baseline
    (:func:`crossbar.cost.estimate`)."""
    measured = {}
    for name, z in (input_zeros or {}).items():
        measured.setdefault(name, {})["zero_inputs"] = z
    for name, a in (activity or {}).items():
        measured.setdefault(name, {})["activity"] = a.activity
    tab = load_table(table if table is not None else (cost or CostConfig()).table)  # read once
    est = estimate(plan, config, cost, tab, baseline=baseline, measured=measured or None,
                   baseline_plan=baseline_plan)
    data = est.to_dict()
    dig = None
    if digital is not None:
        dig = digital_summary(digital, tab, est.cost)
        data["digital"] = dig
    drivers = energy_drivers(est, input_zeros, activity)
    data["energy_drivers"] = drivers
    if activity:
        data["array_activity"] = {n: a.to_dict() for n, a in activity.items()}
    bad = _non_finite(data)
    if bad:
        fail(f"cost of {bad[0]}", bad[1], "a finite number (check the plan's counts: "
             "mvms_per_sample, in_features, out_features)")
    out = Path(out_dir)
    written: dict[str, Path] = {}
    images = cost_plots(est, tab) if plots else {}
    texts = {
        "cost.json": json.dumps(data, indent=2, allow_nan=False),
        "cost.csv": _csv_text(cost_rows(est)),
        "report.md": markdown_report(est, [n for n in images if n.endswith(".png")], dig,
                                     drivers),
    }
    for name, blob in images.items():
        atomic_write_bytes(out / name, blob)
        written[name] = out / name
    for name, text in texts.items():
        atomic_write_text(out / name, text)
        written[name] = out / name
    return written


# ------------------------------------------------------------------------- published check
# ------------------------------------------------------------------------------------- cli
REPORT_FILES = ("cost.json", "cost.csv", "report.md") + tuple(
    f"{name}.{fmt}" for name in ("tiles_per_layer", "energy_per_layer", "area_breakdown",
                                 "energy_breakdown", "area_per_layer_breakdown",
                                 "energy_per_layer_breakdown", "reduction_waterfall")
    for fmt in FIGURE_FORMATS)
"""Every file :func:`write_cost_report` may write (the figures of :func:`cost_figures`): the
command line refuses an ``--out`` folder where one of them is a file of something else."""

OPTIONS = {"clock_MHz": "--clock-MHz", "cols_per_adc": "--cols-per-adc", "table": "--table"}
"""The command-line options that override a CostConfig field."""


def _read_json(path: str | Path, what: str = "file") -> dict:
    """A JSON object from ``path``; a missing, unreadable or non-object file fails naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} {path} is not a JSON file ({type(exc).__name__}: "
                         f"{one_line(exc)}); allowed: the JSON the pipeline writes") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} holds {_json_kind(data)}; allowed: a JSON object")
    return data


def _json_kind(data: object) -> str:
    return "null" if data is None else f"a JSON {type(data).__name__}"


def _read_yaml(path: Path, what: str) -> dict:
    """A YAML mapping from ``path``, failing naming it."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{what} {path} is not a YAML file ({type(exc).__name__}: "
                         f"{one_line(exc)}); allowed: the config.yaml a run writes") from None
    if not isinstance(data, dict):
        held = "nothing" if data is None else f"a YAML {type(data).__name__}"
        raise ValueError(f"{what} {path} holds {held}; allowed: the config.yaml a run writes "
                         "(a YAML mapping)")
    return data


def _load_plan(path: str | Path, run: Path | None = None) -> MappingPlan:
    """The plan in ``path`` (``run``'s plan.json with ``--run``), naming the file in any
    failure."""
    allowed = "allowed: plan.json written by MappingPlan.save" + (
        f" (the plan of --run {run})" if run is not None else "")
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--plan {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--plan {path} is not a mapping plan ({type(exc).__name__}: "
                         f"{one_line(exc)}); {allowed}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--plan {path} is not a mapping plan (it holds "
                         f"{_json_kind(data)}); {allowed}")
    try:
        return MappingPlan.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"--plan {path} is not a mapping plan ({type(exc).__name__}: "
                         f"{one_line(exc)}); {allowed}") from None


def _crossbar(data: object, source: str) -> CrossbarConfig:
    """CrossbarConfig from ``data``, an error naming ``source`` (the file it came from)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: crossbar={data!r:.80} is invalid; allowed: a mapping of "
                         "CrossbarConfig fields")
    try:
        return CrossbarConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def _cost(data: object, source: str, overrides: Mapping) -> CostConfig:
    """CostConfig from ``data`` (read from ``source``) with the command line's overrides;
    each error names where the bad value came from."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: cost={data!r:.80} is invalid; allowed: a mapping of "
                         "CostConfig fields")
    try:
        cost = CostConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    for key, value in overrides.items():
        try:
            cost = cost.with_(**{key: value})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{OPTIONS[key]} {value}: {exc}") from None
    return cost


def _table(table: object, source: str) -> ComponentTable:
    """The component table ``table`` (a shipped name or a YAML path) given in ``source``."""
    import yaml

    try:
        return load_table(table)
    except ValueError as exc:
        if "is invalid; allowed:" in str(exc):
            raise ValueError(f"{source}: {one_line(exc)}") from None
        cause = exc
    except (OSError, TypeError, KeyError, AttributeError, yaml.YAMLError) as exc:
        cause = exc
    raise ValueError(f"{source}: table={str(table)!r} is not a component table "
                     f"({type(cause).__name__}: {one_line(cause)}); allowed: one of "
                     f"{', '.join(available_tables())} or a YAML file in the format of "
                     "memxbar/crossbar/data/isaac.yaml")


def _check_fits(plan: MappingPlan, xbar: CrossbarConfig, plan_source: str,
                xbar_source: str) -> None:
    """The plan was packed for these crossbar settings (tiles, mapping, weight slices)."""
    for layer in plan:
        try:
            check_plan(layer, xbar)
        except ValueError as exc:
            raise ValueError(f"{plan_source} was not made with the crossbar settings of "
                             f"{xbar_source}: {exc}") from None


def _check_out(out: Path) -> None:
    """``--out`` is a folder this run may fill: not a file, below no file, writable, and
    holding none of the report's file names unless it is an earlier cost report."""
    check_out_folder(out, "a folder (new, empty, or an earlier cost report's)")
    if not out.is_dir():
        return
    clash = [name for name in REPORT_FILES if (out / name).exists()]
    earlier = (out / "cost.json").is_file() and _is_cost_report(out / "cost.json")
    if clash and not earlier:
        raise ValueError(f"--out {out} holds {', '.join(clash[:3])}, not written by a cost "
                         "report (there is no cost.json of one beside them): the report would "
                         "overwrite them; allowed: a new or empty folder, or an earlier cost "
                         "report's (whose files are replaced)")


def _is_cost_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"compressed", "cost_config"} <= set(data)


def _from_run(ap: argparse.ArgumentParser, run: Path) -> tuple[MappingPlan, CrossbarConfig,
                                                                dict, str]:
    """The plan, crossbar settings and cost group a compress run used (the cost group with
    the file it came from)."""
    allowed = "allowed: a finished `python -m memxbar.experiments.compress` run folder"
    if not run.is_dir():
        ap.error(f"--run {run} is {'a file' if run.exists() else 'missing'}; {allowed}")
    files = {name: run / name for name in ("plan.json", "metrics.json", "config.yaml")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        ap.error(f"--run {run}: {', '.join(missing)} missing; {allowed}")
    folders = [str(p) for p in files.values() if not p.is_file()]
    if folders:
        ap.error(f"--run {run}: {', '.join(folders)} is not a file; {allowed}")
    metrics = _read_json(files["metrics.json"], "--run's metrics.json")
    if "crossbar" not in metrics:
        ap.error(f"--run {run}: metrics.json has no 'crossbar' settings (a run of an older "
                 "version); give --plan, --config and --out instead")
    source = f"--run's metrics.json {files['metrics.json']}"
    xbar = _crossbar(metrics["crossbar"], source)
    config = _read_yaml(files["config.yaml"], "--run's config.yaml")
    if "cost" not in config:
        raise ValueError(f"--run's config.yaml {files['config.yaml']} has no 'cost' group; "
                         "allowed: the config.yaml of a compress run (or give --plan, --config "
                         "and --cost)")
    plan = _load_plan(files["plan.json"], run)
    _check_fits(plan, xbar, f"--run's plan.json {files['plan.json']}", source)
    return plan, xbar, config["cost"], f"--run's config.yaml {files['config.yaml']}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m memxbar.crossbar.report``: write a cost report, or print the ISAAC check."""
    ap = argparse.ArgumentParser(prog="python -m memxbar.crossbar.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action=Once, help="a finished compress run folder: reads its "
                    "plan.json, the crossbar settings in metrics.json and the cost group in "
                    "config.yaml (--out defaults to <run>/cost_rerun)")
    ap.add_argument("--plan", action=Once, help="plan JSON written by MappingPlan.save")
    ap.add_argument("--config", action=Once, help="CrossbarConfig JSON the plan was built with")
    ap.add_argument("--cost", action=Once, help="CostConfig JSON (optional)")
    ap.add_argument("--out", action=Once, help="output folder: new, empty, or an earlier cost "
                    "report's")
    ap.add_argument("--table", action=Once,
                    help="component table: shipped name (isaac) or YAML path")
    ap.add_argument("--clock-MHz", action=Once, type=float, dest="clock_MHz")
    ap.add_argument("--cols-per-adc", action=Once, type=int, dest="cols_per_adc")
    ap.add_argument("--no-baseline", action="store_true", help="skip the dense baseline")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--isaac-check", action="store_true",
                    help="print the model's ISAAC tile totals against the paper's and exit")
    ap.add_argument("--validate", action="store_true",
                    help="print the cost model against published chips (NeuRRAM, ISAAC, Hung "
                    "et al. 2021; docs/cost_model.md) and exit")
    args = ap.parse_args(argv)
    if args.validate:
        others = [a for a in (argv if argv is not None else sys.argv[1:])
                  if a not in ("--validate", "--debug")]
        if others:
            ap.error(f"--validate with {' '.join(others)}: the validation runs the published "
                     "designs at their own settings and writes nothing; allowed: --validate "
                     "alone")
        print(validation_markdown())
        return 0
    paths = ("run", "plan", "config", "cost", "out", "table")
    empty = [f"--{k}" for k in paths if getattr(args, k) is not None and not getattr(args, k)]
    if empty:
        ap.error(f"{empty[0]} '' is empty; allowed: a path")
    if args.isaac_check:
        given = [f"--{k}" for k in paths[:-1] if getattr(args, k) is not None] + [
            opt for opt, dest in (("--clock-MHz", "clock_MHz"), ("--cols-per-adc",
                                                                 "cols_per_adc"),
                                  ("--no-baseline", "no_baseline"), ("--no-plots", "no_plots"))
            if getattr(args, dest) not in (None, False)]
        if given:
            ap.error(f"--isaac-check with {', '.join(given)}: the check models one ISAAC tile "
                     "at the paper's settings and writes nothing; allowed: --isaac-check alone "
                     "or with --table")
        table = _table(args.table, f"--table {args.table}") if args.table else "isaac"
        result = isaac_tile_comparison(table)
        print(json.dumps(result, indent=2))
        return 0
    overrides = {k: getattr(args, k) for k in ("table", "clock_MHz", "cols_per_adc")
                 if getattr(args, k) is not None}
    if args.run is not None:
        given = [f"--{k}" for k in ("plan", "config", "cost") if getattr(args, k) is not None]
        if given:
            ap.error(f"--run {args.run} with {', '.join(given)}: --run reads the run's own plan, "
                     "crossbar settings and cost group; allowed: either --run, or --plan and "
                     "--config (with an optional --cost)")
        plan, xbar, cost_data, cost_source = _from_run(ap, Path(args.run))
        out = Path(args.out) if args.out else Path(args.run) / "cost_rerun"
    else:
        missing = [k for k in ("plan", "config", "out") if getattr(args, k) is None]
        if missing:
            ap.error("missing " + ", ".join("--" + k for k in missing) + " (or give --run)")
        plan = _load_plan(args.plan)
        xbar = _crossbar(_read_json(args.config, "--config"), f"--config {args.config}")
        _check_fits(plan, xbar, f"--plan {args.plan}", f"--config {args.config}")
        cost_data = _read_json(args.cost, "--cost") if args.cost else {}
        cost_source, out = f"--cost {args.cost}", Path(args.out)
    cost = _cost(cost_data, cost_source, overrides)
    if cost.data_dependent:
        raise ValueError(f"{cost_source}: cost.data_dependent=True is invalid here; allowed: "
                         "false (this command line has a plan but no programmed chip or "
                         "inputs to measure; the compress app prices what it measures)")
    table = _table(cost.table, f"--table {args.table}" if args.table else
                   f"{cost_source} (its table)")
    _check_out(out)
    written = write_cost_report(plan, xbar, out, cost, table, baseline=not args.no_baseline,
                                plots=not args.no_plots)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
