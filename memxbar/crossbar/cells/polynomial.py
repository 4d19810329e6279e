"""State-dependent programming variation: ``G' = max(0, G + scale * sigma(G) * N(0, 1))`` with

    sigma(G) = max(0, c0 + c1 G + c2 G^2 + ...)      (G and sigma in uS)

the form CrossSim fits to measured multilevel RRAM (a spread that peaks in the middle of the
window and stays finite at the lowest state). ``scale`` multiplies the fit (1 = as measured),
the knob a device study sweeps. Presets and their fits: docs/crossbar.md ("Device presets").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import REGISTRY, PolynomialSpread, ProgrammingModel


@REGISTRY["programming"].register
@dataclass(frozen=True)
class PolynomialProgramming(PolynomialSpread, ProgrammingModel):
    """``coeffs_uS``: ``(c0, c1, ...)`` of ``sigma(G)``; ``scale``: multiplier of the fit."""

    name = "polynomial"

    def spread_uS(self, g_target: torch.Tensor, device) -> torch.Tensor:
        return self.sigma_uS(g_target)
