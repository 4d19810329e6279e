"""The ``adaptive_levels`` compressor: the level count of every layer chosen from its posterior
uncertainty and the cost of programming it (Yang, Bamler, Mandt, ICML 2020;
``admm.adaptive_levels``, docs/adaptive_levels.md).

1. prune and retrain: the ``admm`` pipeline's prune stage onto the ``admm`` group's constraints
   and ``admm.prune_retrain_epochs`` of masked retraining, no quantization
   (``compressors.pruned``; the first half of ``compressor=admm`` / ``magnitude``, so the masks
   and tiles are theirs at the same constraints);
2. the Laplace precision ``N * F + prior_precision`` from the empirical Fisher on ``n_calib``
   seeded training images, and for every constrained layer and candidate level count ``n`` the
   log density of the precision-weighted projection onto ``n`` levels and the expected
   write-verify pulses of its cells (:func:`expected_pulses`);
3. the level counts maximising ``log density - cost_weight * pulses`` (and the same choice at
   every ``front`` lambda, with the test accuracy of the model quantized that way, no
   retraining: the cost-accuracy front of one training);
4. the chosen levels through the ``admm`` pipeline's hard quantization (precision-weighted, the
   same projection as step 2) and ``admm.quant_epochs + admm.quant_retrain_epochs`` epochs
   retraining the unquantized parameters, resumable from ``levels_state.pt``.

The estimate of the programming time of the chosen levels against every layer on the device's
full grid (the saving) is in the history and the report.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re

import torch
from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import CompressResult, LayerConstraint, compress, select_layers, weight_matrix
from memxbar.admm.adaptive_levels import laplace_precision, level_front, level_score
from memxbar.admm.distill import frozen_copy
from memxbar.admm.importance import fisher_diagonal
from memxbar.crossbar import DeviceModel, PulseCost
from memxbar.crossbar.cells import WriteVerify
from memxbar.experiments.compressors.base import CompressInputs, stored_or_run
from memxbar.experiments.compressors.pruned import prune_config, prune_stage
from memxbar.experiments.data import labelled_subset
from memxbar.experiments.train import evaluate

__all__ = ["adaptive_levels_stage", "candidate_levels", "expected_pulses", "levels_markdown"]

_log = logging.getLogger("memxbar.experiments.compressors.adaptive_levels")


def adaptive_levels_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                          inputs: CompressInputs) -> CompressResult:
    """The ``adaptive_levels`` compressor (``inputs.settings``: its block; the schedule from
    ``inputs.admm``); saves ``compressed.pt``
    (:func:`~experiments.compressors.base.stored_or_run`)."""
    return stored_or_run(model, inputs, lambda: _compress(model, loaders, inputs),
                         "adaptive_levels")


def candidate_levels(candidates: list[int] | None, device: DeviceModel) -> list[int]:
    """``candidates``, or (null) every count ``n >= 2`` whose uniform grid is a subset of the
    device's ``n_device`` uniform levels, ``(n_device - 1) % (n - 1) == 0``."""
    if candidates is not None:
        return sorted(candidates)
    n_device = device.level_count
    return [n for n in range(2, n_device + 1) if (n_device - 1) % (n - 1) == 0]


def expected_pulses(n_levels: int, device: DeviceModel, tolerance_fraction: float) -> float:
    """Expected write-verify pulses per cell for targets on an ``n_levels`` uniform grid over
    ``[g_min, g_max]`` (mean over its levels), with the band half-width ``tol =
    tolerance_fraction * (g_max - g_min) / (n_levels - 1)`` (``crossbar.cells.WriteVerify``'s
    model, verify read noise neglected): the first pulse lands within ``tol`` with probability
    ``p1 = erf(tol / (sqrt 2 * sigma(T)))``, each corrective pulse with ``p2`` (spread
    ``pulse_sigma * sigma(T)``), so ``E = 1 + (1 - p1) * (1 - (1 - p2)^(K - 1)) / p2`` for a
    budget of ``K`` pulses (the device's ``write_verify`` or the default). 1 for an ideal
    device."""
    wv = device.write_verify or WriteVerify()
    lo, hi = device.g_min_uS, device.g_max_uS
    targets = torch.linspace(lo, hi, n_levels, dtype=torch.float64)
    tol = tolerance_fraction * (hi - lo) / (n_levels - 1)
    if device.programming is None:
        return 1.0
    sigma = device.programming.spread_uS(targets, device).double()

    def p_hit(spread: torch.Tensor) -> torch.Tensor:
        return torch.where(spread > 0, torch.erf(tol / (math.sqrt(2) * spread.clamp_min(1e-30))),
                           torch.ones_like(spread))

    p1, p2 = p_hit(sigma), p_hit(wv.pulse_sigma * sigma)
    K = wv.max_pulses
    more = torch.where(p2 > 0, (1 - (1 - p2) ** (K - 1)) / p2.clamp_min(1e-30),
                       torch.full_like(p2, K - 1))
    return float((1 + (1 - p1) * more).mean())


def _pulse_time_s(device: DeviceModel) -> float:
    """Seconds per pulse with its verify (``crossbar.PulseCost`` defaults)."""
    cost, reads = PulseCost(), (device.write_verify or WriteVerify()).verify_reads
    return (cost.pulse_time_ns + reads * cost.read_time_ns) * 1e-9


def _tables(model: nn.Module, masks: dict, precision: dict, constraints: dict,
            counts: list[int], pulses: dict[int, float]) -> tuple[dict, dict, dict]:
    """Per layer and level count: the log density, the expected pulses (two cells per live
    weight) and the quantized matrix."""
    modules = {n: m for n, m in model.named_modules() if n in constraints}
    scores, costs, quantized = {}, {}, {}
    for name, module in modules.items():
        W, mask = weight_matrix(module).detach(), masks[name]
        scores[name], costs[name], quantized[name] = {}, {}, {}
        for n in counts:
            logp, Q, _ = level_score(W, precision[name], n, constraints[name].per_column, mask)
            scores[name][n], quantized[name][n] = logp, Q
            costs[name][n] = 2 * int(mask.sum()) * pulses[n]
    return scores, costs, quantized


