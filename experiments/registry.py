"""Compressors by name: the top-level ``compressor`` key picks one.

Each is an adapter with the same inputs, ``(model, (train, test) loaders, the validated
experiment, run directory)``: it compresses ``model`` in place, resumable from its own
checkpoint in the run directory (``compressed.pt`` with the config fingerprint), and returns
an ``admm.CompressResult``. Entries are ``"module:function"`` strings, imported when the
compressor is used, so this module imports nothing of the project and the config validation
can list the names without importing the stages. Adding a compressor: its module (the
adapter), one line here, its config block (``experiments.config``) and its docs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

COMPRESSORS: dict[str, str] = {
    "admm": "experiments.pipeline:compress_stage",    # ADMM prune/retrain/quantize/retrain
    "obc": "experiments.posttraining:obc_stage",      # post-training OBC (docs/obc.md)
}
"""Values of the top-level ``compressor`` key -> their adapter."""


def get_compressor(name: str) -> Callable:
    """The adapter registered as ``name`` (ValueError naming the choices)."""
    if not isinstance(name, str) or name not in COMPRESSORS:
        raise ValueError(f"compressor={name!r} is invalid; allowed: one of "
                         + ", ".join(COMPRESSORS))
    module, _, function = COMPRESSORS[name].partition(":")
    return getattr(importlib.import_module(module), function)
