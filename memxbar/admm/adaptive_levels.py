"""Uncertainty-adaptive levels: each layer gets the number of device levels its posterior
uncertainty warrants, chosen after training by a cost penalty.

Source: Yang, Bamler, Mandt, "Variable-Bitrate Neural Compression via Bayesian Arithmetic
Coding", ICML 2020: after training, every quantity is quantized as coarsely as its posterior
uncertainty allows, by maximising the posterior log density of the quantized value minus
``lambda`` times its bit rate; one trained model gives the whole rate-accuracy front by
sweeping ``lambda``. Here (reconstructed for crossbars; the paper codes bits per weight, a
crossbar programs levels per cell) the unit is a layer, the choice is the device level count
``n`` from a candidate set, and the rate is a hardware cost given by the caller (for example
the expected write-verify pulses of the layer's cells; ``admm`` knows nothing of devices).

**Posterior** (Laplace approximation around the trained weights ``w``; MacKay, Neural
Computation 1992): a diagonal Gaussian ``N(w, sigma^2)`` with precision

    1 / sigma_i^2 = N * F_ii + prior_precision,

``F_ii`` the diagonal empirical Fisher of the mean loss (``admm.importance.fisher_diagonal``,
the Gauss-Newton surrogate of the Hessian of the mean loss), ``N`` the number of training
samples (the likelihood term of the log posterior is a sum over them), ``prior_precision`` a
Gaussian prior's (it also keeps weights the data does not constrain finite).

**Score of a level count** ``n`` for a layer: the optimal quantization onto the pair levels
``s * L_n`` in the precision-weighted norm (``admm.project_levels`` with ``weights =
1 / sigma^2``, which maximises the density over the scale and the rounding) and its log density
over the live weights

    log p_n = sum_i [ -(q_i - w_i)^2 / (2 sigma_i^2) - 1/2 log(2 pi sigma_i^2) ].

**Choice**: ``argmax_{n_l} sum_l [log p_{n_l}(l) - lambda * cost_{n_l}(l)]``; the objective is
a sum of per-layer terms, so each layer takes its own argmax (ties: the cheaper, then the
smaller ``n``), which equals the brute-force optimum over all assignments (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from memxbar.admm.projections import pair_levels, project_levels


def laplace_precision(fisher: Tensor, n_data: int, prior_precision: float) -> Tensor:
    """``1 / sigma^2 = n_data * F + prior_precision`` (module docstring), float64."""
    if not (isinstance(n_data, int) and n_data >= 1):
        raise ValueError(f"n_data={n_data!r} is invalid; allowed: an integer >= 1")
    if not prior_precision > 0:
        raise ValueError(f"prior_precision={prior_precision!r} is invalid; allowed: a number > 0")
    return fisher.double() * n_data + prior_precision


def level_score(W: Tensor, precision: Tensor, n_levels: int, per_column: bool = False,
                mask: Tensor | None = None) -> tuple[float, Tensor, Tensor]:
    """``(log p_n, Q, scale)`` for the pair levels of ``n_levels`` uniform device levels: ``Q``
    the precision-weighted projection of ``W`` (matrix view) onto ``scale * L_n`` and ``log
    p_n`` its Gaussian log density under ``N(W, 1 / precision)``, summed over ``mask`` (default
    every weight)."""
    Q, scale = project_levels(W, pair_levels(n_levels).to(W.device), per_column, mask,
                              precision)
    prec = precision.to(device=W.device, dtype=torch.float64).reshape(W.shape)
    live = torch.ones_like(prec, dtype=torch.bool) if mask is None else mask.to(W.device)
    err = (Q.double() - W.detach().double()) ** 2
    logp = (-0.5 * prec * err + 0.5 * torch.log(prec / (2 * math.pi)))[live].sum()
    return float(logp), Q, scale


def choose_levels(scores: Mapping[str, Mapping[int, float]],
                  costs: Mapping[str, Mapping[int, float]], weight: float) -> dict[str, int]:
    """Per layer the level count maximising ``scores[l][n] - weight * costs[l][n]`` (ties: the
    lower cost, then the smaller ``n``): the optimum of the separable sum over layers."""
    if not weight >= 0:
        raise ValueError(f"weight={weight!r} is invalid; allowed: a number >= 0")
    out = {}
    for layer, by_n in scores.items():
        if not by_n:
            raise ValueError(f"scores[{layer!r}] is empty: give at least one level count")
        out[layer] = min(by_n, key=lambda n: (-(by_n[n] - weight * costs[layer][n]),
                                              costs[layer][n], n))
    return out


def level_front(scores: Mapping[str, Mapping[int, float]],
                costs: Mapping[str, Mapping[int, float]], weights: Sequence[float]
                ) -> list[dict]:
    """The choice at each ``weight`` (lambda) of ``weights``: ``{"weight", "levels": {layer:
    n}, "log_density", "cost"}`` (totals over layers), one trained model for the whole
    cost-accuracy front."""
    front = []
    for w in weights:
        choice = choose_levels(scores, costs, w)
        front.append({"weight": float(w), "levels": choice,
                      "log_density": sum(scores[k][n] for k, n in choice.items()),
                      "cost": sum(costs[k][n] for k, n in choice.items())})
    return front


__all__ = ["choose_levels", "laplace_precision", "level_front", "level_score"]
