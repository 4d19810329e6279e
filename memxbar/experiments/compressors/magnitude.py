"""The simple baseline compressor: structured magnitude pruning, then fine-tuning with the
masks fixed (with the ``admm`` group's distillation from the dense model), then nearest-level
quantization and fine-tuning again.

It is ADMM's pipeline with no ADMM epochs: the hard projection of a stage is applied to the
dense (or pruned) weights at once, which keeps the rows/columns/blocks of largest L2 norm and
rounds to the nearest conductance level with the optimal scale (``admm.projections``), and the
ADMM stages' epochs go to the retraining after each projection, so both compressors train for
the same number of epochs on the same constraints (the allocation's, at a budget) and differ only
in how the structure is reached: ADMM moves the weights toward the constraint set before the
cut, magnitude pruning cuts at once and repairs after.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import CompressResult
from memxbar.experiments.compressors.admm import compress_stage
from memxbar.experiments.compressors.base import CompressInputs

__all__ = ["magnitude_settings", "magnitude_stage"]


def magnitude_settings(admm):
    """The ``admm`` group's settings with the ADMM epochs moved into the retraining stages."""
    return dataclasses.replace(
        admm, prune_epochs=0, prune_retrain_epochs=admm.prune_epochs + admm.prune_retrain_epochs,
        quant_epochs=0, quant_retrain_epochs=admm.quant_epochs + admm.quant_retrain_epochs)


def magnitude_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                    inputs: CompressInputs) -> CompressResult:
    """The ``magnitude`` compressor (``inputs.settings``: the ``admm``
    group): :func:`magnitude_settings` run by the ``admm`` adapter (resumable, cached,
    hardware-aware retraining as configured)."""
    return compress_stage(model, loaders, dataclasses.replace(
        inputs, settings=magnitude_settings(inputs.settings)))
