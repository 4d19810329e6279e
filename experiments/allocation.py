"""Budgeted per-layer allocation of the compression settings (the optional ``allocation`` block).

Before compression, every layer selected by the ``admm`` group's constraints is offered each
setting of ``allocation.candidates`` (pruning ratios/counts and/or ``levels``; a candidate
replaces the pruning fields and, when it gives them, the levels of the layer's constraint).
For layer ``l`` and candidate ``k`` of the pretrained model:

* distortion ``e_lk``: the rate-distortion estimate of the loss increase of projecting the
  layer's weights onto the candidate's constraint set (Gao et al., ICML 2019),
  ``e = 1/2 sum_i imp_i (w_i - P(w)_i)^2`` with ``imp`` the diagonal Fisher or Hessian
  (``allocation.importance``) and ``P`` the importance-weighted structured prune +
  conductance-level projection of ``admm.importance``; with ``importance: null`` the plain
  ``||w - P(w)||^2`` (not comparable across layers of different sensitivity);
* cost ``c_lk``: ``crossbar.plan.plan_layer`` on the projection's mask, then
  ``crossbar.cost.layer_cost`` with the run's ``crossbar`` and ``cost`` groups: tiles,
  area (mm^2) or energy per inference (nJ); layer costs add up to the model's total.

Layers without a constraint stay dense and count with their fixed cost. ``admm.allocate``
(cvxpy MILP, HiGHS) picks one candidate per layer minimising ``sum e`` with ``sum c <= budget``;
the chosen settings become per-layer constraints (``pattern: re:<layer name>``) for whichever
compressor runs. :func:`check_budget` rejects a budget below the least achievable cost before
any training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from admm import (
    Allocation,
    Candidate,
    LayerConstraint,
    allocate,
    compute_importance,
    crossbar_layers,
    min_cost,
    pair_levels,
    select_layers,
    weight_matrix,
    weighted_project_levels,
)
from crossbar import CrossbarConfig
from crossbar.cost import CostConfig, layer_cost, load_table
from crossbar.plan import measure_mvms, plan_layer
from experiments.config import (  # noqa: F401 - re-exported: the allocation block's schema
    _PRUNE_KEYS,
    RESOURCES,
    SETTING_KEYS,
    AllocationSettings,
    _plain,
)
from experiments.posttraining import labelled_subset

__all__ = ["RESOURCES", "AllocationSettings", "allocation_markdown", "allocation_stage",
           "check_budget", "layer_candidates"]

def layer_constraint(base: LayerConstraint, name: str, setting: dict) -> LayerConstraint:
    """``base`` for layer ``name`` only, with its pruning fields replaced by ``setting``'s (and
    its levels, when ``setting`` gives them)."""
    changes = {k: None for k in _PRUNE_KEYS} | _plain(setting)
    changes.pop("pattern", None)
    return dataclasses.replace(base, pattern="re:" + re.escape(name), **changes)


def _distortion(W: torch.Tensor, c: LayerConstraint, imp: torch.Tensor | None) -> tuple[
        float, torch.Tensor]:
    """(error, mask) of projecting the matrix view ``W`` onto ``c`` (module docstring)."""
    mask = c.prune_mask(W, imp)
    if c.levels is not None:
        P = weighted_project_levels(W, pair_levels(c.levels).to(W.device), imp, c.per_column,
                                    mask)[0]
    else:
        P = W * mask
    err = (W - P).double().pow(2)
    return float(err.sum() if imp is None else 0.5 * (imp.double() * err).sum()), mask


def _cost(name: str, module: nn.Module, mask: torch.Tensor, xbar: CrossbarConfig,
          cost: CostConfig, resource: str, mvms: dict[str, int], table) -> float:
    kind = "conv2d" if isinstance(module, (nn.Conv1d, nn.Conv2d)) else "linear"
    kernel = math.prod(module.kernel_size) if kind == "conv2d" else 1
    lc = layer_cost(plan_layer(name, kind, mask, xbar, kernel, mvms.get(name),
                               groups=getattr(module, "groups", 1)),  # a group's own tiles
                    xbar, cost, table)
    return {"tiles": float(lc.tiles), "area_mm2": lc.total_area_um2 * 1e-6,
            "energy_nJ": lc.total_energy_pJ * 1e-3}[resource]


@torch.no_grad()
def layer_candidates(model: nn.Module, settings: AllocationSettings,
                     constraints: Sequence[LayerConstraint], xbar: CrossbarConfig,
                     cost: CostConfig, example: torch.Tensor,
                     importance: dict[str, torch.Tensor] | None = None,
                     ) -> dict[str, list[Candidate]]:
    """``{layer: [Candidate(error, cost, setting), ...]}`` for every Linear/Conv2d of
    ``model``: one per ``allocation.candidates`` entry for constrained layers, one fixed dense
    candidate (``setting = {"fixed": "dense"}``) for the others. ``constraints``: the admm
    group's; costs of ``settings.resource`` on ``xbar`` priced by ``cost``."""
    chosen = select_layers(model, constraints)
    mvms = measure_mvms(model, example)
    table = load_table(cost.table)
    price = functools.partial(_cost, xbar=xbar, cost=cost, resource=settings.resource,
                              mvms=mvms, table=table)
    out: dict[str, list[Candidate]] = {}
    for name, module in crossbar_layers(model).items():
        W = weight_matrix(module).detach()
        if name not in chosen:
            out[name] = [Candidate(0.0, price(name, module, torch.ones_like(W, dtype=torch.bool)),
                                   {"fixed": "dense"})]
            continue
        imp = None if importance is None else importance[name].reshape(W.shape).to(W.device)
        out[name] = []
        for setting in settings.candidates:
            if name not in select_layers(model, [LayerConstraint(setting.get("pattern", "*"))]):
                continue
            c = layer_constraint(chosen[name], name, setting)
            error, mask = _distortion(W, c, imp)
            out[name].append(Candidate(error, price(name, module, mask), dict(setting)))
        if not out[name]:
            raise ValueError(f"allocation.candidates: no candidate's pattern matches layer "
                             f"{name!r}, which the admm group constrains")
    return out


