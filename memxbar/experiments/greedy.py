"""Retraining-aware allocation (``allocation.method: greedy``): the per-layer rows x columns
chosen by short fine-tuning, not by a one-shot distortion estimate.

One-shot measures (the weight error, Fisher/Hessian estimates, even the measured output change
after OBS repair) add the layers' distortions as if each were compressed alone and never
retrained. At strong compression that misleads: on LeNet-5/MNIST at 30x every allocation
compressed in one shot is near chance (29-39 %), whatever its measured distortion, while after
retraining a hand-set split keeps 98.5 % and the one-shot MILP's split 97.1 %. What matters is
what retraining can recover.

The greedy search follows NetAdapt (Yang et al., ECCV 2018, "NetAdapt: platform-aware neural
network adaptation for mobile applications"): from the dense model, in iterations that split the
remaining cut to the budget evenly (each to no less than ``greedy_step`` of the last cost),
every layer proposes the smallest step down its ladder of kept rows or kept output columns (the
``candidates: auto`` ladder) that meets the target, with the layers it feeds and is fed by kept
consistent (the links of the MILP: a layer keeps at most ``s`` rows per kept output of the layer
feeding it, and that layer at most as many outputs as it keeps rows). Each proposal is applied
to the current weights (the rows/columns of largest L2 norm), fine-tuned for ``finetune_steps``
steps with the masks fixed, and scored by its cross-entropy on ``n_samples`` held-out training
images (never the test set). The ``beam`` proposals of least loss (distinct allocations, from
any of the states carried) carry on with their fine-tuned weights: a beam search, so that one
short-horizon ranking does not fix the path. One proposal carried (NetAdapt's greedy) makes
the allocation depend on the path: on LeNet-5/MNIST the state a 30x budget reached directly
kept 0.72 held-out loss and the one the accuracy-budget search reached through other targets
0.57; a beam of 3 reached 0.50, and 0.65 point more chip accuracy than the first after
compression (BENCHMARKS.md, "A beam search for the greedy allocation"). The best
state of each iteration gives a whole trajectory of allocations, one per resource level, so
the accuracy-budget search reads each point's allocation off one trajectory. Every draw is
seeded: the same model, data and settings give the same trajectory. """

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from memxbar.admm import Candidate, LayerConstraint
from memxbar.admm.constraints import weight_matrix
from memxbar.experiments.data import labelled_subset, seeded_draw

__all__ = ["GreedyTrajectory", "greedy_markdown"]

_log = logging.getLogger("memxbar.experiments.greedy")

LANDING = 0.97
"""A state within a budget but below this fraction of it undershoots it: :meth:`choice`
branches toward the budget instead (the accuracy-budget search asks budgets out of order)."""


@dataclass
class _State:
    kept: dict[str, tuple[int, int]]  # layer -> (rows, cols)
    cost: float
    loss: float
    weights: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)  # on the CPU
    target: float = math.nan  # the resource target of the iteration that made it
    parent: _State | None = field(repr=False, default=None)


