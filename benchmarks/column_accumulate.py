"""Accumulating column tiles: slice add vs ``index_add_`` (VGG-16 at CIFAR shape, no read noise).

A layer whose outputs span several column tiles adds each tile's outputs into the layer output.
When a tile's outputs are a contiguous range (always, unless pruning left gaps) the simulator
adds them through a slice view; otherwise with ``index_add_``. This times both on the same
converted model, interleaved with plain inference (``sim_overhead``'s VGG-16 set-up):

    .venv/bin/python benchmarks/column_accumulate.py
    .venv/bin/python benchmarks/column_accumulate.py --smoke  # seconds: LeNet-5, 32 x 32 tiles

``--smoke [DIR]``: LeNet-5 on 16 inputs, batch 8, one repetition, 32 x 32 tiles (so its 120-
and 84-output layers span several column tiles); prints only (DIR, accepted for a uniform
command line, stays empty).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from sim_overhead import CONFIG, device, run_inference

from memxbar import crossbar
from memxbar.experiments.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    smoke = parser.parse_args().smoke is not None
    torch.set_num_threads(1 if smoke else 2)
    torch.manual_seed(0)
    name, shape, n, batch, config, repeats = (
        ("lenet5", (1, 28, 28), 16, 8, CONFIG.with_(tile_rows=32, tile_cols=32), 1) if smoke
        else ("vgg16", (3, 32, 32), 1024, 128, CONFIG, 3))
    model = build_model(name).eval()
    x = torch.randn(n, *shape)
    xmodel = crossbar.to_crossbar(model, device(0.0), config, calibration=x[:batch]).eval()
    layers = [m for m in xmodel.modules() if isinstance(m, crossbar.CrossbarLayer)]
    units = {id(m): list(m._units) for m in layers}

    def use_slices(on: bool) -> None:
        for m in layers:
            m._units = units[id(m)] if on else [dataclasses.replace(u, col_slice=None)
                                                 for u in units[id(m)]]

    times: dict[str, list[float]] = {"plain": [], "slice add": [], "index_add_": []}
    run_inference(model, x, batch)
    run_inference(xmodel, x, batch)
    for _ in range(repeats):
        times["plain"].append(run_inference(model, x, batch))
        use_slices(True)
        times["slice add"].append(run_inference(xmodel, x, batch))
        use_slices(False)
        times["index_add_"].append(run_inference(xmodel, x, batch))
    plain = statistics.median(times["plain"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name}: {median:.3f} s, {median / plain:.2f}x plain")


if __name__ == "__main__":
    main()
