"""Compressors by name: the top-level ``compressor`` key picks one.

Each is an adapter ``(model, (train, test) loaders, inputs: CompressInputs) ->
admm.CompressResult`` that reads nothing but its arguments: it compresses ``model`` in place,
resumable from its own checkpoint in ``inputs.run_dir`` (``compressed.pt`` holding
``inputs.fingerprint``, checked on resume), and returns an ``admm.CompressResult``. The run
layer unpacks :class:`CompressInputs` once from the validated experiment
(``experiments.pipeline.compress_inputs``); ``inputs.settings`` is the compressor's own config
block, the experiment's field of the compressor's name (``admm`` -> the ``admm`` group, ``obc``
-> the ``obc`` block).

Entries are ``"module:function"`` strings, imported when the compressor is used, so this
module imports nothing of the project (the types below only for type checkers) and the config
validation can list the names without importing the stages.

Adding a compressor: its module (the adapter, reading only :class:`CompressInputs`), one line
in :data:`COMPRESSORS`, its config block (a field of that name in ``experiments.config``) and
its docs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from admm import LayerConstraint
    from crossbar import CrossbarConfig, DeviceModel, RepairConfig

COMPRESSORS: dict[str, str] = {
    "admm": "experiments.pipeline:compress_stage",    # ADMM prune/retrain/quantize/retrain
    "magnitude": "experiments.magnitude:magnitude_stage",  # magnitude prune + fine-tune
    "obc": "experiments.posttraining:obc_stage",      # post-training OBC (docs/obc.md)
}
"""Values of the top-level ``compressor`` key -> their adapter."""

SETTINGS_BLOCK: dict[str, str] = {"admm": "admm", "magnitude": "admm", "obc": "obc"}
"""The config block each compressor reads as ``CompressInputs.settings``."""

RETRAINING = ("admm", "magnitude")
"""Compressors that retrain (so hardware-aware retraining changes their model)."""


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


def get_compressor(name: str) -> Callable:
    """The adapter registered as ``name`` (ValueError naming the choices)."""
    if not isinstance(name, str) or name not in COMPRESSORS:
        raise ValueError(f"compressor={name!r} is invalid; allowed: one of "
                         + ", ".join(COMPRESSORS))
    module, _, function = COMPRESSORS[name].partition(":")
    return getattr(importlib.import_module(module), function)
