"""Fixed masks during retraining, and weights frozen on their quantization levels."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """``W <- W ⊙ M`` for each named layer (masks in matrix view ``(out, in*kh*kw)``)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        w = modules[name].weight
        w.mul_(mask.reshape(w.shape).to(w.device))


def live_rows(mask: Tensor) -> Tensor:
    """Crossbar rows (word lines = inputs, dim 1 of the matrix view) with any surviving weight."""
    return mask.any(dim=0)


def live_cols(mask: Tensor) -> Tensor:
    """Crossbar columns (bit lines = outputs, dim 0 of the matrix view) with any surviving
    weight."""
    return mask.any(dim=1)


class MaskedOptimizer:
    """Wraps an optimizer so pruned weights stay exactly zero during masked retraining.

    Each :meth:`step`: ``grad <- grad ⊙ M``, the wrapped step, then ``W <- W ⊙ M``. On wrapping
    and on loading, every per-parameter state tensor of the weight's shape (Adam ``exp_avg`` /
    ``exp_avg_sq``, SGD ``momentum_buffer``, ...) is multiplied by ``M``, so no stale momentum
    pushes a pruned weight.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                 masks: Mapping[str, Tensor]) -> None:
        self.optimizer = optimizer
        modules = dict(model.named_modules())
        self._pairs = [(modules[n].weight, m.reshape(modules[n].weight.shape)
                        .to(device=modules[n].weight.device, dtype=modules[n].weight.dtype))
                       for n, m in masks.items()]
        self.clear_state()

    @torch.no_grad()
    def clear_state(self) -> None:
        """Zero the optimizer state of the pruned entries."""
        for w, m in self._pairs:
            for value in self.optimizer.state.get(w, {}).values():
                if isinstance(value, Tensor) and value.shape == w.shape:
                    value.mul_(m)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        with torch.no_grad():
            for w, m in self._pairs:
                if w.grad is not None:
                    w.grad.mul_(m)
        self.optimizer.step()
        with torch.no_grad():
            for w, m in self._pairs:
                w.mul_(m)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
        self.clear_state()


@torch.no_grad()
def freeze_weights(model: nn.Module, values: Mapping[str, Tensor]) -> None:
    """Set each named layer's weight to the given matrix-view value and stop training it."""
    modules = dict(model.named_modules())
    for name, value in values.items():
        w = modules[name].weight
        w.copy_(value.reshape(w.shape))
        w.requires_grad_(False)
        w.grad = None
