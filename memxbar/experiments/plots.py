"""Figures of the run layer: every figure is written as PNG (for report.md) and PDF (vector,
for papers), axes say what they show and in which unit (not the config key), integer
quantities get integer ticks, logarithmic quantities log axes, and error bars are 95 %
confidence intervals of the mean over programmed chips (Student's t). The settings held fixed
go into a caption under the axes.

Plot functions take plain rows (dicts as study.json / collected.csv hold them), so they can
be re-drawn from a finished run's files.
"""

from __future__ import annotations

import io
import logging
import math
import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from memxbar.crossbar import style  # noqa: E402
from memxbar.crossbar.io import atomic_write_bytes  # noqa: E402

style.apply()  # Type 42 fonts in PDFs, 300 dpi PNGs (memxbar/crossbar/style.py)

from memxbar.experiments.estimators import ci95  # noqa: E402  (re-exported: one estimator)

log = logging.getLogger(__name__)

__all__ = ["axis_label", "ci95", "plt", "write_png"]

ACCURACY = "test accuracy (%)"

#: Axis labels (meaning and unit) of swept settings and metrics; other keys fall back to the
#: key with underscores as spaces and the unit suffix spelled out (see :func:`axis_label`).
LABELS = {
    "prog_sigma": "programming variation (lognormal sigma of G)",
    "read_sigma": "read noise (sigma, fraction of G)",
    "sa_rate": "stuck-at cells (SA0 + SA1, fraction)",
    "sa0_rate": "stuck-at-0 cells (fraction)",
    "sa1_rate": "stuck-at-1 cells (fraction)",
    "n_levels": "conductance levels per cell",
    "g_min_uS": "minimum conductance (uS)",
    "g_max_uS": "maximum conductance (uS)",
    "t_inference_s": "time after programming",
    "adc_bits": "ADC resolution (bits)",
    "dac_bits": "DAC resolution (bits)",
    "cell_bits": "bits per cell",
    "weight_bits": "weight bits",
    "adc_noise": "ADC noise (LSB rms)",
    "tile_rows": "tile rows (word lines)",
    "tile_cols": "tile columns (bit lines)",
    "range_percentile": "converter range percentile (%)",
    "r_wire_ohm": "wire resistance per cell, word and bit line (ohm)",
    "spare_rows": "spare word lines per tile",
    "spare_cols": "spare output columns per tile",
    "crossbar_accuracy_mean": "accuracy on chips (%, mean, 95 % CI)",
    "compressed_accuracy": "compressed accuracy, software (%)",
    "dense_accuracy": "dense accuracy, software (%)",
    "compression_ratio": "compression ratio (x)",
    "energy_reduction_pct": "energy reduction vs baseline (%)",
    "area_reduction_pct": "area reduction vs baseline (%)",
    "energy_nJ": "energy per inference (nJ)",
    "area_mm2": "chip area (mm2)",
    "power_mW": "power (mW)",
    "tiles": "crossbar tiles",
}

#: Quantities that only take integer values (integer ticks on their axes).
INTEGER = {"n_levels", "adc_bits", "dac_bits", "cell_bits", "weight_bits", "tile_rows",
           "tile_cols", "spare_rows", "spare_cols", "tiles", "chips"}

_UNITS = (("_uS", " (uS)"), ("_ohm", " (ohm)"), ("_nJ", " (nJ)"), ("_pJ", " (pJ)"),
          ("_mm2", " (mm2)"), ("_um2", " (um2)"), ("_pct", " (%)"), ("_s", " (s)"),
          ("_bits", " (bits)"))


CELL_FIELDS = {"programming.sigma": "prog_sigma", "read_noise.sigma": "read_sigma",
               "faults.sa0_rate": "sa0_rate", "faults.sa1_rate": "sa1_rate"}
"""Fields of the device's cell models labelled as the study's flat sweep keys."""


