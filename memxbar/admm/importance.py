"""Rate-distortion importance of weights and importance-weighted projections (Gao, Liu, Wang,
Oh, "Rate Distortion for Model Compression: From Theory To Practice", ICML 2019).

The distortion of the task loss caused by a weight perturbation ``dW`` is, to second order
around a trained model, ``D ~ 1/2 sum_i h_i dW_i^2`` with ``h_i`` the diagonal of the loss
Hessian (cross terms dropped), or its Gauss-Newton surrogate, the diagonal (empirical) Fisher
``F_i = E[(dl/dw_i)^2]``. Compression that minimises this distortion instead of ``||dW||^2``
weights every weight by its importance ``imp_i``:

* pruning keeps the structures of largest importance-weighted energy ``sum_{i in S} imp_i w_i^2``
  (the projection onto the sparsity set under the norm ``||x||_imp^2 = sum imp_i x_i^2``);
* quantization keeps nearest-level rounding (the weighted error is separable, so the weighted
  nearest level is the nearest level) and fits the scale as the global optimum of
  ``sum imp_i (w_i - s q_i)^2`` (:func:`admm.projections.project_levels` with ``weights``).

Importance is returned per layer in the matrix view ``(out, in*kh*kw)``, keyed by module name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from memxbar.admm.admm import Projector
from memxbar.admm.constraints import LayerConstraint, crossbar_layers, select_layers, weight_matrix
from memxbar.admm.projections import pair_levels, project_levels

LossFn = Callable[[Tensor, Tensor], Tensor]
METHODS = ("fisher", "hessian")


def calibration_batches(data: Tensor | Iterable, n_samples: int, device: torch.device,
                        batch_size: int = 256, name: str = "n_samples",
                        ) -> list[tuple[Tensor, ...]]:
    """The first ``n_samples`` samples of ``data`` as a list of batch tuples on ``device``.

    ``data`` is a tensor of inputs (split into batches of ``batch_size``; each batch is ``(x,)``)
    or an iterable of batches ``x`` or ``(x, y, ...)`` (a bare tensor becomes ``(x,)``); the last
    batch is cut so that exactly ``min(n_samples, len(data))`` samples are returned. ``name``
    is the caller's name for ``n_samples`` in the error message.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"{name}={n_samples!r} out of range: must be an integer >= 1")
    source = data.split(batch_size) if isinstance(data, Tensor) else data
    batches, seen = [], 0
    for batch in source:
        batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        take = min(len(batch[0]), n_samples - seen)
        batches.append(tuple(t[:take].to(device) for t in batch))
        seen += take
        if seen >= n_samples:
            break
    if not batches:
        raise ValueError("the calibration data is empty")
    return batches


def _labelled_batches(data: Iterable, n_samples: int, device: torch.device
                      ) -> list[tuple[Tensor, Tensor]]:
    """Up to ``n_samples`` samples of ``(x, y)`` batches on ``device``."""
    batches = calibration_batches(data, n_samples, device)
    if len(batches[0]) < 2:
        raise ValueError("importance: the calibration data must yield (x, y) batches")
    return [(b[0], b[1]) for b in batches]


def _layer_weights(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Parameter]:
    modules = crossbar_layers(model)
    names = list(modules) if layers is None else list(layers)
    unknown = sorted(set(names) - set(modules))
    if unknown:
        raise ValueError(f"importance: layers {unknown} are not Linear/Conv2d layers; "
                         f"layers are {sorted(modules)}")
    return {n: modules[n].weight for n in names}


