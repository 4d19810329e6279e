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

import torch

from .device import DeviceModel


def pair_differences(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All values ``l_i - l_j`` a differential pair of cells can represent.

    Returns the sorted unique differences and, for each, the pair ``(i, j)`` with the lowest
    total conductance ``l_i + l_j`` (the lowest read power among equal pairs).
    """
    n = levels.numel()
    diff = (levels.unsqueeze(1) - levels.unsqueeze(0)).flatten().double()
    total = (levels.unsqueeze(1) + levels.unsqueeze(0)).flatten()
    # Equal differences of float levels differ by rounding: compare them on a grid of 1e-5 of
    # the range, then sort by (difference, total) so each run starts with the cheapest pair.
    key = torch.round(diff / (1e-5 * float(levels.max() - levels.min()))).to(torch.int64)
    order = torch.argsort(total, stable=True)
    order = order[torch.argsort(key[order], stable=True)]
    k_sorted = key[order]
    first = torch.ones_like(k_sorted, dtype=torch.bool)
    first[1:] = k_sorted[1:] != k_sorted[:-1]
    pick = order[first]
    d_sorted = diff[pick]
    return d_sorted.to(levels.dtype), pick // n, pick % n


def _nearest(grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Index of the grid value nearest to each ``x`` (``grid`` sorted ascending; ties go low)."""
    idx = torch.searchsorted(grid, x.contiguous()).clamp(1, grid.numel() - 1)
    lo, hi = grid[idx - 1], grid[idx]
    return torch.where((x - lo) <= (hi - x), idx - 1, idx)


def reference_conductance(device: DeviceModel) -> tuple[float, float]:
    """``(G_ref, h)`` of the offset mapping: the reference conductance and its half range."""
    mid = 0.5 * (device.g_min_uS + device.g_max_uS)
    levels = device.conductance_levels()
    g_ref = mid if levels is None else float(levels[_nearest(levels, torch.tensor([mid]))])
    return g_ref, max(g_ref - device.g_min_uS, device.g_max_uS - g_ref)


def values_to_conductance(
    v: torch.Tensor, device: DeviceModel, mapping: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised weights ``v`` -> nominal conductances in uS.

    Returns ``(G+, G-)`` for the differential mapping and ``(G, None)`` for the offset mapping.
    ``v`` is clipped to ``[-1, 1]`` first (a weight outside the range saturates).
    """
    v = v.clamp(-1.0, 1.0)
    levels = device.conductance_levels(v.device)
    if mapping == "differential":
        target = v * device.g_range_uS
        if levels is None:
            g_pos = device.g_min_uS + target.clamp(min=0.0)
            g_neg = device.g_min_uS + (-target).clamp(min=0.0)
            return g_pos, g_neg
        diffs, i, j = pair_differences(levels)
        k = _nearest(diffs, target)
        return levels[i[k]], levels[j[k]]
    g_ref, half = reference_conductance(device)
    target = (g_ref + v * half).clamp(device.g_min_uS, device.g_max_uS)
    if levels is None:
        return target, None
    return levels[_nearest(levels, target)], None


def conductance_to_values(
    g: torch.Tensor, g_other: torch.Tensor | None, device: DeviceModel, mapping: str
) -> torch.Tensor:
    """Inverse of :func:`values_to_conductance`: ``(G+ - G-) / range`` or ``(G - G_ref) / h``
    (``g_other`` is ``G-`` or the reference conductance)."""
    if mapping == "differential":
        return (g - g_other) / device.g_range_uS
    g_ref, half = reference_conductance(device)
    ref = g_ref if g_other is None else g_other
    return (g - ref) / half


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
