"""ADMM against the simple baseline and OBC at the same per-layer budget: accuracy curves.

For every compression ratio, the budgeted allocation (``allocation.budget=<ratio>``,
``candidates: auto``, Fisher distortion) picks each layer's kept rows x columns once from the
dense model (the allocation stage runs before the compressor and is deterministic, so all three
compressors get the same per-layer structure), then each compressor meets it:

* ``admm``: ADMM prune, masked retrain, ADMM quantize, retrain (the ``admm`` group's schedule);
* ``magnitude``: structured magnitude pruning + fine-tuning + distillation, the same epochs;
* ``obc``: post-training OBC on calibration images, no retraining.

Every point is a whole run (its own folder under ``--out``; one dense model through the model
cache), with chips of the experiment's device. Writes ``curves.json``, ``curves.md`` and
``curves.png`` (software and mean chip accuracy against the ratio, per compressor) in ``--out``.
Finished points are reused when the script runs again.

    .venv/bin/python benchmarks/compressor_curves.py --out outputs/curves_digits \
        --ratios 4 8 16 30 -- eval.chips=5
    .venv/bin/python benchmarks/compressor_curves.py --out outputs/curves_mnist \
        --ratios 10 30 60 -- +experiment=mnist_lenet5 allocation.max_drop=null eval.chips=5
    .venv/bin/python benchmarks/compressor_curves.py --smoke [DIR]  # ~15 s, see SMOKE

``--smoke [DIR]``: one point, ADMM at 4x (or the ``--compressors`` given), the default pipeline
(digits, LeNet-5) at its smallest settings (SMOKE, before the given overrides), outputs in DIR
(default: a new temporary folder) instead of ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from memxbar.admm import DivergenceError  # noqa: E402
from memxbar.experiments.conf_source import CONF_DIR  # noqa: E402
from memxbar.experiments.pipeline import run_compress  # noqa: E402
from memxbar.experiments.plots import ACCURACY, plt, write_png  # noqa: E402

COMPRESSORS = ("admm", "magnitude", "obc")
KEYS = ("dataset", "model", "compression_ratio", "tiles", "energy_nJ", "dense_accuracy",
        "compressed_accuracy", "crossbar_ideal_accuracy", "crossbar_accuracy_mean",
        "crossbar_accuracy_std", "crossbar_accuracy_ci95", "chips")
SMOKE = ["train.epochs=3", "train.lr=1e-2", "admm.prune_epochs=1", "admm.prune_retrain_epochs=1",
         "admm.quant_epochs=1", "admm.quant_retrain_epochs=1", "obc.n_calib=64",
         "allocation={budget: 4, n_samples: 64, finetune_steps: 5}",  # point() sets the budget
         "eval.chips=1", "eval.test_subset=100", "eval.calibration_samples=16",
         "runtime.threads=1"]


def point(out: Path, compressor: str, ratio: float, overrides: list[str], cache: Path) -> dict:
    """One whole run (reused when its metrics.json exists)."""
    folder = out / f"{compressor}_{ratio:g}x"
    if (folder / "collapsed.txt").exists():
        return {"compressor": compressor, "ratio": ratio,
                "collapsed": (folder / "collapsed.txt").read_text()}
    if (folder / "metrics.json").exists():
        m = json.loads((folder / "metrics.json").read_text())
    else:
        cfg = [*overrides, f"compressor={compressor}", f"runtime.cache_dir={cache}",
               "runtime.progress=false", "robustness.ablation=false",
               f"allocation.budget={ratio}" if any(o.startswith("+experiment") for o in overrides)
               else f"allocation={{budget: {ratio}}}"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            try:
                m = run_compress(compose(config_name="config", overrides=cfg), folder)
            except DivergenceError as exc:  # the compressor's model collapsed at this budget
                (folder / "collapsed.txt").write_text(str(exc))
                return {"compressor": compressor, "ratio": ratio, "collapsed": str(exc)}
    return {"compressor": compressor, "ratio": ratio, **{k: m[k] for k in KEYS},
            "allocation": {n: r["setting"] for n, r in m["allocation"]["layers"].items()}}


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Software and chip accuracy against the ratio per compressor; the axis spans 25 points
    below dense, and a point under it is drawn on its floor (a down triangle) with its value."""
    rows = [r for r in rows if "collapsed" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), sharey=True)
    dense = rows[0]["dense_accuracy"]
    floor = max(min(min(r["compressed_accuracy"], r["crossbar_accuracy_mean"]) for r in rows) - 1,
                dense - 25)
    for ax, key, what in ((axes[0], "compressed_accuracy", "software (compressed)"),
                          (axes[1], "crossbar_accuracy_mean", "chips (mean, 95 % CI)")):
        for i, c in enumerate(COMPRESSORS):
            pts = sorted((r for r in rows if r["compressor"] == c),
                         key=lambda r: r["compression_ratio"])
            if not pts:
                continue
            x = [r["compression_ratio"] for r in pts]
            y = [max(r[key], floor) for r in pts]
            yerr = [r["crossbar_accuracy_ci95"] for r in pts] if key != "compressed_accuracy" \
                else None
            ax.errorbar(x, y, yerr=yerr, fmt="-", capsize=3, color=f"C{i}", label=c)
            for xv, r in zip(x, pts, strict=True):
                low = r[key] < floor
                ax.plot([xv], [max(r[key], floor)], "v" if low else "o", color=f"C{i}")
                if low:
                    ax.annotate(f"{r[key]:.0f} %", (xv, floor), fontsize=6, xytext=(3, 3),
                                textcoords="offset points", color=f"C{i}")
        ax.axhline(dense, color="k", lw=0.8, label="dense")
        ax.set_ylim(floor - 0.5, dense + 1.5)
        ax.set_xscale("log")
        ticks = sorted({round(r["compression_ratio"], 1) for r in rows})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("structured compression ratio (x)")
        ax.set_title(what, fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(ACCURACY)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_png(path, fig)


def markdown(rows: list[dict]) -> str:
    lines = ["| ratio asked | compressor | ratio reached | tiles | software | ideal crossbar "
             "| chips (mean +- std) |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["ratio"], COMPRESSORS.index(r["compressor"]))):
        if "collapsed" in r:
            lines.append(f"| {r['ratio']:g}x | {r['compressor']} | | | collapsed (stopped by "
                         "the collapse guard) | | |")
            continue
        lines.append(f"| {r['ratio']:g}x | {r['compressor']} | {r['compression_ratio']:.2f}x | "
                     f"{r['tiles']} | {r['compressed_accuracy']:.2f} | "
                     f"{r['crossbar_ideal_accuracy']:.2f} | {r['crossbar_accuracy_mean']:.2f} "
                     f"+- {r['crossbar_accuracy_std']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ratios", type=float, nargs="+")
    parser.add_argument("--compressors", nargs="+", choices=COMPRESSORS,
                        help="default: all (--smoke: admm)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="model cache shared with other runs (default: <out>/cache)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of every run (after --)")
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    args = parser.parse_args()
    if args.smoke is not None:
        args.out = Path(args.smoke or tempfile.mkdtemp(prefix="compressor_curves_smoke_"))
        args.ratios, args.overrides = [4.0], [*SMOKE, *args.overrides]
        args.compressors = args.compressors or ["admm"]
    args.compressors = args.compressors or list(COMPRESSORS)
    for key in ("out", "ratios"):
        if getattr(args, key) is None:
            parser.error(f"the following arguments are required: --{key}")
    out = args.out.resolve()
    cache = (args.cache or out / "cache").resolve()
    rows = [point(out, c, r, args.overrides, cache) for r in args.ratios
            for c in args.compressors]
    (out / "curves.json").write_text(json.dumps(rows, indent=2))
    (out / "curves.md").write_text(markdown(rows))
    done = [r for r in rows if "collapsed" not in r]
    what = f"{done[0]['model']} on {done[0]['dataset']}" if done else ""
    plot(rows, out / "curves.png", f"Compressors at the same per-layer budget, {what}: "
         + " ".join(args.overrides))
    print(markdown(rows))


if __name__ == "__main__":
    main()
