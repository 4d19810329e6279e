"""Level-grid arithmetic shared by the mapping styles and the repair step (a leaf module: it
imports nothing of the package, so :mod:`crossbar.conductance` and :mod:`crossbar.mappings` can
both use it without importing each other)."""

from __future__ import annotations

import torch


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


def nearest(grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Index of the grid value nearest to each ``x`` (``grid`` sorted ascending; ties go low)."""
    idx = torch.searchsorted(grid, x.contiguous()).clamp(1, grid.numel() - 1)
    lo, hi = grid[idx - 1], grid[idx]
    return torch.where((x - lo) <= (hi - x), idx - 1, idx)
