"""Merge a Hydra multirun's ``metrics.json`` files into one CSV and plots.

    python -m memxbar.experiments.collect multirun/compress/2025-01-01/12-00-00 [--out DIR]

Each run directory contributes one row: its Hydra overrides (``.hydra/overrides.yaml``, as
``override.<key>`` columns) and every scalar of its ``metrics.json`` (nested keys joined with
``.``; lists are left out). Writes ``collected.csv``, for every override key that takes more
than one value ``collected_<key>.png`` (the metrics that vary against that key; accuracy on chips
with its 95 % CI over chips), and ``collected_pareto.png``, the co-design Pareto front (accuracy
on chips against energy and area per run), into ``--out`` (default: the multirun directory).
Every figure is also written as PDF. Every input is checked before anything is written: a
metrics.json that is no run's, or holds a metric of the wrong type or range (a NaN, a string,
an accuracy above 100 %, a mean that is not its chips'), or an unreadable
``.hydra/overrides.yaml`` is refused naming the file and key; a job without a readable
metrics.json (failed, interrupted, running) is left out and named.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from memxbar.crossbar.io import Once, atomic_write_text, check_out_folder, run_cli
from memxbar.experiments.plots import (
    axis_label,
    caption,
    categorical,
    plot_pareto,
    plt,
    set_value_axis,
    write_png,
)

PLOTTED = (("crossbar_accuracy_mean", "crossbar_accuracy_ci95"), ("compressed_accuracy", None),
           ("compression_ratio", None), ("energy_reduction_pct", None),
           ("area_reduction_pct", None))
"""(metric, its 95 % CI half width or None) plotted against each swept key, when present and
varying across the runs."""


def _flatten(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def _overrides(run_dir: Path) -> dict:
    """The job's Hydra overrides as ``override.<key>`` columns; a job with a ``.hydra``
    record must have a readable ``overrides.yaml`` list there (else its row would carry no
    labels and be plotted as another point)."""
    record = run_dir / ".hydra"
    path = record / "overrides.yaml"
    if not record.exists() and not record.is_symlink():
        return {}  # a run made with hydra.output_subdir=null, or a plain run folder
    allowed = "allowed: the .hydra/overrides.yaml Hydra writes (a list of key=value strings)"
    if not path.is_file():
        state = "a file" if record.is_file() else "a folder without it"
        raise ValueError(f"{path} is missing ({record} is {state}); {allowed}")
    try:
        items = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not YAML ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}); {allowed}") from None
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{path} holds {items!r:.100}; {allowed}")
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        # a list or mapping (model.hidden=[64,32]) is a label as written: rows are grouped
        # and plotted by it, which needs a hashable, sortable value
        scalar = parsed is None or isinstance(parsed, (int, float, str, bool))
        out[f"override.{key}"] = parsed if scalar else value
    return out


JOB_MARKERS = ("config.yaml", ".hydra", "compress.log", "device_study.log", "pipeline.log")
"""Files a job of a sweep leaves in its folder from its start."""


def job_dirs(root: Path) -> list[Path]:
    """The job folders below ``root``: those holding a file a started job writes."""
    found = {p.parent.parent if p.parent.name == ".hydra" else p.parent
             for name in JOB_MARKERS for p in root.rglob(name)}
    return sorted(d for d in found if d != root or (root / "metrics.json").exists())


def left_out(multirun_dir: str | Path) -> list[str]:
    """The job folders below ``multirun_dir`` without a readable ``metrics.json`` (failed,
    interrupted or still running), relative to it."""
    root = Path(multirun_dir)
    return [str(d.relative_to(root)) or "." for d in job_dirs(root)
            if not _metrics(d / "metrics.json")]


def _metrics(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


PERCENT = ("dense_accuracy", "compressed_accuracy", "crossbar_ideal_accuracy",
           "crossbar_ideal_uncalibrated_accuracy", "crossbar_accuracy_mean",
           "dense_accuracy_chip_samples", "compressed_accuracy_chip_samples")
"""Accuracies (%) a run's metrics.json holds at its top level."""


