"""Budgeted per-layer allocation of the compression settings (the optional ``allocation`` block).

Before compression, every layer selected by the ``admm`` group's constraints is offered each
setting of ``allocation.candidates`` (pruning ratios/counts and/or ``levels``; a candidate
replaces the pruning fields and, when it gives them, the levels of the layer's constraint).
For layer ``l`` and candidate ``k`` of the pretrained model:

* distortion ``e_lk`` of compressing the layer to the candidate's structure and levels, the
  other layers dense. With ``allocation.importance: output`` (the default) it is measured: the
  layer is pruned and quantized with Optimal Brain Surgeon compensation of its kept weights on
  its inputs from ``n_samples`` seeded training images (``admm.obc.ObcLayer``: the in-layer
  least-squares repair that retraining approximates), and
  ``e = sum_x ||f(x) - f_P(x)||^2 / sum_x ||f(x)||^2`` is the relative change of the model's
  outputs (the output distortion of rate-distortion compression, Gao et al., ICML 2019, who
  find such distortions close to additive over layers). Measured on the dense MNIST LeNet-5,
  a plain projection's output change saturates for most candidates at a 30x budget, and
  weight-space estimates miss bottlenecks (on digits the Fisher allocation kept 4 of 84
  outputs of ``classifier.2`` at 7.7x: software accuracy 78 % against 95 % at 6.4x;
  BENCHMARKS.md). With ``fisher`` / ``hessian`` it is the estimate
  ``e = 1/2 sum_i imp_i (w_i - P(w)_i)^2`` of the loss increase with ``imp`` the diagonal
  Fisher or Hessian and ``P`` importance-weighted; with ``null`` the plain ``||w - P(w)||^2``
  (not comparable across layers of different sensitivity);
* cost ``c_lk``: ``crossbar.plan.plan_layer`` on the projection's mask, then
  ``crossbar.cost.layer_cost`` with the run's ``crossbar`` and ``cost`` groups: tiles,
  area (mm^2) or energy per inference (nJ); or, for a compression-ratio budget ``R``, the
  weights on live rows x columns, with the budget ``sum_l dense_l / R``; layer costs add up to
  the model's total.

``candidates: auto`` offers every layer each pair of kept-row and kept-column fractions of
``experiments.compressors.settings.AUTO_KEEP`` (as counts of that layer), so the user states
only the budget.

Layers are linked where one feeds the next directly (:func:`feeding_links`: activations,
pooling, flatten between them; found by a probe): the next layer keeps at most ``s`` rows per
kept output of the previous (``s``: the rows one output channel spans, ``kh*kw`` or the
positions of a flattened map) and the previous keeps at most as many outputs as the next keeps
rows, so the budget is not spent on rows that read a pruned output or outputs nobody reads.
Without the links the MILP kept 42 rows of a layer fed by 4 kept outputs (MNIST, 30x). Links
apply to ``candidates: auto``; a user's own candidate list need not offer matching counts.

Layers without a constraint stay dense and count with their fixed cost. ``admm.allocate``
(cvxpy MILP, HiGHS) picks one candidate per layer minimising ``sum e`` with ``sum c <= budget``;
the chosen settings become per-layer constraints (``pattern: re:<layer name>``) for whichever
compressor runs. :func:`check_budget` rejects a budget below the least achievable cost before
any training.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import (
    Allocation,
    Candidate,
    LayerConstraint,
    Link,
    allocate,
    compute_importance,
    crossbar_layers,
    min_cost,
    pair_levels,
    select_layers,
    weight_matrix,
    weighted_project_levels,
)
from memxbar.admm.obc import ObcLayer, layer_inputs
from memxbar.crossbar import CrossbarConfig
from memxbar.crossbar.cost import CostConfig, layer_cost, load_table
from memxbar.crossbar.plan import measure_mvms, plan_layer
from memxbar.experiments.compressors.settings import (  # noqa: F401 (AllocationSettings re-exported)
    AUTO_KEEP,
    MEASURED,
    PRUNE_KEYS,
    RESOURCES,
    SETTING_KEYS,
    AllocationSettings,
    plain_setting,
)
from memxbar.experiments.data import labelled_subset
from memxbar.experiments.greedy import GreedyTrajectory, greedy_markdown

__all__ = ["RESOURCES", "AllocationSettings", "allocation_markdown", "allocation_stage",
           "auto_candidates", "budget_range", "check_budget", "layer_candidates",
           "layer_importance", "milp_budget", "OutputDistortion"]

_log = logging.getLogger("memxbar.experiments.allocation")


def layer_constraint(base: LayerConstraint, name: str, setting: dict) -> LayerConstraint:
    """``base`` for layer ``name`` only, with its pruning fields replaced by ``setting``'s (and
    its levels, when ``setting`` gives them)."""
    changes = {k: None for k in PRUNE_KEYS} | plain_setting(setting)
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


class OutputDistortion:
    """The measured distortion of compressing one layer, the others dense (module docstring):
    the layer's weight is projected onto the candidate's structure and levels with Optimal
    Brain Surgeon compensation of the kept weights (``admm.obc.ObcLayer`` on the layer's
    inputs from ``x``: the least-squares repair retraining approximates); where the candidate
    prunes outputs and ``successors`` names the layer they feed, that layer is refit by least
    squares to its dense outputs from the inputs it now gets (``W' = W X X'^T (X' X'^T)^-1``,
    the reconstruction of channel pruning, He et al., ICCV 2017), as retraining would let it
    compensate; then (``measure="output"``) ``e = sum_x ||f(x) - f_P(x)||^2 / sum_x ||f(x)||^2``,
    the relative change of the model's outputs on ``x`` (in batches of ``batch``), or
    (``measure="kl"``) the mean Kullback-Leibler divergence of the compressed model's class
    distribution from the dense one's, ``e = mean_x KL(softmax f(x) || softmax f_P(x))``: the
    change of the predictions, blind to what the softmax ignores (a shift common to all
    logits)."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, x: torch.Tensor, batch: int = 512,
                 percdamp: float = 0.01, successors: Mapping[str, str] | None = None,
                 measure: str = "output") -> None:
        self.model, self.batches, self.percdamp = model, x.split(batch), percdamp
        self.measure = measure
        self.reference = [model(b) for b in self.batches]
        self.energy = sum(float(r.double().pow(2).sum()) for r in self.reference) \
            if measure == "output" else float(len(x))
        modules = dict(model.named_modules())
        self.successors = {id(modules[a]): modules[b] for a, b in (successors or {}).items()}
        self._obc: dict[int, ObcLayer] = {}
        self._dense_inputs: dict[int, list[torch.Tensor]] = {}

    def _inputs(self, module: nn.Module) -> list[torch.Tensor]:
        """``module``'s input for every batch in the current model."""
        got: list[torch.Tensor] = []
        hook = module.register_forward_pre_hook(lambda _m, a: got.append(a[0].detach()))
        try:
            for b in self.batches:
                self.model(b)
        finally:
            hook.remove()
        return got

    def _layer(self, module: nn.Module) -> ObcLayer:
        """The layer's OBC state with its input Hessian from the dense model on ``x``."""
        if id(module) not in self._obc:
            layer = ObcLayer(module)
            for inp in self._inputs(module):
                layer.add_batch(inp)
            self._obc[id(module)] = layer
        return self._obc[id(module)]

    def _refit(self, successor: nn.Module) -> None:
        """Least-squares refit of ``successor`` to its dense outputs from its current inputs."""
        if id(successor) not in self._dense_inputs:  # taken before the layer is compressed
            raise RuntimeError("OutputDistortion: dense successor inputs missing")
        A = B = None
        for now, dense in zip(self._inputs(successor), self._dense_inputs[id(successor)],
                              strict=True):
            Xn, Xd = layer_inputs(successor, now).double(), layer_inputs(successor, dense).double()
            A = Xn @ Xn.T if A is None else A + Xn @ Xn.T
            B = Xn @ Xd.T if B is None else B + Xn @ Xd.T
        dead = torch.diagonal(A) == 0  # inputs of pruned outputs: no signal, weight 0
        A[dead, dead] = 1.0
        A += self.percdamp * torch.diagonal(A).mean() * torch.eye(len(A), dtype=A.dtype,
                                                                   device=A.device)
        W = weight_matrix(successor).detach().double()
        refit = torch.linalg.solve(A, B @ W.T).T  # W X X'^T (X' X'^T)^-1, A symmetric
        successor.weight.data = refit.reshape(successor.weight.shape).to(successor.weight.dtype)

    @torch.no_grad()
    def __call__(self, module: nn.Module, constraint: LayerConstraint) -> float:
        successor = self.successors.get(id(module)) if constraint.prunes_outputs else None
        if successor is not None and id(successor) not in self._dense_inputs:
            self._dense_inputs[id(successor)] = self._inputs(successor)
        saved = module.weight.data.clone()
        kept = None if successor is None else successor.weight.data.clone()
        try:
            self._layer(module).compress(constraint, self.percdamp)
            if successor is not None:
                self._refit(successor)
            total = sum(self._change(self.model(b), ref)
                        for b, ref in zip(self.batches, self.reference, strict=True))
        finally:
            module.weight.data = saved
            if successor is not None:
                successor.weight.data = kept
        return total / max(self.energy, 1e-30)

    def _change(self, out: torch.Tensor, ref: torch.Tensor) -> float:
        if self.measure == "output":
            return float((out - ref).double().pow(2).sum())
        p = torch.log_softmax(ref.double().flatten(1), dim=1)
        q = torch.log_softmax(out.double().flatten(1), dim=1)
        return float((p.exp() * (p - q)).sum())


