"""Compressors by name: the top-level ``compressor`` key picks one (see
:mod:`experiments.compressors`). The run layer unpacks :class:`CompressInputs` once from the
validated experiment (:func:`compress_inputs`); ``inputs.settings`` is the compressor's own
config block (``settings.SETTINGS_BLOCK``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from memxbar.experiments.compressors.adaptive_levels import adaptive_levels_stage
from memxbar.experiments.compressors.admm import compress_stage
from memxbar.experiments.compressors.base import CompressInputs
from memxbar.experiments.compressors.decompose import decompose_stage
from memxbar.experiments.compressors.magnitude import magnitude_stage
from memxbar.experiments.compressors.obc import obc_stage
from memxbar.experiments.compressors.settings import SETTINGS_BLOCK
from memxbar.experiments.compressors.ternary import ternary_stage
from memxbar.experiments.guard import fingerprint
from memxbar.experiments.settings import CompressExperiment

__all__ = ["COMPRESSORS", "compress_inputs", "get_compressor"]

COMPRESSORS: dict[str, Callable] = {
    "admm": compress_stage,        # ADMM prune/retrain/quantize/retrain
    "magnitude": magnitude_stage,  # magnitude prune + fine-tune
    "obc": obc_stage,              # post-training OBC (docs/obc.md)
    "decompose": decompose_stage,  # kernel decomposition + coefficient pruning (docs/decompose.md)
    "ternary": ternary_stage,      # prune + WPC + ternary weights (docs/ternary.md)
    "adaptive_levels": adaptive_levels_stage,  # levels per layer (docs/adaptive_levels.md)
}
"""Values of the top-level ``compressor`` key -> their adapter."""


def get_compressor(name: str) -> Callable:
    """The adapter registered as ``name`` (ValueError naming the choices)."""
    if not isinstance(name, str) or name not in COMPRESSORS:
        raise ValueError(f"compressor={name!r} is invalid; allowed: one of "
                         + ", ".join(COMPRESSORS))
    return COMPRESSORS[name]


def compress_inputs(exp: CompressExperiment, run_dir: Path, mapped: Sequence[str],
                    compressor: str | None = None) -> CompressInputs:
    """What the compressor (default ``exp.compressor``) reads of the validated experiment,
    unpacked once by the run's orchestrator (after the allocation, which sets the ``admm``
    constraints); ``mapped``: the layers on crossbars (``experiments.stages.mapped_layers``)."""
    name = exp.compressor if compressor is None else compressor
    rob = exp.robustness
    return CompressInputs(
        run_dir=run_dir, fingerprint=fingerprint(exp), settings=getattr(exp, SETTINGS_BLOCK[name]),
        constraints=exp.admm.layer_constraints(), admm=exp.admm, seed=exp.seed, device=exp.device,
        crossbar=exp.crossbar, hardware_aware=rob.hardware_aware,
        hardware_aware_effects=rob.hardware_aware_effects, repair=rob.repair(),
        mapped=tuple(mapped), progress=exp.runtime.progress, cache_dir=exp.runtime.cache_dir)
