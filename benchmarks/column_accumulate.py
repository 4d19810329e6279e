"""Accumulating column tiles: slice add vs ``index_add_`` (VGG-16 at CIFAR shape, no read noise).

A layer whose outputs span several column tiles adds each tile's outputs into the layer output.
When a tile's outputs are a contiguous range (always, unless pruning left gaps) the simulator
adds them through a slice view; otherwise with ``index_add_``. This times both on the same
converted model, interleaved with plain inference (``sim_overhead``'s VGG-16 set-up):

    .venv/bin/python benchmarks/column_accumulate.py
"""

from __future__ import annotations

import dataclasses
import statistics

import torch
from sim_overhead import CONFIG, device, run_inference

import crossbar
from experiments.models import build_model


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model("vgg16").eval()
    x = torch.randn(1024, 3, 32, 32)
    xmodel = crossbar.to_crossbar(model, device(0.0), CONFIG, calibration=x[:128]).eval()
    layers = [m for m in xmodel.modules() if isinstance(m, crossbar.CrossbarLayer)]
    units = {id(m): list(m._units) for m in layers}

    def use_slices(on: bool) -> None:
        for m in layers:
            m._units = units[id(m)] if on else [dataclasses.replace(u, col_slice=None)
                                                 for u in units[id(m)]]

    times: dict[str, list[float]] = {"plain": [], "slice add": [], "index_add_": []}
    run_inference(model, x, 128)
    run_inference(xmodel, x, 128)
    for _ in range(3):
        times["plain"].append(run_inference(model, x, 128))
        use_slices(True)
        times["slice add"].append(run_inference(xmodel, x, 128))
        use_slices(False)
        times["index_add_"].append(run_inference(xmodel, x, 128))
    plain = statistics.median(times["plain"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name}: {median:.3f} s, {median / plain:.2f}x plain")


if __name__ == "__main__":
    main()
