"""Exact DC solve of a resistive crossbar array with wire resistance (pure torch functions).

Circuit of one array with ``R`` word lines (rows) and ``C`` bit lines (columns):

* word line ``i``: a driver of output resistance ``r_d`` feeds node ``w(i, 0)``; segments of
  ``r_r`` join ``w(i, j)`` and ``w(i, j+1)``; the far end is open;
* bit line ``j``: open at the top, segments of ``r_c`` join ``b(i, j)`` and ``b(i+1, j)``; the
  bottom node ``b(R-1, j)`` reaches the sense amplifier's virtual ground through ``r_s``; the
  column current is the current into the sense amplifier;
* cell ``(i, j)`` of conductance ``G_ij`` joins ``w(i, j)`` and ``b(i, j)`` (linear I-V).

With linear cells the column currents are ``I = M v`` for driver voltages ``v``; ``M[j, i]`` is
the current at column ``j`` per volt at row ``i`` (``M = G^T`` without wire resistance).

Method (nodal analysis, Kirchhoff's current law at every node, exact up to float64 rounding):
each word line is a chain, so its node voltages are an affine function of its bit-line node
voltages, ``W_i = P_i v_i + Q_i B_i`` with ``Q_i = A_i^-1 D_i`` (``A_i`` the chain's
tridiagonal nodal matrix with the cells, ``D_i = diag(G_i)``; solved by the Thomas algorithm).
Substituting into the bit-line equations leaves a block-tridiagonal system in the rows of bit-
line voltages, ``K_i B_i - g_c B_{i-1} - g_c B_{i+1} = D_i P_i v_i`` with ``K_i = (g_up +
g_down) I + D_i - D_i Q_i``, solved by a forward block elimination (the column currents only
need the last block: no back substitution). All ``R`` unit inputs are solved at once (``R``
right-hand sides). Zero resistances are exact limits: a zero driver or sense resistance clamps
the end node, a zero segment resistance merges the line into one node.

Cost: the word-line chains by the Thomas algorithm (``O(R C^2)`` with ``C + 1`` right-hand
sides each) and ``R`` steps of ``C x C`` Cholesky elimination: ``O(R C^3)`` (a 128 x 128 array:
about 0.5 GFLOP, 0.1 s on two CPU cores).
"""

from __future__ import annotations

import torch


def _chain_solve(diag: torch.Tensor, off: float | torch.Tensor, rhs: torch.Tensor
                 ) -> torch.Tensor:
    """Solve the tridiagonal systems ``T x = rhs`` of a batch of chains (Thomas algorithm,
    no pivoting: the nodal matrices are diagonally dominant). ``diag [B, m]``, off-diagonal
    ``off`` (a constant, or ``[m - 1]``: one per segment, the same on every chain),
    ``rhs [B, m, K]``. (A batched dense LU is O(m^3) and, with MKL on several threads,
    returned wrong pivots for 256 x 255 x 255 batches in torch 2.13.)"""
    m = diag.shape[1]
    offs = [off] * (m - 1) if isinstance(off, float) else off.tolist()
    c = torch.zeros_like(diag)
    d = torch.empty_like(rhs)
    denom = diag[:, 0]
    d[:, 0] = rhs[:, 0] / denom.unsqueeze(1)
    for k in range(1, m):
        o = offs[k - 1]
        c[:, k - 1] = o / denom
        denom = diag[:, k] - o * c[:, k - 1]
        d[:, k] = (rhs[:, k] - o * d[:, k - 1]) / denom.unsqueeze(1)
    x = torch.empty_like(rhs)
    x[:, m - 1] = d[:, m - 1]
    for k in range(m - 2, -1, -1):
        x[:, k] = d[:, k] - c[:, k].unsqueeze(1) * x[:, k + 1]
    return x


