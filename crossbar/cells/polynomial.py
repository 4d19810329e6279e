"""State-dependent programming variation: ``G' = max(0, G + scale * sigma(G) * N(0, 1))`` with

    sigma(G) = max(0, c0 + c1 G + c2 G^2 + ...)      (G and sigma in uS)

the form CrossSim fits to measured multilevel RRAM (a spread that peaks in the middle of the
window and stays finite at the lowest state). ``scale`` multiplies the fit (1 = as measured),
the knob a device study sweeps. Presets and their fits: docs/crossbar.md ("Device presets").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, ProgrammingModel, check_coefficients, polynomial_sigma_uS


@REGISTRY["programming"].register
@dataclass(frozen=True)
class PolynomialProgramming(ProgrammingModel):
    """``coeffs_uS``: ``(c0, c1, ...)`` of ``sigma(G)``; ``scale``: multiplier of the fit."""

    name = "polynomial"
    coeffs_uS: tuple[float, ...] = (0.0,)
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeffs_uS", check_coefficients(self.key("coeffs_uS"),
                                                                 self.coeffs_uS))
        check_float(self.key("scale"), self.scale, 0.0, 100.0)

    @property
    def active(self) -> bool:
        return self.scale > 0 and any(c != 0 for c in self.coeffs_uS)

    def spread_uS(self, g_target: torch.Tensor, device) -> torch.Tensor:
        return self.scale * polynomial_sigma_uS(g_target, self.coeffs_uS)
