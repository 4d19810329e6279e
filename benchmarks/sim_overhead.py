"""Simulator overhead: crossbar inference time / plain PyTorch inference time.

LeNet-5 (MNIST shape), 10,000 inputs, batch 1,000, 2 threads; crossbar with 8-bit DAC and ADC,
2 % read noise, 5 % programming variation, 128 x 128 tiles. Both run in the same process,
interleaved, median of 5 runs each.

    .venv/bin/python benchmarks/sim_overhead.py --out results/sim_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import crossbar
from crossbar.plan import atomic_write_text
from experiments.models import build_model


def run_inference(model: torch.nn.Module, inputs: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, inputs.shape[0], batch):
            model(inputs[i:i + batch])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/sim_overhead.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    inputs = torch.randn(args.n, 1, 28, 28)
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=100.0, prog_sigma=0.05,
                                  read_sigma=0.02)
    config = crossbar.CrossbarConfig(tile_rows=128, tile_cols=128, dac_bits=8, adc_bits=8)
    xmodel = crossbar.to_crossbar(model, device, config, calibration=inputs[:args.batch]).eval()

    run_inference(model, inputs, args.batch)  # warm-up
    run_inference(xmodel, inputs, args.batch)
    plain, xbar = [], []
    for _ in range(args.repeats):
        plain.append(run_inference(model, inputs, args.batch))
        xbar.append(run_inference(xmodel, inputs, args.batch))
    result = {
        "model": "lenet5",
        "inputs": args.n,
        "batch": args.batch,
        "threads": args.threads,
        "plain_s_median": statistics.median(plain),
        "crossbar_s_median": statistics.median(xbar),
        "ratio": statistics.median(xbar) / statistics.median(plain),
        "plain_s": plain,
        "crossbar_s": xbar,
        "tiles": xmodel.mapping_plan.n_tiles,
        "torch": torch.__version__,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"plain {result['plain_s_median']:.3f} s, crossbar {result['crossbar_s_median']:.3f} s,"
          f" ratio {result['ratio']:.2f} (written to {args.out})")


if __name__ == "__main__":
    main()
