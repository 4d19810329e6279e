"""Kernel-decomposition compressor (``compressor=decompose``; ESCALATE, Li et al., MICRO 2021;
docs/decompose.md): the pretrained dense model's convolutions become ``M`` basis kernels per
input channel (a depthwise convolution, dense, reused by every output) and a ``1 x 1``
coefficient convolution over ``C*M`` channels (``admm.decompose``); the decomposed model is
fine-tuned dense (``decompose.finetune_epochs``), then the ``admm`` group's stages (ADMM or
magnitude pruning, ``decompose.method``) prune the coefficient convolutions under the
original layer's crossbar constraint and quantize them (and the basis) onto device levels.

Training reuses the pipeline's one loop (``admm.compress``) with distillation from the
undecomposed dense model when ``admm.distill_weight > 0``. The layers are replaced before
:func:`~experiments.compressors.base.stored_or_run` reads a checkpoint (a resumed run or the
model cache), from the dense weights and the settings alone, so the structure it loads into is
the one that was saved; ``compressed.pt``'s masks are keyed by the new layer names.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping

from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import CompressResult, LayerConstraint, compress
from memxbar.admm.decompose import decompose_model
from memxbar.experiments.compressors.admm import train_compressed
from memxbar.experiments.compressors.base import CompressInputs, stored_or_run
from memxbar.experiments.compressors.magnitude import magnitude_settings
from memxbar.experiments.compressors.structure import (
    decomposed_constraints,
    decomposed_mapped,
    decomposed_ranks,
)
from memxbar.experiments.train import evaluate

__all__ = ["decompose_stage"]


def decompose_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                    inputs: CompressInputs) -> CompressResult:
    """The ``decompose`` compressor (``inputs.settings``: the ``decompose`` block,
    ``inputs.admm``: the stages): decomposes ``model``'s convolutions in place, then loads
    ``compressed.pt`` or fine-tunes, prunes and quantizes (module docstring). The history's
    ``eval`` events: ``dense`` (undecomposed), ``decomposed`` (truncated, before training),
    ``finetune`` (with ``finetune_epochs``), then the stages of ``decompose.method``."""
    s, test = inputs.settings, loaders[1]
    ranks = decomposed_ranks(model, s, inputs.mapped)
    constraints = decomposed_constraints(model, inputs.constraints, ranks, s)
    dense_acc = evaluate(model, test)
    teacher = copy.deepcopy(model) if inputs.admm.distill_weight > 0 else None
    decompose_model(model, ranks)
    history = [{"event": "eval", "stage": "dense", "metric": dense_acc},
               {"event": "decompose", "ranks": dict(ranks)},
               {"event": "eval", "stage": "decomposed", "metric": evaluate(model, test)}]
    return stored_or_run(model, inputs, lambda: _train(model, loaders, inputs, constraints,
                                                       ranks, teacher, history), "decompose")


def _train(model: nn.Module, loaders: tuple[DataLoader, DataLoader], inputs: CompressInputs,
           constraints: list[LayerConstraint], ranks: Mapping[str, int],
           teacher: nn.Module | None, history: list[dict]) -> CompressResult:
    s, admm = inputs.settings, inputs.admm
    if s.finetune_epochs:
        _finetune(model, loaders, inputs, teacher)
        history.append({"event": "eval", "stage": "finetune",
                        "metric": evaluate(model, loaders[1])})
    settings = dataclasses.replace(admm, constraints=[dataclasses.asdict(c) for c in constraints])
    if s.method == "magnitude":
        settings = magnitude_settings(settings)
    staged = dataclasses.replace(inputs, settings=settings,
                                 mapped=tuple(decomposed_mapped(inputs.mapped, ranks)))
    result = train_compressed(model, loaders, staged, teacher)
    # the stages' own "dense" evaluation is the decomposed (fine-tuned) model: already recorded
    history += [h for h in result.history
                if not (h.get("event") == "eval" and h.get("stage") == "dense")]
    return dataclasses.replace(result, history=history)


def _finetune(model: nn.Module, loaders: tuple[DataLoader, DataLoader], inputs: CompressInputs,
              teacher: nn.Module | None) -> None:
    """``decompose.finetune_epochs`` of dense training of the decomposed model: the one loop
    (``admm.compress``) with only its masked retraining stage, under a constraint that prunes
    nothing (``row_ratio=0``: every mask all True), with the ``admm`` group's optimizer,
    learning rate and distillation; resumable from ``finetune_state.pt``."""
    base = inputs.admm.compress_config(progress=inputs.progress)
    config = dataclasses.replace(
        base, constraints=[LayerConstraint(pattern="*", row_ratio=0.0)], prune_epochs=0,
        prune_retrain_epochs=inputs.settings.finetune_epochs, quant_epochs=0,
        quant_retrain_epochs=0, train_noise=0.0, importance=None)
    compress(model, loaders[0], config, eval_fn=lambda m: evaluate(m, loaders[1]),
             checkpoint=inputs.run_dir / "finetune_state.pt", fingerprint=inputs.fingerprint,
             teacher=teacher)