def _cost(name: str, module: nn.Module, mask: torch.Tensor, xbar: CrossbarConfig,
          cost: CostConfig, resource: str, mvms: dict[str, int], table) -> float:
    kind = "conv2d" if isinstance(module, (nn.Conv1d, nn.Conv2d)) else "linear"
    kernel = math.prod(module.kernel_size) if kind == "conv2d" else 1
    plan = plan_layer(name, kind, mask, xbar, kernel, mvms.get(name),
                      groups=getattr(module, "groups", 1))  # a group's own tiles
    if resource == "compression":
        return float(plan.mapped_weights)
    lc = layer_cost(plan, xbar, cost, table)
    return {"tiles": float(lc.tiles), "area_mm2": lc.total_area_um2 * 1e-6,
            "energy_nJ": lc.total_energy_pJ * 1e-3}[resource]


def auto_candidates(shape: tuple[int, int], final: bool) -> list[dict]:
    """``candidates: auto`` for a layer of matrix view ``shape = (out, in)``: every pair of
    kept-row and kept-column counts from the :data:`AUTO_KEEP` fractions (at least one;
    a full count is left unset); the ``final`` layer keeps all its outputs."""
    out_n, in_n = shape

    def counts(n: int) -> list[int]:
        return sorted({max(1, round(f * n)) for f in AUTO_KEEP}, reverse=True)

    cols = [out_n] if final else counts(out_n)
    return [{k: v for k, v, n in (("row_keep", r, in_n), ("col_keep", c, out_n)) if v < n}
            for r in counts(in_n) for c in cols]


