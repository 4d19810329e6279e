"""Merge a Hydra multirun's ``metrics.json`` files into one CSV and plots.

    python -m experiments.collect multirun/compress/2025-01-01/12-00-00 [--out DIR]

Each run directory contributes one row: its Hydra overrides (``.hydra/overrides.yaml``, as
``override.<key>`` columns) and every scalar of its ``metrics.json`` (nested keys joined with
``.``; lists are left out). Writes ``collected.csv`` and, for every override key that takes more
than one value, ``collected_<key>.png`` (key metrics against that key, mean +- std where a run
reports a spread) into ``--out`` (default: the multirun directory).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from crossbar.io import atomic_write_text
from experiments.plots import plt, write_png

PLOTTED = (("crossbar_accuracy_mean", "crossbar_accuracy_std"), ("compressed_accuracy", None),
           ("compression_ratio", None), ("energy_reduction_pct", None),
           ("area_reduction_pct", None))
"""(metric, its spread or None) plotted against each swept key, when present and varying."""
LABELS = {"crossbar_accuracy_mean": "accuracy on chips (%, mean +- std)",
          "compressed_accuracy": "compressed accuracy, software (%)",
          "compression_ratio": "compression ratio (x)",
          "energy_reduction_pct": "energy reduction vs dense (%)",
          "area_reduction_pct": "area reduction vs dense (%)"}
"""Axis labels of the plotted metrics (meaning and unit, not the metrics.json key)."""


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


def collect_rows(multirun_dir: str | Path) -> list[dict]:
    """One row per ``metrics.json`` below ``multirun_dir`` (sorted by run directory)."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (expected a Hydra multirun dir)")
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        run_dir = path.parent
        row = {"run": str(run_dir.relative_to(root))}
        row.update(_overrides(run_dir))
        row.update(_flatten(json.loads(path.read_text())))
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no metrics.json below {root}; did the runs finish?")
    return rows


def _sort_key(value: object) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def plot_rows(rows: list[dict], out_dir: Path) -> list[Path]:
    """``collected_<key>.png`` for every override key with more than one value."""
    written = []
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("override.")]
    for key in keys:
        values = sorted({r.get(key) for r in rows}, key=_sort_key)
        metrics = [(m, s) for m, s in PLOTTED  # only metrics that vary across the runs
                   if len({r.get(m) for r in rows if isinstance(r.get(m), (int, float))}) > 1]
        if len(values) < 2 or not metrics:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2),
                                 squeeze=False)
        for ax, (metric, spread) in zip(axes[0], metrics, strict=True):
            pts = sorted(((r.get(key), r) for r in rows if isinstance(r.get(metric), (int, float))),
                         key=lambda p: _sort_key(p[0]))
            xs = list(range(len(pts)))
            ys = [r[metric] for _, r in pts]
            err = [r.get(spread) or 0.0 for _, r in pts] if spread else None
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, linestyle="none")
            ax.set_xticks(xs, [str(v) for v, _ in pts], rotation=30, ha="right")
            ax.set_xlabel(key.removeprefix("override."))
            ax.set_ylabel(LABELS[metric], fontsize=8)
        name = "collected_" + key.removeprefix("override.").replace("/", "_") + ".png"
        write_png(out_dir / name, fig)
        written.append(out_dir / name)
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
    written.update({p.name: p for p in plot_rows(rows, out)})
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", help="a Hydra multirun directory")
    parser.add_argument("--out", default=None, help="output directory (default: multirun_dir)")
    args = parser.parse_args(argv)
    written = collect(args.multirun_dir, args.out)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