def _rule(key: str) -> tuple[str, float, float, bool] | None:
    """(what is allowed, low, high, integer) for a top-level metric, or None (not checked)."""
    if key in PERCENT:
        return "an accuracy in [0, 100] (%)", 0.0, 100.0, False
    if key in ("crossbar_accuracy_std", "crossbar_accuracy_ci95"):
        return "a spread in [0, 100] (accuracy points)", 0.0, 100.0, False
    if key.startswith("accuracy_drop_"):
        return "an accuracy difference in [-100, 100] (points)", -100.0, 100.0, False
    if key.endswith("_reduction_pct"):
        return "a finite percentage <= 100", -math.inf, 100.0, False
    if key == "compression_ratio" or key.endswith("_ratio"):
        return "a finite ratio > 0", math.ulp(0.0), math.inf, False
    if key in ("area_mm2", "energy_nJ", "power_mW", "baseline_area_mm2", "baseline_energy_nJ",
               "baseline_power_mW"):
        return "a finite number >= 0", 0.0, math.inf, False
    if key in ("chips", "crossbar_test_samples"):
        return "an integer >= 1", 1, math.inf, True
    if key in ("tiles", "baseline_tiles", "dense_weights", "mapped_weights", "parameters"):
        return "an integer >= 0", 0, math.inf, True
    return None


def check_run_metrics(path: Path, data: dict) -> str:
    """The kind of run (``compress`` or ``device_study``) whose metrics.json ``path`` holds
    ``data``; a file that is no run's, or a metric of the wrong type or out of its range
    (a NaN, a string, an accuracy above 100 %), fails naming the file and key."""
    allowed = ("allowed: the metrics.json of a finished python -m memxbar.experiments.compress or "
               "memxbar.experiments.device_study run")
    if "study" in data:
        kind = "device_study"
        if not isinstance(data["study"], list):
            raise ValueError(f"{path}: study={data['study']!r:.80} is invalid; allowed: the "
                             "list of study rows a device study writes")
    elif "crossbar_accuracy_mean" in data:
        kind = "compress"
    else:
        raise ValueError(f"{path} is no run's metrics.json: it has neither "
                         f"'crossbar_accuracy_mean' (a compress run) nor 'study' (a device "
                         f"study); {allowed}")
    for key, value in data.items():
        rule = _rule(key)
        if rule is None:
            continue
        what, low, high, integer = rule
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value <= high or (
                integer and not isinstance(value, int)):
            raise ValueError(f"{path}: {key}={value!r} is invalid; allowed: {what}")
    accs = data.get("crossbar_accuracies")
    if accs is not None:
        if not isinstance(accs, list) or not accs or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                and 0 <= a <= 100 for a in accs):
            raise ValueError(f"{path}: crossbar_accuracies={accs!r:.80} is invalid; allowed: a "
                             "non-empty list of accuracies in [0, 100] (%), one per chip")
        if "chips" in data and len(accs) != data["chips"]:
            raise ValueError(f"{path}: crossbar_accuracies holds {len(accs)} values, chips="
                             f"{data['chips']}; allowed: one accuracy per chip")
        mean = data.get("crossbar_accuracy_mean")
        if mean is not None and abs(statistics.fmean(accs) - mean) > 1e-6:
            raise ValueError(f"{path}: crossbar_accuracy_mean={mean!r} is invalid; allowed: "
                             f"the mean of crossbar_accuracies ({statistics.fmean(accs)!r})")
    return kind


def collect_rows(multirun_dir: str | Path) -> list[dict]:
    """One row per readable ``metrics.json`` below ``multirun_dir`` (sorted by run directory;
    a device study's row has ``kind: device_study`` and its scalar results)."""
    if not str(multirun_dir):
        raise ValueError("multirun_dir='' is invalid; allowed: a Hydra multirun folder (or a "
                         "run folder)")
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (expected a Hydra multirun dir)")
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        metrics = _metrics(path)
        if metrics is None:
            continue  # unreadable: reported by left_out
        run_dir = path.parent
        row = {"run": str(run_dir.relative_to(root)) or ".",
               "kind": check_run_metrics(path, metrics)}
        row.update(_overrides(run_dir))
        row.update(_flatten(metrics))
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no readable metrics.json below {root}; did the runs finish? "
                                "allowed: a Hydra multirun folder (or a run folder) of "
                                "finished runs")
    return rows


def _sort_key(value: object) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _numbers(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool)]


def _short(key: str) -> str:
    """``override.crossbar.adc_bits`` -> ``adc_bits``."""
    return key.removeprefix("override.").rsplit(".", 1)[-1]


def _held_fixed(rows: list[dict]) -> str:
    """The figures' caption: the settings of the runs (each run's ``settings_caption``), said
    as held fixed unless swept, with the swept settings and the number of runs."""
    text = next((r["settings_caption"] for r in rows
                 if isinstance(r.get("settings_caption"), str)), "")
    if not text:
        return ""
    text = "Held fixed unless swept" + text.removeprefix("Run settings")
    swept = [_short(k) for k in dict.fromkeys(k for r in rows for k in r)
             if k.startswith("override.") and len({repr(r.get(k)) for r in rows}) > 1]
    return f"{text} Swept: {', '.join(swept) or 'nothing'} ({len(rows)} runs)."


