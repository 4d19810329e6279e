"""Stuck-at faults: each cell independently stuck at ``g_min`` (SA0, stuck off) with
probability ``sa0_rate`` or at ``g_max`` (SA1, stuck on) with probability ``sa1_rate``,
whatever it was programmed to. One uniform draw ``u`` per cell: ``u < sa0`` is SA0,
``sa0 <= u < sa0 + sa1`` is SA1, so a cell that is SA0 at a given rate stays SA0 at any higher
rate (nested fault maps: a sweep over the rate adds faults, it does not redraw them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_float, fail
from .base import REGISTRY, FaultModel


@REGISTRY["faults"].register
@dataclass(frozen=True)
class StuckAtFaults(FaultModel):
    """``sa0_rate``, ``sa1_rate``: fractions of cells stuck at ``g_min`` / ``g_max``."""

    name = "stuck_at"
    sa0_rate: float = 0.0
    sa1_rate: float = 0.0

    def __post_init__(self) -> None:
        check_float(self.key("sa0_rate"), self.sa0_rate, 0.0, 1.0)
        check_float(self.key("sa1_rate"), self.sa1_rate, 0.0, 1.0)
        if self.sa0_rate + self.sa1_rate > 1.0:
            fail(self.key("sa0_rate + sa1_rate"), self.sa0_rate + self.sa1_rate,
                 "a sum in [0, 1]")

    @property
    def active(self) -> bool:
        return self.sa0_rate > 0 or self.sa1_rate > 0

    def stuck(self, uniform: torch.Tensor, device) -> torch.Tensor:
        sa0 = uniform < self.sa0_rate
        sa1 = (uniform >= self.sa0_rate) & (uniform < self.sa0_rate + self.sa1_rate)
        out = torch.full_like(uniform, float("nan"))
        out = torch.where(sa0, torch.full_like(out, device.g_min_uS), out)
        return torch.where(sa1, torch.full_like(out, device.g_max_uS), out)