def axis_label(key: str) -> str:
    """What ``key`` (a swept setting, ``group.field`` or a metric) means, with its unit."""
    for path, flat in CELL_FIELDS.items():
        if key.removeprefix("override.").removeprefix("device.") == path:
            key = flat
    base = key.rsplit(".", 1)[-1]
    group = key.rsplit(".", 1)[0] if "." in key else ""
    if base in LABELS:
        label = LABELS[base]
    else:
        unit = ""
        for suffix, text in _UNITS:
            if base.endswith(suffix):
                base, unit = base[: -len(suffix)], text
                break
        label = base.replace("_", " ") + unit
    if group and group not in ("device", "crossbar", "override", "override.device",
                               "override.crossbar"):
        label = f"{group.removeprefix('override.')}: {label}"
    return label


def is_integer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in INTEGER


VECTOR_FORMATS = ("pdf", "svg", "eps")
"""Vector formats a figure can be written in besides its PNG."""


@dataclass
class FigureOptions:
    """How every figure is written (``experiments.replot``'s options; the apps use the
    defaults): ``width_in`` (None: each figure's own size; else scaled to it, the fonts kept,
    e.g. :data:`crossbar.style.WIDTHS_IN`), the ``vector`` formats besides the PNG, the PNG's
    ``dpi``, and whether the settings ``caption`` is drawn under the axes (off: written
    beside the figure as ``<name>.caption.txt``, for the paper's own caption)."""

    width_in: float | None = None
    vector: tuple[str, ...] = ("pdf",)
    dpi: int = style.PNG_DPI
    caption: bool = True


OPTIONS = FigureOptions()
"""The options in force (set by ``experiments.replot``)."""


def write_png(path: Path, fig) -> None:
    """The figure as ``path`` (PNG, for report.md) and the same name in each vector format of
    :data:`OPTIONS` (PDF by default, for papers), all written atomically; with the caption
    off, its text as ``<name>.caption.txt``."""
    if OPTIONS.width_in is not None:
        _resize(fig, OPTIONS.width_in)
        columns = len({round(ax.get_position().x0, 2) for ax in fig.axes
                       if ax.get_visible() and ax.get_label() != "<colorbar>"})
        if OPTIONS.width_in / columns < 2.0:
            log.warning("%s: %d panels side by side leave %.1f in each at a width of %.2f in; "
                        "they are cramped: --width page suits it", path.name, columns,
                        OPTIONS.width_in / columns, OPTIONS.width_in)
    targets = [("png", path)] + [(f, path.with_suffix(f".{f}")) for f in OPTIONS.vector]
    for fmt, target in targets:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=OPTIONS.dpi, bbox_inches="tight")
        atomic_write_bytes(target, buf.getvalue())
    text = getattr(fig, "_memxbar_caption", "")
    if text and not OPTIONS.caption:
        atomic_write_bytes(path.with_suffix(".caption.txt"), (text + "\n").encode())
    plt.close(fig)


def caption(fig, text: str, width: int = 95) -> None:
    """``text`` (the settings held fixed) in small print under the axes (with
    ``OPTIONS.caption`` off: kept for :func:`write_png` to write beside the figure)."""
    fig._memxbar_caption = text
    if text and OPTIONS.caption:
        fig.canvas.draw()  # place it under the lowest tick label or axis label
        renderer = fig.canvas.get_renderer()
        bottom = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes) / fig.bbox.height
        fig._memxbar_caption_artist = fig.text(
            0.01, min(bottom, 0.0) - 0.02, textwrap.fill(text, width), fontsize=6.5,
            va="top", ha="left", color="#333333")


def _resize(fig, width_in: float) -> None:
    """:func:`crossbar.style.fit_width`, with the settings caption taken off first and placed
    anew, wrapped to the new width."""
    artist = getattr(fig, "_memxbar_caption_artist", None)
    if artist is not None:
        artist.remove()
    style.fit_width(fig, width_in)
    if artist is not None:
        caption(fig, fig._memxbar_caption, width=min(95, int(width_in * 21)))


def _tick(key: str, value: object) -> str:
    """Tick label: times after programming in human units, other values as numbers."""
    if value is None:
        return "ideal"
    if isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, (int, float)):
        return str(value)
    if key.rsplit(".", 1)[-1] != "t_inference_s" or value == 0:
        return f"{value:g}"
    for unit, seconds in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if value >= seconds:
            return f"{value / seconds:.3g} {unit}"
    return f"{value:.3g} s"


