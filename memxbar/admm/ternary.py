"""Ternary weights ``{-a, 0, +a}`` and Weight Penalty Clipping (WPC).

Yang, He and Fan, "Harmonious Coexistence of Structured Weight Pruning and Ternarization for
Deep Neural Networks" (AAAI 2020): structured pruning, then ternary weights, with Weight Penalty
Clipping to keep a few large weights from inflating the ternary threshold and scale. On a
crossbar a ternary weight is a differential pair with two device states (``G+ - G-`` in
``{-1, 0, +1}`` times the full range), so no multi-level programming is needed.

**Exact ternary projection** (one scale ``a`` per group: the whole layer, or one crossbar
column = one output = one row of the matrix view when ``per_column``). For a group ``w`` with
magnitudes sorted descending ``|w|_(1) >= |w|_(2) >= ...`` and prefix sums
``S_k = sum_{i<=k} |w|_(i)``::

    min_{a >= 0, t in {-1,0,1}^N} ||w - a t||^2.

For a support ``K`` (``t_i != 0``) of size ``k`` the best signs are ``t_i = sign(w_i)``, and the
error ``sum_{i not in K} w_i^2 + sum_{i in K} (|w_i| - a)^2`` is a quadratic in ``a`` minimised
at ``a = (1/k) sum_K |w_i|``, where it equals ``||w||^2 - (sum_K |w_i|)^2 / k``. For fixed ``k``
the k largest magnitudes maximise ``sum_K |w_i|``, so the optimum is ``k* = argmax_k S_k^2 / k``
and ``a = S_{k*} / k*``: every support size is enumerated, not only a fixed-point of the
"threshold / mean" alternation (TWN's ``0.7 mean|w|`` is an approximation of this).
Pruned weights (outside ``mask``) have ``|w| = 0`` and stay 0.

**Weight Penalty Clipping** (the rule used here; the paper's section on its exact rule is not
public in full, so this is a reconstruction). At the start of every retraining epoch the
threshold of each scale group is re-estimated from its current live (nonzero) weights::

    tau = mean|w| + c * std|w|        (population std over the live weights of the group)

and the loss gets ``lambda * sum relu(|w| - tau)^2`` over the live weights (``tau`` held fixed
within the epoch, so the gradient is ``2 lambda relu(|w| - tau) sign(w)``). Optionally ``|w|``
is clipped at ``tau`` after each epoch. Why this rule: the ternary scale is the mean of the
kept magnitudes, so a weight far out in the tail pulls ``a`` (and with it the threshold
``a/2`` between 0 and ``a``) up and sends many moderate weights to 0; ``mean + c std`` follows
the layer's own magnitude distribution as pruning and retraining reshape it (one constant ``c``
for every layer and every epoch), and for Gaussian weights (``|w|`` folded normal, mean
``0.80 sigma``, std ``0.60 sigma``) ``c = 2`` puts ``tau`` near ``2 sigma``, touching about 5 %
of the weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(W: Tensor, per_column: bool) -> Tensor:
    """The scale groups of the matrix view ``W`` as rows: ``(out, in)`` or ``(1, out * in)``."""
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (out, in*kh*kw), got shape {tuple(W.shape)}")
    return W if per_column else W.reshape(1, -1)


def ternary_project(W: Tensor, per_column: bool = False, mask: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
    """The exact Euclidean projection of ``W`` (matrix view) onto ``{a t : a >= 0, t in
    {-1, 0, 1}}`` (module docstring: ``k* = argmax_k S_k^2 / k``, ``a = S_{k*} / k*``), one
    ``a`` per layer or per output row (``per_column``), restricted to ``mask``.

    Returns ``(Q, a)``: ``Q`` in the shape and dtype of ``W`` (exactly 0 outside ``mask``),
    ``a`` 0-d, or shape ``(out,)`` when ``per_column``; ``a = 1`` for an all-zero group (as
    ``admm.project_levels``). Ties keep the lower index (stable sort)."""
    rows = _groups(W.detach().double() * (1 if mask is None else mask.to(W.device)), per_column)
    mag = rows.abs()
    order = torch.sort(mag, dim=1, descending=True, stable=True).indices
    S = torch.gather(mag, 1, order).cumsum(1)
    k = torch.arange(1, rows.shape[1] + 1, dtype=rows.dtype, device=rows.device)
    best = (S * S / k).argmax(1)                                       # k* - 1 per group
    a = torch.gather(S, 1, best[:, None]).squeeze(1) / (best + 1).to(rows.dtype)
    keep = torch.zeros_like(rows, dtype=torch.bool)
    keep.scatter_(1, order, torch.arange(rows.shape[1], device=rows.device)[None, :]
                  .expand_as(rows) <= best[:, None])
    keep &= mag > 0
    a = torch.where(a > 0, a, torch.ones_like(a))
    Q = (a[:, None] * torch.sign(rows) * keep).reshape(W.shape).to(W.dtype)
    a = a.to(W.dtype)
    return Q, (a if per_column else a.reshape(()))


def wpc_threshold(W: Tensor, c: float, per_column: bool = False) -> Tensor:
    """``tau = mean|w| + c * std|w|`` over the nonzero (live) weights of each scale group
    (population std); shape ``(out, 1)`` when ``per_column``, else ``(1, 1)``; ``inf`` for a
    group without live weights (nothing to clip)."""
    mag = _groups(W.detach().abs().double(), per_column)
    live = (mag > 0).double()
    n = live.sum(1, keepdim=True)
    safe = n.clamp_min(1.0)
    mean = (mag * live).sum(1, keepdim=True) / safe
    var = (((mag - mean) * live) ** 2).sum(1, keepdim=True) / safe
    tau = mean + c * var.sqrt()
    return torch.where(n > 0, tau, torch.full_like(tau, torch.inf)).to(W.dtype)


def wpc_penalty(W: Tensor, tau: Tensor, per_column: bool = False) -> Tensor:
    """``sum relu(|w| - tau)^2`` over ``W`` (matrix view; ``tau`` from :func:`wpc_threshold`,
    not differentiated). Pruned weights are 0 and contribute nothing. Differentiable in ``W``:
    ``d/dw = 2 relu(|w| - tau) sign(w)``."""
    return F.relu(_groups(W, per_column).abs() - tau.detach()).pow(2).sum()


@torch.no_grad()
def wpc_clip_(W: Tensor, tau: Tensor, per_column: bool = False) -> None:
    """Clip ``|w|`` at ``tau`` in place (``W`` a matrix view sharing the weight's storage)."""
    rows = _groups(W, per_column)
    rows.copy_(torch.maximum(torch.minimum(rows, tau), -tau))


class WeightPenaltyClipping:
    """WPC over named layers (name -> Linear/Conv2d): :meth:`new_epoch` re-estimates each
    layer's ``tau`` (:func:`wpc_threshold` with ``c``), :meth:`penalty` is ``lambda * sum
    relu(|w| - tau)^2`` over them (add it to the training loss), :meth:`clip` clips ``|w|`` at
    ``tau`` (after an epoch). ``per_column``: name -> one tau per output (else per layer)."""

    def __init__(self, modules: Mapping[str, nn.Module], weight: float, c: float,
                 per_column: Mapping[str, bool] | None = None) -> None:
        if not weight >= 0:
            raise ValueError(f"weight={weight!r} is invalid; allowed: a number >= 0")
        self.modules, self.weight, self.c = dict(modules), float(weight), float(c)
        self.per_column = {n: bool((per_column or {}).get(n, False)) for n in self.modules}
        self.tau: dict[str, Tensor] = {}

    def _matrix(self, name: str) -> Tensor:
        w = self.modules[name].weight
        return w.reshape(w.shape[0], -1)

    def new_epoch(self) -> dict[str, float]:
        """Re-estimate every ``tau``; returns each layer's mean ``tau`` (for the history)."""
        self.tau = {n: wpc_threshold(self._matrix(n), self.c, self.per_column[n])
                    for n in self.modules}
        return {n: float(t[torch.isfinite(t)].mean()) if torch.isfinite(t).any() else 0.0
                for n, t in self.tau.items()}

    def penalty(self) -> Tensor:
        """``lambda * sum_layers sum relu(|w| - tau)^2`` (0 before :meth:`new_epoch`)."""
        total = sum((wpc_penalty(self._matrix(n), t, self.per_column[n])
                     for n, t in self.tau.items()), torch.zeros(()))
        return self.weight * total

    def clip(self) -> None:
        for n, t in self.tau.items():
            wpc_clip_(self._matrix(n), t, self.per_column[n])


class TernaryForward:
    """Context manager: while active, the named layers compute with the ternary projection of
    their weights (:func:`ternary_project`, recomputed at every forward pass) and pass the
    gradient straight through to the latent weights, ``w_used = w + (Q(w) - w).detach()``
    (straight-through estimator, Bengio et al. 2013). The parameters are not changed."""

    def __init__(self, modules: Mapping[str, nn.Module],
                 per_column: Mapping[str, bool] | None = None) -> None:
        self.modules = dict(modules)
        self.per_column = {n: bool((per_column or {}).get(n, False)) for n in self.modules}

    def _forward(self, name: str, module: nn.Module):
        def forward(x: Tensor) -> Tensor:
            w = module.weight
            Q, _ = ternary_project(w.reshape(w.shape[0], -1), self.per_column[name])
            used = w + (Q.reshape(w.shape) - w).detach()
            if isinstance(module, nn.Conv2d):
                return module._conv_forward(x, used, module.bias)
            return F.linear(x, used, module.bias)
        return forward

    def __enter__(self) -> TernaryForward:
        for name, module in self.modules.items():
            module.forward = self._forward(name, module)
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self.modules.values():
            del module.forward


__all__ = ["TernaryForward", "WeightPenaltyClipping", "ternary_project", "wpc_clip_",
           "wpc_penalty", "wpc_threshold"]
