"""The ``admm`` compressor: ADMM prune, masked retrain, ADMM quantize, retrain
(``admm.compress``), resumable from ``admm_state.pt``, with the chip (or its converters) in the
forward pass of the retraining stages when ``robustness.hardware_aware`` is on."""

from __future__ import annotations

import dataclasses
import logging

from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import CompressResult, compress
from memxbar.crossbar.hardware_aware import HardwareAware
from memxbar.experiments.chips import ideal_device
from memxbar.experiments.compressors.base import CompressInputs, stored_or_run
from memxbar.experiments.data import collapse_floor
from memxbar.experiments.train import evaluate

__all__ = ["compress_stage", "train_compressed"]

_log = logging.getLogger("memxbar.experiments.compressors.admm")


def compress_stage(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                   inputs: CompressInputs) -> CompressResult:
    """The ``admm`` compressor (``inputs.settings``: the ``admm`` group): ADMM prune, masked
    retrain, ADMM quantize, retrain (``admm.compress``; resumable from ``admm_state.pt``);
    saves ``compressed.pt`` (:func:`~experiments.compressors.base.stored_or_run`)."""
    return stored_or_run(model, inputs, lambda: train_compressed(model, loaders, inputs), "admm")


def train_compressed(model: nn.Module, loaders: tuple[DataLoader, DataLoader],
                     inputs: CompressInputs, teacher: nn.Module | None = None
                     ) -> CompressResult:
    """The ``admm`` group's stages (``inputs.settings``) on ``model`` in place, without the
    save of ``compressed.pt``; ``teacher``: the distillation teacher (default: ``model`` as it
    is now, ``admm.compress``)."""
    config = dataclasses.replace(inputs.settings.compress_config(progress=inputs.progress),
                                 collapse_floor=collapse_floor(loaders[1]))
    perturbation = None
    if inputs.hardware_aware:  # the chip in the forward pass of the retraining stages
        chip = inputs.hardware_aware_effects == "chip"
        device = inputs.device if chip else ideal_device(inputs.device)
        perturbation = HardwareAware(device, inputs.crossbar,
                                     repair=inputs.repair if chip else None,
                                     layers=list(inputs.mapped))
        _log.info("hardware-aware retraining in stages %s (%s): %s", ", ".join(
            config.perturb_stages), "the chip" if chip else "converters and conductance grid",
            device.describe())
    return compress(model, loaders[0], config, eval_fn=lambda m: evaluate(m, loaders[1]),
                    checkpoint=inputs.run_dir / "admm_state.pt", fingerprint=inputs.fingerprint,
                    perturbation=perturbation, teacher=teacher)
