"""Hardware-aware training: the simulator's forward pass with straight-through gradients.

A model that is trained only in software meets the chip's errors for the first time at
inference. Training with the device effects in the forward pass makes it tolerate them (Joshi
et al., "Accurate deep neural network inference using computational phase-change memory",
Nature Communications 11, 2473 (2020); Rasch et al., "Hardware-aware training for large-scale
and diverse deep learning inference workloads using in-memory computing-based accelerators",
Nature Communications 14, 5282 (2023)). :class:`HardwareAware` is a forward perturbation in the
``admm`` protocol (:mod:`admm.perturbation`): while its context is active, every training
forward pass of a mapped layer ``y = f(x; W)`` is replaced by

    W_hw  = the weights a freshly programmed chip holds (levels, programming variation,
            stuck-at faults after the repair steps, drift at t_inference_s, IR drop),
    y_hw  = the crossbar simulator's output on x (W_hw, per-MVM read noise, DAC and ADC with
            ranges calibrated on this batch, as :func:`crossbar.calibrate` sets them),
    y     = f(x; W + sg(W_hw - W)) + sg(y_hw - f(x; W + sg(W_hw - W)))

with ``sg`` the stop-gradient. The forward value is exactly the simulator's (so training sees
the chip's output distribution); the backward pass is that of the layer with the programmed
weights (straight-through for quantization and faults, Bengio et al. 2013). A new chip is
programmed for every step, its seed drawn from torch's global generator (so resumed runs are
identical). Per-chip output calibration is not applied in training (it is fitted per chip
after programming). Layers not in ``masks`` (or all, without masks) are mapped as the
pipeline maps them: their live weights are the mask's, or the non-zero ones.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import CrossbarConfig
from .convert import _crossbar_class, calibrate
from .device import DeviceModel
from .plan import crossbar_layers, plan_model
from .repair import RepairConfig


def _functional(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    return module._conv_forward(x, weight, module.bias)


class HardwareAware:
    """``HardwareAware(device, config)(model)`` is a context manager under which the mapped
    layers of ``model`` run through a newly programmed simulated chip at every training step.

    Args:
        device, config: the chip (as in :func:`crossbar.to_crossbar`).
        masks: live weights per layer (the compressor's masks); layers are planned from them.
        layers: names of the layers to map (default: the masks' keys, or every Linear/Conv).
        repair: fault repair at programming (default: compensation when the device has
            faults).
        calibrate_converters: calibrate DAC/ADC ranges on each training batch (default: when
            the config has converters).
    """

    def __init__(self, device: DeviceModel, config: CrossbarConfig,
                 masks: Mapping[str, torch.Tensor] | None = None,
                 layers: list[str] | None = None, repair: RepairConfig | None = None,
                 calibrate_converters: bool | None = None) -> None:
        if not isinstance(device, DeviceModel):
            raise TypeError(f"device must be a crossbar.DeviceModel, got "
                            f"{type(device).__name__}")
        if not isinstance(config, CrossbarConfig):
            raise TypeError(f"config must be a crossbar.CrossbarConfig, got "
                            f"{type(config).__name__}")
        self.device = device
        self.config = config.with_(output_calibration=False)
        self.masks = dict(masks or {})
        self.layers = list(layers) if layers is not None else (list(self.masks) or None)
        self.repair = repair
        self.calibrate_converters = (config.dac_bits is not None or config.adc_bits is not None
                                     ) if calibrate_converters is None else calibrate_converters
        self.steps = 0
        self._warned = False

    def __call__(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return self._active(model)

    @contextlib.contextmanager
    def _active(self, model: nn.Module) -> Iterator[None]:
        every = dict(crossbar_layers(model))
        # nn.MultiheadAttention's and the recurrent modules' forwards read their weights
        # directly: a hook on them never fires, so they cannot have the chip in the loop
        attention = {n for n in every if n not in dict(model.named_modules())
                     or _inside_attention(model, n)}
        if self.layers is None:
            names = [n for n in every if n not in attention]
            if attention and not self._warned:
                warnings.warn(f"HardwareAware: the attention projections and recurrent "
                              f"matrices {sorted(attention)} are trained without the chip in "
                              "the loop (nn.MultiheadAttention, nn.LSTM, nn.GRU and nn.RNN read "
                              "their weights directly); the other layers have it",
                              stacklevel=3)
                self._warned = True
        else:
            names = self.layers
        unknown = [n for n in names if n not in every]
        if unknown:
            raise ValueError(f"HardwareAware: layer {unknown[0]!r} is not a Linear/Conv layer "
                             f"of the model; allowed: {sorted(every)}")
        inside = [n for n in names if n in attention]
        if inside:
            raise ValueError(f"HardwareAware: layer {inside[0]!r} is a projection of an "
                             "nn.MultiheadAttention, whose forward reads its weights directly, "
                             "so the chip cannot be put in its training loop; allowed: the "
                             f"other layers ({sorted(set(every) - attention)})")
        with torch.no_grad():
            plan = plan_model(model, self.config,
                              masks={n: m for n, m in self.masks.items() if n in names},
                              exclude=[n for n in every if n not in names])
        hooks = []
        try:
            for name in names:
                hooks.append(every[name].register_forward_hook(self._hook(plan[name])))
            yield
        finally:
            for h in hooks:
                h.remove()

    def _hook(self, layer_plan):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not module.training:
                return output
            x = inputs[0]
            seed = int(torch.randint(0, 2**62, ()))  # global generator: resumable
            with torch.no_grad():
                chip = _crossbar_class(module)(module, layer_plan, self.device, self.config,
                                               seed=seed, repair=self.repair)
                chip = chip.to(x.device)
                if self.calibrate_converters:
                    calibrate(chip, x.detach())
                y_hw = chip(x.detach())
                w_hw = chip.weight.to(module.weight.dtype)
            self.steps += 1
            w = module.weight
            y_w = _functional(module, x, w + (w_hw - w).detach())
            return y_w + (y_hw - y_w).detach()
        return hook


def _inside_attention(model: nn.Module, name: str) -> bool:
    """Whether layer ``name`` belongs to an ``nn.MultiheadAttention`` of ``model``."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            if isinstance(model.get_submodule(".".join(parts[:i])), nn.MultiheadAttention):
                return True
        except AttributeError:
            continue
    return False


__all__ = ["HardwareAware"]
