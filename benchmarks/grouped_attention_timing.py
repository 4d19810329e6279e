"""Simulator overhead of grouped convolutions and attention (one CPU thread, median of runs):

* a depthwise 3x3 convolution, 128 channels, on a batch of 8 x 128 x 16 x 16 inputs
  (128 tiles of 9 x 1 on 128 x 128 arrays): conversion time, then the forward time of the
  crossbar layer over plain ``nn.Conv2d``, ideal and with 8-bit DAC/ADC, read noise and
  programming variation; the same layer with its tiles computed one product per tile (what
  the grouped product replaces) for comparison;
* an ``nn.TransformerEncoderLayer`` (d_model 64, 4 heads, feed-forward 128, batch 8 x 32
  tokens) with its attention projections and feed-forward layers on crossbars, 8-bit
  DAC/ADC, read noise and variation (PyTorch's layer takes its fused fast path).

    .venv/bin/python benchmarks/grouped_attention_timing.py
    .venv/bin/python benchmarks/grouped_attention_timing.py --smoke  # seconds

``--smoke [DIR]``: the same measurements on a 16-channel depthwise convolution (2 x 16 x 8 x 8
inputs) and a TransformerEncoderLayer(16, 2 heads, feed-forward 32, 2 x 4 tokens), one timed
block of one call each; prints only (DIR, accepted for a uniform command line, stays empty).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memxbar import crossbar  # noqa: E402
from memxbar.crossbar import physical  # noqa: E402
from memxbar.crossbar.tile_units import as_slice  # noqa: E402


def paired(fn, plain, repeats: int = 15, calls: int = 10) -> tuple[float, float]:
    """Median time of one ``fn`` call (s) and median ratio to ``plain``: blocks of ``calls``
    calls of each, alternating (a busy shared machine slows both of a pair alike)."""
    def block(f) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            f()
        return (time.perf_counter() - start) / calls

    block(fn), block(plain)  # warm-up
    times, ratios = [], []
    for _ in range(repeats):
        t, p = block(fn), block(plain)
        times.append(t)
        ratios.append(t / p)
    return statistics.median(times), statistics.median(ratios)


def one_product_per_tile(layer: crossbar.CrossbarConv2d) -> None:
    """Split the layer's units of tiles into one unit per tile (the per-tile loop)."""
    units = []
    for u in layer._units:
        n = len(u.tiles)
        cols, ins = u.cols.numel() // n, u.inputs.numel() // n
        for j, t in enumerate(u.tiles):
            inputs = u.inputs[j * ins:(j + 1) * ins]
            units.append(replace(u, tiles=(t,), cols=u.cols[j * cols:(j + 1) * cols],
                                 inputs=inputs, input_slice=as_slice(inputs.tolist())))
    layer._units = units
    physical.refresh(layer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    smoke = parser.parse_args().smoke is not None
    timing = {"repeats": 1, "calls": 1} if smoke else {}  # paired(): one timed block of one call
    channels, (batch, size), (d_model, heads, ff, n_tokens) = (
        (16, (2, 8), (16, 2, 32, 4)) if smoke else (128, (8, 16), (64, 4, 128, 32)))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels).eval()
    x = torch.randn(batch, channels, size, size)
    device = crossbar.DeviceModel(prog_sigma=0.05, read_sigma=0.02)
    periphery = crossbar.CrossbarConfig(dac_bits=8, adc_bits=8)
    start = time.perf_counter()
    noisy = crossbar.to_crossbar(conv, device, periphery, calibration=x)
    convert_s = time.perf_counter() - start
    ideal = crossbar.to_crossbar(conv, crossbar.DeviceModel.ideal(), crossbar.CrossbarConfig())
    looped = crossbar.to_crossbar(conv, device, periphery, calibration=x)
    one_product_per_tile(looped)
    with torch.no_grad():
        # warm every variant first: glibc raises its mmap threshold once a large block is
        # freed, after which plain nn.Conv2d on this shape runs ~6x faster (0.3 vs 2 ms)
        for fn in (conv, ideal, noisy, looped):
            fn(x)
        plain_s = paired(lambda: conv(x), lambda: conv(x), **timing)[0]
        rows = [("ideal device, ideal converters",
                 paired(lambda: ideal(x), lambda: conv(x), **timing)),
                ("8-bit DAC/ADC, read noise, variation",
                 paired(lambda: noisy(x), lambda: conv(x), **timing)),
                ("same, one product per tile",
                 paired(lambda: looped(x), lambda: conv(x), **(timing or {"repeats": 5,
                                                                           "calls": 2})))]
    print(f"depthwise 3x3, {channels} channels, x {tuple(x.shape)}: {noisy.plan.n_tiles} tiles, "
          f"{len(noisy._units)} grouped product(s); conversion with calibration "
          f"{convert_s:.2f} s; plain nn.Conv2d {plain_s * 1e3:.2f} ms")
    for name, (t, ratio) in rows:
        print(f"  {name}: {t * 1e3:.2f} ms = {ratio:.1f}x plain")

    block = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True).eval()
    tokens = torch.randn(batch, n_tokens, d_model)
    xblock = crossbar.to_crossbar(block, device, periphery, calibration=tokens)
    with torch.no_grad():
        block(tokens), xblock(tokens)
        plain_s = paired(lambda: block(tokens), lambda: block(tokens), **timing)[0]
        sim_s, ratio = paired(lambda: xblock(tokens), lambda: block(tokens), **timing)
    print(f"TransformerEncoderLayer({d_model}, {heads} heads), x {tuple(tokens.shape)}: "
          f"{xblock.mapping_plan.n_tiles} tiles; plain {plain_s * 1e3:.2f} ms, crossbar "
          f"{sim_s * 1e3:.2f} ms = {ratio:.1f}x plain")


if __name__ == "__main__":
    main()