def plot_rows(rows: list[dict], out_dir: Path) -> list[Path]:
    """``collected_<key>.png`` (+ PDF) for every override key with more than one value: the
    metrics that vary across the runs against it (accuracy on chips with its 95 % CI), and
    ``collected_pareto.png`` when the runs differ in accuracy on chips and in energy or area."""
    written = []
    held = _held_fixed(rows)
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("override.")]
    metrics = [(m, s) for m, s in PLOTTED if len(set(_numbers(rows, m))) > 1]
    varying = [k for k in keys if len({repr(r.get(k)) for r in rows}) > 1]
    for key in keys:
        values = sorted({r.get(key) for r in rows}, key=_sort_key)
        if len(values) < 2 or not metrics:
            continue
        setting = key.removeprefix("override.")
        others = [k for k in varying if k != key]  # one line per combination of the others
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.3),
                                 squeeze=False)
        for ax, (metric, spread) in zip(axes[0], metrics, strict=True):
            at = dict(zip(map(repr, values), set_value_axis(ax, setting, values), strict=True))
            series: dict[str, list[dict]] = {}
            for r in rows:
                if isinstance(r.get(metric), (int, float)):
                    label = ", ".join(f"{_short(k)}={r.get(k)}" for k in others)
                    series.setdefault(label, []).append(r)
            for label, sel in series.items():
                sel = sorted(sel, key=lambda r: _sort_key(r.get(key)))
                ax.errorbar([at[repr(r.get(key))] for r in sel], [r[metric] for r in sel],
                            yerr=[r.get(spread) or 0.0 for r in sel] if spread else None,
                            marker="o", capsize=4,
                            linestyle="-" if others and not categorical(values) else "none",
                            label=label or None)
            ax.set_xlabel(axis_label(setting))
            ax.set_ylabel(axis_label(metric), fontsize=8)
            if others:
                ax.legend(fontsize=7)
        fig.tight_layout()
        caption(fig, held)
        name = "collected_" + setting.replace("/", "_") + ".png"
        write_png(out_dir / name, fig)
        written.append(out_dir / name)
    costs = [c for c in ("energy_nJ", "area_mm2") if len(set(_numbers(rows, c))) > 1]
    usable = [r for r in rows if all(isinstance(r.get(k), (int, float))
                                     for k in ("crossbar_accuracy_mean", *costs))]
    if costs and len(usable) > 1 and len(set(_numbers(usable, "crossbar_accuracy_mean"))) > 1:
        axes_ = [k for k in keys if len({repr(r.get(k)) for r in usable}) > 1]
        labels = ["/".join(str(r.get(k)) for k in axes_) or r["run"] for r in usable]
        note = ("Point labels: " + " / ".join(_short(k) for k in axes_)) if axes_ else \
            "Point labels: run folder"
        note = f"{note}. {held}" if held else note
        plot_pareto(usable, labels, out_dir / "collected_pareto.png", costs, note)
        written.append(out_dir / "collected_pareto.png")
    return written


def check_out(out: Path) -> None:
    """``--out`` is a folder (or a path where one can be made) that this user can write."""
    check_out_folder(out)


def collect(multirun_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write collected.csv and the plots; returns the written paths by name. Every input is
    checked before anything is written."""
    if out_dir is not None and not str(out_dir):
        raise ValueError("--out '' is empty; allowed: a folder")
    rows = collect_rows(multirun_dir)
    if out_dir is None and (Path(multirun_dir) / "metrics.json").is_file():
        raise ValueError(f"{multirun_dir} is a single run (it holds its own metrics.json): "
                         "collect would write its table and plots into the run's results; "
                         "allowed: a Hydra multirun folder (one folder per job), or "
                         "--out <another folder> for this run's one-row table")
    out = Path(out_dir) if out_dir is not None else Path(multirun_dir)
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "collected.csv", buf.getvalue())
    written = {"collected.csv": out / "collected.csv"}
    missing = left_out(multirun_dir)
    if missing:
        atomic_write_text(out / "collected_left_out.txt", "\n".join(missing) + "\n")
        written["collected_left_out.txt"] = out / "collected_left_out.txt"
    written.update({p.name: p for p in plot_rows([r for r in rows if r["kind"] == "compress"],
                                                 out)})
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", help="a Hydra multirun directory")
    parser.add_argument("--out", default=None, action=Once,
                        help="output directory (default: multirun_dir)")
    args = parser.parse_args(argv)
    written = collect(args.multirun_dir, args.out)
    for name, path in written.items():
        print(f"{name}: {path}")
    missing = left_out(args.multirun_dir)
    if missing:
        print(f"left out: {len(missing)} job(s) without a readable metrics.json (failed, "
              f"interrupted or running): {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
