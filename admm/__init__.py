"""ADMM compression for memristor crossbars: crossbar-structured pruning, conductance-level
quantization and masked retraining. Independent of the ``crossbar`` simulator: it only needs a set
of allowed device levels."""

from admm.admm import ADMM, Projector
from admm.constraints import LayerConstraint, crossbar_layers, select_layers, weight_matrix
from admm.masked import MaskedOptimizer, apply_masks, freeze_weights, live_cols, live_rows
from admm.pipeline import (
    CompressConfig,
    Compressor,
    CompressResult,
    compress,
    save_atomic,
    train_epoch,
)
from admm.projections import (
    keep_count,
    pair_levels,
    project_blocks,
    project_cols,
    project_levels,
    project_rows,
    round_to_levels,
    structured_mask,
)

__all__ = [
    "ADMM", "CompressConfig", "CompressResult", "Compressor", "LayerConstraint",
    "MaskedOptimizer", "Projector", "apply_masks", "compress", "crossbar_layers",
    "freeze_weights", "keep_count", "live_cols", "live_rows", "pair_levels", "project_blocks",
    "project_cols", "project_levels", "project_rows", "round_to_levels", "save_atomic",
    "select_layers", "structured_mask", "train_epoch", "weight_matrix",
]
