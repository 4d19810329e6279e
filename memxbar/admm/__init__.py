"""ADMM compression for memristor crossbars: crossbar-structured pruning, conductance-level
quantization and masked retraining (with knowledge distillation and forward perturbations such as
weight noise); post-training OBC compression, rate-distortion importance and budgeted per-layer
allocation. Independent of the ``crossbar`` simulator: it only needs a set
of allowed device levels."""

from memxbar.admm.admm import ADMM, Projector
from memxbar.admm.allocation import Allocation, Candidate, Link, allocate, min_cost
from memxbar.admm.constraints import LayerConstraint, crossbar_layers, select_layers, weight_matrix
from memxbar.admm.distill import Distillation, distillation_loss, frozen_copy
from memxbar.admm.importance import (
    compute_importance,
    fisher_diagonal,
    hessian_diagonal,
    importance_projectors,
    weighted_project_levels,
    weighted_prune_mask,
    weighted_scale,
)
from memxbar.admm.masked import MaskedOptimizer, apply_masks, freeze_weights, live_cols, live_rows
from memxbar.admm.noise import WeightNoise, weight_noise
from memxbar.admm.obc import ObcLayer, obc_compress, obq_quantize, obs_prune
from memxbar.admm.perturbation import Perturbation
from memxbar.admm.pipeline import (
    CheckpointMismatchError,
    CompressConfig,
    Compressor,
    CompressResult,
    DivergenceError,
    compress,
    save_atomic,
    train_epoch,
)
from memxbar.admm.projections import (
    keep_count,
    pair_levels,
    project_blocks,
    project_cols,
    project_levels,
    project_rows,
    round_to_levels,
    structured_mask,
    topk_mask,
)

__all__ = [
    "ADMM", "Allocation", "Candidate", "CheckpointMismatchError", "CompressConfig", "Link",
    "CompressResult", "Compressor", "Distillation", "DivergenceError", "LayerConstraint",
    "MaskedOptimizer", "ObcLayer", "Perturbation", "Projector", "WeightNoise", "allocate",
    "apply_masks", "compress", "compute_importance", "crossbar_layers", "distillation_loss",
    "fisher_diagonal", "freeze_weights", "frozen_copy", "hessian_diagonal",
    "importance_projectors", "keep_count", "live_cols", "live_rows", "min_cost",
    "obc_compress", "obq_quantize", "obs_prune", "pair_levels", "project_blocks",
    "project_cols", "project_levels", "project_rows", "round_to_levels", "save_atomic",
    "select_layers", "structured_mask", "topk_mask", "train_epoch", "weight_matrix",
    "weight_noise", "weighted_project_levels", "weighted_prune_mask", "weighted_scale",
]