@torch.no_grad()
def layer_candidates(model: nn.Module, settings: AllocationSettings,
                     constraints: Sequence[LayerConstraint], xbar: CrossbarConfig,
                     cost: CostConfig, example: torch.Tensor,
                     importance: dict[str, torch.Tensor] | None = None,
                     outputs: OutputDistortion | None = None, errors: bool = True,
                     ) -> dict[str, list[Candidate]]:
    """``{layer: [Candidate(error, cost, setting), ...]}`` for every Linear/Conv2d of
    ``model``: one per ``allocation.candidates`` entry (or :func:`auto_candidates`) for
    constrained layers, one fixed dense candidate (``setting = {"fixed": "dense"}``) for the
    others. ``constraints``: the admm group's; costs of ``settings.resource`` on ``xbar``
    priced by ``cost``; errors measured by ``outputs`` where given, else from ``importance``
    (module docstring); ``errors=False``: costs only (errors 0, masks by plain magnitude)."""
    chosen = select_layers(model, constraints)
    mvms = measure_mvms(model, example)
    table = load_table(cost.table)
    price = functools.partial(_cost, xbar=xbar, cost=cost, resource=settings.resource,
                              mvms=mvms, table=table)
    out: dict[str, list[Candidate]] = {}
    layers = crossbar_layers(model)
    final = next(reversed(layers))
    for name, module in layers.items():
        W = weight_matrix(module).detach()
        if name not in chosen:
            out[name] = [Candidate(0.0, price(name, module, torch.ones_like(W, dtype=torch.bool)),
                                   {"fixed": "dense"}, kept=(W.shape[1], W.shape[0]))]
            continue
        imp = None if importance is None else importance[name].reshape(W.shape).to(W.device)
        out[name] = []
        offered = settings.candidates if settings.candidates != "auto" else auto_candidates(
            tuple(W.shape), final=name == final and not chosen[name].prune_outputs)
        for setting in offered:
            if name not in select_layers(model, [LayerConstraint(setting.get("pattern", "*"))]):
                continue
            c = layer_constraint(chosen[name], name, setting)
            if name == final and c.prunes_outputs and not c.prune_outputs:
                continue  # the model's outputs (classes) are not pruned unless asked
            if outputs is not None or not errors:  # the mask only fixes the kept counts
                mask = c.prune_mask(W)
                error = outputs(module, c) if outputs is not None else 0.0
            else:
                error, mask = _distortion(W, c, imp)
            out[name].append(Candidate(error, price(name, module, mask), dict(setting),
                                       kept=(int(mask.any(0).sum()), int(mask.any(1).sum()))))
        if not out[name]:
            raise ValueError(f"allocation.candidates: no candidate's pattern matches layer "
                             f"{name!r}, which the admm group constrains")
    return out


