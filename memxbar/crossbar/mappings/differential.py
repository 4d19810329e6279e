"""Differential pair: ``v = (G+ - G-) / (g_max - g_min)``, two bit lines per weight slice,
subtracted in analog before the ADC (two arrays of the tile size per tile).

A positive weight programs ``G+`` and leaves ``G-`` at its lowest state (and vice versa), so
``G+ - G-`` spans ``[-range, range]``. With finite levels the pair whose difference is nearest
the target is programmed (for equal differences the one of lowest total conductance, i.e. the
lowest read power), so a weight on the level grid maps exactly.
"""

from __future__ import annotations

import torch

from .._grid import nearest, pair_differences
from .base import MappingStyle, register


@register
class Differential(MappingStyle):
    name = "differential"
    cells_per_weight = 2
    reference_columns = 0
    arrays_per_tile = 2

    def nominal(self, v: torch.Tensor, device) -> torch.Tensor:
        target = v.clamp(-1.0, 1.0) * device.g_range_uS
        levels = device.conductance_levels(v.device)
        if levels is None:
            g_pos = device.g_min_uS + target.clamp(min=0.0)
            g_neg = device.g_min_uS + (-target).clamp(min=0.0)
        else:
            diffs, i, j = pair_differences(levels)
            k = nearest(diffs, target)
            g_pos, g_neg = levels[i[k]], levels[j[k]]
        return torch.stack([g_pos, g_neg], dim=-1)

    def norm_uS(self, device) -> float:
        return device.g_range_uS

    def weights(self, g: torch.Tensor, g_ref: torch.Tensor | None, device) -> torch.Tensor:
        return (g[..., 0] - g[..., 1]) / device.g_range_uS
