"""Merge a Hydra multirun's ``metrics.json`` files into one CSV and plots.

    python -m experiments.collect multirun/compress/2025-01-01/12-00-00 [--out DIR]

Each run directory contributes one row: its Hydra overrides (``.hydra/overrides.yaml``, as
``override.<key>`` columns) and every scalar of its ``metrics.json`` (nested keys joined with
``.``; lists are left out). Writes ``collected.csv``, for every override key that takes more
than one value ``collected_<key>.png`` (the metrics that vary against that key; accuracy on chips
with its 95 % CI over chips), and ``collected_pareto.png``, the co-design Pareto front (accuracy
on chips against energy and area per run), into ``--out`` (default: the multirun directory).
Every figure is also written as PDF.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from crossbar.io import atomic_write_text, run_cli
from experiments.plots import axis_label, plot_pareto, plt, set_value_axis, write_png

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
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        try:
            out[f"override.{key}"] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[f"override.{key}"] = value
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


def collect_rows(multirun_dir: str | Path) -> list[dict]:
    """One row per readable ``metrics.json`` below ``multirun_dir`` (sorted by run directory;
    a device study's row has ``kind: device_study`` and its scalar results)."""
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
               "kind": "device_study" if "study" in metrics else "compress"}
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


def plot_rows(rows: list[dict], out_dir: Path) -> list[Path]:
    """``collected_<key>.png`` (+ PDF) for every override key with more than one value: the
    metrics that vary across the runs against it (accuracy on chips with its 95 % CI), and
    ``collected_pareto.png`` when the runs differ in accuracy on chips and in energy or area."""
    written = []
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
                            marker="o", capsize=4, linestyle="-" if others else "none",
                            label=label or None)
            ax.set_xlabel(axis_label(setting))
            ax.set_ylabel(axis_label(metric), fontsize=8)
            if others:
                ax.legend(fontsize=6)
        fig.tight_layout()
        name = "collected_" + setting.replace("/", "_") + ".png"
        write_png(out_dir / name, fig)
        written.append(out_dir / name)
    costs = [c for c in ("energy_nJ", "area_mm2") if len(set(_numbers(rows, c))) > 1]
    usable = [r for r in rows if all(isinstance(r.get(k), (int, float))
                                     for k in ("crossbar_accuracy_mean", *costs))]
    if costs and len(usable) > 1 and len(set(_numbers(usable, "crossbar_accuracy_mean"))) > 1:
        axes_ = [k for k in keys if len({repr(r.get(k)) for r in usable}) > 1]
        labels = ["/".join(str(r.get(k)) for k in axes_) or r["run"] for r in usable]
        note = ("point labels: " + " / ".join(_short(k) for k in axes_)) if axes_ else \
            "point labels: run folder"
        plot_pareto(usable, labels, out_dir / "collected_pareto.png", costs, note)
        written.append(out_dir / "collected_pareto.png")
    return written


def collect(multirun_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write collected.csv and the plots; returns the written paths by name."""
    rows = collect_rows(multirun_dir)
    out = Path(out_dir) if out_dir is not None else Path(multirun_dir)
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
    parser.add_argument("--out", default=None, help="output directory (default: multirun_dir)")
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
