"""The structured pruning that ``ternary`` and ``adaptive_levels`` start from: the ``admm``
pipeline's prune stages (ADMM prune for ``admm.prune_epochs`` epochs, then the hard projection
onto the ``admm`` group's constraints, 0 epochs = magnitude pruning) and masked retraining,
with no quantization, resumable from ``admm_state.pt``. Both compressors quantize afterwards in
their own way, so the tile count (set by the masks) is the ``admm`` compressor's at the same
constraints and epochs."""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import CompressConfig, CompressResult, compress
from memxbar.admm.importance import LossFn
from memxbar.experiments.compressors.base import CompressInputs
from memxbar.experiments.data import collapse_floor
from memxbar.experiments.train import evaluate

__all__ = ["prune_config", "prune_stage"]


def prune_config(inputs: CompressInputs, retrain_epochs: int) -> CompressConfig:
    """The ``admm`` group's pipeline settings for pruning only: constraints without levels,
    ``retrain_epochs`` masked retraining epochs, no quantization stages and no caller
    perturbation (these compressors do not retrain on the chip)."""
    base = inputs.admm.compress_config(progress=inputs.progress)
    return dataclasses.replace(
        base, constraints=[dataclasses.replace(c, levels=None) for c in inputs.constraints],
        prune_retrain_epochs=retrain_epochs, quant_epochs=0, quant_retrain_epochs=0,
        perturb_stages=())


def prune_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                inputs: CompressInputs, retrain_epochs: int,
                loss_fn: LossFn = F.cross_entropy) -> CompressResult:
    """Prune ``model`` in place to ``inputs.constraints`` and retrain it for ``retrain_epochs``
    with the masks fixed (:func:`prune_config`; ``admm.compress``, checkpoint
    ``admm_state.pt``); the result's masks are the nonzero weights of every constrained layer
    (all ones where a constraint does not prune)."""
    floor = collapse_floor(loaders[1]) if retrain_epochs > 0 else None  # no retraining to check
    config = dataclasses.replace(prune_config(inputs, retrain_epochs), collapse_floor=floor)
    return compress(model, loaders[0], config, eval_fn=lambda m: evaluate(m, loaders[1]),
                    loss_fn=loss_fn, checkpoint=inputs.run_dir / "admm_state.pt",
                    fingerprint=inputs.fingerprint)
