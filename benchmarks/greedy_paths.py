"""Greedy allocation paths: the same dense model, trajectories asked in different orders of
budgets and with different beam widths, each final split scored two ways (BENCHMARKS.md,
"A beam search for the greedy allocation"):

* its held-out loss after the greedy search's short fine-tuning (what the search ranks by);
* a slower proxy: the split's masks on the dense weights (rows/columns of largest norm), then
  ``--proxy-epochs`` epochs of masked Adam (cross-entropy), test accuracy.

    MEMXBAR_DATA=../shared/data .venv/bin/python benchmarks/greedy_paths.py \\
        --override +experiment=mnist_lenet5 allocation.max_drop=null allocation.budget=30 \\
        runtime.cache_dir=outputs/cache \\
        --path fixed:1:30 --path search:1:25.44,128.3,57.13,38.12,31.14 --path beam3:3:30

``--path NAME:BEAM:B1,B2,...`` asks a fresh trajectory of width BEAM for the compression ratios
B1, B2, ... in turn and scores the last one's split. ``--handset`` adds the hand-set split of
``conf/admm/lenet5_mnist.yaml`` to the proxy. Writes ``greedy_paths.json`` and
``greedy_paths.md`` into ``--out``.

``--smoke DIR``: the embedded digits (the default config), budgets 3x and 2x,6x,3x, beams 1 and
2, 20 fine-tuning steps, a 1-epoch proxy, one thread; writes into DIR.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.nn import functional as F

from memxbar.admm import LayerConstraint, select_layers, weight_matrix
from memxbar.admm.masked import MaskedOptimizer, apply_masks
from memxbar.experiments import allocation as alloc
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.stages import prepare
from memxbar.experiments.train import evaluate

HANDSET = {"features.0": (20, 5), "features.3": (50, 10), "classifier.0": (48, 20),
           "classifier.2": (20, 16), "classifier.4": (16, None)}
"""The hand-set 30x split of ``memxbar/conf/admm/lenet5_mnist.yaml`` (rows, columns)."""


def _count(kept: int | None) -> str:
    return "all" if kept is None else str(kept)


def proxy(p, dense: dict, split: dict, epochs: int, seed: int) -> float:
    """Test accuracy after ``epochs`` of masked Adam from the dense weights cut to ``split``
    (layer -> (rows, cols), None: all)."""
    model = p.model
    model.load_state_dict(dense)
    modules = dict(model.named_modules())
    masks = {name: LayerConstraint(pattern=name, row_keep=rows, col_keep=cols)
             .prune_mask(weight_matrix(modules[name]).detach())
             for name, (rows, cols) in split.items()}
    apply_masks(model, masks)
    torch.manual_seed(seed)
    opt = MaskedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), model, masks)
    for _ in range(epochs):
        model.train()
        for x, y in p.train:
            opt.zero_grad()
            F.cross_entropy(model(x.to(p.torch_device)), y.to(p.torch_device)).backward()
            opt.step()
    model.eval()
    return evaluate(model, p.test)


def run_path(exp, p, dense: dict, beam: int, budgets: list[float]) -> dict:
    """A fresh greedy trajectory of width ``beam`` asked ``budgets`` in turn: the last split."""
    alloc._CANDIDATES.clear()  # a fresh trajectory, not the memoised one
    p.model.load_state_dict(dense)
    t0 = time.perf_counter()
    for b in budgets:
        a = dataclasses.replace(exp.allocation, budget=b, greedy_beam=beam)
        chosen, summary = alloc.allocation_stage(
            p.model, p.train, a, exp.admm.layer_constraints(), exp.crossbar, exp.cost,
            p.calibration, exp.seed, lr=exp.admm.lr)
    layers = select_layers(p.model, [LayerConstraint(**c) for c in chosen])
    split = {name: (c.row_keep, c.col_keep) for name, c in layers.items()}
    return {"beam": beam, "budgets": budgets, "seconds": round(time.perf_counter() - t0, 1),
            "split": split, "cost": summary["total_cost"], "loss": summary["total_error"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides")
    parser.add_argument("--path", action="append", default=[], metavar="NAME:BEAM:B1,B2")
    parser.add_argument("--handset", action="store_true")
    parser.add_argument("--proxy-epochs", type=int, default=4)
    parser.add_argument("--out", default="outputs/greedy_paths")
    parser.add_argument("--smoke", metavar="DIR")
    args = parser.parse_args()
    if args.smoke is not None:
        args.out, args.proxy_epochs = args.smoke, 1
        args.override = ["allocation={budget: 3, finetune_steps: 20, n_samples: 128}",
                         f"runtime.cache_dir={Path(args.smoke) / 'cache'}"]
        args.path = ["one:1:3", "two:2:2,6,3"]
    with initialize_config_module("memxbar.conf", version_base=None):
        cfg = compose("config", overrides=["runtime.threads=1", "runtime.progress=false",
                                           *args.override])
    exp = load_compress_config(cfg)
    out = Path(args.out)
    (out / "run").mkdir(parents=True, exist_ok=True)
    p = prepare(exp, out / "run", {})
    dense = copy.deepcopy(p.model.state_dict())
    rows = {}
    for spec in args.path:
        name, beam, budgets = spec.split(":")
        rows[name] = run_path(exp, p, dense, int(beam), [float(b) for b in budgets.split(",")])
        rows[name]["proxy"] = proxy(p, dense, rows[name]["split"], args.proxy_epochs, exp.seed)
        print(name, json.dumps(rows[name]), flush=True)
    if args.handset:
        rows["handset"] = {"split": HANDSET,
                           "proxy": proxy(p, dense, HANDSET, args.proxy_epochs, exp.seed)}
    (out / "greedy_paths.json").write_text(json.dumps(rows, indent=1))
    lines = ["| path | beam | budgets asked | split (rows x columns) | held-out loss | proxy |",
             "|---|---:|---|---|---:|---:|"]
    for name, r in rows.items():
        split = "; ".join(f"{n} {_count(rc[0])}x{_count(rc[1])}"
                          for n, rc in r["split"].items())
        lines.append(f"| {name} | {r.get('beam', '')} | {r.get('budgets', '')} | {split} | "
                     f"{r.get('loss', float('nan')):.4f} | {r['proxy']:.2f} % |")
    (out / "greedy_paths.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
