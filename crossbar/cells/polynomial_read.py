"""State-dependent read noise: ``G_read = G + scale * sigma(G) * N(0, 1)``,
``sigma(G) = max(0, c0 + c1 G + ...)`` in uS (as :mod:`.polynomial` for programming).

``c0 > 0`` gives cells at 0 uS a finite read noise (leakage and sense-amplifier noise of a
nominally off cell), which the relative model cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, ReadNoiseModel, check_coefficients, polynomial_sigma_uS


@REGISTRY["read_noise"].register
@dataclass(frozen=True)
class PolynomialReadNoise(ReadNoiseModel):
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

    def std_uS(self, g: torch.Tensor, device) -> torch.Tensor:
        return self.scale * polynomial_sigma_uS(g.abs(), self.coeffs_uS)