@torch.no_grad()
@torch.no_grad()
def feeding_links(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[str, int]]:
    """``{layer: (previous layer, rows per output)}`` where each output (channel) of the
    previous layer feeds its own block of ``rows per output`` input rows of the layer and
    nothing else: a plain chain (activations with f(0) = 0, pooling, flatten), no BatchNorm
    shift and no residual add between them. Found by a probe on ``example``: zeroing the
    previous layer's most active output channel ``j`` (largest positive output, so that it
    reaches the next layer through a ReLU) zeroes exactly the layer's input rows of that
    channel (its ``kh*kw`` rows of a convolution, its ``in / out`` features of a Linear after
    a flatten) and changes no other input of it."""
    layers = crossbar_layers(model)
    seen: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda _m, args: seen.__setitem__(name, args[0].detach().clone())

    def activity(name: str):
        def hook(_m, _a, out):
            dims = [d for d in range(out.dim()) if d != (1 if out.dim() > 2 else out.dim() - 1)]
            outputs[name] = out.detach().clamp_min(0).sum(dims)
        return hook

    was_training = model.training
    model.eval()
    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in layers.items()]
    probes = [m.register_forward_hook(activity(n)) for n, m in layers.items()]
    try:
        model(example)
        for h in probes:
            h.remove()
        base = dict(seen)
        links: dict[str, tuple[str, int]] = {}
        for prev_name, prev in layers.items():
            width = weight_matrix(prev).shape[0]
            if width < 2 or prev_name not in outputs:
                continue
            j = int(outputs[prev_name].argmax())
            zero = prev.register_forward_hook(
                lambda _m, _a, out, j=j: out.index_fill(1 if out.dim() > 2 else -1,
                                                        torch.tensor([j], device=out.device),
                                                        0.0))
            try:
                seen.clear()
                model(example)
            finally:
                zero.remove()
            for name, module in layers.items():
                rows = _rows_per_output(module, width)
                if name == prev_name or rows is None or name not in seen:
                    continue
                before, after = base[name], seen[name]
                if isinstance(module, nn.Linear):
                    before, after = before.flatten(0, -2), after.flatten(0, -2)
                    span = slice(j * rows, (j + 1) * rows)
                else:
                    span = slice(j, j + 1)
                rest = torch.ones(before.shape[1], dtype=torch.bool, device=before.device)
                rest[span] = False
                if bool((after[:, span] == 0).all()) and bool((before[:, span] != 0).any()) \
                        and torch.equal(after[:, rest], before[:, rest]):
                    links[name] = (prev_name, rows)
    finally:
        for h in hooks + probes:
            h.remove()
        model.train(was_training)
    return links


