"""Post-training crossbar compression with Optimal Brain Compression (Frantar, Singh, Alistarh,
"Optimal Brain Compression", NeurIPS 2022): crossbar-structured pruning with OBS compensation and
conductance-level quantization with OBQ/GPTQ error feedback, layer by layer, from calibration
inputs only (no training).

Per layer the task is the layer-wise reconstruction ``min ||W X - Ŵ X||^2`` over compressed
``Ŵ``, with ``X`` the layer's inputs (im2col patches for Conv2d) and ``H = 2 X X^T / n``. All
matrices use the matrix view ``W[out, in*kh*kw]``; a crossbar row (word line) is a column of
``W``, a crossbar column (bit line) a row of ``W``. Every row ``r`` of ``W`` has the same ``H``,
so outputs are independent: the loss is ``sum_r 1/2 dw_r H dw_r^T``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memxbar.admm.constraints import LayerConstraint, crossbar_layers, select_layers, weight_matrix
from memxbar.admm.importance import calibration_batches, importance_matrix, weighted_scale
from memxbar.admm.pipeline import CompressResult
from memxbar.admm.projections import pair_levels, round_to_levels, topk_mask

Group = tuple[Tensor | None, Tensor]
"""A pruning group: ``(output rows or None for all, input indices)`` of the matrix view."""


def layer_inputs(module: nn.Module, inp: Tensor) -> Tensor:
    """The layer's input matrix ``X[in*kh*kw, n]``, so that the layer computes ``W X``.

    Linear: every leading index is a sample. Conv2d: ``F.unfold`` patches (channel-major, the
    order of ``weight.reshape(out, -1)``), every image position is a sample. Padding of any mode
    is applied first as the module does; grouped convolutions are not supported.
    """
    if isinstance(module, nn.Linear):
        return inp.reshape(-1, inp.shape[-1]).T
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"OBC: grouped Conv2d (groups={module.groups}) is not supported")
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        inp = F.pad(inp, module._reversed_padding_repeated_twice, mode=mode)
        cols = F.unfold(inp, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)
    raise ValueError(f"OBC: {type(module).__name__} is not a Linear/Conv2d layer")


def prepare_hessian(H: Tensor, W: Tensor, percdamp: float) -> tuple[Tensor, Tensor]:
    """Dead inputs and damping, as in the OBC/GPTQ reference code.

    Inputs with ``H_ii = 0`` never carry a signal: ``H_ii <- 1`` and ``W[:, i] <- 0``. Then
    ``H <- H + lambda I`` with ``lambda = percdamp * mean(diag H)``. Returns copies.
    """
    if percdamp < 0:
        raise ValueError(f"percdamp={percdamp!r} out of range: must be >= 0")
    H, W = H.clone(), W.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.diagonal(H).mean() * torch.eye(len(H), dtype=H.dtype, device=H.device)
    return H, W


def _inverse_on(H: Tensor, live: Tensor) -> Tensor:
    """``(H_FF)^-1`` on the live inputs ``F``, zero elsewhere (the OBS inverse after removing
    the others)."""
    idx = live.nonzero().squeeze(1)
    Hinv = torch.zeros_like(H)
    if idx.numel():
        Hinv[idx[:, None], idx[None, :]] = torch.cholesky_inverse(
            torch.linalg.cholesky(H[idx[:, None], idx[None, :]]))
    return Hinv


class _GroupState:
    """OBS state of one set of output rows that share their removed inputs."""

    def __init__(self, rows: Tensor, cols: list[Tensor], W: Tensor, H: Tensor, mask: Tensor):
        self.rows = rows
        self.live = mask[rows].any(0)
        self.Hinv = _inverse_on(H, self.live)
        g = max(len(c) for c in cols)
        self.idx = torch.stack([F.pad(c, (0, g - len(c))) for c in cols])       # (G, g)
        self.pad = torch.stack([torch.arange(g, device=W.device) < len(c) for c in cols])
        self.done = torch.zeros(len(cols), dtype=torch.bool, device=W.device)

    def costs(self, W: Tensor, row_weight: Tensor) -> Tensor:
        """Loss increase ``1/2 sum_r c_r w_rP (Hinv_PP)^-1 w_rP^T`` of removing each group."""
        ok = self.pad & self.live[self.idx]
        g = self.idx.shape[1]
        Hpp = self.Hinv[self.idx[:, :, None], self.idx[:, None, :]]
        eye = torch.eye(g, dtype=W.dtype, device=W.device).expand_as(Hpp)
        Hpp = torch.where(ok[:, :, None] & ok[:, None, :], Hpp, eye)
        Wp = (W[self.rows][:, self.idx] * ok).permute(1, 2, 0)                  # (G, g, rows)
        if g == 1:   # single word lines: w_ri^2 / Hinv_ii, no batched solve of 1x1 systems
            sol = Wp / Hpp
        else:
            sol = torch.linalg.solve(Hpp, Wp)
        cost = 0.5 * (Wp * sol * row_weight[self.rows]).sum((1, 2))
        return torch.where(self.done, math.inf, cost)

    def remove(self, W: Tensor, k: int) -> None:
        """OBS step: ``W -= W_:P (Hinv_PP)^-1 Hinv_P:`` and ``Hinv -= Hinv_:P (Hinv_PP)^-1
        Hinv_P:`` for the live inputs ``P`` of group ``k``; ``W_:P`` becomes exactly 0."""
        self.done[k] = True
        P = self.idx[k][self.pad[k] & self.live[self.idx[k]]]
        if not P.numel():
            return
        Wr = W[self.rows]
        inv_pp = torch.linalg.inv(self.Hinv[P[:, None], P[None, :]])
        Wr -= Wr[:, P] @ inv_pp @ self.Hinv[P, :]
        self.Hinv -= self.Hinv[:, P] @ inv_pp @ self.Hinv[P, :]
        Wr[:, P] = 0
        self.Hinv[P, :] = 0
        self.Hinv[:, P] = 0
        self.live[P] = False
        W[self.rows] = Wr


def obs_prune(W: Tensor, H: Tensor, groups: Sequence[Group], n_remove: int,
              row_weight: Tensor | None = None, mask: Tensor | None = None,
              ) -> tuple[Tensor, Tensor, float]:
    """Greedy OBS removal of ``n_remove`` groups, one at a time (OBC, Sec. 4; Kurtic et al.'s
    group OBS).

    Each group ``(rows, P)`` removes inputs ``P`` from the output rows ``rows`` (``None``: all).
    Row sets must be equal or disjoint; each distinct row set keeps its own inverse Hessian.
    Every step removes the group with the least loss increase
    ``1/2 sum_{r in rows} c_r w_rP (Hinv_PP)^-1 w_rP^T`` (``c_r = row_weight``, default 1) and
    compensates the remaining weights of those rows in closed form (:meth:`_GroupState.remove`);
    the result equals the least-squares refit of ``W X`` on the remaining inputs. Inputs outside
    ``mask`` (entries already removed) are neither live nor updated. Ties go to the lowest group.

    Returns ``(W, mask, loss_increase)``: the compensated weights, the kept entries, and the sum
    of the chosen groups' costs.
    """
    if not 0 <= n_remove <= len(groups):
        raise ValueError(f"n_remove={n_remove!r} out of range: [0, {len(groups)}]")
    W = W.clone()
    out_n = W.shape[0]
    mask = torch.ones(W.shape, dtype=torch.bool, device=W.device) if mask is None \
        else mask.clone()
    row_weight = W.new_ones(out_n) if row_weight is None else row_weight.to(W)
    all_rows = torch.arange(out_n, device=W.device)
    keys: dict[tuple[int, ...], list[int]] = {}
    for k, (rows, _) in enumerate(groups):
        keys.setdefault(tuple((all_rows if rows is None else rows).tolist()), []).append(k)
    states = []
    for key, members in keys.items():
        states.append(_GroupState(torch.tensor(key, device=W.device),
                                  [groups[k][1].to(W.device) for k in members], W, H, mask))
    costs = [s.costs(W, row_weight) for s in states]
    owner = [(i, j) for i, s in enumerate(states) for j in range(len(s.idx))]
    loss = 0.0
    for _ in range(n_remove):
        i, j = owner[int(torch.cat(costs).argmin())]
        loss += float(costs[i][j])
        states[i].remove(W, j)
        costs[i] = states[i].costs(W, row_weight)
    for s in states:
        mask[s.rows] &= s.live
    return W * mask, mask, loss


def obq_quantize(W: Tensor, H: Tensor, levels: Tensor, scale: Tensor, mask: Tensor) -> Tensor:
    """Quantize ``W`` onto ``scale * levels`` column by column (input index order) with OBQ/GPTQ
    error feedback, inside ``mask`` only.

    For input ``i``: ``q = scale * round(w_i / scale)``, ``err = (w_i - q) / Hinv_ii``,
    ``W[:, i+1:] -= err Hinv_{i, i+1:}``, then ``Hinv`` drops input ``i``
    (``Hinv -= Hinv_:i Hinv_i: / Hinv_ii``). As in GPTQ the sequence of inverses is read off the
    upper Cholesky factor ``U`` of ``Hinv`` (``U_i,i: = Hinv^(i)_i,i: / sqrt(Hinv^(i)_ii)``), which
    gives the same update. Output rows are grouped by their mask row; each group uses the inverse
    of ``H`` restricted to its kept inputs, so entries outside ``mask`` stay exactly 0 and never
    receive an update. ``scale`` is 0-d or per output row.
    """
    Q = torch.zeros_like(W)
    scale = scale.to(W).reshape(-1).expand(W.shape[0])
    levels = levels.to(W)
    patterns, which = torch.unique(mask, dim=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols = pattern.nonzero().squeeze(1)
        if not cols.numel():
            continue
        rows = (which == p).nonzero().squeeze(1)
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H[cols[:, None], cols[None, :]]))
        U = torch.linalg.cholesky(Hinv, upper=True)
        Wg, s = W[rows[:, None], cols[None, :]].clone(), scale[rows]
        for i in range(len(cols)):
            w = Wg[:, i].clone()
            q = round_to_levels(w / s, levels) * s
            Wg[:, i] = q
            Wg[:, i + 1:] -= ((w - q) / U[i, i])[:, None] * U[i, i + 1:][None, :]
        Q[rows[:, None], cols[None, :]] = Wg
    return Q


def _block_groups(shape: tuple[int, int], block: tuple[int, int], device: torch.device
                  ) -> list[Group]:
    """Tile blocks ``(row block i, column block j)``: inputs ``i*br:(i+1)*br`` of the outputs
    ``j*bc:(j+1)*bc`` (edge blocks partial), in the grid order of ``admm.projections``."""
    out_n, in_n = shape
    br, bc = block
    return [(torch.arange(j * bc, min((j + 1) * bc, out_n), device=device),
             torch.arange(i * br, min((i + 1) * br, in_n), device=device))
            for i in range(math.ceil(in_n / br)) for j in range(math.ceil(out_n / bc))]


def output_weight(importance: Tensor | None, out_n: int) -> Tensor | None:
    """Per-output weight ``c_r`` of the OBC loss from per-weight importance ``imp[out, in]``.

    With the Kronecker (K-FAC) factorisation of the Fisher of a layer, ``E[(g_r x_i)^2] ~
    E[g_r^2] E[x_i^2]``: the input factor is already ``H``, and the output factor ``E[g_r^2]`` is
    ``sum_i imp_ri`` up to a constant. Normalised to mean 1, floored at ``1e-6``.
    """
    if importance is None:
        return None
    c = importance.double().reshape(out_n, -1).sum(1)
    return (c / c.mean() if c.mean() > 0 else torch.ones_like(c)).clamp_min(1e-6)


class ObcLayer:
    """One layer's OBC: :meth:`add_batch` accumulates ``H = 2 X X^T / n`` (float64),
    :meth:`compress` prunes and quantizes the weight in place."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        in_n = weight_matrix(module).shape[1]
        self.H = torch.zeros(in_n, in_n, dtype=torch.float64, device=module.weight.device)
        self.n = 0

    @torch.no_grad()
    def add_batch(self, inp: Tensor) -> None:
        """Add the layer inputs of one batch: ``H <- (n H + 2 X X^T) / (n + m)``."""
        X = layer_inputs(self.module, inp).double()
        m = X.shape[1]
        self.H *= self.n / (self.n + m)
        self.n += m
        self.H += (2 / self.n) * X @ X.T

    @torch.no_grad()
    def compress(self, constraint: LayerConstraint, percdamp: float = 0.01,
                 importance: Tensor | None = None) -> dict:
        """Prune and quantize the weight in place; return the log and set ``self.scale``.

        Order: (1) bit lines (outputs) by importance-weighted output energy
        ``c_r w_r H w_r^T``, no compensation (outputs are independent given ``H``); (2) word lines
        by greedy OBS (:func:`obs_prune`); (3) tile blocks by greedy OBS per column block;
        (4) conductance levels by :func:`obq_quantize` with the (importance-weighted) scale of
        :func:`admm.importance.weighted_scale`. ``importance`` (matrix view) weights the outputs
        in the group choice (:func:`output_weight`) and the scale fit; compensation is exact OBS
        either way. ``layer_loss`` is ``||W X - Ŵ X||^2 / n`` with the undamped ``H``.
        """
        if self.n == 0:
            raise ValueError("OBC: no calibration batch reached this layer")
        W0 = weight_matrix(self.module).detach().double()
        H, W = prepare_hessian(self.H, W0, percdamp)
        out_n, in_n = W.shape
        c = output_weight(importance, out_n)
        mask = torch.ones(W.shape, dtype=torch.bool, device=W.device)
        log: dict = {}
        rows_keep, cols_keep, blocks_keep = constraint.keep_counts((out_n, in_n))
        if cols_keep is not None:
            energy = ((W @ H) * W).sum(1) * (1 if c is None else c)
            mask &= topk_mask(energy, cols_keep)[:, None]
            W = W * mask
        if rows_keep is not None:
            groups = [(None, torch.tensor([i], device=W.device)) for i in range(in_n)]
            W, mask, log["obs_rows"] = obs_prune(W, H, groups, in_n - rows_keep, c, mask)
        if blocks_keep is not None:
            groups = _block_groups((out_n, in_n), constraint.block, W.device)
            W, mask, log["obs_blocks"] = obs_prune(W, H, groups, len(groups) - blocks_keep, c,
                                                   mask)
        self.scale = None
        if constraint.levels is not None:
            levels = pair_levels(constraint.levels).to(W.device)
            self.scale = weighted_scale(W, levels, importance, constraint.per_column, mask)
            W = obq_quantize(W, H, levels, self.scale, mask)
        dW = W - W0
        log["layer_loss"] = float(0.5 * ((dW @ self.H) * dW).sum())
        log["dense_output"] = float(0.5 * ((W0 @ self.H) * W0).sum())
        w = self.module.weight
        w.copy_(W.reshape(w.shape).to(w.dtype))
        return log


