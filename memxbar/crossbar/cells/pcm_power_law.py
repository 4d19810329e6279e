"""PCM-style drift: a power law in time with a state-dependent, per-cell exponent,

    G(t) = G_prog * ((t + t0) / t0)^(-nu),    nu = scale * |mu_nu(g) + sigma_nu(g) * N(0, 1)|
    mu_nu(g)    = clamp(-0.0155 ln g + 0.0244, 0.049, 0.1)
    sigma_nu(g) = clamp(-0.0125 ln g - 0.0059, 0.008, 0.045),     g = G_target / g_max

with ``t`` the time after programming and ``t0 = 20 s`` the first read after programming. The
exponent fit is aihwkit's ``PCMLikeNoiseModel`` (Nandakumar et al., ICECS 2019, measured on
IBM's PCM); ``N`` is one draw per cell, fixed per chip (the same cell drifts the same way at
every ``t``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, DriftModel


@REGISTRY["drift"].register
@dataclass(frozen=True)
class PcmPowerLawDrift(DriftModel):
    """``t0_s``: reference time of the power law; ``scale``: multiplier of the exponent."""

    name = "pcm_power_law"
    t0_s: float = 20.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_float(self.key("t0_s"), self.t0_s, 0.0, 1e6, low_open=True)
        check_float(self.key("scale"), self.scale, 0.0, 100.0)

    def at_time(self, g: torch.Tensor, t_s: float, normal: torch.Tensor, device,
                target: torch.Tensor) -> torch.Tensor:
        if t_s <= 0:
            return g
        log_g = torch.log((target.abs() / device.g_max_uS).clamp(min=1e-7))
        mu = (-0.0155 * log_g + 0.0244).clamp(0.049, 0.1)
        sigma = (-0.0125 * log_g - 0.0059).clamp(0.008, 0.045)
        nu = self.scale * (mu + sigma * normal).abs()
        return g * torch.exp(-nu * math.log((t_s + self.t0_s) / self.t0_s))
