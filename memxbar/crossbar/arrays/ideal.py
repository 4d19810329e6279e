"""Ideal array: wires of zero resistance, ideal drivers and virtual-ground sense amplifiers,
so every cell sees the driver's voltage and ``I_j = sum_i G_ij v_i`` (``M = G^T``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ArrayModel, register


@register
@dataclass(frozen=True)
class IdealArray(ArrayModel):
    name = "ideal"

    @property
    def ideal(self) -> bool:
        return True

    def effective(self, g_S: torch.Tensor) -> torch.Tensor:
        return g_S.T
