"""Constraint sets of crossbar-structured pruning and conductance-level quantization, with their
Euclidean projections.

Every function works on the matrix view of a layer's weight, ``W[out, in*kh*kw]``
(``weight.reshape(out, -1)``, im2col order). On the crossbar the inputs drive the rows (word lines)
and the outputs are read on the columns (bit lines). Hence a crossbar *row* is a column of ``W``
(dim 1) and a crossbar *column* is a row of ``W`` (dim 0).

Tie-breaking is deterministic everywhere: on equal norms the structure with the lowest index is
kept (stable sort).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_LEVEL_TOL = 1e-9


def keep_count(n: int, ratio: float | None = None, count: int | None = None,
               key: str = "keep") -> int:
    """Number of structures kept out of ``n``.

    ``ratio`` is the pruned fraction in ``[0, 1)``: ``keep = n - floor(ratio * n)``, so a ratio
    never removes every structure (``keep >= 1`` when ``n >= 1``). ``count`` is the number kept,
    an integer in ``[0, n]``; ``count=0`` removes everything. With neither, all ``n`` are kept.
    """
    if ratio is not None and count is not None:
        raise ValueError(f"{key}: give {key}_ratio or {key}_keep, not both")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"{key}_ratio={ratio!r} out of range: the pruned fraction must lie "
                             "in [0, 1)")
        return n - min(math.floor(ratio * n + 1e-9), max(n - 1, 0))
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= n:
            raise ValueError(f"{key}_keep={count!r} out of range: must be an integer in [0, {n}]")
        return count
    return n


def topk_mask(scores: Tensor, keep: int) -> Tensor:
    """Boolean mask of the ``keep`` largest entries of a 1-D tensor; lowest index wins ties
    (stable descending sort)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask[order[:keep]] = True
    return mask


