"""Parallel multi-bit DAC: each input is one ``b``-bit code per matrix-vector product.

Signed inputs use the symmetric codes ``-(2^(b-1) - 1) .. 2^(b-1) - 1`` over ``[-r, r]``,
non-negative inputs (post-ReLU) the ``2^b - 1`` codes of ``[0, r]``; the value of a code is
``step = r / q``.
"""

from __future__ import annotations

import torch

from ..periphery import signed_steps
from .base import DAC, Drive, register_dac


@register_dac
class ParallelDAC(DAC):
    name = "parallel"

    def cycles(self, bits: int) -> int:
        return 1

    def bits_per_cycle(self, bits: int) -> int:
        return bits

    def drive(self, x: torch.Tensor, full: float, signed: bool, bits: int) -> Drive:
        q = signed_steps(bits) if signed else 2**bits - 1
        step = max(full, 1e-30) / q
        codes = torch.mul(x, 1.0 / step).round_().clamp_(-q if signed else 0, q)
        return Drive(codes, None, step, float(q))