def log_axis(key: str, values: Iterable) -> bool:
    """Time after programming, resistances, and any positive axis spanning over two decades
    go on a log axis (drift and relaxation laws are linear in log t)."""
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    positive = [v for v in values if v > 0]
    base = key.rsplit(".", 1)[-1]
    if base == "t_inference_s" or base.endswith("_ohm"):
        return bool(positive)
    return len(positive) == len(values) > 1 and max(positive) / min(positive) > 100


def categorical(values: Iterable) -> bool:
    """Values that are not all numbers (on/off, names, ``None`` = ideal): categories, drawn
    as points with error bars, never joined by a line or a band."""
    return not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def set_value_axis(ax, key: str, values: list, axis: str = "x") -> list[float]:
    """Put ``values`` of ``key`` on ``ax``'s x (or y) axis: numbers at their value (log or
    symlog where :func:`log_axis` says, integer ticks for integer quantities), anything else
    (``None`` = ideal, strings, booleans) as evenly spaced categories. Returns the
    coordinate of each value."""
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    scale = ax.set_xscale if axis == "x" else ax.set_yscale
    if categorical(values):
        coords = list(range(len(values)))
        setter(coords, [_tick(key, v) for v in values])
        return [float(c) for c in coords]
    positive = [v for v in values if v > 0]
    doubling = is_integer(key) and len(positive) == len(values) > 2 \
        and max(values) / min(values) >= 8  # e.g. 4, 8, 16, 32 levels: a log2 axis
    if log_axis(key, values) or doubling:
        if len(positive) < len(values):  # 0 (e.g. just programmed) on a linear stretch
            scale("symlog", linthresh=min(positive), linscale=0.5)
        else:
            scale("log", base=2 if doubling else 10)
        setter(values, [_tick(key, v) for v in values])
        (ax.xaxis if axis == "x" else ax.yaxis).set_minor_locator(plt.NullLocator())
    elif len(values) <= 8:  # few values: a tick at each
        setter(values, [_tick(key, v) for v in values])
    elif is_integer(key):
        (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))
    return [float(v) for v in values]


# ------------------------------------------------------------------------------ study plots
def _model_series(ax, key: str, rows: Sequence[Mapping]) -> tuple[bool, list[tuple]]:
    """Put the swept ``value``s of ``rows`` on ``ax``'s x axis; returns whether they are
    categories (on/off, names) and per model ``(colour index, model, its rows, their x)``,
    the models side by side at each category."""
    values = list(dict.fromkeys(r["value"] for r in rows))
    coords = dict(zip(map(repr, values), set_value_axis(ax, key, values), strict=True))
    models = list(dict.fromkeys(r["model"] for r in rows))
    on_off = categorical(values)
    if on_off:
        ax.set_xlim(-0.5, len(values) - 0.5)
    series = []
    for i, model in enumerate(models):
        shift = 0.12 * (i - (len(models) - 1) / 2) if on_off else 0.0
        pts = [r for r in rows if r["model"] == model]
        series.append((i, model, pts, [coords[repr(r["value"])] + shift for r in pts]))
    return on_off, series


