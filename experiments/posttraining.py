"""Post-training compressor of the pipeline (``compressor=obc``): Optimal Brain Compression
(``admm.obc_compress``; Frantar, Singh, Alistarh, NeurIPS 2022) on the pretrained dense model,
with no ADMM training and no retraining.

The ``obc`` group sets the calibration size (at most 1,024 training images, seeded), the
Hessian damping and the optional rate-distortion importance (``fisher`` | ``hessian``, Gao et
al., ICML 2019). The layer constraints are the ``admm`` group's, so both compressors meet the
same hardware constraints, and :func:`obc_stage` writes the same ``compressed.pt`` as
``experiments.pipeline.compress_stage`` (masks, scales, levels, history), read by the same
mapping, simulation and cost stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from admm import CompressResult, compute_importance, obc_compress, save_atomic
from admm.pipeline import check_fingerprint, load_model_state
from experiments.config import (  # noqa: F401 - re-exported: the obc block's schema
    COMPRESSORS,
    MAX_CALIBRATION,
    ObcSettings,
)
from experiments.guard import load_checkpoint
from experiments.registry import CompressInputs
from experiments.train import evaluate

__all__ = ["COMPRESSORS", "MAX_CALIBRATION", "ObcSettings", "labelled_subset", "obc_stage"]

def labelled_subset(loader: DataLoader, n: int, device: torch.device, seed: int,
                    batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (input, label) pairs of ``loader``'s dataset drawn with ``seed``, as batches of
    ``batch_size`` on ``device``: the same draw on every call, whatever the loader's shuffle
    state."""
    ds = loader.dataset
    index = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    pairs = [ds[int(i)] for i in index]
    x = torch.stack([p[0] for p in pairs]).to(device)
    y = torch.as_tensor([int(p[1]) for p in pairs], device=device)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def obc_stage(model: nn.Module, loaders: Sequence[DataLoader], inputs: CompressInputs
              ) -> CompressResult:
    """The ``obc`` compressor (``experiments.registry``; ``inputs.settings``: the ``obc``
    block): post-training OBC of the dense ``model`` in place under ``inputs.constraints``
    (the ``admm`` group's); saves ``compressed.pt`` with ``inputs.fingerprint`` (or loads it,
    to resume, after checking the fingerprint as ``experiments.pipeline.compress_stage``
    does). The result's history holds the dense and compressed test accuracy (``eval``
    events) and one ``obc_layer`` record per layer (OBS loss, ``layer_loss``)."""

    target = inputs.run_dir / "compressed.pt"
    device = next(model.parameters()).device
    fp = inputs.fingerprint
    if target.exists():
        state = load_checkpoint(target, device)
        check_fingerprint(target, state.get("fingerprint"), fp)  # e.g. compressor=admm there
        load_model_state(model, state["model"], target)
        return result_of(state)
    obc, test = inputs.settings, loaders[1]
    calib = labelled_subset(loaders[0], obc.n_calib, device, inputs.seed)
    constraints = list(inputs.constraints)
    history = [{"event": "eval", "stage": "dense", "metric": evaluate(model, test)}]
    importance = None
    if obc.importance is not None:
        importance = compute_importance(model, calib, obc.importance, n_samples=obc.n_calib)
    result = obc_compress(model, calib, constraints, n_calib=obc.n_calib,
                          percdamp=obc.percdamp, importance=importance)
    history += result.history
    history.append({"event": "eval", "stage": "obc", "metric": evaluate(model, test)})
    state = {"model": model.state_dict(), "masks": result.masks, "scales": result.scales,
             "levels": result.levels, "history": history, "compressor": "obc", "fingerprint": fp}
    save_atomic(state, target)
    return result_of(state)


def result_of(state: dict) -> CompressResult:
    """The ``admm.CompressResult`` of a ``compressed.pt`` checkpoint (any compressor)."""
    masks = state["masks"]
    return CompressResult(masks=masks, live_rows={k: m.any(dim=0) for k, m in masks.items()},
                          live_cols={k: m.any(dim=1) for k, m in masks.items()},
                          scales=state["scales"], levels=state.get("levels") or {},
                          history=state["history"])
