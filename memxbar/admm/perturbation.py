"""Forward perturbations during compression training: the protocol.

A *perturbation* is a callable ``perturbation(model) -> context manager``. While the context is
active, the model's training forward passes are perturbed: weight noise
(:func:`admm.noise.weight_noise`), or the forward pass of a device simulator with straight-through
gradients (the ``crossbar`` package provides one; ``admm`` knows nothing of it). The pipeline
(:func:`admm.pipeline.compress`) calls it once per training epoch of every stage named in
``CompressConfig.perturb_stages`` and wraps exactly that epoch's optimisation steps in the
context; evaluation (``eval_fn``) and checkpointing run outside it (ADMM rounds at epoch
boundaries too; with ``update_unit="step"`` a round may run inside, but it runs no forward pass).

A perturbation must

* change forward outputs only (hooks, a swapped ``forward``, a parametrization removed on exit):
  parameters, buffers and the model's ``state_dict`` must be the same after the context as before
  it, so masks, the optimizer and the ADMM state see the true weights;
* undo every change on exit, also when the block raises;
* draw its randomness from torch's global generator (saved in every checkpoint) or from seeds
  that depend only on its own arguments, so a resumed run is bit-identical to an uninterrupted
  one.

It may read the weights at entry (for example to program a simulated chip once per epoch from
the current weights) and at every forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from torch import nn

Perturbation = Callable[[nn.Module], AbstractContextManager]
"""``perturbation(model)`` returns a context manager that perturbs ``model``'s forward passes
while active (module docstring)."""

__all__ = ["Perturbation"]