class _StopForward(Exception):
    """Raised by the capture hook once the layer's input is recorded."""


def _execution_order(model: nn.Module, names: Iterable[str], x: Tensor) -> list[str]:
    """Names of the given layers in the order the forward pass first calls them."""
    modules = dict(model.named_modules())
    order: list[str] = []
    handles = [modules[n].register_forward_pre_hook(
        lambda _m, _a, n=n: order.append(n) if n not in order else None) for n in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(names) - set(order))
    if missing:
        raise ValueError(f"OBC: layers {missing} are not called in the forward pass")
    return order


def _collect(model: nn.Module, layer: ObcLayer, batches: Sequence[Tensor]) -> None:
    """Run the calibration batches through the model (up to ``layer``) and add its inputs."""
    def capture(_module: nn.Module, args: tuple) -> None:
        layer.add_batch(args[0].detach())
        raise _StopForward

    handle = layer.module.register_forward_pre_hook(capture)
    try:
        for x in batches:
            try:
                model(x)
            except _StopForward:
                pass
    finally:
        handle.remove()


@torch.no_grad()
def obc_compress(model: nn.Module, calib: Tensor | Iterable,
                 constraints: Sequence[LayerConstraint], n_calib: int = 1024,
                 percdamp: float = 0.01, importance: Mapping[str, Tensor] | None = None,
                 ) -> CompressResult:
    """Compress ``model`` in place after training, with no retraining (OBC).

    ``calib``: a tensor of inputs or an iterable of batches (``x`` or ``(x, y, ...)``), of which
    ``n_calib`` samples are used. ``constraints`` select layers and give pruning ratios/counts
    and level sets exactly as for ADMM (:class:`admm.LayerConstraint`). Layers are compressed
    one at a time in forward order; each layer's ``H`` is collected from the calibration data run
    through the already compressed earlier layers (model in eval mode, restored after).
    ``importance`` (``{layer: imp}``, e.g. :func:`admm.importance.compute_importance`) weights
    the outputs in the group choice and the level scale fit. Returns the same
    :class:`admm.CompressResult` as the ADMM pipeline (masks = nonzero weights, scales, levels;
    ``history`` holds one ``{"event": "obc_layer", ...}`` record per layer).
    """
    chosen = select_layers(model, list(constraints))
    modules = crossbar_layers(model)
    device = next(model.parameters()).device
    batches = [b[0] for b in calibration_batches(calib, n_calib, device, name="n_calib")]
    was_training = model.training
    model.eval()
    history: list[dict] = []
    scales: dict[str, Tensor] = {}
    try:
        active = [n for n, c in chosen.items() if c.prunes or c.levels is not None]
        for name in _execution_order(model, active, batches[0]):
            layer = ObcLayer(modules[name])
            _collect(model, layer, batches)
            imp = importance_matrix(importance or {}, name, modules[name])
            log = layer.compress(chosen[name], percdamp,
                                 None if imp is None else imp.to(device))
            if layer.scale is not None:
                scales[name] = layer.scale.to(modules[name].weight.dtype)
            history.append({"event": "obc_layer", "layer": name, "n_inputs": layer.n, **log})
    finally:
        model.train(was_training)
    levels = {n: pair_levels(c.levels) for n, c in chosen.items() if c.levels is not None}
    return CompressResult.from_layers({n: modules[n] for n in chosen}, scales, levels, history)


__all__ = ["ObcLayer", "layer_inputs", "obc_compress", "obq_quantize", "obs_prune",
           "output_weight", "prepare_hessian"]
