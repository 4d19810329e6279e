"""Post-training compressor of the pipeline (``compressor=obc``): Optimal Brain Compression
(``admm.obc_compress``; Frantar, Singh, Alistarh, NeurIPS 2022) on the pretrained dense model,
with no ADMM training and no retraining.

The ``obc`` group sets the calibration size (at most 1,024 training images, seeded), the
Hessian damping and the optional rate-distortion importance (``fisher`` | ``hessian``, Gao et
al., ICML 2019). The layer constraints are the ``admm`` group's, so both compressors meet the
same hardware constraints, and :func:`obc_stage` writes the same ``compressed.pt`` as
``experiments.compressors.admm`` (masks, scales, levels, history), read by the same
mapping, simulation and cost stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn
from torch.utils.data import DataLoader

from memxbar.admm import CompressResult, compute_importance, obc_compress
from memxbar.experiments.compressors.base import CompressInputs, stored_or_run
from memxbar.experiments.data import labelled_subset
from memxbar.experiments.train import evaluate

__all__ = ["obc_stage"]


def obc_stage(model: nn.Module, loaders: Sequence[DataLoader], inputs: CompressInputs
              ) -> CompressResult:
    """The ``obc`` compressor (``inputs.settings``: the ``obc`` block): post-training OBC of
    the dense ``model`` in place under ``inputs.constraints`` (the ``admm`` group's); saves
    ``compressed.pt`` (:func:`~experiments.compressors.base.stored_or_run`). The result's
    history holds the dense and compressed test accuracy (``eval`` events) and one
    ``obc_layer`` record per layer (OBS loss, ``layer_loss``)."""
    return stored_or_run(model, inputs, lambda: _compress(model, loaders, inputs), "obc")


def _compress(model: nn.Module, loaders: Sequence[DataLoader], inputs: CompressInputs
              ) -> CompressResult:
    obc, test = inputs.settings, loaders[1]
    device = next(model.parameters()).device
    calib = labelled_subset(loaders[0], obc.n_calib, device, inputs.seed)
    history = [{"event": "eval", "stage": "dense", "metric": evaluate(model, test)}]
    importance = None
    if obc.importance is not None:
        importance = compute_importance(model, calib, obc.importance, n_samples=obc.n_calib)
    result = obc_compress(model, calib, list(inputs.constraints), n_calib=obc.n_calib,
                          percdamp=obc.percdamp, importance=importance)
    history += result.history
    history.append({"event": "eval", "stage": "obc", "metric": evaluate(model, test)})
    return dataclasses.replace(result, history=history)
