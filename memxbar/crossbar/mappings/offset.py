"""Offset mapping: ``v = (G - G_ref) / h``, one bit line per weight slice plus one reference
column per tile at ``G_ref``, subtracted from every bit line of the tile (and every weight
slice: the reference current does not depend on the slice).

``G_ref`` is the middle of the window (or the programmable level nearest to it) and
``h = max(G_ref - g_min, g_max - G_ref)``; with an even number of levels the grid is not
symmetric (values beyond the short side clip). The reference cells are programmed, drift, fail
and are read with noise like any other cell.
"""

from __future__ import annotations

import torch

from .._grid import nearest
from .base import MappingStyle, register


def reference_level(device) -> tuple[float, float]:
    """``(G_ref, h)``: the reference conductance and the half range of the offset mapping."""
    mid = 0.5 * (device.g_min_uS + device.g_max_uS)
    levels = device.conductance_levels()
    g_ref = mid if levels is None else float(levels[nearest(levels, torch.tensor([mid]))])
    return g_ref, max(g_ref - device.g_min_uS, device.g_max_uS - g_ref)


@register
class Offset(MappingStyle):
    name = "offset"
    cells_per_weight = 1
    reference_columns = 1
    arrays_per_tile = 1
    aux_prefix = "reference_"

    def nominal(self, v: torch.Tensor, device) -> torch.Tensor:
        g_ref, half = reference_level(device)
        target = (g_ref + v.clamp(-1.0, 1.0) * half).clamp(device.g_min_uS, device.g_max_uS)
        levels = device.conductance_levels(v.device)
        if levels is not None:
            target = levels[nearest(levels, target)]
        return target.unsqueeze(-1)

    def reference_uS(self, device) -> float:
        return reference_level(device)[0]

    def norm_uS(self, device) -> float:
        return reference_level(device)[1]

    def weights(self, g: torch.Tensor, g_ref: torch.Tensor | None, device) -> torch.Tensor:
        g_nominal, half = reference_level(device)
        ref = g_nominal if g_ref is None else g_ref
        return (g[..., 0] - ref) / half