def _rows_per_output(module: nn.Module, width: int) -> int | None:
    """Input rows of ``module`` one input channel spans, if its inputs are ``width``
    channels (``None`` otherwise)."""
    if isinstance(module, nn.Linear):
        n = module.in_features
        return n // width if n % width == 0 else None
    if getattr(module, "groups", 1) != 1 or module.in_channels != width:
        return None
    return math.prod(module.kernel_size)


def layer_links(candidates: dict[str, list[Candidate]], links: dict[str, tuple[str, int]],
                constrained: Sequence[str]) -> list[Link]:
    """Two :class:`admm.Link` for every fed pair of constrained layers (``s`` rows per output):
    the layer keeps at most ``s`` input rows per kept output of the layer feeding it (no row
    reads a pruned output), and that layer keeps at most as many outputs as the layer keeps
    rows (no kept output feeds only pruned rows): ``c_prev <= r <= s c_prev``."""
    out = []
    for name, (prev, rows) in links.items():
        if name not in constrained or prev not in constrained:
            continue
        kept_rows = [float(c.kept[0]) for c in candidates[name]]
        kept_outputs = [float(c.kept[1]) for c in candidates[prev]]
        out += [Link(name, kept_rows, prev, [rows * k for k in kept_outputs]),
                Link(prev, kept_outputs, name, kept_rows)]
    return out


def milp_budget(candidates: dict[str, list[Candidate]], a: AllocationSettings,
                budget: float) -> float:
    """The knapsack's budget in cost units: ``budget`` itself, or for a compression ratio the
    weights it leaves, ``sum_l dense_l / ratio`` (a layer's dense cost is its largest)."""
    if a.resource != "compression":
        return budget
    return sum(max(c.cost for c in cs) for cs in candidates.values()) / budget


def budget_range(candidates: dict[str, list[Candidate]], a: AllocationSettings,
                 ) -> tuple[float, float]:
    """``(loose, tight)``: the budgets of no compression (every layer's costliest candidate)
    and of the cheapest choice, in ``a.resource`` units (a ratio for ``compression``)."""
    most = sum(max(c.cost for c in cs) for cs in candidates.values())
    least = min_cost(candidates)
    if a.resource == "compression":
        return most / most, most / least
    return most, least


def _require_feasible(candidates: dict[str, list[Candidate]], a: AllocationSettings,
                      when: str) -> None:
    if a.budget is None:  # an accuracy budget searches inside the feasible range
        return
    tight = budget_range(candidates, a)[1]
    if a.tighter * (a.budget - tight) > 1e-9 * abs(tight):
        what = "the largest achievable compression ratio" if a.resource == "compression" \
            else f"the least achievable total {a.resource}"
        raise ValueError(f"allocation.budget={a.budget!r} is infeasible: {what} with these "
                         f"candidates is {tight:.6g} ({when}; cheapest candidate of every "
                         "layer); loosen the budget or add cheaper candidates")


def check_budget(model: nn.Module, settings: AllocationSettings | None,
                 constraints: Sequence[LayerConstraint], xbar: CrossbarConfig,
                 cost: CostConfig, example: torch.Tensor) -> None:
    """Fail before any training when no choice of candidates fits ``allocation.budget``
    (costs from the masks of the model's current weights; a no-op without allocation)."""
    if settings is not None and settings.budget is not None:
        _require_feasible(layer_candidates(model, settings, constraints, xbar, cost, example,
                                           errors=False), settings, "before pretraining")


_CANDIDATES: dict[str, dict[str, list[Candidate]]] = {}
"""The last measured candidate table (the budget search solves one table at many budgets)."""


