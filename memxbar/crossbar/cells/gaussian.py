"""Gaussian programming variation of constant spread: ``G' = G + sigma * (g_max - g_min) * N``.

The state-independent special case of :mod:`.polynomial` (``c0`` only), in units of the
conductance window; floored at 0 uS (a conductance cannot be negative).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, ProgrammingModel


@REGISTRY["programming"].register
@dataclass(frozen=True)
class GaussianProgramming(ProgrammingModel):
    """``sigma``: standard deviation as a fraction of ``g_max - g_min``."""

    name = "gaussian"
    sigma: float = 0.0

    def __post_init__(self) -> None:
        check_float(self.key("sigma"), self.sigma, 0.0, 1.0)

    @property
    def active(self) -> bool:
        return self.sigma > 0

    def spread_uS(self, g_target: torch.Tensor, device) -> torch.Tensor:
        return torch.full_like(g_target, self.sigma * device.g_range_uS)