class GreedyTrajectory:
    """The greedy allocations of one dense ``model`` (module docstring), extended on demand:
    :meth:`choice` returns, for a budget in cost units, the candidate index per layer of the
    first iteration whose cost meets it."""

    def __init__(self, model: nn.Module, train: DataLoader,
                 candidates: Mapping[str, Sequence[Candidate]],
                 links: Mapping[str, tuple[str, int]], *, seed: int, n_samples: int,
                 steps: int, step: float, lr: float, batch: int = 128, beam: int = 1) -> None:
        self.model, self.train, self.candidates = model, train, candidates
        self.links = {n: pl for n, pl in links.items() if n in candidates and pl[0] in candidates
                      and _prunable(candidates[n]) and _prunable(candidates[pl[0]])}
        self.seed, self.steps, self.step, self.lr, self.batch = seed, steps, step, lr, batch
        self.beam = beam
        self.index = {n: {c.kept: k for k, c in enumerate(cs)} for n, cs in candidates.items()}
        self.ladders = {n: (sorted({c.kept[0] for c in cs}, reverse=True),
                            sorted({c.kept[1] for c in cs}, reverse=True))
                        for n, cs in candidates.items() if _prunable(cs)}
        device = next(model.parameters()).device
        n_held = min(n_samples, len(train.dataset) // 4)  # at most a quarter of the data
        self.held = labelled_subset(train, n_held, device, seed + 1)
        self.held_index = seeded_draw(len(train.dataset), n_held, seed + 1)
        self.modules = dict(model.named_modules())
        dense = {n: max(cs, key=lambda c: c.cost).kept for n, cs in candidates.items()
                 if _prunable(cs)}
        self.fixed = sum(max(c.cost for c in cs) for n, cs in candidates.items()
                         if not _prunable(cs))
        start = _State(dense, self._cost(dense), math.nan, _cpu(model))
        self.beams = [[start]]  # per iteration: the states carried on, least loss first
        self.branches: dict[float, _State] = {}
        self.chosen_loss = math.nan
        self.chosen_path: list[dict] = []

    @property
    def states(self) -> list[_State]:
        """The trajectory: each iteration's state of least held-out loss."""
        return [beam[0] for beam in self.beams]

    # ------------------------------------------------------------------ resource and links
    def _cost(self, kept: Mapping[str, tuple[int, int]]) -> float:
        return self.fixed + sum(self.candidates[n][self.index[n][rc]].cost
                                for n, rc in kept.items())

    def _floor(self, ladder: Sequence[int], limit: float) -> int | None:
        return next((v for v in ladder if v <= limit), None)

    def _linked(self, kept: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]] | None:
        """``kept`` with the links restored by shrinking (never growing) the coupled counts:
        rows reading a pruned output go, outputs feeding only pruned rows go."""
        for _ in range(2 * len(kept) + 2):
            changed = False
            for name, (prev, per_output) in self.links.items():
                rows, cols = kept[name]
                prev_rows, prev_cols = kept[prev]
                if rows > per_output * prev_cols:
                    rows = self._floor(self.ladders[name][0], per_output * prev_cols)
                if rows is None:
                    return None
                if prev_cols > rows:
                    prev_cols = self._floor(self.ladders[prev][1], rows)
                if prev_cols is None:
                    return None
                if (rows, cols) != kept[name] or (prev_rows, prev_cols) != kept[prev]:
                    kept[name], kept[prev] = (rows, cols), (prev_rows, prev_cols)
                    changed = True
            if not changed:
                return kept if all(rc in self.index[n] for n, rc in kept.items()) else None
        return None

    def _proposal(self, kept: Mapping[str, tuple[int, int]], name: str, dim: int,
                  target: float | None) -> dict[str, tuple[int, int]] | None:
        """The smallest step of ``name``'s rows (``dim`` 0) or columns (1) down its ladder that
        brings the cost to ``target`` or below (``None``: one step that lowers the cost), the
        links kept; None when none does."""
        ladder = self.ladders[name][dim]
        now = self._cost(kept)
        for value in ladder[ladder.index(kept[name][dim]) + 1:]:
            new = dict(kept)
            rc = list(new[name])
            rc[dim] = value
            new[name] = (rc[0], rc[1])
            new = self._linked(new)
            if new is None:
                continue
            cost = self._cost(new)
            if (target is None and cost < now) or (target is not None and cost <= target):
                return new
        return None

    # ------------------------------------------------------------------------ fine-tuning
    def _apply(self, kept: Mapping[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Masks of the current weights at ``kept`` (rows/columns of largest L2 norm), applied."""
        masks = {}
        for name, (rows, cols) in kept.items():
            module = self.modules[name]
            W = weight_matrix(module).detach()
            full_rows, full_cols = W.shape[1], W.shape[0]
            c = LayerConstraint(pattern=name, row_keep=rows if rows < full_rows else None,
                                col_keep=cols if cols < full_cols else None)
            mask = c.prune_mask(W).reshape(module.weight.shape).to(module.weight.dtype)
            module.weight.data.mul_(mask)
            masks[name] = mask
        return masks

    def _finetune(self, masks: Mapping[str, torch.Tensor], iteration: int) -> float:
        """``steps`` masked Adam steps on seeded training batches (the same for every proposal
        of an iteration); returns the held-out cross-entropy."""
        model, ds = self.model, self.train.dataset
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        device = next(model.parameters()).device
        order = seeded_draw(len(ds), len(ds), self.seed * 100_003 + iteration)
        order = order[~torch.isin(order, self.held_index)]  # never fit on the scoring images
        model.train()
        for t in range(self.steps):
            index = order[(t * self.batch) % len(order):][: self.batch]
            items = [ds[int(i)] for i in index]
            x = torch.stack([p[0] for p in items]).to(device)
            y = torch.as_tensor([int(p[1]) for p in items], device=device)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    self.modules[name].weight.mul_(mask)
        model.eval()
        with torch.no_grad():
            total = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in self.held)
        return total / sum(len(y) for _, y in self.held)

    def _iterate(self, budget: float, parents: Sequence[_State] | None = None
                 ) -> list[_State]:
        """One NetAdapt iteration from ``parents`` (default the last iteration's beam) toward
        ``budget``: the ``n = ceil(log(budget / cost) / log(step))`` iterations still needed
        split the remaining cut evenly, so this one's target is ``cost * (budget / cost)^(1/n)``
        (``cost``: the dearest parent's; never a larger cut than ``step`` asks, and no drastic
        last cut to land on the budget); the ``beam`` new states of least loss (distinct
        allocations), least first; empty when no layer can shrink."""
        parents = self.beams[-1] if parents is None else parents
        cost = max(p.cost for p in parents)
        target = budget
        if cost > budget > 0:
            needed = max(1, math.ceil(math.log(budget / cost) / math.log(self.step) - 1e-9))
            target = budget if needed == 1 else cost * (budget / cost) ** (1.0 / needed)
        iteration = len(self.beams)
        children: dict[tuple, _State] = {}
        for parent in parents:
            proposals = self._proposals(parent.kept, target)
            for kept in proposals:
                key = tuple(sorted(kept.items()))
                self.model.load_state_dict(parent.weights)
                loss = self._finetune(self._apply(kept), iteration)
                if key not in children or loss < children[key].loss:
                    children[key] = _State(kept, self._cost(kept), loss, _cpu(self.model),
                                           target, parent)
        beam = sorted(children.values(), key=lambda st: st.loss)[: self.beam]
        if beam:
            _log.info("greedy allocation %d: cost %.6g (target %.6g), held-out loss %.4f%s: %s",
                      iteration, beam[0].cost, target, beam[0].loss,
                      "" if len(beam) == 1 else
                      " (beam: " + ", ".join(f"{st.loss:.4f}" for st in beam[1:]) + ")",
                      "; ".join(f"{n} {r}x{c}" for n, (r, c) in beam[0].kept.items()))
        return beam

    def _proposals(self, kept: Mapping[str, tuple[int, int]], target: float
                   ) -> list[dict[str, tuple[int, int]]]:
        """Every layer's smallest step of rows and of columns that meets ``target``; where no
        single layer can cut that much, one step of each instead."""
        for goal in (target, None):
            out = [p for name in self.ladders for dim in (0, 1)
                   if (p := self._proposal(kept, name, dim, goal)) is not None]
            if out:
                return out
        return []

    def choice(self, budget: float) -> dict[str, int]:
        """The candidate index per layer of the state for ``budget``: the trajectory is
        extended as far as needed; where its first state within the budget undershoots it
        (costs less than :data:`LANDING` of it) though it aimed at another target (a looser
        point asked after a tighter one), one iteration branches from the states before toward
        the budget (kept for that budget).
        ValueError when no state reaches it."""
        was_training = self.model.training
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            while self.states[-1].cost > budget:
                new = self._iterate(budget)
                if not new:
                    raise ValueError(f"allocation: the greedy search cannot reach the budget "
                                     f"{budget:.6g} (least reached {self.states[-1].cost:.6g})")
                self.beams.append(new)
            i = next(k for k, s in enumerate(self.states) if s.cost <= budget)
            state = self.states[i]
            if i and state.cost < budget * LANDING and state.target != budget:
                if budget not in self.branches:
                    within = [b for b in self._iterate(budget, self.beams[i - 1])
                              if b.cost <= budget]
                    self.branches[budget] = within[0] if within else state
                state = self.branches[budget]
        finally:
            self.model.load_state_dict(saved)
            self.model.train(was_training)
        self.chosen_loss = state.loss  # the held-out loss after its short fine-tuning
        self.chosen_path = _lineage(state)
        out = {}
        for name, cs in self.candidates.items():
            if name in state.kept:
                out[name] = self.index[name][state.kept[name]]
            else:
                out[name] = max(range(len(cs)), key=lambda k: cs[k].cost)
        return out


def _lineage(state: _State) -> list[dict]:
    """The states from the dense model to ``state`` (cost, held-out loss, kept rows x columns
    per layer), for the report."""
    path = []
    while state is not None:
        path.append({"cost": state.cost, "loss": state.loss,
                     "kept": {n: list(rc) for n, rc in state.kept.items()}})
        state = state.parent
    return path[::-1]


def greedy_markdown(summary: Mapping) -> str:
    """The report section of a greedy allocation (``experiments.allocation.allocation_stage``'s
    summary): how it was chosen, the chosen rows x columns per layer and the path to them."""
    g, layers, path = summary.get("greedy", {}), summary["layers"], summary.get("path", [])
    ratio = f" (a {summary['ratio']:.4g}x compression ratio)" if "ratio" in summary else ""
    lines = [
        "## Budgeted allocation", "",
        f"Per-layer kept rows x columns chosen by the retraining-aware greedy search "
        f"(NetAdapt-style, memxbar/experiments/greedy.py) with total {summary['resource']} <= "
        f"{summary['budget']:.6g}{ratio} (least achievable {summary['min_cost']:.6g}): each "
        f"iteration cuts to no less than {g.get('greedy_step', math.nan):g} of the last cost; "
        f"every layer's smallest step is fine-tuned for {g.get('finetune_steps', '?')} masked "
        f"steps and scored by its cross-entropy on {g.get('n_samples', '?')} held-out training "
        f"images; the {g.get('beam', 1)} of least loss carry on (a beam search). The "
        f"compressor then starts from the dense model with this split.", "",
        f"| layer | setting | {summary['resource']} |", "|---|---|---:|"]
    for n, r in layers.items():
        setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "unpruned"
        lines.append(f"| {n} | {setting} | {r['cost']:.6g} |")
    lines += [f"| **total** | budget {summary['budget']:.6g} | {summary['total_cost']:.6g} |", ""]
    if path:
        lines += ["The path to it (each state after its short fine-tuning):", "",
                  "| step | cost | held-out loss | kept rows x columns |", "|---:|---:|---:|---|"]
        lines += [f"| {k} | {st['cost']:.6g} | "
                  + ("dense" if math.isnan(st["loss"]) else f"{st['loss']:.4f}") + " | "
                  + "; ".join(f"{n} {r}x{c}" for n, (r, c) in st["kept"].items()) + " |"
                  for k, st in enumerate(path)]
        lines.append("")
    return "\n".join(lines)


def _cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state on the CPU (the trajectory keeps one per iteration)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _prunable(candidates: Sequence[Candidate]) -> bool:
    return all(c.kept is not None for c in candidates) and len(candidates) > 1
