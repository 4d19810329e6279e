"""Weight-noise injection during retraining, for robustness to programming variation.

Training with noisy weights makes a network tolerate the conductance errors of a programmed
chip (Joshi et al., "Accurate deep neural network inference using computational phase-change
memory", Nature Communications 11, 2473, 2020). Here each weight of a selected layer is read as
``w * (1 + sigma * N(0, 1))``, independently per weight and per sample, which matches the
relative (log-normal-like) programming variation of a crossbar cell.

Instead of perturbing the weights (which would fight the masks, the optimizer and the ADMM
state), the equivalent output noise is added: for ``y = W x`` the output error
``sum_i w_i eps_i x_i`` is Gaussian with variance ``sigma^2 * sum_i w_i^2 x_i^2``, i.e.
``sigma^2 * (W^2)(x^2)`` -- one extra product with the squared weights (a convolution with the
squared kernel for Conv2d). The noise scale is not differentiated; gradients flow through the
noisy output as usual. Active in training mode only.

:func:`weight_noise` makes it a perturbation in the sense of :mod:`admm.perturbation`; the
pipeline's ``train_noise`` setting is ``weight_noise(train_noise, <compressed layers>)``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from memxbar.admm.constraints import crossbar_layers
from memxbar.admm.perturbation import Perturbation


def _noise_std(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    w2 = module.weight.detach() ** 2
    x2 = x.detach() ** 2
    if isinstance(module, nn.Conv2d):
        var = F.conv2d(x2, w2, None, module.stride, module.padding, module.dilation,
                       module.groups)
    else:
        var = F.linear(x2, w2)
    return var.sqrt_()


class WeightNoise:
    """Context manager adding relative weight noise ``sigma`` to the outputs of ``modules``
    (name -> Linear/Conv2d) while they are in training mode."""

    def __init__(self, modules: Mapping[str, nn.Module], sigma: float) -> None:
        if not sigma >= 0:
            raise ValueError(f"train_noise={sigma!r} is invalid; allowed: a number >= 0")
        self.modules = dict(modules)
        self.sigma = float(sigma)
        self._hooks: list = []

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        std = _noise_std(module, inputs[0])
        return output + self.sigma * std * torch.randn_like(output)

    def __enter__(self) -> WeightNoise:
        if self.sigma > 0:
            self._hooks = [m.register_forward_hook(self._hook) for m in self.modules.values()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def weight_noise(sigma: float, layers: Collection[str] | None = None) -> Perturbation:
    """The perturbation (:mod:`admm.perturbation`) ``model -> WeightNoise(layers, sigma)``:
    relative weight noise ``w * (1 + sigma * N(0, 1))`` on the Linear/Conv2d layers of the model
    named in ``layers`` (default: all of them)."""
    if not sigma >= 0:
        raise ValueError(f"train_noise={sigma!r} is invalid; allowed: a number >= 0")
    chosen = None if layers is None else set(layers)

    def perturb(model: nn.Module) -> WeightNoise:
        modules = {n: m for n, m in crossbar_layers(model).items()
                   if chosen is None or n in chosen}
        return WeightNoise(modules, sigma)

    return perturb
