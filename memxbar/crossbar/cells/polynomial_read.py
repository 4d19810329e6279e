"""State-dependent read noise: ``G_read = G + scale * sigma(G) * N(0, 1)``,
``sigma(G) = max(0, c0 + c1 G + ...)`` in uS (as :mod:`.polynomial` for programming).

``c0 > 0`` gives cells at 0 uS a finite read noise (leakage and sense-amplifier noise of a
nominally off cell), which the relative model cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import REGISTRY, PolynomialSpread, ReadNoiseModel


@REGISTRY["read_noise"].register
@dataclass(frozen=True)
class PolynomialReadNoise(PolynomialSpread, ReadNoiseModel):
    """``coeffs_uS``: ``(c0, c1, ...)`` of ``sigma(G)``; ``scale``: multiplier of the fit."""

    name = "polynomial"

    def std_uS(self, g: torch.Tensor, device, programmed: torch.Tensor | None = None,
               t_s: float | None = None) -> torch.Tensor:
        return self.sigma_uS(g.abs())
