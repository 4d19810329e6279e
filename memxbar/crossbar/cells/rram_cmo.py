"""RRAM conductance relaxation with log time: a mean shift and a spread that grow with ln t,

    G(t) = max(0, G_prog + scale * (a ln t + (b ln t + c) * N(0, 1))),   t >= 1 s
    a = -0.08900206 uS,  b = 0.04201137 uS,  c = 0.41183342 uS

the fit of IBM's CMO/HfOx ReRAM in aihwkit's ``ReRamCMONoiseModel`` (Falcone et al.,
arXiv:2502.04524, 2025), extracted at 50 uS and applied at every state. ``t`` in seconds after
programming; the fit starts at the first read, 1 s, so ``0 < t < 1`` s is treated as 1 s and
``t = 0`` is the state right after programming (no relaxation). ``N`` is one draw per cell,
fixed per chip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, DriftModel

SHIFT_uS, SPREAD_SLOPE_uS, SPREAD_AT_1S_uS = -0.08900206, 0.04201137, 0.41183342


@REGISTRY["drift"].register
@dataclass(frozen=True)
class RramCmoDrift(DriftModel):
    """``scale``: multiplier of the fitted shift and spread (1 = as measured)."""

    name = "rram_cmo"
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_float(self.key("scale"), self.scale, 0.0, 100.0)

    def at_time(self, g: torch.Tensor, t_s: float, normal: torch.Tensor, device,
                target: torch.Tensor) -> torch.Tensor:
        if t_s <= 0:
            return g
        log_t = math.log(max(t_s, 1.0))
        shift = SHIFT_uS * log_t
        spread = SPREAD_SLOPE_uS * log_t + SPREAD_AT_1S_uS
        return (g + self.scale * (shift + spread * normal)).clamp_(min=0.0)
