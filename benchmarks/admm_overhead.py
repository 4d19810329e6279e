"""ADMM overhead: one ADMM training epoch (penalty gradient every step + one Z/U round at the
epoch end) against one plain training epoch of the same LeNet-5 on the same MNIST-shaped random
data, in one process, 2 threads, median of several interleaved repetitions. Pruning on all 5
layers; the final layer's outputs (the classes) are kept: its inputs (rows) are pruned instead,
matching the columns pruned in the layer before it.

    .venv/bin/python benchmarks/admm_overhead.py [results/admm_overhead.json]
    .venv/bin/python benchmarks/admm_overhead.py --smoke [DIR]  # seconds: 128 samples, 1 repeat
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from memxbar.admm import ADMM, LayerConstraint, select_layers, train_epoch

TARGET_RATIO = 1.10


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="results/admm_overhead.json")
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes (128 samples, 1 repeat, 1 thread), the JSON into "
                        "DIR (default: a new temporary folder)")
    args = parser.parse_args()
    if args.smoke is not None:
        folder = Path(args.smoke or tempfile.mkdtemp(prefix="admm_overhead_smoke_"))
        args.out, args.samples, args.batch_size, args.repeats = (
            str(folder / "admm_overhead.json"), 128, 64, 1)

    torch.set_num_threads(1 if args.smoke is not None else 2)
    torch.manual_seed(0)
    x = torch.randn(args.samples, 1, 28, 28)
    y = torch.randint(0, 10, (args.samples,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=args.batch_size, shuffle=True)
    plain_model = lenet5()
    admm_model = copy.deepcopy(plain_model)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
    admm_opt = torch.optim.Adam(admm_model.parameters(), lr=1e-3)
    constraints = select_layers(admm_model, [
        LayerConstraint("re:[03]", col_ratio=0.5),
        LayerConstraint("7", row_ratio=0.5, block_ratio=0.5, block=(128, 32)),
        LayerConstraint("9", col_ratio=0.25),
        LayerConstraint("11", row_ratio=0.25),  # the final layer: its outputs are the classes
    ])
    admm = ADMM(admm_model, {n: (lambda W, c=c: W * c.prune_mask(W))
                             for n, c in constraints.items()},
                rho=1e-3, rho_factor=1.3, rho_max=1.0)

    def plain_epoch() -> None:
        train_epoch(plain_model, loader, plain_opt)

    def admm_epoch() -> None:
        loss = train_epoch(admm_model, loader, admm_opt, admm=admm)
        admm.update(loss)

    plain_epoch(), admm_epoch()                           # warm-up
    plain_s, admm_s = [], []
    for i in range(args.repeats):                         # interleaved, alternating order (ABBA)
        pairs = [(plain_epoch, plain_s), (admm_epoch, admm_s)]
        for fn, times in pairs if i % 2 == 0 else pairs[::-1]:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    ratio = statistics.median(admm_s) / statistics.median(plain_s)
    paired = statistics.median(a / p for a, p in zip(admm_s, plain_s, strict=True))

    # The ADMM-only work measured in isolation (robust to load from other processes).
    steps = len(loader)
    start = time.perf_counter()
    for _ in range(steps):
        admm.add_penalty_grad()
    penalty_s = time.perf_counter() - start
    start = time.perf_counter()
    admm.update()
    update_s = time.perf_counter() - start
    result = {
        "benchmark": "admm_overhead", "model": "LeNet-5", "data": "random MNIST-shaped",
        "samples": args.samples, "batch_size": args.batch_size, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "plain_epoch_s": plain_s, "admm_epoch_s": admm_s,
        "plain_median_s": statistics.median(plain_s), "admm_median_s": statistics.median(admm_s),
        "ratio": ratio, "paired_ratio_median": paired,
        "penalty_grad_s_per_epoch": penalty_s, "admm_update_s": update_s,
        "isolated_overhead_fraction": (penalty_s + update_s) / statistics.median(plain_s),
        "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"ADMM epoch / plain epoch = {ratio:.3f} (median of {args.repeats}; plain "
          f"{result['plain_median_s']:.3f} s, ADMM {result['admm_median_s']:.3f} s; "
          f"paired median {paired:.3f}; ADMM-only work in isolation "
          f"{100 * result['isolated_overhead_fraction']:.2f}% of a plain epoch; "
          f"target <= {TARGET_RATIO}) -> {out}")


if __name__ == "__main__":
    main()
