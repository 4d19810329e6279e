"""Write-verify reads averaged as priced (issue 21, item 1): one ``verify_reads`` setting sets
both the simulated verify read's noise (std / sqrt(n), the mean of n independent reads) and
the programming cost (n reads per pulse). Oracle: the closed form of the fraction of cells a
noisy verify flags outside the band, 2 * Phi(-tol / (sigma G / sqrt(n)))."""

from __future__ import annotations

import math

import pytest
import torch

from memxbar.crossbar import DeviceModel, programming_cost
from memxbar.crossbar.cells.relative_read import RelativeReadNoise
from memxbar.crossbar.cells.write_verify import WriteVerify


@pytest.mark.parametrize("reads", [1, 4, 8])
def test_the_verify_read_noise_is_averaged_over_the_reads(reads):
    n, g, sigma, tol = 200_000, 50.0, 0.02, 1.0
    target = torch.full((n,), g, dtype=torch.float64)
    device = DeviceModel(g_min_uS=0.0, g_max_uS=100.0, n_levels=None)
    wv = WriteVerify(tolerance_uS=tol, max_pulses=1, verify_reads=reads)
    out = wv.program(target, None, RelativeReadNoise(sigma=sigma), device,
                     first=torch.zeros(n, dtype=torch.float64),
                     gen=torch.Generator().manual_seed(0))
    flagged = float((~out.converged).double().mean())
    expected = math.erfc(tol / (sigma * g / math.sqrt(reads)) / math.sqrt(2))  # 2 Phi(-z)
    stderr = math.sqrt(expected * (1 - expected) / n)
    assert abs(flagged - expected) < 5 * stderr + 1e-4, (reads, flagged, expected)


def test_the_cost_charges_the_reads_the_simulation_averages():
    stats = {"cells": 10, "pulses": 30, "failed": 0, "tile_pulses": [30]}
    one, eight = (programming_cost(stats, verify_reads=r) for r in (1, 8))
    assert eight["energy_uJ"] > one["energy_uJ"]
    assert eight["assumptions"]["verify_reads_used"] == 8
    assert WriteVerify().verify_reads == 8  # NeuRRAM's average, the default of both
    with pytest.raises(ValueError, match="write_verify.verify_reads=0 is invalid"):
        WriteVerify(verify_reads=0)
