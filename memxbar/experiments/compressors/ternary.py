"""The ``ternary`` compressor: structured pruning in crossbar units, retraining with Weight
Penalty Clipping, then ternary weights ``{-a, 0, +a}`` fine-tuned straight-through (Yang, He,
Fan, AAAI 2020; ``admm.ternary``, docs/ternary.md).

1. prune: the ``admm`` pipeline's prune stage onto the ``admm`` group's constraints
   (``compressors.pruned``; ADMM for ``admm.prune_epochs``, then the hard projection), so the
   masks, and with them the tiles, are those of the other compressors at the same constraints;
2. ``wpc_epochs`` masked retraining epochs with ``ternary.weight * sum relu(|w| - tau)^2``
   added to the loss, ``tau`` re-estimated at each epoch's start, ``|w|`` clipped at ``tau`` at
   its end (``penalty: off``: plain masked retraining, the ablation);
3. ``ternary_epochs`` masked epochs with the layers computing on the exact ternary projection
   of their weights (straight-through gradients), then the weights set to it for good.

Every epoch is one call of the project's training loop (``admm.train_epoch``) with the
``admm`` group's optimizer, learning rate (schedule) and distillation from the dense model; the
penalty is added to the task loss, so with distillation ``alpha`` it weighs ``(1 - alpha)
lambda``. The result (levels ``{-1, 0, 1}``, one scale ``a`` per layer or per column) maps onto
two conductance states per cell of a differential pair. Hardware-aware retraining and
``admm.train_noise`` are not applied after the prune stage; resume restarts steps 2-3 from the
pruned checkpoint (``admm_state.pt``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from memxbar.admm import (
    CompressResult,
    MaskedOptimizer,
    freeze_weights,
    pair_levels,
    select_layers,
    train_epoch,
)
from memxbar.admm.constraints import crossbar_layers
from memxbar.admm.distill import Distillation, frozen_copy
from memxbar.admm.ternary import TernaryForward, WeightPenaltyClipping, ternary_project
from memxbar.experiments.compressors.base import CompressInputs, stored_or_run
from memxbar.experiments.compressors.pruned import prune_stage
from memxbar.experiments.train import evaluate

__all__ = ["masked_epochs", "ternary_stage"]

_log = logging.getLogger("memxbar.experiments.compressors.ternary")


def ternary_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                  inputs: CompressInputs) -> CompressResult:
    """The ``ternary`` compressor (``inputs.settings``: the ``ternary`` block; the schedule
    from ``inputs.admm``); saves ``compressed.pt``
    (:func:`~experiments.compressors.base.stored_or_run`)."""
    return stored_or_run(model, inputs, lambda: _compress(model, loaders, inputs), "ternary")


def masked_epochs(model: nn.Module, loader: DataLoader, masks: Mapping[str, Tensor],
                  inputs: CompressInputs, epochs: int, stage: str, *,
                  loss_fn: Callable = F.cross_entropy, teacher: nn.Module | None = None,
                  forward: Callable[[], contextlib.AbstractContextManager] | None = None,
                  before: Callable[[], dict] | None = None,
                  after: Callable[[], None] | None = None) -> list[dict]:
    """``epochs`` epochs of ``admm.train_epoch`` with ``masks`` fixed (``MaskedOptimizer``),
    the ``admm`` group's optimizer and learning rate (``epoch_lr`` of ``stage``:
    ``prune_retrain`` or ``quant_retrain`` for the cosine schedule) and distillation from
    ``teacher``; ``forward()`` wraps each epoch (e.g. :class:`admm.ternary.TernaryForward`),
    ``before()`` runs before each epoch (its dict goes to the history record), ``after()`` after
    it. Returns one history record per epoch."""
    config = inputs.admm.compress_config(progress=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = MaskedOptimizer(config.make_optimizer(params), model, masks)
    distill = None if teacher is None else \
        Distillation(teacher, config.distill_weight, config.distill_temperature)
    records = []
    for epoch in range(epochs):
        for group in optimizer.optimizer.param_groups:
            group["lr"] = config.epoch_lr(stage, epoch, epochs)
        info = before() if before is not None else {}
        with forward() if forward is not None else contextlib.nullcontext():
            loss = train_epoch(model, loader, optimizer, loss_fn, distill=distill,
                               progress=inputs.progress)
        if after is not None:
            after()
        records.append({"event": "epoch", "stage": stage, "epoch": epoch + 1, "loss": loss,
                        **info})
        _log.info("%s epoch %d/%d: loss %.4f", stage, epoch + 1, epochs, loss)
    return records


def _compress(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
              inputs: CompressInputs) -> CompressResult:
    settings, admm, test = inputs.settings, inputs.admm, loaders[1]
    teacher = frozen_copy(model) if admm.distill_weight > 0 else None
    pruned = prune_stage(model, loaders, inputs, retrain_epochs=0)
    history = [h for h in pruned.history if h.get("stage") != "prune_retrain"]
    masks = {n: m.to(next(model.parameters()).device) for n, m in pruned.masks.items()}
    modules = {n: m for n, m in crossbar_layers(model).items() if n in masks}
    per_column = {n: c.per_column
                  for n, c in select_layers(model, list(inputs.constraints)).items()}
    wpc_epochs = admm.prune_retrain_epochs if settings.wpc_epochs is None \
        else settings.wpc_epochs
    ternary_epochs = admm.quant_epochs + admm.quant_retrain_epochs \
        if settings.ternary_epochs is None else settings.ternary_epochs
    loss_fn, before, after = F.cross_entropy, None, None
    if settings.penalty == "wpc":
        wpc = WeightPenaltyClipping(modules, settings.weight, settings.tau_std, per_column)

        def loss_fn(out: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(out, y) + wpc.penalty()

        def before() -> dict:
            return {"tau": wpc.new_epoch()}

        after = wpc.clip if settings.clip else None
    history += masked_epochs(model, loaders[0], masks, inputs, wpc_epochs, "prune_retrain",
                             loss_fn=loss_fn, teacher=teacher, before=before, after=after)
    history.append({"event": "eval", "stage": "wpc" if settings.penalty == "wpc"
                    else "prune_retrain", "metric": evaluate(model, test)})
    history += masked_epochs(model, loaders[0], masks, inputs, ternary_epochs, "quant_retrain",
                             teacher=teacher, forward=lambda: TernaryForward(modules, per_column))
    scales = _ternarize(model, modules, per_column)
    history.append({"event": "eval", "stage": "ternary", "metric": evaluate(model, test)})
    return CompressResult.from_layers(modules, scales, {n: pair_levels(2) for n in modules},
                                      history)


@torch.no_grad()
def _ternarize(model: nn.Module, modules: Mapping[str, nn.Module],
               per_column: Mapping[str, bool]) -> dict[str, Tensor]:
    """Set each layer's weight to its exact ternary projection and stop training it; returns
    the scales ``a``."""
    values, scales = {}, {}
    for n, m in modules.items():
        values[n], scales[n] = ternary_project(m.weight.reshape(m.weight.shape[0], -1),
                                               per_column[n])
    freeze_weights(model, values)
    return scales
