"""What every compressor shares: its inputs (:class:`CompressInputs`, unpacked once by the run
layer), the model cache (``runtime.cache_dir``) and the load-or-run-and-save block around a
compressor's work (:func:`stored_or_run`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from memxbar.admm import CompressResult, save_atomic
from memxbar.admm.pipeline import check_fingerprint, load_model_state
from memxbar.experiments.cache import cache_lock, cached, reuse, store
from memxbar.experiments.guard import load_checkpoint

if TYPE_CHECKING:
    from memxbar.admm import LayerConstraint
    from memxbar.crossbar import CrossbarConfig, DeviceModel, RepairConfig

_log = logging.getLogger("memxbar.experiments.compressors")


@dataclass(frozen=True)
class CompressInputs:
    """Everything a compressor reads besides the model and the loaders."""

    run_dir: Path
    """Where the compressor writes (and resumes from) its checkpoints."""
    fingerprint: Mapping[str, Any]
    """The config sections the compressed model depends on, stored in ``compressed.pt`` and
    compared on resume (``experiments.guard.fingerprint``)."""
    settings: Any
    """The compressor's own config block (``AdmmSettings`` for ``admm``, ``ObcSettings`` for
    ``obc``)."""
    constraints: Sequence[LayerConstraint]
    """The ``admm`` group's per-layer constraints, which every compressor meets."""
    seed: int
    """The experiment's seed (calibration draws)."""
    device: DeviceModel
    """The chip's device (hardware-aware retraining)."""
    crossbar: CrossbarConfig
    """The crossbar and periphery (hardware-aware retraining)."""
    admm: Any = None
    """The ``admm`` group (``AdmmSettings``): the training schedule (stages, epochs,
    optimizer, distillation) of compressors that prune and retrain with their own block as
    ``settings`` (``ternary``, ``adaptive_levels``, ``decompose``)."""
    hardware_aware: bool = False
    """The chip in the forward pass of the retraining stages (``robustness.hardware_aware``)."""
    hardware_aware_effects: str = "converters"
    """``chip``: every device effect and the converters; ``converters``: the conductance grid
    and the DAC/ADC on an ideal device (``robustness.hardware_aware_effects``)."""
    repair: RepairConfig | None = None
    """The repair when that chip is programmed (``robustness``)."""
    mapped: Sequence[str] = ()
    """The layers mapped on crossbars (not kept digital by the ``layers`` section)."""
    progress: bool = False
    """Progress bars (``runtime.progress``)."""
    cache_dir: str | None = None
    """The shared model cache (``runtime.cache_dir``), or None."""


def result_of(state: dict) -> CompressResult:
    """The ``admm.CompressResult`` of a ``compressed.pt`` checkpoint (any compressor)."""
    masks = state["masks"]
    return CompressResult(masks=masks, live_rows={k: m.any(dim=0) for k, m in masks.items()},
                          live_cols={k: m.any(dim=1) for k, m in masks.items()},
                          scales=state["scales"], levels=state.get("levels") or {},
                          history=state["history"])


def cache_key(inputs: CompressInputs) -> dict:
    """What a compressed model depends on: the fingerprint's settings and the per-layer
    constraints the compressor met (an allocation chooses them from the settings and the dense
    model; keyed as chosen, a changed choice is never served another's model)."""
    return {**dict(inputs.fingerprint),
            "constraints": [dataclasses.asdict(c) for c in inputs.constraints]}


def stored_or_run(model: nn.Module, inputs: CompressInputs,
                  run: Callable[[], CompressResult], name: str) -> CompressResult:
    """The block every compressor shares: load ``compressed.pt`` from ``inputs.run_dir`` (a
    resumed run) or from the model cache (copied in first), after checking its fingerprint;
    else ``run()`` compresses ``model`` in place, and its result is saved as
    ``compressed.pt`` (with ``inputs.fingerprint`` and the compressor's ``name``) and put in
    the cache."""
    shared = cached(inputs.cache_dir, "compressed", cache_key(inputs))
    with cache_lock(shared):
        return _stored_or_run(model, inputs, run, name, shared)


def _stored_or_run(model: nn.Module, inputs: CompressInputs,
                   run: Callable[[], CompressResult], name: str, shared: Path | None
                   ) -> CompressResult:
    run_dir, fp = inputs.run_dir, inputs.fingerprint
    target = run_dir / "compressed.pt"
    device = next(model.parameters()).device
    if not target.exists():
        reuse(shared, fp, target, "compressed")
    if target.exists():
        state = load_checkpoint(target, device)
        check_fingerprint(target, state.get("fingerprint"), fp)
        load_model_state(model, state["model"], target)
        _log.info("%s holds the compressed model of these settings: compression skipped; "
                  "mapping, evaluation and cost run with the current settings", target)
        return result_of(state)
    result = run()
    state = {"model": model.state_dict(), "masks": result.masks, "scales": result.scales,
             "levels": result.levels, "history": result.history, "compressor": name,
             "fingerprint": fp}
    save_atomic(state, target)
    store(shared, target)
    return result