def _check_weights(weights: Tensor, W: Tensor) -> Tensor:
    """Importance ``weights`` (same number of entries as ``W``, finite, ``>= 0``) as float64 in
    the shape of ``W`` on its device."""
    if weights.numel() != W.numel():
        raise ValueError(f"weights has {weights.numel()} entries, W has {W.numel()} "
                         f"{tuple(W.shape)}")
    w = weights.detach().to(device=W.device, dtype=torch.float64).reshape(W.shape)
    if not (torch.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("weights must be finite and >= 0 (an importance per weight)")
    return w


def _block_grid(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    br, bc = block
    if br < 1 or bc < 1:
        raise ValueError(f"block={block!r} out of range: both sides must be >= 1")
    out_n, in_n = shape
    return math.ceil(in_n / br), math.ceil(out_n / bc)


def _block_energy(energy: Tensor, block: tuple[int, int]) -> Tensor:
    """Sum of ``energy[out, in]`` over each ``br x bc`` tile block, shape ``(in_blk, out_blk)``.

    Block ``(i, j)`` covers crossbar rows (inputs) ``i*br:(i+1)*br`` and columns (outputs)
    ``j*bc:(j+1)*bc``; edge blocks are partial.
    """
    br, bc = block
    nbi, nbo = _block_grid(tuple(energy.shape), block)
    padded = energy.new_zeros(nbo * bc, nbi * br)
    padded[: energy.shape[0], : energy.shape[1]] = energy
    return padded.reshape(nbo, bc, nbi, br).sum(dim=(1, 3)).T


def _expand_blocks(grid_mask: Tensor, shape: tuple[int, int], block: tuple[int, int]) -> Tensor:
    br, bc = block
    full = grid_mask.T.repeat_interleave(bc, dim=0).repeat_interleave(br, dim=1)
    return full[: shape[0], : shape[1]]


def structured_mask(W: Tensor, rows_keep: int | None = None, cols_keep: int | None = None,
                    blocks_keep: int | None = None, block: tuple[int, int] = (128, 128),
                    max_iters: int = 50, weights: Tensor | None = None) -> Tensor:
    """Mask (``out x in``, bool) of the projection of ``W`` onto the structured-sparsity set.

    The set is ``{W : at most rows_keep nonzero crossbar rows (columns of W), at most cols_keep
    nonzero crossbar columns (rows of W), at most blocks_keep nonzero br x bc blocks}``; ``None``
    leaves that structure unconstrained. The projection keeps the entries inside the mask and
    maximises the kept energy ``||W ⊙ M||_F^2``; with importance ``weights`` (``imp >= 0``, the
    shape of ``W``) the kept weighted energy ``sum_{M} imp_i w_i^2``, i.e. the projection under
    the norm ``||x||_imp^2 = sum imp_i x_i^2`` (Gao et al., ICML 2019).

    * One structure: exact. Structures partition the entries, so keeping the top-k by L2
      (Frobenius) norm is the Euclidean projection.
    * Several structures: the exact projection is a combinatorial (biclustering-like) problem.
      We use block-coordinate ascent: each structure in turn takes the exact top-k given the
      others fixed, starting from none pruned, until the masks stop changing. Kept energy never
      decreases, the result always lies in the set and is a fixed point of each single-structure
      projection, but it is not guaranteed to be the global optimum.
    """
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (out, in*kh*kw), got shape {tuple(W.shape)}")
    out_n, in_n = W.shape
    energy = W.detach().double().pow(2)
    if weights is not None:
        energy = energy * _check_weights(weights, W)
    row = torch.ones(in_n, dtype=torch.bool, device=W.device)
    col = torch.ones(out_n, dtype=torch.bool, device=W.device)
    blk = torch.ones(out_n, in_n, dtype=torch.bool, device=W.device)
    n_active = sum(k is not None for k in (rows_keep, cols_keep, blocks_keep))
    for _ in range(max(max_iters, 1)):
        prev = (row, col, blk)
        if cols_keep is not None:
            col = topk_mask((energy * (blk & row[None, :])).sum(1), cols_keep)
        if rows_keep is not None:
            row = topk_mask((energy * (blk & col[:, None])).sum(0), rows_keep)
        if blocks_keep is not None:
            grid = _block_energy(energy * (col[:, None] & row[None, :]), block)
            grid_mask = topk_mask(grid.flatten(), blocks_keep).reshape(grid.shape)
            blk = _expand_blocks(grid_mask, (out_n, in_n), block)
        now = (row, col, blk)
        if n_active <= 1 or all(torch.equal(a, b) for a, b in zip(prev, now, strict=True)):
            break
    return col[:, None] & row[None, :] & blk


def project_rows(W: Tensor, keep: int) -> Tensor:
    """Keep the ``keep`` crossbar rows (word lines = columns of ``W``) of largest L2 norm."""
    return W * structured_mask(W, rows_keep=keep)


def project_cols(W: Tensor, keep: int) -> Tensor:
    """Keep the ``keep`` crossbar columns (bit lines = outputs = rows of ``W``) of largest L2
    norm."""
    return W * structured_mask(W, cols_keep=keep)


def project_blocks(W: Tensor, keep: int, block: tuple[int, int] = (128, 128)) -> Tensor:
    """Keep the ``keep`` tile blocks (``block = (rows, cols)`` of the crossbar) of largest
    Frobenius norm ``||W_b||_F``."""
    return W * structured_mask(W, blocks_keep=keep, block=block)


def pair_levels(device_levels: int | Sequence[float]) -> Tensor:
    """Normalised signed values a differential pair ``w ∝ G+ - G-`` can represent.

    ``L = {(l_i - l_j) / (max l - min l)}`` over all device levels ``l_i`` (sorted, unique,
    float64, symmetric, contains 0, max 1). An integer ``n`` means ``n`` uniform levels, giving
    ``{k / (n-1) : k = -(n-1) .. n-1}``; ``n = 2`` is ternary ``{-1, 0, +1}``.
    """
    if isinstance(device_levels, int) and not isinstance(device_levels, bool):
        if device_levels < 2:
            raise ValueError(f"levels={device_levels!r} out of range: need >= 2 device levels")
        n = device_levels
        return torch.arange(-(n - 1), n, dtype=torch.float64) / (n - 1)
    g = torch.as_tensor(list(device_levels), dtype=torch.float64).flatten()
    if not torch.isfinite(g).all() or g.numel() < 2 or (g.max() - g.min()) <= 0:
        raise ValueError(f"levels={list(device_levels)!r} invalid: need >= 2 distinct finite "
                         "device levels")
    diffs = (g[:, None] - g[None, :]).flatten() / (g.max() - g.min())
    pos = torch.sort(diffs[diffs >= 0]).values
    # merge values closer than the tolerance, keeping the largest of each run (so max stays 1)
    pos = pos[torch.cat([pos.diff() > _LEVEL_TOL, pos.new_ones(1, dtype=torch.bool)])]
    pos = pos[pos > _LEVEL_TOL]
    return torch.cat([-pos.flip(0), pos.new_zeros(1), pos])


def round_to_levels(x: Tensor, levels: Tensor) -> Tensor:
    """Nearest member of the sorted level set for each entry (ties go to the lower level)."""
    levels = levels.to(device=x.device, dtype=x.dtype)
    mids = (levels[1:] + levels[:-1]) / 2
    return levels[torch.bucketize(x.contiguous(), mids)]


EXACT_SCALE_BUDGET = 2**24
"""Largest count of breakpoints (entries x positive levels) the exact scale sweep takes at
once; its float64 work arrays take about 100 bytes per breakpoint (1.7 GB here). Rows are
swept in chunks within it; a single row above it (one scale for a layer of 4096 device
levels and 4,096+ weights, or of 16 levels and a million weights) takes
:func:`_scanned_scale`."""


def _best_scale(rows: Tensor, levels: Tensor, weights: Tensor) -> Tensor:
    """The scale per row: exact (:func:`_exact_scale`, rows taken in chunks of at most
    :data:`EXACT_SCALE_BUDGET` breakpoints), or scanned (:func:`_scanned_scale`) when one row
    alone has more breakpoints than that."""
    per_row = rows.shape[1] * int((levels > 0).sum())
    if per_row > EXACT_SCALE_BUDGET:
        return _scanned_scale(rows, levels, weights)
    chunk = max(1, EXACT_SCALE_BUDGET // max(per_row, 1))
    return torch.cat([_exact_scale(rows[i:i + chunk], levels, weights[i:i + chunk])
                      for i in range(0, rows.shape[0], chunk)])


SCAN_POINTS = 96
"""Scales tried per row by :func:`_scanned_scale` in each of its two passes (geometric from
1/256 of the unclipped scale to it, then evenly inside the bracket of the best), before a
golden-section refinement."""


def _scanned_scale(rows: Tensor, levels: Tensor, weights: Tensor) -> Tensor:
    """The scale per row by a 1-D search, for problems too large for the exact sweep: the error
    ``E(s) = sum imp (w - s round(w / s))^2`` at :data:`SCAN_POINTS` scales from ``s_top / 256``
    to ``s_top = max |w| / max L`` (the smallest scale that clips nothing; a larger one only
    coarsens the grid), again at :data:`SCAN_POINTS` inside the bracket of the best, then 30
    golden-section steps. ``E`` is evaluated on at most 2**18 entries (every k-th,
    deterministic); the caller refits the scale in closed form on all entries."""
    R, N = rows.shape
    stride = max(1, (R * N) // 2**18)
    sub_rows, sub_w = rows[:, ::stride], weights[:, ::stride]
    p_max = levels.max()
    top = torch.where(weights > 0, rows.abs(), 0.0).amax(1) / p_max          # (R,)
    if not bool((top > 0).any()):
        return torch.ones(R, dtype=rows.dtype, device=rows.device)

    def error(scale: Tensor) -> Tensor:                                        # (R,) -> (R,)
        safe = torch.where(scale > 0, scale, 1.0)[:, None]
        q = round_to_levels(sub_rows / safe, levels)
        return (sub_w * (sub_rows - safe * q) ** 2).sum(1)

    ratios = torch.logspace(-8, 0, SCAN_POINTS, base=2.0, dtype=rows.dtype, device=rows.device)
    errs = torch.stack([error(top * r) for r in ratios], 1)                     # (R, P)
    k = errs.argmin(1)
    lo = top * ratios[(k - 1).clamp(min=0)]
    hi = top * ratios[(k + 1).clamp(max=SCAN_POINTS - 1)]
    fine = torch.linspace(0, 1, SCAN_POINTS, dtype=rows.dtype, device=rows.device)
    grid = lo[:, None] + (hi - lo)[:, None] * fine                              # (R, P)
    errs = torch.stack([error(grid[:, i]) for i in range(SCAN_POINTS)], 1)
    k = errs.argmin(1)
    pick = torch.gather(grid, 1, k[:, None]).squeeze(1)
    lo = torch.gather(grid, 1, (k - 1).clamp(min=0)[:, None]).squeeze(1)
    hi = torch.gather(grid, 1, (k + 1).clamp(max=SCAN_POINTS - 1)[:, None]).squeeze(1)
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(30):  # golden section on [lo, hi] for every row at once
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        left = error(a) <= error(b)
        hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
    best = (lo + hi) / 2
    best = torch.where(error(best) <= errs.min(1).values, best, pick)
    return torch.where(best > 0, best, torch.ones_like(best))


def _exact_scale(rows: Tensor, levels: Tensor, weights: Tensor) -> Tensor:
    """Globally optimal scale per row of ``rows`` (float64, ``R x N``) for the set ``s * L^N``
    under the importance ``weights`` (float64, ``R x N``, ``>= 0``).

    ``min_{s>=0, q in L^N} sum_n imp_n (w_n - s q_n)^2``. For fixed ``s`` the best ``q`` is
    nearest rounding of ``w / s`` (the error is separable, so the weights do not move it); it
    changes only when ``|w_n| / s`` crosses a midpoint ``m_j`` between adjacent non-negative
    levels, i.e. at breakpoints ``s = |w_n| / m_j``. Between breakpoints ``q`` is fixed and the
    error ``sum imp w^2 - 2 s A + s^2 B`` with ``A = sum imp |w| |q|``, ``B = sum imp q^2`` is a
    quadratic whose minimiser is the closed-form scale ``A / B`` clamped to the interval. Sweeping
    the sorted breakpoints with running (weighted) sums evaluates every interval:
    O(N m log(N m)) for m positive levels. An interval where no weight of nonzero importance has
    a nonzero level (counted exactly, not read off ``B``) has constant error and takes its lower
    end.
    """
    pos = levels[levels > 0]
    nonneg = torch.cat([levels.new_zeros(1), pos])
    mids = (nonneg[1:] + nonneg[:-1]) / 2                        # (m,)
    a = rows.abs()                                               # (R, N)
    R, N = a.shape
    p_max = pos[-1]
    breaks = (a[:, :, None] / mids).reshape(R, -1)               # level p_{j+1} -> p_j at s > a/m_j
    d_a = (weights[:, :, None] * a[:, :, None] * (nonneg[:-1] - nonneg[1:])).reshape(R, -1)
    d_b = (weights[:, :, None] * (nonneg[:-1] ** 2 - nonneg[1:] ** 2)).reshape(R, -1)
    # entries of nonzero importance leave the nonzero levels at their last breakpoint (j = 0)
    first = torch.arange(len(mids), device=rows.device) == 0
    d_n = -((weights[:, :, None] > 0) & first).to(rows.dtype).reshape(R, -1)
    breaks, order = torch.sort(breaks, dim=1)

    def sweep(start: Tensor, steps: Tensor) -> Tensor:
        return torch.cat([start[:, None], start[:, None] + torch.gather(steps, 1, order)
                          .cumsum(1)], 1)

    A = sweep(p_max * (weights * a).sum(1), d_a).clamp_min(0)
    B = sweep(p_max**2 * weights.sum(1), d_b).clamp_min(0)
    live = sweep((weights > 0).sum(1).to(rows.dtype), d_n) > 0.5
    lo = torch.cat([rows.new_zeros(R, 1), breaks], 1)
    hi = torch.cat([breaks, rows.new_full((R, 1), math.inf)], 1)
    fit = live & (B > 0)
    s = torch.where(fit, torch.minimum(torch.maximum(A / torch.where(fit, B, 1.0), lo), hi), lo)
    err = torch.where(fit, -2 * s * A + s * s * B, 0.0)
    best = torch.gather(s, 1, err.argmin(1, keepdim=True)).squeeze(1)
    return torch.where(best > 0, best, torch.ones_like(best))


def project_levels(W: Tensor, levels: Tensor, per_column: bool = False,
                   mask: Tensor | None = None, weights: Tensor | None = None,
                   ) -> tuple[Tensor, Tensor]:
    """Project ``W`` onto ``{s * q : s >= 0, q_n in L}`` (one ``s`` per layer, or per crossbar
    column = per output = per row of ``W`` when ``per_column``), optionally restricted to a mask,
    in the norm ``||x||_imp^2 = sum imp_n x_n^2`` of importance ``weights`` (finite, ``>= 0``,
    the shape of ``W``; default all 1, the Euclidean projection).

    Returns ``(Q, scale)`` with ``Q = scale * q`` and every ``q`` in ``levels``. The scale is the
    global optimum of the alternation "round to the nearest level / closed-form scale
    ``s = sum imp w q / sum imp q^2``": instead of iterating from one start (which stops at a
    local fixed point) all intervals of ``s`` are enumerated (see ``_best_scale``), then one
    rounding and one closed-form refit are applied. Nearest rounding is optimal for any weights
    (the error is separable). Entries outside ``mask`` are exactly zero in ``Q`` (0 is a level).
    ``scale`` is a 0-d tensor, or shape ``(out,)`` when ``per_column``; it is 1 for an all-zero
    row.
    """
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (out, in*kh*kw), got shape {tuple(W.shape)}")
    levels = levels.to(device=W.device, dtype=torch.float64)
    rows = W.detach().double()
    imp = torch.ones_like(rows) if weights is None else _check_weights(weights, W)
    if mask is not None:
        rows = rows * mask.to(W.device)
    if not per_column:
        rows, imp = rows.reshape(1, -1), imp.reshape(1, -1)
    scale = _best_scale(rows, levels, imp)
    q = round_to_levels(rows / scale[:, None], levels)
    num, den = (imp * rows * q).sum(1), (imp * q * q).sum(1)
    scale = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), scale)
    Q = (scale[:, None] * q).reshape(W.shape).to(W.dtype)
    if mask is not None:
        Q = Q * mask.to(W.device)
    scale = scale.to(W.dtype)
    return Q, (scale if per_column else scale.reshape(()))