def plot_sweep(rows: Sequence[Mapping], key: str, path: Path, note: str = "",
               reference: Mapping[str, float] | None = None) -> None:
    """Accuracy against one swept setting: mean over chips with its 95 % CI band, one line
    per model (rows: ``value``, ``model``, ``mean``, ``ci95``). ``reference``: horizontal
    lines (label -> accuracy), e.g. the software accuracies."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    on_off, series = _model_series(ax, key, rows)
    for i, model, pts, xs in series:
        mean = [r["mean"] for r in pts]
        half = [r["ci95"] for r in pts]
        if on_off:  # on/off, names: no line between values, no band
            low = [m - max(m - h, 0.0) for m, h in zip(mean, half, strict=True)]
            high = [min(m + h, 100.0) - m for m, h in zip(mean, half, strict=True)]
            ax.errorbar(xs, mean, yerr=[low, high], fmt="o", capsize=4, color=f"C{i}",
                        label=f"{model} (mean, 95 % CI)")
            continue
        ax.plot(xs, mean, marker="o", color=f"C{i}", label=f"{model} (mean, 95 % CI)")
        # the t interval of a few chips can pass 0 % or 100 %: an accuracy cannot
        ax.fill_between(xs, [max(m - h, 0.0) for m, h in zip(mean, half, strict=True)],
                        [min(m + h, 100.0) for m, h in zip(mean, half, strict=True)],
                        color=f"C{i}", alpha=0.25, linewidth=0)
    for j, (label, acc) in enumerate((reference or {}).items()):
        ax.axhline(acc, color="k", linestyle=(":", "--", "-.")[j % 3], linewidth=0.8,
                   label=label)
    ax.set_xlabel(axis_label(key))
    ax.set_ylabel(ACCURACY)
    title = "Accuracy vs time after programming (drift)" if key.endswith("t_inference_s") \
        else f"Accuracy vs {axis_label(key).split(' (')[0]}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    caption(fig, note)
    write_png(path, fig)


def plot_yield(rows: Sequence[Mapping], key: str, path: Path, spec: str,
               note: str = "") -> None:
    """Yield against one swept setting: the share of chips that meet ``spec`` with its
    Clopper-Pearson 95 % interval, one series per model (rows: ``value``, ``model``,
    ``yield_pct``, ``ci_low_pct``, ``ci_high_pct``, ``chips``)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    on_off, series = _model_series(ax, key, rows)
    for i, model, pts, xs in series:
        ys = [r["yield_pct"] for r in pts]
        err = [[y - r["ci_low_pct"] for y, r in zip(ys, pts, strict=True)],
               [r["ci_high_pct"] - y for y, r in zip(ys, pts, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", color=f"C{i}",
                    capsize=3, linestyle="none" if on_off else "-",
                    label=f"{model} ({pts[0]['chips']} chips; Clopper-Pearson 95 %)")
    ax.set_ylim(-3, 103)
    ax.set_xlabel(axis_label(key))
    ax.set_ylabel("yield (% of chips)")
    ax.set_title(f"Yield vs {axis_label(key).split(' (')[0]}\nspec: {spec}", fontsize=8)
    ax.legend(fontsize=7)
    caption(fig, note)
    write_png(path, fig)


def plot_distributions(chip_rows: Sequence[Mapping], key: str, path: Path,
                       note: str = "") -> None:
    """Chip-accuracy distributions per swept value (violins with the chips as dots), one
    colour per model (rows: ``value``, ``model``, ``accuracy``)."""
    values = list(dict.fromkeys(r["value"] for r in chip_rows))
    models = list(dict.fromkeys(r["model"] for r in chip_rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(values) * len(models) + 1.5), 3.4))
    for m, model in enumerate(models):
        pos, data = [], []
        for v_i, value in enumerate(values):
            accs = [r["accuracy"] for r in chip_rows
                    if r["model"] == model and repr(r["value"]) == repr(value)]
            if accs:
                pos.append(v_i + (m - (len(models) - 1) / 2) * width)
                data.append(accs)
        if not data:
            continue
        spread = [d for d in data if len(set(d)) > 1]
        if spread:  # a violin needs a spread; constant chips are shown by their dots only
            parts = ax.violinplot(spread, [p for p, d in zip(pos, data, strict=True)
                                           if len(set(d)) > 1],
                                  widths=width * 0.95, showmedians=True, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(f"C{m}")
                body.set_alpha(0.35)
            parts["cmedians"].set_color(f"C{m}")
        for p, d in zip(pos, data, strict=True):
            ax.plot([p] * len(d), d, ".", color=f"C{m}", markersize=3,
                    label=model if p == pos[0] else None)
    ax.set_xticks(range(len(values)), [_tick(key, v) for v in values])
    ax.set_xlabel(axis_label(key))
    ax.set_ylabel(ACCURACY)
    ax.set_title("Accuracy of every programmed chip (violin: distribution, bar: median)",
                 fontsize=8)
    ax.legend(fontsize=7)
    caption(fig, note)
    write_png(path, fig)


def plot_heatmap(rows: Sequence[Mapping], xkey: str, ykey: str, path: Path,
                 note: str = "") -> None:
    """2-D sweep as a heat map of the mean accuracy over chips, one panel per model, each
    cell annotated with mean and 95 % CI (rows: ``x``, ``y``, ``model``, ``mean``,
    ``ci95``)."""
    xs = list(dict.fromkeys(r["x"] for r in rows))
    ys = list(dict.fromkeys(r["y"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    lo = min(r["mean"] for r in rows)
    hi = max(r["mean"] for r in rows)
    fig, axes = plt.subplots(1, len(models), figsize=(0.9 * len(xs) * len(models) + 2.5,
                                                      0.55 * len(ys) + 2.2), squeeze=False)
    image = None
    for ax, model in zip(axes[0], models, strict=True):
        grid = [[math.nan] * len(xs) for _ in ys]
        for r in rows:
            if r["model"] == model:
                i, j = ys.index(r["y"]), xs.index(r["x"])
                grid[i][j] = r["mean"]
                ax.text(j, i, f"{r['mean']:.2f}\n+-{r['ci95']:.2f}", ha="center", va="center",
                        fontsize=6.5, color="w" if r["mean"] < (lo + hi) / 2 else "k")
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=lo,
                          vmax=hi)
        ax.set_xticks(range(len(xs)), [_tick(xkey, v) for v in xs])
        ax.set_yticks(range(len(ys)), [_tick(ykey, v) for v in ys])
        ax.set_xlabel(axis_label(xkey))
        ax.set_ylabel(axis_label(ykey))
        ax.set_title(f"{model}: accuracy on chips (%)", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), label="mean accuracy on chips (%)")
    caption(fig, note)
    write_png(path, fig)


def plot_layer_sensitivity(rows: Sequence[Mapping], path: Path, note: str = "",
                           reference: Mapping[str, tuple[float, float]] | None = None,
                           severity: Mapping | None = None) -> None:
    """Per-layer sensitivity as the accuracy **drop** below the ideal chip when only layer k is
    on the non-ideal device (all others ideal): mean and 95 % CI over chips (rows:
    ``layer``, ``mean``, ``ci95``, ``accuracies``), every chip a dot, the every-layer drop as a
    band. ``reference``: label -> (mean, ci95), "ideal devices (...)" and "every layer
    non-ideal (...)"; ``severity``: the harsher device's search (its ``factor`` in the title)."""
    reference = dict(reference or {})
    ideal = next((v[0] for k, v in reference.items() if k.startswith("ideal devices")), None)
    if ideal is None:
        raise ValueError("plot_layer_sensitivity: the reference has no 'ideal devices' entry")
    layers = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(layers) + 2.5), 3.4))
    ax.errorbar(range(len(layers)), [ideal - r["mean"] for r in rows],
                yerr=[r["ci95"] for r in rows], fmt="o", capsize=4, color="C3",
                label="only this layer non-ideal (mean, 95 % CI)")
    for i, r in enumerate(rows):
        ax.plot([i] * len(r["accuracies"]), [ideal - a for a in r["accuracies"]], ".",
                color="#999999", markersize=3)
    for label, (mean, half) in reference.items():
        if label.startswith("every layer"):
            ax.axhline(ideal - mean, color="C0", linestyle="--", linewidth=0.9,
                       label=f"every layer non-ideal ({ideal - mean:.2f})")
            if half:
                ax.axhspan(ideal - mean - half, ideal - mean + half, color="C0", alpha=0.15,
                           linewidth=0)
    ax.axhline(0.0, color="k", linewidth=0.6)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_xlabel("layer mapped onto the non-ideal device")
    ax.set_ylabel(f"drop below the ideal chip ({ideal:.2f} %), points")
    factor = (severity or {}).get("factor", 1.0)
    where = "the study's device" if factor == 1.0 else f"the device x{factor:g} harsher"
    ax.set_title(f"Per-layer sensitivity on {where} (dots: chips)", fontsize=9)
    ax.legend(fontsize=7)
    caption(fig, note)
    write_png(path, fig)


