"""Weight <-> conductance mapping (pure functions).

Weights are first normalised to ``v = w / scale`` in ``[-1, 1]`` (values outside clip), then
mapped to conductances:

* differential pair: ``v = (G+ - G-) / (g_max - g_min)``; a positive value programs ``G+`` and
  leaves ``G-`` at its lowest state (and vice versa), so ``G+ - G-`` spans ``[-range, range]``;
* offset: ``v = (G - G_ref) / h`` with a reference column at ``G_ref`` (the middle of the range,
  or the programmable level nearest to it) and ``h = max(G_ref - g_min, g_max - G_ref)``. With
  an even number of levels the grid is not symmetric (values beyond the short side clip).

With finite levels the conductances are the levels whose difference is nearest the target, so
weight -> conductance -> weight is the identity on the level grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._grid import nearest, pair_differences
from .mappings import mapping_style
from .mappings.offset import reference_level

if TYPE_CHECKING:
    from .device import DeviceModel

__all__ = ["conductance_to_values", "nearest", "pair_differences", "reference_conductance",
           "slice_values", "values_to_conductance"]


def reference_conductance(device: DeviceModel) -> tuple[float, float]:
    """``(G_ref, h)`` of the offset mapping: the reference conductance and its half range."""
    return reference_level(device)


def values_to_conductance(
    v: torch.Tensor, device: DeviceModel, mapping: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised weights ``v`` -> nominal conductances in uS (the mapping style's
    ``nominal``). Returns ``(G+, G-)`` for the differential mapping and ``(G, None)`` for the
    offset mapping. ``v`` is clipped to ``[-1, 1]`` first (a weight outside the range
    saturates)."""
    g = mapping_style(mapping).nominal(v, device)
    return g[..., 0], (g[..., 1] if g.shape[-1] > 1 else None)


def conductance_to_values(
    g: torch.Tensor, g_other: torch.Tensor | None, device: DeviceModel, mapping: str
) -> torch.Tensor:
    """Inverse of :func:`values_to_conductance`: ``(G+ - G-) / range`` or ``(G - G_ref) / h``
    (``g_other`` is ``G-`` or the reference conductance)."""
    style = mapping_style(mapping)
    if style.cells_per_weight == 2:
        return style.weights(torch.stack([g, g_other], -1), None, device)
    return style.weights(g.unsqueeze(-1), g_other, device)


def slice_values(w: torch.Tensor, scale: torch.Tensor, weight_bits: int, cell_bits: int | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split weights ``w[out, in]`` into per-slice normalised values and weight-unit factors.

    ``scale[out, 1]`` is the weight of a full-range value, per output column (all equal for a
    per-layer scale). Without slicing (``cell_bits=None``): one slice ``v = w / scale``, factor
    ``scale``. With slicing: ``|w|`` is quantized to ``m = round(|w| / scale * (2^B - 1))``
    (``B`` weight bits) and split into base-``2^b`` digits ``d_k`` (``b`` cell bits); slice ``k``
    holds ``v_k = sign(w) * d_k / (2^b - 1)`` with factor
    ``scale * 2^(k b) * (2^b - 1) / (2^B - 1)``, so ``w ~ sum_k factor_k * v_k``.

    Returns ``(values[S, out, in], factors[S, out, 1])``.
    """
    if cell_bits is None:
        return (w / scale).unsqueeze(0), scale.unsqueeze(0).clone()
    full = 2**weight_bits - 1
    digit_max = 2**cell_bits - 1
    n_slices = -(-weight_bits // cell_bits)
    m = torch.round((w.abs() / scale).clamp(max=1.0) * full).to(torch.int64)
    sign = torch.sign(w)
    values, factors = [], []
    for k in range(n_slices):
        digit = (m >> (k * cell_bits)) & digit_max
        values.append(sign * digit.to(w.dtype) / digit_max)
        factors.append(scale * (2 ** (k * cell_bits) * digit_max / full))
    return torch.stack(values), torch.stack(factors)
