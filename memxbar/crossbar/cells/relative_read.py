"""Read noise proportional to the conductance: ``G_read = G * (1 + sigma * N(0, 1))``.

A new draw for every matrix-vector product (per sample, per convolution position, per input-bit
cycle, per weight slice); aihwkit's PCM and ReRAM inference noise models use this relative
form for their short-term (1/f, random telegraph) read noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, ReadNoiseModel


@REGISTRY["read_noise"].register
@dataclass(frozen=True)
class RelativeReadNoise(ReadNoiseModel):
    """``sigma``: standard deviation of a read relative to the cell's conductance."""

    name = "relative"
    sigma: float = 0.0

    def __post_init__(self) -> None:
        check_float(self.key("sigma"), self.sigma, 0.0, 1.0)

    @property
    def active(self) -> bool:
        return self.sigma > 0

    def std_uS(self, g: torch.Tensor, device, programmed: torch.Tensor | None = None,
               t_s: float | None = None) -> torch.Tensor:
        return self.sigma * g.abs()
