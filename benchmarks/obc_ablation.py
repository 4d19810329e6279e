"""OBC ablation on real MNIST: post-training crossbar compression of a quickly trained LeNet-5,
plain OBC against OBC with rate-distortion importance (diagonal Fisher), next to the
uncompensated projection (hard prune + nearest-level quantization, what ADMM's final projection
does without ADMM training). Prints a markdown table.

    .venv/bin/python benchmarks/obc_ablation.py --data-dir ../shared/data/mnist
    .venv/bin/python benchmarks/obc_ablation.py --smoke  # seconds

``--smoke [DIR]``: scikit-learn's embedded digits instead of MNIST (no files), 1 epoch, 64
calibration images, one setting (row_ratio 0.5, 4 levels), one thread; prints only (DIR,
accepted for a uniform command line, stays empty).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from memxbar.admm import LayerConstraint, pair_levels, project_levels, select_layers, weight_matrix
from memxbar.admm.importance import compute_importance
from memxbar.admm.obc import obc_compress
from memxbar.experiments.datasets import make_loaders
from memxbar.experiments.models import build_model
from memxbar.experiments.train import evaluate, fit


def constraints(row_ratio: float, levels: int) -> list[LayerConstraint]:
    """Word-line pruning of the 2nd conv and the fc layers, ``levels`` device levels
    everywhere (the first conv has only 25 rows and the last fc feeds the classes)."""
    return [LayerConstraint("features.0", levels=levels),
            LayerConstraint("features.3", row_ratio=row_ratio / 2, levels=levels),
            LayerConstraint("classifier.0", row_ratio=row_ratio, levels=levels),
            LayerConstraint("classifier.2", row_ratio=row_ratio, levels=levels),
            LayerConstraint("classifier.4", levels=levels)]


@torch.no_grad()
def project_only(model: nn.Module, cons: list[LayerConstraint]) -> None:
    """Hard structured prune (largest L2 norms) then nearest-level quantization, no
    compensation."""
    modules = dict(model.named_modules())
    for name, c in select_layers(model, cons).items():
        W = weight_matrix(modules[name])
        mask = c.prune_mask(W) if c.prunes else torch.ones_like(W, dtype=torch.bool)
        Q, _ = project_levels(W, pair_levels(c.levels), c.per_column, mask)
        modules[name].weight.copy_(Q.reshape(modules[name].weight.shape))


def compression_ratio(model: nn.Module, cons: list[LayerConstraint]) -> float:
    """Dense weights / nonzero weights over the compressed layers."""
    modules = dict(model.named_modules())
    ws = [weight_matrix(modules[n]) for n in select_layers(model, cons)]
    return sum(w.numel() for w in ws) / max(sum(int((w != 0).sum()) for w in ws), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-calib", type=int, default=1024)
    parser.add_argument("--settings", default="0.5:4,0.75:2",
                        help="comma-separated row_ratio:device_levels pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    args = parser.parse_args()
    data = "mnist"
    if args.smoke is not None:
        data, args.data_dir, args.epochs, args.n_calib = "digits", None, 1, 64
        args.settings, args.threads = "0.5:4", 1
    torch.set_num_threads(args.threads)

    train, test, info = make_loaders(data, data_dir=args.data_dir, batch_size=128,
                                     seed=args.seed, test_batch_size=1000)
    calib, _, _ = make_loaders(data, data_dir=args.data_dir, batch_size=256,
                               seed=args.seed + 1, subset=args.n_calib)
    torch.manual_seed(args.seed)
    dense = build_model("lenet5", input_shape=info.input_shape)
    start = time.perf_counter()
    fit(dense, (train, test), epochs=args.epochs, lr=2e-3, seed=args.seed, progress=False)
    dense_acc = evaluate(dense, test)
    print(f"trained LeNet-5 in {time.perf_counter() - start:.0f} s: {dense_acc:.2f}%\n")

    start = time.perf_counter()
    importance = compute_importance(dense, calib, "fisher", n_samples=args.n_calib)
    fisher_s = time.perf_counter() - start

    rows = [("dense", "-", dense_acc, 1.0, 0.0)]
    for setting in args.settings.split(","):
        ratio, levels = float(setting.split(":")[0]), int(setting.split(":")[1])
        cons = constraints(ratio, levels)
        label = f"row_ratio={ratio}, {levels} levels"
        model = copy.deepcopy(dense)
        project_only(model, cons)
        rows.append(("projection only", label, evaluate(model, test),
                     compression_ratio(model, cons), 0.0))
        for name, imp in (("obc plain", None), ("obc+importance", importance)):
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            obc_compress(model, calib, cons, n_calib=args.n_calib, importance=imp)
            took = time.perf_counter() - start + (fisher_s if imp is not None else 0.0)
            rows.append((name, label, evaluate(model, test), compression_ratio(model, cons),
                         took))

    print("| compressor | setting | accuracy (%) | compression ratio | time (s) |")
    print("|---|---|---:|---:|---:|")
    for name, label, acc, ratio, took in rows:
        print(f"| {name} | {label} | {acc:.2f} | {ratio:.2f}x | {took:.1f} |")


if __name__ == "__main__":
    main()
