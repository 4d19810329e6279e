"""Effect of the calibration percentile of the DAC/ADC ranges on a finished compress run.

Re-evaluates the run's compressed model (``compressed.pt`` + ``plan.json``) on crossbars with the
run's crossbar and device settings, once per ``range_percentile``: on an ideal device (the run's
levels, no variation or faults) and on ``--chips`` programmed chips of the run's device.

    .venv/bin/python benchmarks/calibration_percentile.py outputs/mnist_lenet5/<date>/<time>
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import torch
from omegaconf import OmegaConf

import crossbar
from experiments.config import load_compress_config
from experiments.datasets import make_loaders
from experiments.models import build_model
from experiments.train import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--percentiles", type=float, nargs="+", default=[100.0, 99.99, 99.9])
    parser.add_argument("--chips", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=256)
    args = parser.parse_args()

    torch.set_num_threads(1)
    exp = load_compress_config(OmegaConf.load(args.run_dir / "config.yaml"))
    train, test, info = make_loaders(**dataclasses.asdict(exp.dataset), seed=exp.seed)
    model = build_model(exp.model.name, input_shape=info.input_shape,
                        num_classes=info.num_classes, **exp.model.kwargs)
    model.load_state_dict(torch.load(args.run_dir / "compressed.pt", weights_only=True)["model"])
    model.eval()
    plan = crossbar.MappingPlan.load(args.run_dir / "plan.json")
    calibration = torch.cat([x for x, _ in train])[: args.calibration]
    device = exp.device
    ideal = device.with_(prog_sigma=0.0, read_sigma=0.0, sa0_rate=0.0, sa1_rate=0.0)
    print(f"software: {evaluate(model, test):.2f} %")
    print("| range_percentile | ideal crossbar (%) | chips mean +- std (%) |")
    print("|---:|---:|---:|")
    for pct in args.percentiles:
        config = exp.crossbar.with_(range_percentile=pct)
        xm = crossbar.to_crossbar(model, ideal, config, calibration=calibration, plan=plan)
        ideal_acc = evaluate(xm, test)
        chips = []
        for seed in range(args.chips):
            xm = crossbar.to_crossbar(model, device, config, calibration=calibration, plan=plan,
                                      seed=seed)
            chips.append(evaluate(xm, test))
        print(f"| {pct} | {ideal_acc:.2f} | {statistics.mean(chips):.2f} +- "
              f"{statistics.stdev(chips):.2f} |")


if __name__ == "__main__":
    main()
