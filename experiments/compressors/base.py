"""What every compressor shares: its inputs (:class:`CompressInputs`, unpacked once by the run
layer), the model cache (``runtime.cache_dir``) and the load-or-run-and-save block around a
compressor's work (:func:`stored_or_run`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout
from hydra.utils import to_absolute_path
from torch import nn

from admm import CompressResult, save_atomic
from admm.pipeline import check_fingerprint, load_model_state
from crossbar.io import atomic_write_bytes
from experiments.guard import load_checkpoint

if TYPE_CHECKING:
    from admm import LayerConstraint
    from crossbar import CrossbarConfig, DeviceModel, RepairConfig

_log = logging.getLogger("experiments.compressors")


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


CACHE_FORMAT = 2
"""Bumped when the same settings train another model (2: the training order of
``experiments.datasets.PassSampler``), so older cache entries are not reused."""


def cached(cache_dir: str | None, name: str, fp: Mapping) -> Path | None:
    """``<runtime.cache_dir>/<name>-<hash>.pt``: a model shared by every run whose settings
    ``fp`` (the checkpoint's fingerprint: only the sections it depends on) are the same;
    ``None`` without a cache."""
    if cache_dir is None:
        return None
    keyed = {"cache_format": CACHE_FORMAT, **dict(fp)}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
    return Path(to_absolute_path(cache_dir)) / f"{name}-{key[:20]}.pt"


@contextlib.contextmanager
def cache_lock(entry: Path | None) -> Iterator[None]:
    """Hold ``<entry>.lock`` (a ``filelock`` file lock) while a cache entry is looked up and,
    when missing, made: of the sweep jobs that need the same model (joblib, Slurm), one trains
    it and the others wait here, then reuse it. No-op without a cache (``entry`` None)."""
    if entry is None:
        yield
        return
    lock = FileLock(str(entry) + ".lock")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _log.info("waiting for another run making the same model: %s", entry)
            lock.acquire()
    except OSError as exc:
        raise ValueError(f"runtime.cache_dir={str(entry.parent)!r} is invalid: cannot lock "
                         f"{entry.name} there ({exc}); allowed: a writable directory, or null "
                         "for no cache") from None
    try:
        yield
    finally:
        lock.release()


def result_of(state: dict) -> CompressResult:
    """The ``admm.CompressResult`` of a ``compressed.pt`` checkpoint (any compressor)."""
    masks = state["masks"]
    return CompressResult(masks=masks, live_rows={k: m.any(dim=0) for k, m in masks.items()},
                          live_cols={k: m.any(dim=1) for k, m in masks.items()},
                          scales=state["scales"], levels=state.get("levels") or {},
                          history=state["history"])


def stored_or_run(model: nn.Module, inputs: CompressInputs,
                  run: Callable[[], CompressResult], name: str) -> CompressResult:
    """The block every compressor shares: load ``compressed.pt`` from ``inputs.run_dir`` (a
    resumed run) or from the model cache (copied in first), after checking its fingerprint;
    else ``run()`` compresses ``model`` in place, and its result is saved as
    ``compressed.pt`` (with ``inputs.fingerprint`` and the compressor's ``name``) and put in
    the cache."""
    shared = cached(inputs.cache_dir, "compressed", inputs.fingerprint)
    with cache_lock(shared):
        return _stored_or_run(model, inputs, run, name, shared)


def _stored_or_run(model: nn.Module, inputs: CompressInputs,
                   run: Callable[[], CompressResult], name: str, shared: Path | None
                   ) -> CompressResult:
    run_dir, fp = inputs.run_dir, inputs.fingerprint
    target = run_dir / "compressed.pt"
    device = next(model.parameters()).device
    if not target.exists() and shared is not None and shared.exists():
        _log.info("compressed model reused from the cache: %s", shared)
        atomic_write_bytes(target, shared.read_bytes())
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
    if shared is not None:
        atomic_write_bytes(shared, target.read_bytes())
    return result
