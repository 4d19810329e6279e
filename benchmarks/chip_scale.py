"""Chips by the thousand (issue 24): a finished compress run's model on many chips, with the
per-chip cost against today's loop measured in the same process.

Two passes over the run's own design (device, crossbar, repair, output calibration, test set,
calibration batches: exactly what its compress run evaluated):

1. **today's loop**: ``--baseline`` chips (default 25), each on every test image, one process
   (``eval.chip_test=full``, ``eval.workers=1``);
2. **at scale**: ``--chips`` chips (default 1,000) with the stratified chip test
   (``experiments.chip_test``; ``--risky``/``--safe`` fractions) over ``--workers`` processes,
   the chips near the yield's floor measured on every image.

It prints and writes chip_scale.json: wall time per chip of each pass and their ratio, the
mean, sample std and 95 % CI of both, the yield at the run's specification with its
Clopper-Pearson interval, the estimator's standard error and how many chips were measured
exactly. The first ``--baseline`` chips of the scaled pass are the baseline's chips (same
seeds), so their estimates can be compared chip by chip.

    MEMXBAR_DATA=../shared/data .venv/bin/python benchmarks/chip_scale.py outputs/<run> \\
        --chips 1000 --workers 2 --out results/chip_scale.json
    .venv/bin/python benchmarks/chip_scale.py --smoke [DIR]   # a tiny digits run, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memxbar.crossbar import MappingPlan  # noqa: E402
from memxbar.crossbar.io import atomic_write_text  # noqa: E402
from memxbar.experiments.chips import evaluate_chips  # noqa: E402
from memxbar.experiments.config import load_compress_config  # noqa: E402
from memxbar.experiments.data import calibration_batch, crossbar_test_loader  # noqa: E402
from memxbar.experiments.estimators import chip_yield, ci95, mean_sd  # noqa: E402
from memxbar.experiments.guard import load_checkpoint  # noqa: E402
from memxbar.experiments.pipeline import chip_design  # noqa: E402
from memxbar.experiments.stages import prepare  # noqa: E402


def load_run(run_dir: Path) -> tuple:
    """A finished compress run, ready for chips: its experiment, ``Prepared`` (dense model
    from its dense.pt, then its compressed weights loaded), mapping plan, chip design and the
    ``evaluate_chips`` keywords its compress run used (calibration batches, scales, test)."""
    exp = load_compress_config(OmegaConf.load(run_dir / "config.yaml"))
    exp = dataclasses.replace(exp, train=dataclasses.replace(
        exp.train, checkpoint=str(run_dir / "dense.pt")))
    with tempfile.TemporaryDirectory(prefix="chip_scale_") as tmp:
        p = prepare(exp, Path(tmp), {})
    state = load_checkpoint(run_dir / "compressed.pt", p.torch_device)
    p.model.load_state_dict(state["model"])
    plan = MappingPlan.load(run_dir / "plan.json")
    rob = exp.robustness
    outputs = calibration_batch(p.train, rob.calibration_samples, p.torch_device,
                                exp.seed + 1) if exp.crossbar.output_calibration else None
    common = {"calibration": p.calibration, "outputs": outputs, "seed": exp.seed,
              "scales": state["scales"],
              "test": crossbar_test_loader(p.test, exp.eval.test_subset, exp.seed)}
    return exp, p, plan, chip_design(exp), common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--chips", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--risky", type=float, default=0.1)
    parser.add_argument("--safe", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="make a tiny digits run in DIR/run (default DIR: a new temporary "
                        "folder): 3 baseline chips, 12 chips over 2 workers")
    args = parser.parse_args()
    if args.smoke is not None:
        from calibration_percentile import smoke_setup  # (this script's folder is on sys.path)

        folder, args.run_dir = smoke_setup(args.smoke, "chip_scale_smoke_")
        args.chips, args.baseline, args.workers, args.threads = 12, 3, 2, 1
        args.out = folder / "chip_scale.json"
    elif args.run_dir is None:
        parser.error("the following arguments are required: run_dir")
    torch.set_num_threads(args.threads)
    exp, p, plan, design, common = load_run(args.run_dir)
    floor = exp.eval.spec_floor(p.dense_acc)

    start = time.perf_counter()
    base = evaluate_chips(p.model, plan, design, chips=args.baseline, **common)
    t_base = time.perf_counter() - start
    start = time.perf_counter()
    scaled = evaluate_chips(p.model, plan, design, chips=args.chips, progress=True,
                            sampling=(args.risky, args.safe), spec_floor=floor,
                            workers=args.workers, **common)
    t_scaled = time.perf_counter() - start

    def summary(accs: list[float]) -> dict:
        mean, sd = mean_sd(accs)
        return {"mean": mean, "sample_std": sd, "ci95": ci95(accs), "worst": min(accs)}

    first = scaled.accuracies[:args.baseline]
    diffs = [a - b for a, b in zip(first, base.accuracies, strict=True)]
    result = {
        "run": str(args.run_dir), "dense_accuracy": p.dense_acc,
        "test_images": len(common["test"].dataset),
        "baseline": {"chips": args.baseline, "wall_s": t_base,
                     "per_chip_s": t_base / args.baseline, **summary(base.accuracies)},
        "scaled": {"chips": args.chips, "workers": args.workers, "wall_s": t_scaled,
                   "per_chip_s": t_scaled / args.chips, **summary(scaled.accuracies),
                   "sampling": scaled.sampling},
        "per_chip_cost_ratio": (t_scaled / args.chips) / (t_base / args.baseline),
        "first_chips_estimate_minus_exact": {"mean": statistics.fmean(diffs),
                                             "max_abs": max(abs(d) for d in diffs)},
        "yield": None if floor is None else chip_yield(
            scaled.decided, dense_accuracy=p.dense_acc, max_drop=exp.eval.spec_max_drop,
            min_accuracy=exp.eval.spec_min_accuracy).to_dict(),
        "threads": args.threads,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
