"""Selective write-verify: verify only the weights whose programming error matters most
(issue 24).

Write-verify costs pulses and reads on every cell; most weights do not need it. SWIM (Yan et
al., "SWIM: Selective Write-Verify for Computing-in-Memory Neural Accelerators", DAC 2022)
ranks weights by the second-order loss increase their programming error causes and verifies
the top fraction. Here, for weight ``i`` with single-shot programming error ``delta_i``
(zero mean, variance ``v_i``), the expected loss increase to second order is
``1/2 H_ii v_i``; ``H_ii`` is estimated by the empirical Fisher information
``F_ii = mean_n (dL_n / dw_i)^2`` over ``n`` training images (per-image gradients of the
cross-entropy at the trained weights; Fisher = Hessian of the expected negative
log-likelihood at a well-fit model), and ``v_i`` is the device's programming variance of the
weight's cells in weight units,

    v_i = sum over the weight's slices s and cells c of (sigma_G(G_target) * f_s / norm)^2

with ``sigma_G`` the programming model's spread (``spread_uS``), ``f_s`` the slice's factor and
``norm`` the conductance span of one weight unit (the mapping style's ``norm_uS``). The
``fraction`` of the live weights with the largest ``F_ii v_i`` are verified, over the whole
chip (one budget for all layers). ``ranking="random"`` draws the same number at random (the
ablation: what the ranking adds over verifying as many cells blindly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from memxbar.crossbar import CrossbarConfig, DeviceModel, MappingPlan, to_crossbar
from memxbar.crossbar.convert import crossbar_modules
from memxbar.experiments.data import labelled_subset
from memxbar.experiments.settings import VERIFY_RANKINGS as RANKINGS

__all__ = ["RANKINGS", "fisher_diagonal", "programming_variance", "verify_masks"]


def fisher_diagonal(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                    names: list[str]) -> dict[str, torch.Tensor]:
    """The empirical Fisher diagonal of each named layer's weight (matrix view ``[out, in]``):
    the mean over the images of ``batches`` of the squared per-image gradient of the
    cross-entropy."""
    modules = dict(model.named_modules())
    weights = {n: modules[n].weight for n in names}
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    was_training = model.training
    model.eval()
    count = 0
    for x, y in batches:
        for k in range(len(x)):
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[k:k + 1]), y[k:k + 1])
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for n, g in zip(weights, grads, strict=True):
                if g is not None:
                    total[n] += g.detach().square()
            count += 1
    model.train(was_training)
    return {n: (t / max(count, 1)).reshape(t.shape[0], -1) for n, t in total.items()}


def programming_variance(xmodel: nn.Module) -> dict[str, torch.Tensor]:
    """Per converted layer, each weight's single-shot programming variance in weight units
    (``[out, in]``; 0 where no cell is live)."""
    out = {}
    for name, m in crossbar_modules(xmodel):
        dev = m.device_model
        if not dev.active("programming"):
            out[name] = torch.zeros(m.out_features, m.in_features)
            continue
        spread = dev.programming.spread_uS(m.g_nominal_uS.detach().cpu(), dev)  # [S, C, o, i]
        factors = m.slice_factors.detach().cpu()  # [S, out, 1]
        norm = m.style.norm_uS(dev)
        var = (spread * factors[:, None] / norm).square().sum(dim=(0, 1))
        out[name] = var * m.cell_mask.detach().cpu()
    return out


def verify_masks(model: nn.Module, plan: MappingPlan, device: DeviceModel,
                 xbar: CrossbarConfig, *, train: DataLoader, fraction: float, ranking: str,
                 samples: int, seed: int, calibration: torch.Tensor | None = None,
                 scales: Mapping | None = None, devices: Mapping | None = None,
                 digital: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The weights to verify, per mapped layer of ``plan`` (bool ``[out, in]``): the
    ``fraction`` of the live weights with the largest ``F_ii v_i`` (``ranking="fisher"``) or
    drawn at random with ``seed`` (``"random"``), ``F`` from ``samples`` training images
    drawn with ``seed``."""
    if ranking not in RANKINGS:
        raise ValueError(f"robustness.verify_ranking={ranking!r} is invalid; allowed: one of "
                         + ", ".join(RANKINGS))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"robustness.verify_fraction={fraction!r} is invalid; allowed: a "
                         "number in [0, 1]")
    xmodel = to_crossbar(model, device.with_(write_verify=None), xbar, calibration=calibration,
                         seed=seed, plan=plan, scales=scales, devices=devices,
                         digital=list(digital or []))
    variance = programming_variance(xmodel)
    live = {n: m.cell_mask.detach().cpu().bool() for n, m in crossbar_modules(xmodel)}
    del xmodel
    if ranking == "fisher":
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        batches = labelled_subset(train, samples, dev, seed)
        fisher = fisher_diagonal(model, batches, list(variance))
        scores = {n: (fisher[n].cpu() * variance[n]) for n in variance}
    else:
        gen = torch.Generator().manual_seed(seed)
        scores = {n: torch.rand(v.shape, generator=gen) for n, v in variance.items()}
    flat = torch.cat([scores[n][live[n]] for n in scores])
    keep = math.ceil(fraction * flat.numel())
    if keep == 0:
        return {n: torch.zeros_like(live[n]) for n in scores}
    # ties at the threshold broken by the order of the layers and positions (stable sort)
    order = torch.sort(flat, descending=True, stable=True).indices[:keep]
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order] = True
    out, start = {}, 0
    for n in scores:
        k = int(live[n].sum())
        mask = torch.zeros_like(live[n])
        mask[live[n]] = chosen[start:start + k]
        out[n] = mask
        start += k
    return out


def with_selective_verify(design, rob, model: nn.Module, plan: MappingPlan, *,
                          train: DataLoader, calibration: torch.Tensor | None,
                          scales: Mapping | None, seed: int):
    """``design`` (an ``experiments.chips.ChipDesign``) with the weights to verify when its
    device programs with write-verify and ``rob.verify_fraction`` is below 1; else
    ``design`` itself."""
    if design.device.write_verify is None or rob.verify_fraction >= 1.0:
        return design
    masks = verify_masks(model, plan, design.device, design.crossbar, train=train,
                         fraction=rob.verify_fraction, ranking=rob.verify_ranking,
                         samples=rob.verify_samples, seed=seed, calibration=calibration,
                         scales=scales, devices=dict(design.devices),
                         digital=list(design.digital))
    return design.with_(verify=masks)
