"""Fault repair at programming time: test read, fault-aware placement, pair compensation.

A programmed chip has stuck cells (:mod:`crossbar.cells.stuck_at`): a stuck-at-``g_max`` cell
(SA1) in a differential pair writes a full-scale weight of either sign. Three steps, all run by
:meth:`CrossbarLayer.program` per tile before the cells are programmed (the order a chip uses:
test, decide the layout, then program each cell once):

1. **Test read** (fault detection). A march-style test (write ``g_max`` then ``g_min``, read
   each time) finds every cell that does not follow; ``miss_rate`` is the chance that a stuck
   cell goes undetected (one uniform draw per physical cell from its own stream). Undetected
   cells are treated as healthy by the next two steps and still stick when programmed.
2. **Fault-aware placement.** The plan fixes which logical rows (inputs) and outputs a tile
   holds, not which physical word line / bit-line group each sits on. With the detected fault
   map of the physical tile (``n_rows + spare_rows`` word lines, ``n_cols + spare_cols`` output
   column groups, :class:`crossbar.CrossbarConfig`), choose the placement that minimises the
   squared weight error the stuck cells cause (after compensation). Placing rows and outputs
   jointly is a quadratic assignment problem; it is solved by alternating exact linear
   assignments (``scipy.optimize.linear_sum_assignment``, the Hungarian / Jonker-Volgenant
   algorithm): rows given the outputs' placement, then outputs given the rows', for
   ``placement_rounds`` rounds from the identity. Each step is optimal given the other and the
   current placement is feasible, so the error never increases; it is not guaranteed to reach
   the joint optimum (the problem is NP-hard; cf. Xia et al., "Stuck-at fault tolerance in
   RRAM computing systems", IEEE JETCAS 2018, who use row/column permutation the same way).
3. **Compensation.** Differential pair ``G+ - G-`` with one detected stuck cell at ``s``: the
   healthy partner is programmed so that the pair holds the representable value nearest to
   the target ``d``, i.e. ``G- = snap(clip(s - d))`` (or ``G+ = snap(clip(s + d))``), where
   ``clip`` is the window and ``snap`` the nearest programmable level (Xia et al. 2018; the
   "remapping with redundancy" of Liu et al., DAC 2017, in its simplest form). A pair with
   both cells stuck keeps them. Offset mapping (one cell per weight): a stuck weight cell
   cannot be helped; a stuck reference cell at ``s`` shifts every weight of its word line by
   ``(s - G_ref) / h``, so the healthy cells of that row are re-targeted to ``G + (s - G_ref)``
   (clipped and snapped), the best value the stuck cell allows. Slices of a bit-sliced weight
   are compensated independently.

All weight errors here are in normalised units per slice times the slice's weight factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ._validate import check_float, check_int, fail


@dataclass(frozen=True)
class RepairConfig:
    """How a chip is repaired when it is programmed.

    Attributes:
        compensation: pair compensation of detected stuck cells; ``None`` (default) = on
            when the device has faults.
        placement: fault-aware placement of rows and outputs inside each tile (and onto the
            tile's spare lines, ``CrossbarConfig.spare_rows`` / ``spare_cols``).
        miss_rate: probability that the test read misses a stuck cell, in ``[0, 1]``.
        placement_rounds: alternating row / output assignment rounds (>= 1).
    """

    compensation: bool | None = None
    placement: bool = False
    miss_rate: float = 0.0
    placement_rounds: int = 2

    def __post_init__(self) -> None:
        if self.compensation is not None and not isinstance(self.compensation, bool):
            fail("repair.compensation", self.compensation, "true, false or null (auto)")
        if not isinstance(self.placement, bool):
            fail("repair.placement", self.placement, "true or false")
        check_float("repair.miss_rate", self.miss_rate, 0.0, 1.0)
        check_int("repair.placement_rounds", self.placement_rounds, 1, 100)

    def compensates(self, device) -> bool:
        """Whether compensation runs for ``device`` (auto: when it has faults)."""
        if self.compensation is None:
            return device.active("faults")
        return self.compensation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> RepairConfig:
        from ._validate import from_mapping

        return from_mapping(cls, data, "repair")


def _snap(g: torch.Tensor, device) -> torch.Tensor:
    """Clip to the window and move to the nearest programmable level."""
    from ._grid import nearest

    g = g.clamp(device.g_min_uS, device.g_max_uS)
    levels = device.conductance_levels(g.device)
    if levels is None:
        return g
    return levels.to(g.dtype)[nearest(levels.to(g.dtype), g.contiguous())]


def repaired(style, nominal: torch.Tensor, stuck: torch.Tensor, aux_stuck: torch.Tensor | None,
             device, compensate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets after compensation and the normalised weight each cell group then holds.

    Args:
        style: the mapping style (``cells_per_weight`` 2: differential, 1 + reference: offset).
        nominal: target conductances ``[..., cells]`` (uS).
        stuck: the known stuck conductance of each cell ``[..., cells]``, NaN where healthy.
        aux_stuck: offset mapping: the stuck conductance of each weight's reference cell
            ``[...]`` (NaN healthy), ``None`` otherwise.
        compensate: re-target healthy cells to make up for stuck ones.

    Returns ``(targets[..., cells], values[...])``: the conductances to program and the
    normalised weight ``v`` the group holds after programming, stuck cells included.
    """
    healthy = torch.isnan(stuck)
    if style.cells_per_weight == 2:
        targets = nominal.clone()
        if compensate:
            d = nominal[..., 0] - nominal[..., 1]
            s_pos, s_neg = stuck[..., 0], stuck[..., 1]
            only_pos = ~healthy[..., 0] & healthy[..., 1]
            only_neg = healthy[..., 0] & ~healthy[..., 1]
            targets[..., 1] = torch.where(only_pos, _snap(s_pos - d, device), targets[..., 1])
            targets[..., 0] = torch.where(only_neg, _snap(s_neg + d, device), targets[..., 0])
        held = torch.where(healthy, targets, stuck)
        return targets, style.weights(held, None, device)
    g_aux = style.reference_uS(device)
    ref = torch.full_like(nominal[..., 0], g_aux) if aux_stuck is None else \
        torch.where(torch.isnan(aux_stuck), torch.full_like(aux_stuck, g_aux), aux_stuck)
    targets = nominal
    if compensate and aux_stuck is not None:
        targets = _snap(nominal + (ref - g_aux).unsqueeze(-1), device)
    held = torch.where(healthy, targets, stuck)
    return targets, style.weights(held, ref, device)


def place_tile(style, nominal: torch.Tensor, factors: torch.Tensor, grid: torch.Tensor,
               aux_grid: torch.Tensor | None, device, compensate: bool, rounds: int
               ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Fault-aware placement of one tile.

    Args:
        nominal: the tile's target conductances ``[S, n_cols, n_rows, C]`` (logical order).
        factors: weight factor of each slice and output ``[S, n_cols]``.
        grid: detected stuck conductances of the physical tile ``[S, C, P_out, P_in]``
            (NaN healthy), ``P_out >= n_cols``, ``P_in >= n_rows``.
        aux_grid: offset mapping: the reference column's detected stuck values ``[P_in]``.

    Returns ``(rows, cols, error_identity, error_placed)``: the physical word line of each
    logical row, the physical output column group of each logical output, and the total
    squared weight error of the identity placement and of the chosen one.

    Only the physical cell groups with a stuck cell (or on a word line whose reference cell is
    stuck) cost anything, so the assignment costs are accumulated over those ``M`` positions:
    ``O(M n)`` per step instead of ``O(n^3)``.
    """
    from scipy.optimize import linear_sum_assignment

    n_slices, n_cols, n_rows, n_cells = nominal.shape
    p_out, p_in = grid.shape[2], grid.shape[3]
    _, ideal = repaired(style, nominal, torch.full_like(nominal, float("nan")), None, device,
                        False)                                           # [S, n_cols, n_rows]
    factor2 = factors.square()
    faulty = ~torch.isnan(grid).all(dim=1)                               # [S, P_out, P_in]
    if aux_grid is not None:
        faulty = faulty | ~torch.isnan(aux_grid).view(1, 1, -1)
    pos_s, pos_q, pos_p = torch.nonzero(faulty, as_tuple=True)
    if pos_s.numel() == 0:
        return torch.arange(n_rows), torch.arange(n_cols), 0.0, 0.0
    stuck_at = grid[pos_s, :, pos_q, pos_p]                              # [M, C]
    aux_at = None if aux_grid is None else aux_grid[pos_p]               # [M]

    def error(use: torch.Tensor, nom: torch.Tensor, ideal_: torch.Tensor) -> torch.Tensor:
        """Squared error of the cell groups ``nom[M', k, C]`` placed on the positions
        ``use`` selects."""
        st = stuck_at[use].unsqueeze(1).expand_as(nom)
        ref = None if aux_at is None else aux_at[use].unsqueeze(1).expand(nom.shape[:2])
        _, held = repaired(style, nom, st, ref, device, compensate)
        return (held - ideal_).square()

    def row_costs(cols: torch.Tensor) -> torch.Tensor:                   # [n_rows, P_in]
        output_at = torch.full((p_out,), -1, dtype=torch.long)
        output_at[cols] = torch.arange(n_cols)
        o = output_at[pos_q]
        use = o >= 0
        s_, o_, p_ = pos_s[use], o[use], pos_p[use]
        err = error(use, nominal[s_, o_], ideal[s_, o_]) * factor2[s_, o_].unsqueeze(1)
        return torch.zeros(n_rows, p_in, dtype=err.dtype).index_add_(1, p_, err.T)

    def col_costs(rows: torch.Tensor) -> torch.Tensor:                   # [n_cols, P_out]
        row_at = torch.full((p_in,), -1, dtype=torch.long)
        row_at[rows] = torch.arange(n_rows)
        i = row_at[pos_p]
        use = i >= 0
        s_, i_, q_ = pos_s[use], i[use], pos_q[use]
        err = error(use, nominal[s_, :, i_], ideal[s_, :, i_]) * factor2[s_]
        return torch.zeros(n_cols, p_out, dtype=err.dtype).index_add_(1, q_, err.T)

    def total(rows: torch.Tensor, cols: torch.Tensor) -> float:
        return float(row_costs(cols)[torch.arange(n_rows), rows].sum())

    rows, cols = torch.arange(n_rows), torch.arange(n_cols)
    start = best = total(rows, cols)
    if start > 0:
        for _ in range(rounds):
            r_idx, p_idx = linear_sum_assignment(row_costs(cols).double().numpy())
            new_rows = torch.empty(n_rows, dtype=torch.long)
            new_rows[torch.as_tensor(r_idx)] = torch.as_tensor(p_idx)
            o_idx, q_idx = linear_sum_assignment(col_costs(new_rows).double().numpy())
            new_cols = torch.empty(n_cols, dtype=torch.long)
            new_cols[torch.as_tensor(o_idx)] = torch.as_tensor(q_idx)
            err = total(new_rows, new_cols)
            if err >= best - 1e-12 * max(best, 1.0):
                break
            rows, cols, best = new_rows, new_cols, err
    return rows, cols, start, best