# ------------------------------------------------------------------------------ chips
MANY_CHIPS = 60
"""Above this many chips the chip-accuracy figure is a histogram, not one point per chip."""


def _spec_label(y: dict) -> str:
    return (f"spec >= {y['min_accuracy']:.2f} %: yield {y['yield_pct']:.1f} % "
            f"(95 % CI {y['ci_low_pct']:.1f}-{y['ci_high_pct']:.1f} %)")


def _reference_lines(metrics: dict, line) -> None:
    """The software accuracies and the specification's floor, drawn with ``line``
    (``ax.axhline`` or ``ax.axvline``)."""
    for at, label, dash in ((metrics["compressed_accuracy"], "compressed (software)", "--"),
                             (metrics["dense_accuracy"], "dense (software)", ":")):
        line(at, color="k", linestyle=dash, label=label)
    if metrics.get("yield"):
        line(metrics["yield"]["min_accuracy"], color="C3", linestyle="-.",
             label=_spec_label(metrics["yield"]))


def _chip_points(metrics: dict):
    """One point per chip, the mean's 95 % CI band, the software accuracies and the spec."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    accs = metrics["crossbar_accuracies"]
    # points, not bars: accuracy axes are zoomed, and a bar on a zoomed axis misleads
    ax.plot(range(len(accs)), accs, "o", color="#1f77b4", label="one programmed chip")
    mean, half = statistics.fmean(accs), ci95(accs)
    ax.axhspan(mean - half, mean + half, color="C1", alpha=0.3,
               label=f"mean {mean:.2f} % (95 % CI +- {half:.2f})")
    _reference_lines(metrics, ax.axhline)
    ax.set_xlabel("programmed chip")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0.0, min(accs + [metrics["dense_accuracy"]]) - 2), 100)
    ax.set_title(f"Accuracy per programmed chip ({len(accs)} chips)")
    ax.legend(fontsize=7)
    return fig


def _chip_histogram(metrics: dict):
    """The distribution of chip accuracy over many chips: a histogram with the mean, the
    software accuracies and the specification's floor as vertical lines."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    accs = metrics["crossbar_accuracies"]
    ax.hist(accs, bins=min(60, max(10, len(accs) // 20)), color="#1f77b4", alpha=0.8,
            label="programmed chips")
    mean, half = statistics.fmean(accs), ci95(accs)
    ax.axvline(mean, color="C1", label=f"mean {mean:.2f} % (95 % CI +- {half:.2f})")
    _reference_lines(metrics, ax.axvline)
    ax.set_xlabel("test accuracy (%)" + (" (stratified estimate per chip)" if (
        metrics.get("chip_test") or {}).get("mode") == "stratified" else ""))
    ax.set_ylabel("chips")
    ax.set_title(f"Accuracy of {len(accs)} programmed chips")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def chip_accuracy_figure(metrics: dict):
    """A compress run's chip accuracies (metrics.json): one point per chip, or above
    :data:`MANY_CHIPS` chips their histogram; with the spec line."""
    if len(metrics["crossbar_accuracies"]) > MANY_CHIPS:
        return _chip_histogram(metrics)
    return _chip_points(metrics)


# --------------------------------------------------------------------------- design points
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and accuracy
    (higher), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: Sequence[Mapping], labels: Sequence[str], path: Path,
                costs: Sequence[str] = ("energy_nJ", "area_mm2"), note: str = "") -> None:
    """Co-design Pareto front: accuracy on chips (mean, 95 % CI) against energy and against
    area of each design point (one run each), the non-dominated points joined."""
    fig, axes = plt.subplots(1, len(costs), figsize=(4.8 * len(costs), 3.6), squeeze=False)
    for ax, cost in zip(axes[0], costs, strict=True):
        pts = [(float(r[cost]), float(r["crossbar_accuracy_mean"])) for r in rows]
        half = [float(r.get("crossbar_accuracy_ci95") or 0.0) for r in rows]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=half, fmt="o", capsize=3,
                    color="#888888", label="design point (mean, 95 % CI)")
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-o", color="C3",
                drawstyle="steps-post", label="Pareto front")
        for i, text in enumerate(labels):
            ax.annotate(text, pts[i], fontsize=7, xytext=(3, 3), textcoords="offset points")
        costs_ = [p[0] for p in pts]
        if min(costs_) > 0 and max(costs_) / min(costs_) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(axis_label(cost))
        ax.set_ylabel(axis_label("crossbar_accuracy_mean"))
        ax.legend(fontsize=7)
    fig.suptitle("Accuracy on chips vs hardware cost per design point", fontsize=9)
    fig.tight_layout()
    caption(fig, note)
    write_png(path, fig)