@torch.no_grad()
def _front_accuracy(model: nn.Module, quantized: dict, choice: dict, test: DataLoader) -> float:
    trial = copy.deepcopy(model)
    layers = dict(trial.named_modules())
    for name, n in choice.items():
        w = layers[name].weight
        w.copy_(quantized[name][n].reshape(w.shape))
    return evaluate(trial, test)


def _compress(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
              inputs: CompressInputs) -> CompressResult:
    settings, admm, (train, test) = inputs.settings, inputs.admm, loaders
    teacher = frozen_copy(model) if admm.distill_weight > 0 else None
    pruned = prune_stage(model, loaders, inputs, admm.prune_retrain_epochs)
    device = next(model.parameters()).device
    constraints = select_layers(model, list(inputs.constraints))
    calib = labelled_subset(train, settings.n_calib, device, inputs.seed)
    fisher = fisher_diagonal(model, calib, n_samples=settings.n_calib, layers=list(constraints))
    precision = {n: laplace_precision(f, len(train.dataset), settings.prior_precision)
                 for n, f in fisher.items()}
    masks = {n: m.to(device) for n, m in pruned.masks.items()}
    counts = candidate_levels(settings.candidates, inputs.device)
    pulses = {n: expected_pulses(n, inputs.device, settings.tolerance_fraction) for n in counts}
    scores, costs, quantized = _tables(model, masks, precision, constraints, counts, pulses)
    weights = sorted(set(settings.front) | {settings.cost_weight})
    front = level_front(scores, costs, weights)
    for point in front:
        point["accuracy"] = _front_accuracy(model, quantized, point["levels"], test)
        point["time_serial_s"] = point["cost"] * _pulse_time_s(inputs.device)
    chosen = next(p for p in front if p["weight"] == settings.cost_weight)
    full = {k: max(counts) for k in constraints}
    full_cost = sum(costs[k][n] for k, n in full.items())
    record = {"event": "adaptive_levels", "cost_weight": settings.cost_weight,
              "levels": chosen["levels"], "pulses": chosen["cost"], "full_levels": max(counts),
              "full_pulses": full_cost, "saving_pct": 100 * (1 - chosen["cost"] / full_cost),
              "pulse_time_s": _pulse_time_s(inputs.device), "pulses_per_cell": pulses,
              "scores": scores, "costs": costs, "front": front}
    _log.info("levels per layer %s: %.4g expected write-verify pulses, %.1f %% fewer than every "
              "layer on %d levels", chosen["levels"], chosen["cost"], record["saving_pct"],
              max(counts))
    result = _quantize(model, loaders, inputs, chosen["levels"], constraints, precision,
                       teacher)
    history = [*pruned.history, record] + [
        h for h in result.history if h.get("stage") in ("quant", "quant_retrain")]
    return dataclasses.replace(result, history=history)


def _quantize(model: nn.Module, loaders: tuple[DataLoader, DataLoader], inputs: CompressInputs,
              levels: dict[str, int], constraints: dict, precision: dict,
              teacher: nn.Module | None) -> CompressResult:
    """The chosen levels through the ``admm`` pipeline: hard precision-weighted quantization,
    then ``admm.quant_epochs + admm.quant_retrain_epochs`` epochs of retraining the rest."""
    admm = inputs.admm
    layer_constraints = [LayerConstraint(pattern="re:" + re.escape(name), levels=n,
                                         per_column=constraints[name].per_column)
                         for name, n in levels.items()]
    config = dataclasses.replace(
        prune_config(inputs, 0), constraints=layer_constraints, prune_epochs=0,
        quant_epochs=0, quant_retrain_epochs=admm.quant_epochs + admm.quant_retrain_epochs,
        importance={n: p.float() for n, p in precision.items()})
    return compress(model, loaders[0], config, eval_fn=lambda m: evaluate(m, loaders[1]),
                    checkpoint=inputs.run_dir / "levels_state.pt",
                    fingerprint=inputs.fingerprint, teacher=teacher)


def levels_markdown(history: list[dict]) -> list[str]:
    """report.md's section on the chosen levels and the programming time they save, with the
    cost-accuracy front (empty without an ``adaptive_levels`` record)."""
    rec = next((h for h in history if h.get("event") == "adaptive_levels"), None)
    if rec is None:
        return []
    t = rec["pulse_time_s"]
    lines = ["", "## Adaptive levels (compressor=adaptive_levels)", "",
             f"- levels per layer: {rec['levels']} (cost_weight {rec['cost_weight']:g} nats "
             "per pulse)",
             f"- expected write-verify programming: {rec['pulses']:.4g} pulses, "
             f"{rec['pulses'] * t:.3g} s one cell at a time, against {rec['full_pulses']:.4g} "
             f"pulses ({rec['full_pulses'] * t:.3g} s) with every layer on "
             f"{rec['full_levels']} levels: **{rec['saving_pct']:.1f} % less programming "
             "time** (docs/adaptive_levels.md)", "",
             "| lambda | levels | log density | pulses | time (s) | accuracy, no retraining |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {p['weight']:g} | {', '.join(str(v) for v in p['levels'].values())} | "
              f"{p['log_density']:.4g} | {p['cost']:.4g} | {p['time_serial_s']:.3g} | "
              f"{p['accuracy']:.2f} |" for p in rec["front"]]
    return lines
