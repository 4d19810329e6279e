"""Compressors side by side at one crossbar budget (issue 26): a table and a figure of accuracy
on chips against energy per inference, one point per compressor, from finished compress runs.

Give the runs (folders holding metrics.json; a Hydra sweep folder stands for its jobs), e.g. one
sweep over ``compressor=...`` per data set with the same ``admm`` constraints:

    MEMXBAR_DATA=../shared/data .venv/bin/python -m memxbar.experiments.compress -m \\
        +experiment=mnist_lenet5 admm=lenet5_mnist allocation=null \\
        compressor=admm,ternary,adaptive_levels,decompose,magnitude,obc \\
        hydra/launcher=local runtime.threads=1 hydra.sweep.dir=outputs/cmp_mnist
    .venv/bin/python benchmarks/compressor_comparison.py outputs/cmp_mnist outputs/cmp_digits \\
        --out docs/figures/compressor_comparison

Writes ``<out>.md`` (per data set and compressor: software, ideal-crossbar and chip accuracy
with its sample std and worst chip, compression, tiles, area, energy, programming pulses and
energy per chip) and ``<out>.png`` / ``.pdf`` (one panel per data set: mean chip accuracy with
its sample std against energy, the worst chip as a cross; runs far below the others are named
in a note instead of stretching the axis).

``--smoke [DIR]``: the tiny compress run of ``calibration_percentile.py``'s smoke mode (made in
DIR when absent), compared with itself; outputs in DIR.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from memxbar.crossbar import style  # noqa: E402
from memxbar.crossbar.io import atomic_write_bytes, atomic_write_text  # noqa: E402

FAR_BELOW = 10.0
"""Points more than this many points below the best mean of their panel are listed in a note
instead of drawn (a collapsed run would squash every other difference)."""


def run_dirs(paths: list[Path]) -> list[Path]:
    """Every run folder under ``paths`` (a folder with metrics.json, or a sweep's jobs)."""
    out = []
    for p in paths:
        if (p / "metrics.json").is_file():
            out.append(p)
        else:
            jobs = sorted(d for d in p.iterdir() if (d / "metrics.json").is_file())
            if not jobs:
                raise SystemExit(f"Error: {p} holds no metrics.json (a run or a sweep folder)")
            out += jobs
    return out


def label(run: Path, compressor: str) -> str:
    """The compressor, with the run's own overrides of compressor blocks (e.g.
    ``ternary.penalty=off``) from its ``.hydra/overrides.yaml``."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return compressor
    blocks = ("ternary.", "adaptive_levels.", "decompose.", "obc.")
    extra = [o for o in (line.strip().lstrip("- ") for line in path.read_text().splitlines())
             if o.startswith(blocks)]
    return compressor + (f" ({', '.join(extra)})" if extra else "")


def row(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    prog = m["programming"]
    return {"dataset": m["dataset"], "compressor": label(run, m.get("compressor", "admm")),
            "run": str(run),
            "dense": m["dense_accuracy"], "software": m["compressed_accuracy"],
            "ideal": m["crossbar_ideal_accuracy"], "chips": m["chips"],
            "mean": m["crossbar_accuracy_mean"], "std": m["crossbar_accuracy_std"],
            "worst": min(m["crossbar_accuracies"]), "ratio": m["compression_ratio"],
            "tiles": m["tiles"], "area_mm2": m["area_mm2"], "energy_nJ": m["energy_nJ"],
            "area_red": m["area_reduction_pct"], "energy_red": m["energy_reduction_pct"],
            "pulses": prog["pulses"], "prog_uJ": prog["energy_uJ"]}


def markdown(rows: list[dict]) -> str:
    lines = []
    for data, group in _by_dataset(rows).items():
        lines += [f"### {data} (dense {group[0]['dense']:.2f} %)", "",
                  "| compressor | software | ideal crossbar | chips (mean +- std) | worst | "
                  "compression | tiles | area (mm2) | energy (nJ) | programming per chip |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(group, key=lambda r: -r["mean"]):
            lines.append(
                f"| {r['compressor']} | {r['software']:.2f} | {r['ideal']:.2f} | "
                f"{r['mean']:.2f} +- {r['std']:.2f} ({r['chips']}) | {r['worst']:.2f} | "
                f"{r['ratio']:.2f}x | {r['tiles']} | {r['area_mm2']:.4g} "
                f"({-r['area_red']:+.1f} %) | {r['energy_nJ']:.4g} ({-r['energy_red']:+.1f} %) | "
                f"{r['pulses']:.0f} pulses, {r['prog_uJ']:.3g} uJ |")
        lines.append("")
    return "\n".join(lines)


def _by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["dataset"]].append(r)
    return dict(groups)


def figure(rows: list[dict]):
    groups = _by_dataset(rows)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.8), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    names = sorted({r["compressor"] for r in rows})
    for ax, (data, group) in zip(axes[0], groups.items(), strict=True):
        best = max(r["mean"] for r in group)
        shown = [r for r in group if r["mean"] >= best - FAR_BELOW]
        hidden = [r for r in group if r["mean"] < best - FAR_BELOW]
        energies = [r["energy_nJ"] for r in group]
        step = 0.04 * ((max(energies) - min(energies)) or max(energies))
        same: dict[float, list[dict]] = defaultdict(list)  # equal energy: spread sideways
        for r in sorted(shown, key=lambda r: r["compressor"]):
            same[round(r["energy_nJ"], 6)].append(r)
        for at in same.values():
            for i, r in enumerate(at):
                x = r["energy_nJ"] + (i - (len(at) - 1) / 2) * step
                c = colors[names.index(r["compressor"]) % len(colors)]
                ax.errorbar(x, r["mean"], yerr=r["std"], fmt="o", color=c, capsize=3,
                            label=r["compressor"])
                ax.plot(x, r["worst"], "x", color=c, ms=5)
        ax.axhline(group[0]["dense"], color="gray", lw=0.8, ls="--", label="dense (software)")
        ax.set_xlabel("energy per inference (nJ)")
        ax.set_ylabel("accuracy on chips (%)")
        ax.set_title(data + ("" if not hidden else "\n(below the axis: " + ", ".join(
            f"{r['compressor']} {r['mean']:.1f} %" for r in hidden) + ")"), fontsize=9)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("Chip accuracy (mean +- sample std; x: worst chip) against energy\n"
                 "(points at equal energy spread sideways)", fontsize=9)
    fig.tight_layout()
    return fig


def write(rows: list[dict], out: Path) -> list[Path]:
    style.apply()
    written = [out.with_suffix(".md")]
    atomic_write_text(written[0], markdown(rows))
    fig = figure(rows)
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=style.PNG_DPI, bbox_inches="tight")
        atomic_write_bytes(out.with_suffix("." + fmt), buf.getvalue())
        written.append(out.with_suffix("." + fmt))
    plt.close(fig)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*", help="run or sweep folders")
    parser.add_argument("--out", type=Path, default=Path("results/compressor_comparison"),
                        help="output path without suffix (.md, .png, .pdf)")
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR")
    args = parser.parse_args()
    if args.smoke is not None:
        from calibration_percentile import smoke_setup

        folder, run = smoke_setup(args.smoke, "compressor_comparison_smoke_")
        args.runs, args.out = [run], folder / "compressor_comparison"
    if not args.runs:
        parser.error("give run or sweep folders (or --smoke)")
    rows = [row(r) for r in run_dirs(args.runs)]
    for path in write(rows, args.out):
        print(f"written: {path}")


if __name__ == "__main__":
    main()
