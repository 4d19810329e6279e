"""ADMM-regularized training (Boyd et al. 2011, scaled form; Zhang et al. ECCV 2018; Yuan et al.
ISLPED 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from memxbar.admm.constraints import weight_matrix

Projector = Callable[[Tensor], Tensor]
"""Euclidean projection of a matrix view ``W[out, in*kh*kw]`` onto a layer's constraint set."""


class ADMM:
    """ADMM for ``min_W f(W)`` subject to ``W_i in S_i`` for the selected layers ``i``.

    Augmented Lagrangian in scaled form, with the *squared* Frobenius norm::

        L(W, Z, U) = f(W) + sum_i rho_i / 2 * ||W_i - Z_i + U_i||_F^2

    * W-step: ordinary training steps on ``L``. Instead of an autograd graph for the penalty,
      :meth:`add_penalty_grad` adds its gradient ``rho_i (W_i - Z_i + U_i)`` to ``W_i.grad``
      in place after ``loss.backward()``.
    * Z-step (:meth:`update`): ``Z_i <- Proj_{S_i}(W_i + U_i)``.
    * U-step: ``U_i <- U_i + W_i - Z_i``.
    * rho schedule: ``rho_i <- min(rho_i * rho_factor, rho_max)``, and ``U_i <- U_i * rho_old /
      rho_new`` so that the unscaled dual ``Y_i = rho_i U_i`` is unchanged.

    ``Z`` starts at ``Proj(W)`` and ``U`` at 0, so the penalty pulls towards the set from the first
    step even if no round boundary is ever reached.
    """

    def __init__(self, model: nn.Module, projectors: Mapping[str, Projector],
                 rho: float = 1e-3, rho_factor: float = 1.0, rho_max: float = math.inf,
                 near_tol: float = 1e-2) -> None:
        if rho <= 0 or rho_factor < 1 or rho_max < rho:
            raise ValueError(f"need rho > 0, rho_factor >= 1, rho_max >= rho; got rho={rho!r}, "
                             f"rho_factor={rho_factor!r}, rho_max={rho_max!r}")
        modules = dict(model.named_modules())
        self.names = list(projectors)
        self.weights = [modules[n].weight for n in self.names]
        self.projectors = [projectors[n] for n in self.names]
        self.rho = [float(rho)] * len(self.names)
        self.rho_factor, self.rho_max, self.near_tol = rho_factor, rho_max, near_tol
        self.rounds = 0
        with torch.no_grad():
            self.Z = [proj(weight_matrix(modules[n]))
                      for n, proj in zip(self.names, self.projectors, strict=True)]
        self.U = [torch.zeros_like(z) for z in self.Z]
        self._refresh_offsets()

    def _refresh_offsets(self) -> None:
        # (U - Z) in weight shape: the penalty gradient is rho * (W + offset).
        self._offsets = [(u - z).reshape(w.shape)
                         for u, z, w in zip(self.U, self.Z, self.weights, strict=True)]

    @torch.no_grad()
    def add_penalty_grad(self) -> None:
        """``W_i.grad += rho_i (W_i - Z_i + U_i)``: two fused in-place adds per layer."""
        for w, off, rho in zip(self.weights, self._offsets, self.rho, strict=True):
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            w.grad.add_(w, alpha=rho).add_(off, alpha=rho)

    @torch.no_grad()
    def penalty(self) -> float:
        """Value of ``sum_i rho_i / 2 * ||W_i - Z_i + U_i||_F^2``."""
        return sum(rho / 2 * (w + off).pow(2).sum().item()
                   for w, off, rho in zip(self.weights, self._offsets, self.rho, strict=True))

    @torch.no_grad()
    def update(self, task_loss: float | None = None) -> dict:
        """One ADMM round: Z-step, U-step, residuals, rho schedule. Returns the round's log.

        Per layer: ``primal = ||W - Z||_F``, ``dual = rho ||Z - Z_prev||_F`` (rho of this round),
        ``near`` = fraction of weights with ``|W - Z| <= near_tol * max|W|``.
        """
        layers = {}
        for i, name in enumerate(self.names):
            w, proj = self.weights[i], self.projectors[i]
            W = w.reshape(w.shape[0], -1)
            z_prev = self.Z[i]
            self.Z[i] = proj(W + self.U[i])
            self.U[i].add_(W - self.Z[i])
            gap = (W - self.Z[i]).abs()
            rho = self.rho[i]
            layers[name] = {
                "rho": rho,
                "primal": gap.norm().item(),
                "dual": rho * (self.Z[i] - z_prev).norm().item(),
                "near": (gap <= self.near_tol * W.abs().max()).float().mean().item(),
            }
            self.rho[i] = min(rho * self.rho_factor, self.rho_max)
            self.U[i].mul_(rho / self.rho[i])
        self._refresh_offsets()
        self.rounds += 1
        return {"round": self.rounds, "task_loss": task_loss, "layers": layers}

    def state_dict(self) -> dict:
        """Plain data: ``Z``, ``U`` (matrix views), ``rho`` per layer, number of rounds."""
        return {"Z": dict(zip(self.names, self.Z, strict=True)),
                "U": dict(zip(self.names, self.U, strict=True)),
                "rho": dict(zip(self.names, self.rho, strict=True)), "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (same layers)."""
        if set(state["Z"]) != set(self.names):
            raise ValueError(f"ADMM state is for layers {sorted(state['Z'])}, "
                             f"not {sorted(self.names)}")
        device = self.weights[0].device if self.weights else None
        self.Z = [state["Z"][n].to(device).clone() for n in self.names]
        self.U = [state["U"][n].to(device).clone() for n in self.names]
        self.rho = [float(state["rho"][n]) for n in self.names]
        self.rounds = int(state["rounds"])
        self._refresh_offsets()