def _word_lines(g: torch.Tensor, r_row: float, r_drv: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``P [R, C]`` and ``Q [R, C, C]`` of ``W_i = P_i v_i + Q_i B_i`` for every word line."""
    n_rows, n_cols = g.shape
    if r_row == 0:  # one node per word line
        if r_drv == 0:
            return torch.ones_like(g), torch.zeros(n_rows, n_cols, n_cols, dtype=g.dtype,
                                                   device=g.device)
        g_d = 1.0 / r_drv
        total = g_d + g.sum(dim=1, keepdim=True)  # [R, 1]
        p = (g_d / total).expand(n_rows, n_cols)
        q = g.unsqueeze(1).expand(n_rows, n_cols, n_cols) / total.unsqueeze(2)
        return p.contiguous(), q.contiguous()
    g_r = 1.0 / r_row
    clamped = r_drv == 0  # w(i, 0) = v_i: solve the chain of nodes 1..C-1 fed through g_r
    first = 1 if clamped else 0
    m = n_cols - first
    p = torch.zeros(n_rows, n_cols, dtype=g.dtype, device=g.device)
    q = torch.zeros(n_rows, n_cols, n_cols, dtype=g.dtype, device=g.device)
    if clamped:
        p[:, 0] = 1.0
    if m == 0:
        return p, q
    g_in = g_r if clamped else 1.0 / r_drv  # conductance from the source into the chain
    cells = g[:, first:]
    diag = cells + 2 * g_r
    diag[:, 0] = cells[:, 0] + g_in + (g_r if m > 1 else 0.0)
    if m > 1:
        diag[:, -1] = cells[:, -1] + g_r
    rhs = torch.cat([torch.zeros(n_rows, m, 1, dtype=g.dtype, device=g.device),
                     torch.diag_embed(cells)], dim=2)  # [R, m, 1 + m]: source, then cells
    rhs[:, 0, 0] = g_in
    sol = _chain_solve(diag, -g_r, rhs)
    p[:, first:] = sol[:, :, 0]
    q[:, first:, first:] = sol[:, :, 1:]
    return p, q


def _shared_word_lines(g: torch.Tensor, n_a: int, r_row: float, r_drv: float, lead: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``P [R, C]``, ``Q [R, C, C]`` (``C = n_a + n_b``) for two arrays whose word line ``i``
    is driven by ONE driver: ``g = [G_a | G_b]``. The driver (output resistance ``r_drv > 0``)
    feeds a junction node ``J``; array ``a``'s word line runs from ``J`` to the right, array
    ``b``'s mirrored to the left, each reaching its first live cell through ``lead`` ohm (the
    unused segments of a ``far`` placement; ``0``: the first cells sit on ``J``). One chain
    per word line, ``b_{n_b-1} .. b_0, J, a_0 .. a_{n_a-1}``, solved by the Thomas algorithm
    with the source at ``J``: ``A W = g_d v e_J + E D B`` (``E``: the node of each cell), so the
    cells see ``E^T W = P v + Q B`` with ``P = g_d E^T A^-1 e_J``, ``Q = E^T A^-1 E D``, the
    form :func:`_word_lines` returns for one array."""
    n_rows, n_cols = g.shape
    n_b = n_cols - n_a
    g_d = 1.0 / r_drv
    if r_row == 0:  # every cell on one node (lead = (unused segments) x 0 = 0)
        total = g_d + g.sum(dim=1, keepdim=True)
        return ((g_d / total).expand(n_rows, n_cols).contiguous(),
                (g.unsqueeze(1).expand(n_rows, n_cols, n_cols) / total.unsqueeze(2)).contiguous())
    g_r = 1.0 / r_row
    merged = lead == 0
    # node of each cell; nodes: b_{n_b-1}..b_{first}, J, a_{first}..a_{n_a-1}
    first = 1 if merged else 0
    junction = n_b - first
    node = torch.empty(n_cols, dtype=torch.long)
    node[:n_a] = junction + 1 - first + torch.arange(n_a)
    node[n_a:] = junction - 1 + first - torch.arange(n_b)
    m = n_a + n_b + 1 - 2 * first
    seg = torch.full((m - 1,), g_r, dtype=g.dtype, device=g.device)
    if not merged:  # J to each branch's first live cell
        seg[junction - 1] = seg[junction] = 1.0 / lead
    e = torch.zeros(n_rows, m, n_cols, dtype=g.dtype, device=g.device)  # E D per word line
    e[:, node, torch.arange(n_cols)] = g
    diag = e.sum(dim=2)
    diag[:, 1:] += seg
    diag[:, :-1] += seg
    diag[:, junction] += g_d
    rhs = torch.cat([torch.zeros(n_rows, m, 1, dtype=g.dtype, device=g.device), e], dim=2)
    rhs[:, junction, 0] = g_d
    sol = _chain_solve(diag, -seg, rhs)[:, node]  # [R, C, 1 + C]
    return sol[:, :, 0].contiguous(), sol[:, :, 1:].contiguous()


def solve_pair(g_a_S: torch.Tensor, g_b_S: torch.Tensor, r_row_ohm: float, r_col_ohm: float,
               r_driver_ohm: float, r_sense_ohm: float, lead_ohm: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M_a [C_a, R], M_b [C_b, R])`` of two arrays (a differential pair's G+ and G-) whose
    word line ``i`` shares one driver (:func:`_shared_word_lines`; bit lines, sense amplifiers
    and wires as in :func:`solve_array`). The arrays interact only through the driver's
    output resistance: with ``r_driver_ohm == 0`` the driver clamps the junction at ``v_i``
    and each array solves alone (``lead_ohm`` is then added to neither: it is a series part
    of each branch, so it is passed on as each array's own driver resistance)."""
    if r_driver_ohm == 0:
        return (solve_array(g_a_S, r_row_ohm, r_col_ohm, lead_ohm, r_sense_ohm),
                solve_array(g_b_S, r_row_ohm, r_col_ohm, lead_ohm, r_sense_ohm))
    g = torch.cat([g_a_S, g_b_S], dim=1).to(torch.float64)
    n_a = g_a_S.shape[1]
    p, q = _shared_word_lines(g, n_a, r_row_ohm, r_driver_ohm, lead_ohm)
    m = _bit_lines(g, p, q, r_col_ohm, r_sense_ohm)
    return m[:n_a], m[n_a:]


def solve_array(g_S: torch.Tensor, r_row_ohm: float, r_col_ohm: float, r_driver_ohm: float,
                r_sense_ohm: float) -> torch.Tensor:
    """``M [C, R]``: column currents per volt on each word line of the array with cell
    conductances ``g_S [R, C]`` (siemens) and the given resistances (ohm, >= 0)."""
    g = g_S.to(torch.float64)
    if r_row_ohm == r_col_ohm == r_driver_ohm == r_sense_ohm == 0:
        return g.T.clone()
    p, q = _word_lines(g, r_row_ohm, r_driver_ohm)
    return _bit_lines(g, p, q, r_col_ohm, r_sense_ohm)


def _bit_lines(g: torch.Tensor, p: torch.Tensor, q: torch.Tensor, r_col_ohm: float,
               r_sense_ohm: float) -> torch.Tensor:
    """``M [C, R]`` from the word lines' ``W_i = P_i v_i + Q_i B_i``: the bit-line equations
    (module docstring)."""
    n_rows, n_cols = g.shape
    d_p = g * p  # [R, C]: D_i P_i
    d_q = g.unsqueeze(2) * q  # [R, C, C]: D_i Q_i
    eye = torch.eye(n_cols, dtype=g.dtype, device=g.device)
    if r_col_ohm == 0:  # one node per bit line: sum the rows' equations
        k = d_q.new_zeros(n_cols, n_cols) + torch.diag(g.sum(0)) - d_q.sum(0)
        f = d_p.T  # [C, R]: source of each unit input
        if r_sense_ohm == 0:  # bit lines at virtual ground: I_j = sum_i G_ij (W_ij - 0)
            return (g * p).T.clone()
        k = k + eye / r_sense_ohm
        b = torch.linalg.solve(k, f)
        return b / r_sense_ohm
    g_c = 1.0 / r_col_ohm
    clamped = r_sense_ohm == 0  # b(R-1, j) = 0: eliminate rows 0..R-2, then read the current
    last = n_rows - 1 if clamped else n_rows
    s_inv = z = None
    for i in range(last):
        up = g_c if i > 0 else 0.0
        down = g_c if (i < n_rows - 1) else 1.0 / r_sense_ohm
        k_i = (up + down) * eye + torch.diag(g[i]) - d_q[i]
        f_i = torch.zeros(n_cols, n_rows, dtype=g.dtype, device=g.device)
        f_i[:, i] = d_p[i]
        if s_inv is not None:
            k_i = k_i - g_c * g_c * s_inv
            f_i = f_i + g_c * (s_inv @ z)
        s_inv = torch.cholesky_inverse(torch.linalg.cholesky(k_i))  # K_i is SPD
        z = f_i
    if last == 0:  # a single clamped row: every bit-line node is at 0 V
        b_last = torch.zeros(n_cols, n_rows, dtype=g.dtype, device=g.device)
    else:
        b_last = s_inv @ z  # [C, R]: voltages of the last eliminated row per unit input
    if not clamped:
        return b_last / r_sense_ohm
    # current into the clamped node: from the row above and through the last row's cells
    w_last = torch.zeros(n_cols, n_rows, dtype=g.dtype, device=g.device)
    w_last[:, -1] = p[-1]  # the last word line with its bit-line nodes at 0 V
    above = g_c * b_last if last > 0 else 0.0
    return above + g[-1].unsqueeze(1) * w_last
