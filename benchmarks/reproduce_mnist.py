"""Reproduction benchmark: LeNet-5 on the full MNIST through the whole pipeline on CPU, checked
against the targets of the project (docs/experiments.md, "Reproduction").

    .venv/bin/python benchmarks/reproduce_mnist.py [extra Hydra overrides ...]

is the same as ``python -m memxbar.experiments.compress +experiment=mnist_lenet5`` (the accuracy
budget: the pipeline searches the compression ratio that keeps the mean chip accuracy within
1.0 point of dense) followed by a check of its metrics.json against issue 19's acceptance;
prints each target with its measured value and PASS/MISS, and exits non-zero if any target is
missed. The run directory is outputs/mnist_lenet5/<date>/<time>.

    .venv/bin/python benchmarks/reproduce_mnist.py --smoke [DIR] [extra Hydra overrides ...]

runs the same experiment and check in about 15 s of CPU, on scikit-learn's embedded digits
instead of MNIST, at a fixed 4x budget instead of the accuracy-budget search, and at the
smallest settings (SMOKE); the run directory is DIR/run (default DIR: a new temporary folder).
The targets are printed but not enforced: a smoke run is not expected to meet them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGETS = (  # (metric, comparison, bound, label)
    ("dense_accuracy", ">=", 99.0, "dense test accuracy (%)"),
    ("compression_ratio", ">=", 30.0, "structured compression ratio (x)"),
    ("accuracy_drop_ideal", "<=", 0.5, "accuracy drop, ideal devices (points)"),
    ("accuracy_drop_mean", "<=", 1.0, "accuracy drop, chip mean, 10% var + 0.5% SA + 2% read "
     "noise (points)"),
    ("accuracy_drop_worst", "<=", 2.0, "accuracy drop, worst chip (points)"),
    ("area_reduction_pct", ">=", 95.0, "area reduction vs dense 8-bit mapping (%)"),
    ("energy_reduction_pct", ">=", 95.0, "energy reduction vs dense 8-bit mapping (%)"),
)


def check(metrics: dict) -> list[tuple[str, float, str, float, bool]]:
    """(label, measured, comparison, bound, met) for every target."""
    out = []
    metrics = {**metrics, "accuracy_drop_worst": metrics["dense_accuracy"]
               - min(metrics["crossbar_accuracies"])}
    for key, op, bound, label in TARGETS:
        value = float(metrics[key])
        out.append((label, value, op, bound, value >= bound if op == ">=" else value <= bound))
    return out


SMOKE = ["dataset=digits", "allocation.max_drop=null", "allocation.budget=4",
         "allocation.n_samples=64", "allocation.finetune_steps=5", "train.epochs=3",
         "train.lr=1e-2", "admm.prune_epochs=1", "admm.prune_retrain_epochs=1",
         "admm.quant_epochs=1", "admm.quant_retrain_epochs=1", "eval.chips=2",
         "eval.test_subset=100", "eval.calibration_samples=16", "robustness.ablation=false",
         "runtime.progress=false"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)  # -h and the rest go to the pipeline
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR")
    args, argv = parser.parse_known_args(argv)
    if args.smoke is not None and "=" in args.smoke:  # an override, not the folder
        argv, args.smoke = [args.smoke, *argv], ""
    if args.smoke is not None:
        folder = Path(args.smoke or tempfile.mkdtemp(prefix="reproduce_mnist_smoke_"))
        argv = [*SMOKE, f"hydra.run.dir={folder.resolve() / 'run'}", *argv]
    cmd = [sys.executable, "-m", "memxbar.experiments.compress", "+experiment=mnist_lenet5", *argv]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    report = [line for line in proc.stdout.splitlines() if line.startswith("report: ")][-1]
    run_dir = Path(report.removeprefix("report: ")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ok = True
    for label, value, op, bound, met in check(metrics):
        ok &= met
        print(f"{'PASS' if met else 'MISS'}  {label}: {value:.2f} (target {op} {bound})")
    print(f"levels per device: {metrics['levels']}; tiles {metrics['tiles']} "
          f"(dense {metrics['baseline_tiles']}); stage times (s): {metrics['timings_s']}")
    print(f"report: {run_dir / 'report.md'}")
    if args.smoke is not None:
        print("smoke run (digits, 4x, smallest settings): the targets are not enforced")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
