"""Timings of the robustness steps, as ratios within one run (one CPU thread):

* fault-aware placement: programming a 512 x 1024 Linear layer (32 tiles of 128 x 128, 16
  levels, 10 % variation, 0.5 % stuck-at) with and without placement, per tile;
* hardware-aware retraining: a LeNet-5 training step (batch 128, 32 x 32 tiles, 4-bit DAC /
  6-bit ADC) with and without ``crossbar.HardwareAware``.

    .venv/bin/python benchmarks/robustness_timing.py
    .venv/bin/python benchmarks/robustness_timing.py --smoke  # seconds

``--smoke [DIR]``: a 256 x 256 layer (4 tiles), a batch of 8, one timed run of each; prints only
(DIR, accepted for a uniform command line, stays empty).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memxbar import crossbar  # noqa: E402
from memxbar.experiments.models import build_model  # noqa: E402


def best(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    smoke = parser.parse_args().smoke is not None
    (n_in, n_out), batch, repeats, step_repeats = ((256, 256), 8, 1, 1) if smoke \
        else ((1024, 512), 128, 5, 10)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dev = crossbar.DeviceModel(n_levels=16, prog_sigma=0.1, sa0_rate=0.0025, sa1_rate=0.0025)
    layer, cfg = nn.Linear(n_in, n_out), crossbar.CrossbarConfig()
    plain = best(lambda: crossbar.to_crossbar(layer, dev, cfg), repeats)
    placed = best(lambda: crossbar.to_crossbar(layer, dev, cfg,
                                               repair=crossbar.RepairConfig(placement=True)),
                  repeats)
    tiles = crossbar.to_crossbar(layer, dev, cfg).plan.n_tiles
    print(f"programming {tiles} tiles: {plain:.3f} s, with placement {placed:.3f} s "
          f"({(placed - plain) / tiles * 1e3:.1f} ms of placement per tile)")

    model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    model.train()
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    hwa = crossbar.HardwareAware(dev, crossbar.CrossbarConfig(tile_rows=32, tile_cols=32,
                                                              dac_bits=4, adc_bits=6))

    def step() -> None:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    def hwa_step() -> None:
        with hwa(model):
            step()

    t_plain, t_hwa = best(step, step_repeats), best(hwa_step, step_repeats)
    print(f"LeNet-5 training step: {t_plain * 1e3:.1f} ms, hardware-aware {t_hwa * 1e3:.1f} ms "
          f"({t_hwa / t_plain:.2f}x)")


if __name__ == "__main__":
    main()
