"""Bit-serial input: a 1-bit DAC streams the ``b``-bit input magnitude one bit per cycle
(``b`` cycles; the positive and negative parts of signed inputs separately), each cycle's
partial sums converted by the ADC, then shifted and added:
``x ~ sum_p weight_p * plane_p`` (ISAAC, Shafiee et al., ISCA 2016)."""

from __future__ import annotations

import torch

from ..periphery import bit_planes
from .base import DAC, Drive, register_dac


@register_dac
class BitSerialDAC(DAC):
    name = "bit_serial"

    def cycles(self, bits: int) -> int:
        return bits

    def bits_per_cycle(self, bits: int) -> int:
        return 1

    def drive(self, x: torch.Tensor, full: float, signed: bool, bits: int) -> Drive:
        planes, weights = bit_planes(x, full, bits, signed)
        step = max(full, 1e-30) / (2**bits - 1)  # the weight of the lowest bit plane
        return Drive(planes.flatten(0, 1), weights / step, step, 1.0)
