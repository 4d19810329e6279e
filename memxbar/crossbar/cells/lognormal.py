"""Log-normal programming variation: ``G' = G * exp(sigma * N(0, 1))``.

The multiplicative form NeuroSim uses for its ``--vari`` option (device-to-device variation
relative to the programmed value). A cell programmed to 0 uS stays at 0 uS: use
``polynomial`` for a spread that does not vanish at the lowest state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, ProgrammingModel


@REGISTRY["programming"].register
@dataclass(frozen=True)
class LognormalProgramming(ProgrammingModel):
    """``sigma``: standard deviation of ``ln G'`` (relative spread for small values)."""

    name = "lognormal"
    sigma: float = 0.0

    def __post_init__(self) -> None:
        check_float(self.key("sigma"), self.sigma, 0.0, 3.0)

    @property
    def active(self) -> bool:
        return self.sigma > 0

    def spread_uS(self, g_target: torch.Tensor, device) -> torch.Tensor:
        """First-order spread ``sigma * G`` (used by write-verify pulses)."""
        return self.sigma * g_target

    def sample(self, g_target: torch.Tensor, normal: torch.Tensor, device) -> torch.Tensor:
        return g_target * torch.exp(self.sigma * normal)