def fisher_diagonal(model: nn.Module, data: Iterable, loss_fn: LossFn = F.cross_entropy,
                    n_samples: int = 1024, layers: Iterable[str] | None = None,
                    ) -> dict[str, Tensor]:
    """Diagonal empirical Fisher ``F_i = 1/N sum_n (d l(x_n, y_n) / d w_i)^2`` per weight.

    Per-sample gradients come from ``torch.func.vmap(grad(...))`` (the squared gradient of a
    mini-batch mean would be a different, biased quantity). The model runs in eval mode
    (BatchNorm uses its running statistics); its mode is restored afterwards. ``data`` yields
    ``(x, y)`` batches; ``layers`` defaults to every Linear/Conv2d layer.
    """
    weights = _layer_weights(model, layers)
    device = next(model.parameters()).device
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    keys = {n: f"{n}.weight" for n in weights}

    def sample_loss(wanted: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        state = {**params, **buffers, **wanted}
        return loss_fn(functional_call(model, state, (x[None],)), y[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in _labelled_batches(data, n_samples, device):
            grads = per_sample({keys[n]: params[keys[n]] for n in weights}, x, y)
            for n in weights:
                total[n] += grads[keys[n]].double().pow(2).sum(0)
            count += len(x)
    finally:
        model.train(was_training)
    return {n: (t / count).reshape(t.shape[0], -1).float().cpu() for n, t in total.items()}


def hessian_diagonal(model: nn.Module, data: Iterable, loss_fn: LossFn = F.cross_entropy,
                     n_samples: int = 1024, layers: Iterable[str] | None = None,
                     n_probes: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """Hutchinson estimate of the loss Hessian's diagonal, ``diag(H) = E_v[v ⊙ H v]`` with
    Rademacher ``v`` (Bekas, Kokiopoulou, Saad 2007), clamped at 0.

    ``H v`` is a double backward pass of the mean loss of each batch; ``n_probes`` probes per
    batch (seeded with ``seed``). The Hessian of a non-convex loss may have negative diagonal
    entries; they carry no usable importance and are set to 0 (the positive part).
    """
    weights = _layer_weights(model, layers)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    total = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
    params = list(weights.values())
    batches = _labelled_batches(data, n_samples, device)
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
            for k in range(n_probes):
                vs = [torch.randint(0, 2, p.shape, generator=gen, device=device)
                      .to(p.dtype) * 2 - 1 for p in params]
                hvs = torch.autograd.grad(grads, params, grad_outputs=vs,
                                          retain_graph=k < n_probes - 1)
                for n, v, hv in zip(weights, vs, hvs, strict=True):
                    total[n] += (v * hv).double()
    finally:
        model.train(was_training)
    scale = len(batches) * n_probes
    return {n: (t / scale).clamp_min(0).reshape(t.shape[0], -1).float().cpu()
            for n, t in total.items()}


def compute_importance(model: nn.Module, data: Iterable, method: str = "fisher",
                       loss_fn: LossFn = F.cross_entropy, n_samples: int = 1024,
                       layers: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Per-weight importance ``{layer: (out, in*kh*kw)}`` by ``method``: ``"fisher"``
    (:func:`fisher_diagonal`) or ``"hessian"`` (:func:`hessian_diagonal`)."""
    if method == "fisher":
        return fisher_diagonal(model, data, loss_fn, n_samples, layers)
    if method == "hessian":
        return hessian_diagonal(model, data, loss_fn, n_samples, layers)
    raise ValueError(f"importance method={method!r} invalid: one of {list(METHODS)}")


# ------------------------------------------------------------------ weighted projections
def weighted_prune_mask(constraint: LayerConstraint, W: Tensor, importance: Tensor) -> Tensor:
    """Mask of the projection of ``W`` onto ``constraint``'s sparsity set under the weighted norm
    ``||x||_imp^2 = sum imp_i x_i^2``: the structures of largest ``sum imp_i w_i^2`` are kept
    (``constraint.prune_mask(W, importance)``; exact for one structure type)."""
    return constraint.prune_mask(W, importance)


def weighted_project_levels(W: Tensor, levels: Tensor, importance: Tensor | None = None,
                            per_column: bool = False, mask: Tensor | None = None,
                            ) -> tuple[Tensor, Tensor]:
    """``(Q, scale)`` of the importance-weighted level fit
    ``min_{s >= 0, q in L} sum_i imp_i (w_i - s q_i)^2``, globally optimal in ``s``; entries
    outside ``mask`` are exactly 0 (:func:`admm.projections.project_levels` with
    ``weights=importance``)."""
    return project_levels(W, levels, per_column, mask, weights=importance)


def weighted_scale(W: Tensor, levels: Tensor, importance: Tensor | None = None,
                   per_column: bool = False, mask: Tensor | None = None) -> Tensor:
    """Scale (0-d, or ``(out,)`` when ``per_column``) of :func:`weighted_project_levels`."""
    return weighted_project_levels(W, levels, importance, per_column, mask)[1]


def importance_projectors(model: nn.Module, constraints: Iterable[LayerConstraint],
                          importance: Mapping[str, Tensor] | None, stage: str,
                          masks: Mapping[str, Tensor] | None = None) -> dict[str, Projector]:
    """Projectors for :class:`admm.ADMM`, one per constrained layer of the stage.

    ``stage="prune"``: ``W -> W ⊙ constraint.prune_mask(W, imp)`` for layers that prune;
    ``stage="quant"``: ``W -> weighted_project_levels(W, levels, imp, per_column, mask)`` for
    layers with levels, restricted to ``masks`` when given. Layers missing from ``importance``
    (or all layers, with ``importance=None``) get the plain Euclidean projection. Use as
    ``ADMM(model, importance_projectors(model, constraints, imp, "prune"), rho)``.
    """
    if stage not in ("prune", "quant"):
        raise ValueError(f"stage={stage!r} invalid: 'prune' or 'quant'")
    chosen = select_layers(model, list(constraints))
    modules = crossbar_layers(model)
    importance, masks = importance or {}, masks or {}
    projectors: dict[str, Projector] = {}
    for name, c in chosen.items():
        imp = importance_matrix(importance, name, modules[name])
        if stage == "prune" and c.prunes:
            projectors[name] = _prune_projector(c, imp)
        elif stage == "quant" and c.levels is not None:
            projectors[name] = _level_projector(pair_levels(c.levels), c.per_column, imp,
                                                masks.get(name))
    return projectors


def _prune_projector(c: LayerConstraint, imp: Tensor | None) -> Projector:
    return lambda W: W * c.prune_mask(W, imp)


def _level_projector(levels: Tensor, per_column: bool, imp: Tensor | None,
                     mask: Tensor | None) -> Projector:
    return lambda W: project_levels(W, levels, per_column, mask, weights=imp)[0]


def importance_matrix(importance: Mapping[str, Tensor], name: str, module: nn.Module
                      ) -> Tensor | None:
    """``importance[name]`` in the matrix view of ``module`` (``None`` if absent)."""
    if name not in importance:
        return None
    W = weight_matrix(module)
    imp = importance[name]
    if imp.numel() != W.numel():
        raise ValueError(f"importance[{name!r}] has {imp.numel()} entries, the layer has "
                         f"{W.numel()} weights {tuple(W.shape)}")
    return imp.reshape(W.shape)


__all__ = ["METHODS", "LossFn", "calibration_batches", "compute_importance", "fisher_diagonal",
           "hessian_diagonal", "importance_matrix", "importance_projectors",
           "weighted_project_levels", "weighted_prune_mask", "weighted_scale"]
