"""Selective write-verify (issue 24): chip accuracy against programming cost when only a
fraction of the weights is verified, ranked by Fisher information x programming variance
(SWIM's criterion, ``experiments.selective_verify``) or at random.

A finished compress run's model on its own design, its device programmed with write-verify
(``--tolerance`` uS band, ``--max-pulses``, ``--verify-reads`` averaged reads per verify):
single-shot programming (no verify), then each ``--fractions`` of the live weights verified,
by each ranking (1.0: every cell, one row). Per row: mean chip accuracy with its 95 % CI over
``--chips`` chips (the same chip seeds in every row: common random numbers), worst chip,
programming pulses and energy per chip (``crossbar.programming_cost``).

    MEMXBAR_DATA=../shared/data .venv/bin/python benchmarks/selective_verify.py outputs/<run> \\
        --chips 25 --fractions 0.1 0.3 1.0 --out results/selective_verify.json
    .venv/bin/python benchmarks/selective_verify.py --smoke [DIR]   # a tiny digits run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chip_scale import load_run  # noqa: E402

from memxbar.crossbar.io import atomic_write_text  # noqa: E402
from memxbar.experiments.chips import evaluate_chips  # noqa: E402
from memxbar.experiments.estimators import ci95, mean_sd  # noqa: E402
from memxbar.experiments.selective_verify import verify_masks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--chips", type=int, default=25)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--rankings", nargs="+", default=["fisher", "random"])
    parser.add_argument("--tolerance", type=float, default=1.0)
    parser.add_argument("--max-pulses", type=int, default=20)
    parser.add_argument("--verify-reads", type=int, default=8)
    parser.add_argument("--samples", type=int, default=256, help="images for the Fisher")
    parser.add_argument("--prog-sigma", type=float, default=None,
                        help="the run's device with this lognormal programming sigma instead")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stratified", action="store_true",
                        help="each chip on a stratified test sample (eval.chip_test)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="a tiny digits run in DIR/run: 2 chips, fractions 0.3 and 1.0")
    args = parser.parse_args()
    if args.smoke is not None:
        from calibration_percentile import smoke_setup  # (this script's folder is on sys.path)

        folder, args.run_dir = smoke_setup(args.smoke, "selective_verify_smoke_")
        args.chips, args.fractions, args.samples = 2, [0.3, 1.0], 16
        args.workers, args.threads = 1, 1
        args.out = folder / "selective_verify.json"
    elif args.run_dir is None:
        parser.error("the following arguments are required: run_dir")
    torch.set_num_threads(args.threads)
    exp, p, plan, design, common = load_run(args.run_dir)
    if args.prog_sigma is not None:
        design = design.with_(device=design.device.with_(prog_sigma=args.prog_sigma))
    wv = {"tolerance_uS": args.tolerance, "max_pulses": args.max_pulses,
          "verify_reads": args.verify_reads}
    verified = design.with_(device=design.device.with_(write_verify=wv))
    single = design.with_(device=design.device.with_(write_verify=None))
    rows = []

    def row(label: str, fraction: float, ranking: str, d) -> None:
        start = time.perf_counter()
        run = evaluate_chips(p.model, plan, d, chips=args.chips, workers=args.workers,
                             sampling=(0.1, 0.1) if args.stratified else None, **common)
        mean, sd = mean_sd(run.accuracies)
        cost = run.mean_of("programming")
        rows.append({"setting": label, "fraction": fraction, "ranking": ranking,
                     "mean": mean, "sample_std": sd, "ci95": ci95(run.accuracies),
                     "worst": run.worst, "pulses": cost["pulses"],
                     "energy_uJ": cost["energy_uJ"], "failed_cells": cost["failed_cells"],
                     "cells": cost["cells"], "wall_s": time.perf_counter() - start})
        r = rows[-1]
        print(f"{label:28s} {r['mean']:6.2f} +- {r['ci95']:.2f} % (worst {r['worst']:.2f}), "
              f"{r['pulses']:9.0f} pulses, {r['energy_uJ']:8.3f} uJ per chip", flush=True)

    row("single-shot (no verify)", 0.0, "-", single)
    for fraction in args.fractions:
        for ranking in (args.rankings if fraction < 1.0 else ["all"]):
            d = verified
            if fraction < 1.0:
                d = verified.with_(verify=verify_masks(
                    p.model, plan, verified.device, verified.crossbar, train=p.train,
                    fraction=fraction, ranking=ranking, samples=args.samples, seed=exp.seed,
                    calibration=p.calibration, scales=common["scales"],
                    devices=dict(verified.devices), digital=list(verified.digital)))
            row(f"{fraction:g} verified ({ranking})", fraction, ranking, d)
    result = {"run": str(args.run_dir), "dense_accuracy": p.dense_acc, "chips": args.chips,
              "write_verify": wv, "device": design.device.to_dict(),
              "test_images": len(common["test"].dataset), "stratified": args.stratified,
              "rows": rows}
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
        plot(result, args.out.with_suffix(".png"))
        print(f"written: {args.out} and its figure {args.out.with_suffix('.png')}")


def plot(result: dict, path: Path) -> None:
    """Chip accuracy (mean, 95 % CI) against programming energy per chip: one line per
    ranking from single-shot programming to every cell verified, the fractions labelled."""
    from memxbar.experiments.plots import plt, write_png

    rows = result["rows"]
    ends = [r for r in rows if r["ranking"] in ("-", "all")]
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for k, ranking in enumerate(sorted({r["ranking"] for r in rows} - {"-", "all"})):
        line = sorted([*ends, *(r for r in rows if r["ranking"] == ranking)],
                      key=lambda r: r["fraction"])
        ax.errorbar([r["energy_uJ"] for r in line], [r["mean"] for r in line],
                    yerr=[r["ci95"] for r in line], marker="os"[k % 2], capsize=2,
                    color=f"C{k}", label=f"{ranking} ranking")
        for r in line:
            ax.annotate(f"{r['fraction']:g}", (r["energy_uJ"], r["mean"]), fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("programming energy per chip (uJ, cells only)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Selective write-verify ({result['chips']} chips; dense "
                 f"{result['dense_accuracy']:.2f} %; labels: fraction verified)", fontsize=8)
    ax.legend(fontsize=7)
    write_png(path, fig)


if __name__ == "__main__":
    main()