def _require_feasible(candidates: dict[str, list[Candidate]], a: AllocationSettings,
                      when: str) -> None:
    lowest = min_cost(candidates)
    if lowest > a.budget:
        raise ValueError(f"allocation.budget={a.budget!r} is infeasible: the least achievable "
                         f"total {a.resource} with these candidates is {lowest:.6g} ({when}; "
                         "cheapest candidate of every layer); raise the budget or add cheaper "
                         "candidates")


def check_budget(model: nn.Module, settings: AllocationSettings | None,
                 constraints: Sequence[LayerConstraint], xbar: CrossbarConfig,
                 cost: CostConfig, example: torch.Tensor) -> None:
    """Fail before any training when no choice of candidates fits ``allocation.budget``
    (costs from the masks of the model's current weights; a no-op without allocation)."""
    if settings is not None:
        _require_feasible(layer_candidates(model, settings, constraints, xbar, cost, example),
                          settings, "before pretraining")


def allocation_stage(model: nn.Module, train: DataLoader, a: AllocationSettings | None,
                     constraints: Sequence[LayerConstraint], xbar: CrossbarConfig,
                     cost: CostConfig, example: torch.Tensor, seed: int,
                     ) -> tuple[list[dict] | None, dict | None]:
    """Solve the allocation on the pretrained ``model``; returns the chosen per-layer
    constraints (``admm.LayerConstraint`` fields, for the ``admm`` group; ``None`` without
    allocation) and the solver's choice (``admm.Allocation.summary()`` plus the
    ``importance`` used)."""
    if a is None:
        return None, None
    importance = None
    if a.importance is not None:
        device = next(model.parameters()).device
        data = labelled_subset(train, a.n_samples, device, seed)
        importance = compute_importance(model, data, a.importance, n_samples=a.n_samples)
    candidates = layer_candidates(model, a, constraints, xbar, cost, example, importance)
    _require_feasible(candidates, a, "pretrained weights")
    result = allocate(candidates, a.budget, resource=a.resource)
    chosen = select_layers(model, constraints)
    chosen_constraints = [dataclasses.asdict(layer_constraint(chosen[n], n,
                                                              result.chosen[n].setting))
                          for n in candidates if n in chosen]
    return chosen_constraints, {**result.summary(), "importance": a.importance}


def allocation_markdown(summary: dict) -> str:
    """The report section of :func:`allocation_stage`'s summary: the solver's choice per
    layer (setting, error, cost) and the total against the budget."""
    layers = summary["layers"]
    result = Allocation(
        choice={n: r["choice"] for n, r in layers.items()},
        chosen={n: Candidate(r["error"], r["cost"], r["setting"]) for n, r in layers.items()},
        total_error=summary["total_error"], total_cost=summary["total_cost"],
        budget=summary["budget"], min_cost=summary["min_cost"], resource=summary["resource"])
    imp = summary["importance"]
    kind = f"1/2 sum imp (w - P(w))^2, {imp} importance" if imp else "||w - P(w)||^2"
    return "\n".join([
        "## Budgeted allocation", "",
        f"Per-layer settings chosen by the MILP (admm.allocate, HiGHS) to minimise the total "
        f"distortion ({kind}) with total {result.resource} <= {result.budget:.6g} "
        f"(least achievable {result.min_cost:.6g}). Errors and costs are estimated on the "
        "projection of the dense weights; the mapping plan below is the compressed model's.",
        "", result.to_markdown(), ""])