def _clip_collapsed(ax, rows: Sequence[Mapping], x: Sequence[float], floor: float) -> None:
    """Keep the y axis on the budget's scale: points far below it (a collapsed model) would
    squash every other point into a line, so the axis stops just under ``floor`` and each such
    point is a down-pointing marker on the axis's lower edge, labelled with its accuracy."""
    low = [(p, xv) for p, xv in zip(rows, x, strict=True) if p["chip_mean"] < floor]
    if not low:
        return
    bottom = floor - 0.5
    ax.set_ylim(bottom=bottom)
    ax.get_xlim()  # settle the autoscaled limits before placing the labels
    for p, xv in low:
        ax.plot([xv], [bottom], marker="v", ms=7, color="C0", clip_on=False, zorder=6)
        left = ax.transAxes.inverted().transform(ax.transData.transform((xv, bottom)))[0] < 0.5
        ax.annotate(f"{p['step']}: {p['chip_mean']:.1f} %\n(off scale)", (xv, bottom), fontsize=6,
                    xytext=(8 if left else -8, 6), textcoords="offset points",
                    ha="left" if left else "right")  # the label stays inside the axes


def plot_budget_search(points: Sequence[Mapping], dense: float, max_drop: float,
                       chosen: float, path: Path, note: str = "") -> None:
    """Accuracy-budget search: chip accuracy (mean, 95 % CI) and software accuracy against the
    compression ratio and against the energy per inference of every point tried, with the
    dense accuracy, the allowed floor ``dense - max_drop`` and the chosen point."""
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), squeeze=False)
    rows = sorted(points, key=lambda p: p["compression_ratio"])
    for ax, key in zip(axes[0], ("compression_ratio", "energy_nJ"), strict=True):
        x = [float(p[key]) for p in rows]
        line = "-" if key == "compression_ratio" else ""  # energy need not be monotonic
        ax.errorbar(x, [p["chip_mean"] for p in rows], yerr=[p["chip_ci95"] for p in rows],
                    fmt="o" + line, capsize=3, color="C0", label="chips (mean, 95 % CI)")
        ax.plot(x, [p["compressed_accuracy"] for p in rows], marker="s", color="C2", ms=4,
                label="software (compressed)", ls="--" if line else "none")
        for p, xv in zip(rows, x, strict=True):
            ax.annotate(str(p["step"]), (xv, p["chip_mean"]), fontsize=6, xytext=(3, -9),
                        textcoords="offset points")
        pick = [p for p in rows if p["budget"] == chosen]
        if pick:
            ax.plot([float(pick[0][key])], [pick[0]["chip_mean"]], "*", ms=14, color="C3",
                    label="chosen", zorder=5)
        ax.axhline(dense, color="k", lw=0.8, label="dense (software)")
        ax.axhline(dense - max_drop, color="C3", lw=0.8, ls=":",
                   label=f"allowed: dense - {max_drop:g}")
        _clip_collapsed(ax, rows, x, dense - max(4.0 * max_drop, 2.0))
        ax.set_ylim(top=min(100.0, dense + 0.1 * (dense - ax.get_ylim()[0]) + 0.2))  # dense shows
        if min(x) > 0 and max(x) / min(x) > 3:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(ScalarFormatter())
            ax.tick_params(axis="x", which="minor", labelsize=6)
        ax.set_xlabel("compression ratio (x)" if key == "compression_ratio"
                      else axis_label(key))
        ax.set_ylabel(ACCURACY)
        ax.legend(fontsize=7)
    chips = sorted({p["chips"] for p in rows})
    fig.suptitle("Accuracy-budget search: points tried (numbers: bisection step; "
                 f"{'/'.join(map(str, chips))} chips each)", fontsize=9)
    fig.tight_layout()
    caption(fig, note)
    write_png(path, fig)
