"""Budgeted per-layer allocation of compression settings: a multiple-choice knapsack solved
exactly as a mixed-integer linear program with cvxpy.

Every layer ``l`` offers candidates ``k`` (a pruning ratio, a level count, ...) with an estimated
distortion ``e_lk`` and a hardware cost ``c_lk`` (tiles, area or energy, from the caller's cost
model). With one boolean ``x_lk`` per candidate::

    minimise    sum_lk e_lk x_lk
    subject to  sum_k x_lk = 1          for every layer l
                sum_lk c_lk x_lk <= B   (the budget)
                x_lk in {0, 1}

Distortions add across layers (the usual rate-distortion assumption of Gao et al., ICML 2019,
and of OBC's layer-wise losses), so the optimum of this program is the best allocation under
that model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_COST_TOL = 1e-9


@dataclass(frozen=True)
class Candidate:
    """One setting of one layer: estimated ``error`` (distortion), ``cost`` in the budget's unit,
    and the ``setting`` itself (plain data, e.g. ``{"row_ratio": 0.5, "levels": 4}``)."""

    error: float
    cost: float
    setting: Mapping[str, Any] = field(default_factory=dict)
    kept: tuple[int, int] | None = None
    """Kept (input rows, output columns), where the caller links layers (:class:`Link`)."""


@dataclass
class Allocation:
    """The chosen candidate index per layer and the totals; :meth:`summary` and
    :meth:`to_markdown` give a run report's dict and table."""

    choice: dict[str, int]
    chosen: dict[str, Candidate]
    total_error: float
    total_cost: float
    budget: float
    min_cost: float
    resource: str = "cost"

    def summary(self) -> dict:
        """Plain data (JSON-ready): totals and one record per layer."""
        return {
            "resource": self.resource, "budget": self.budget, "min_cost": self.min_cost,
            "total_cost": self.total_cost, "total_error": self.total_error,
            "layers": {n: {"choice": self.choice[n], "setting": dict(c.setting),
                           "error": c.error, "cost": c.cost} for n, c in self.chosen.items()},
        }

    def to_markdown(self) -> str:
        """Markdown table: one row per layer plus the total against the budget."""
        lines = [f"| layer | setting | error | {self.resource} |", "|---|---|---:|---:|"]
        for n, c in self.chosen.items():
            setting = ", ".join(f"{k}={v}" for k, v in c.setting.items()) or "unpruned"
            lines.append(f"| {n} | {setting} | {c.error:.6g} | {c.cost:.6g} |")
        lines.append(f"| **total** | budget {self.budget:.6g} | {self.total_error:.6g} | "
                     f"{self.total_cost:.6g} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class Link:
    """A linear coupling of two layers' choices: ``sum_k below_coef[k] x[below, k] <=
    sum_j above_coef[j] x[above, j]``. For example the kept input rows of a layer are at most
    the rows its previous layer's kept outputs feed (``below_coef``: each candidate's kept
    rows; ``above_coef``: each candidate's kept outputs times the rows one output feeds), so
    the budget is not spent on rows that read a pruned output."""

    below: str
    below_coef: Sequence[float]
    above: str
    above_coef: Sequence[float]


def _validate(candidates: Mapping[str, Sequence[Candidate]], budget: float) -> None:
    if not candidates:
        raise ValueError("allocation: no layers given")
    for name, options in candidates.items():
        if not options:
            raise ValueError(f"allocation: layer {name!r} has no candidate")
        for k, c in enumerate(options):
            if not (math.isfinite(c.error) and math.isfinite(c.cost)):
                raise ValueError(f"allocation: layer {name!r} candidate {k} has error={c.error!r}"
                                 f", cost={c.cost!r}; both must be finite")
    if not math.isfinite(budget):
        raise ValueError(f"allocation: budget={budget!r} must be finite")


def min_cost(candidates: Mapping[str, Sequence[Candidate]]) -> float:
    """The least achievable total cost: the cheapest candidate of every layer."""
    return float(sum(min(c.cost for c in options) for options in candidates.values()))


def allocate(candidates: Mapping[str, Sequence[Candidate]], budget: float,
             resource: str = "cost", solver: str = "HIGHS", links: Sequence[Link] = ()
             ) -> Allocation:
    """Choose one candidate per layer minimising the total error with total cost ``<= budget``
    and every :class:`Link` met.

    Solves the multiple-choice knapsack above exactly (MILP, HiGHS branch and bound with zero
    relative gap by default). Raises ``ValueError`` naming the minimum achievable cost when the
    budget is infeasible (or, with links, when no choice meets both). ``resource`` names the
    budget's unit in the report (``"tiles"``, ``"area_um2"``, ``"energy_pJ"``). ``solver`` is
    a cvxpy solver name; cvxpy is imported here, not with ``admm``, because it doubles the
    package's import time.
    """
    import cvxpy as cp

    _validate(candidates, budget)
    lowest = min_cost(candidates)
    if lowest > budget + _COST_TOL * max(1.0, abs(budget)):
        raise ValueError(f"allocation: budget={budget:.6g} {resource} is infeasible; the minimum "
                         f"achievable total {resource} is {lowest:.6g} (the cheapest candidate "
                         "of every layer)")
    names = list(candidates)
    flat = [(n, k, c) for n in names for k, c in enumerate(candidates[n])]
    error = np.array([c.error for _, _, c in flat], dtype=float)
    cost = np.array([c.cost for _, _, c in flat], dtype=float)
    member = np.array([[n == m for m, _, _ in flat] for n in names], dtype=float)
    x = cp.Variable(len(flat), boolean=True)
    rows = []
    for link in links:
        for name, coef in ((link.below, link.below_coef), (link.above, link.above_coef)):
            if name not in candidates or len(coef) != len(candidates[name]):
                raise ValueError(f"allocation: link coefficients of layer {name!r} must match "
                                 "its candidates, one each")
        row = np.zeros(len(flat))
        for i, (n, k, _) in enumerate(flat):
            row[i] = (link.below_coef[k] if n == link.below else 0.0) \
                - (link.above_coef[k] if n == link.above else 0.0)
        rows.append(row)
    constraints = [member @ x == 1, cost @ x <= budget]
    if rows:
        constraints.append(np.array(rows) @ x <= 0)
    problem = cp.Problem(cp.Minimize(error @ x), constraints)
    options = {"mip_rel_gap": 0.0} if solver == cp.HIGHS else {}
    problem.solve(solver=solver, **options)
    if rows and problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise ValueError(f"allocation: budget={budget:.6g} {resource} is infeasible with the "
                         f"links between layers ({len(rows)}: kept rows at most what the "
                         "previous layer's kept outputs feed); loosen the budget")
    if x.value is None or problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise RuntimeError(f"allocation: solver {solver} returned status {problem.status!r}")
    choice = {}
    for row, n in enumerate(names):
        idx = np.flatnonzero(member[row])
        choice[n] = int(np.argmax(x.value[idx]))
    chosen = {n: candidates[n][k] for n, k in choice.items()}
    total_cost = float(sum(c.cost for c in chosen.values()))
    if total_cost > budget + _COST_TOL * max(1.0, abs(budget)):
        raise RuntimeError(f"allocation: solver {solver} returned total {resource} "
                           f"{total_cost:.6g} above the budget {budget:.6g}")
    return Allocation(choice=choice, chosen=chosen,
                      total_error=float(sum(c.error for c in chosen.values())),
                      total_cost=total_cost, budget=float(budget), min_cost=lowest,
                      resource=resource)


__all__ = ["Allocation", "Candidate", "Link", "allocate", "min_cost"]