def _memo_key(model: nn.Module, a: AllocationSettings, constraints: Sequence[LayerConstraint],
              xbar: CrossbarConfig, cost: CostConfig, seed: int) -> str:
    """What the candidate table depends on: the weights and every setting but the budget."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr((a.fixed(1.0), tuple(constraints), xbar, cost, seed)).encode())
    return digest.hexdigest()


def _measure_candidates(model: nn.Module, train: DataLoader, a: AllocationSettings,
                        constraints: Sequence[LayerConstraint], xbar: CrossbarConfig,
                        cost: CostConfig, example: torch.Tensor, seed: int,
                        links: Mapping[str, tuple[str, int]], lr: float = 1e-3,
                        ) -> dict[str, list[Candidate]] | GreedyTrajectory:
    """:func:`layer_candidates` with ``a.importance``'s distortion on ``a.n_samples`` seeded
    training images (``links``: :func:`feeding_links`, whose fed layers are refit); for
    ``a.chosen_method == "greedy"`` the costs only, in a :class:`GreedyTrajectory` (fine-tuned with
    Adam at ``lr``, the admm group's rate)."""
    if a.chosen_method == "greedy":
        costs = layer_candidates(model, a, constraints, xbar, cost, example, errors=False)
        return GreedyTrajectory(model, train, costs, links, seed=seed, n_samples=a.n_samples,
                                steps=a.finetune_steps, step=a.greedy_step, lr=lr,
                                beam=a.greedy_beam)
    if a.importance not in MEASURED:
        return layer_candidates(model, a, constraints, xbar, cost, example,
                                layer_importance(model, train, a, seed))
    device = next(model.parameters()).device
    x = torch.cat([b[0] for b in labelled_subset(train, a.n_samples, device, seed)])
    modules = dict(model.named_modules())
    successors = {prev: name for name, (prev, _) in links.items()
                  if isinstance(modules[name], (nn.Linear, nn.Conv2d))}  # OBC's input views
    was_training = model.training
    model.eval()
    try:
        return layer_candidates(model, a, constraints, xbar, cost, example,
                                outputs=OutputDistortion(model, x, successors=successors,
                                                         measure=a.importance))
    finally:
        model.train(was_training)


def allocation_stage(model: nn.Module, train: DataLoader, a: AllocationSettings | None,
                     constraints: Sequence[LayerConstraint], xbar: CrossbarConfig,
                     cost: CostConfig, example: torch.Tensor, seed: int, lr: float = 1e-3,
                     ) -> tuple[list[dict] | None, dict | None]:
    """Solve the allocation on the pretrained ``model``; returns the chosen per-layer
    constraints (``admm.LayerConstraint`` fields, for the ``admm`` group; ``None`` without
    allocation) and the solver's choice (``admm.Allocation.summary()`` plus the
    ``importance`` used and, for a compression ratio, the ``ratio`` asked for)."""
    if a is None:
        return None, None
    if a.budget is None:
        raise ValueError("allocation_stage: an accuracy budget (max_drop) is searched by "
                         "experiments.search, which runs this stage once per resource budget")
    feeding = feeding_links(model, example)
    key = _memo_key(model, a, constraints, xbar, cost, seed)
    if key not in _CANDIDATES:  # the budget search asks again at every point
        _CANDIDATES.clear()
        _CANDIDATES[key] = _measure_candidates(model, train, a, constraints, xbar, cost,
                                               example, seed, feeding, lr)
    else:
        _log.info("allocation: candidates' %s reused (same dense model and settings)",
                  "greedy trajectory" if a.chosen_method == "greedy" else "distortions and costs")
    candidates = _CANDIDATES[key]
    chosen = select_layers(model, constraints)
    # fed layers are linked where the pipeline builds the candidates (a user's own list need
    # not offer matching row and output counts)
    links = feeding if a.candidates == "auto" else {}
    if a.chosen_method == "greedy":
        trajectory, candidates = candidates, candidates.candidates
        _require_feasible(candidates, a, "pretrained weights")
        choice = trajectory.choice(milp_budget(candidates, a, a.budget))
        picked = {n: candidates[n][k] for n, k in choice.items()}
        result = Allocation(choice=choice, chosen=picked,
                            total_error=trajectory.chosen_loss,
                            total_cost=sum(c.cost for c in picked.values()),
                            budget=milp_budget(candidates, a, a.budget),
                            min_cost=min_cost(candidates),
                            resource="weights" if a.resource == "compression" else a.resource)
    else:
        _require_feasible(candidates, a, "pretrained weights")
        result = allocate(candidates, milp_budget(candidates, a, a.budget),
                          resource="weights" if a.resource == "compression" else a.resource,
                          links=layer_links(candidates, links, list(chosen)))
    chosen_constraints = [dataclasses.asdict(layer_constraint(chosen[n], n,
                                                              result.chosen[n].setting))
                          for n in candidates if n in chosen]
    summary = {**result.summary(), "importance": a.importance, "method": a.chosen_method,
               "links": {n: {"fed_by": p, "rows_per_output": r} for n, (p, r) in links.items()
                         if n in chosen and p in chosen}}
    if a.resource == "compression":
        summary["ratio"] = a.budget
    if a.chosen_method == "greedy":
        summary["greedy"] = {"beam": a.greedy_beam, "finetune_steps": a.finetune_steps,
                             "greedy_step": a.greedy_step,
                             "n_samples": len(trajectory.held_index)}  # at most a quarter
        summary["path"] = trajectory.chosen_path
    _log.info("allocation (%s %g): %s", a.resource, a.budget, "; ".join(
        f"{n} {', '.join(f'{k}={v}' for k, v in c.setting.items()) or 'unpruned'}"
        for n, c in result.chosen.items()))
    return chosen_constraints, summary


def layer_importance(model: nn.Module, train: DataLoader, a: AllocationSettings, seed: int
                     ) -> dict[str, torch.Tensor] | None:
    """``a.importance`` of every weight (``admm.compute_importance`` on ``a.n_samples`` seeded
    training images), or ``None`` without (or for the measured ``output`` distortion)."""
    if a.importance is None or a.importance in MEASURED:
        return None
    device = next(model.parameters()).device
    data = labelled_subset(train, a.n_samples, device, seed)
    return compute_importance(model, data, a.importance, n_samples=a.n_samples)


def allocation_markdown(summary: dict) -> str:
    """The report section of :func:`allocation_stage`'s summary: the solver's choice per
    layer (setting, error, cost) and the total against the budget."""
    if summary.get("method") == "greedy":
        return greedy_markdown(summary)
    layers = summary["layers"]
    result = Allocation(
        choice={n: r["choice"] for n, r in layers.items()},
        chosen={n: Candidate(r["error"], r["cost"], r["setting"]) for n, r in layers.items()},
        total_error=summary["total_error"], total_cost=summary["total_cost"],
        budget=summary["budget"], min_cost=summary["min_cost"], resource=summary["resource"])
    imp = summary["importance"]
    links = {n: r["fed_by"] for n, r in summary.get("links", {}).items()}
    kind = {"output": "relative change of the model's outputs with the layer compressed and "
                      "OBS-repaired, measured",
            "kl": "KL divergence of the model's predictions with the layer compressed and "
                  "OBS-repaired, measured",
            None: "||w - P(w)||^2"}.get(imp, f"1/2 sum imp (w - P(w))^2, {imp} importance")
    ratio = f" (a {summary['ratio']:.4g}x compression ratio)" if "ratio" in summary else ""
    return "\n".join([
        "## Budgeted allocation", "",
        f"Per-layer settings chosen by the MILP (admm.allocate, HiGHS) to minimise the total "
        f"distortion ({kind}) with total {result.resource} <= {result.budget:.6g}{ratio} "
        f"(least achievable {result.min_cost:.6g})"
        + (f", fed layers linked ({', '.join(f'{p} -> {n}' for n, p in links.items())}: kept "
           "rows at most what the kept outputs feed)" if links else "")
        + ". Errors and costs are estimated on the dense model; the mapping plan below is the "
        "compressed model's.",
        "", result.to_markdown(), ""])
