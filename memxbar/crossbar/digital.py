"""The digital work of a model that stays off the crossbars, counted on a real input.

The cost model prices the crossbar tiles of a mapping plan. Everything else a model computes runs
in digital logic: layers kept digital (``layers.digital``), BatchNorm and LayerNorm, pooling,
activations, attention's activation products (Q K^T and the weights times V) and the gate
arithmetic of recurrent layers. :func:`digital_work` runs the model once on a sample with forward
hooks and counts, per module and per sample:

* ``macs``: multiply-accumulates (a digital Linear/Conv: outputs x fan-in; attention: the two
  activation products, 2 L S E per sample; a sigmoid or tanh or GELU: one MAC each, a
  table look-up with a linear interpolation);
* ``ops``: simple operations (add, compare, multiply by a constant): BatchNorm 2 per element
  (scale and shift), LayerNorm 5 per element (mean, variance, normalise, scale, shift), ReLU
  1, pooling one per input element of a window, recurrent gates: GRU 5 H and LSTM 6 H
  element-wise operations per step and direction besides their activations;
* ``lookups``: an Embedding's output elements (memory reads of one word each).

Modules with no counting rule (and no weights on the crossbars) are returned with
``counted=False`` so that the report names them. :func:`digital_energy_pJ` prices the counts
with the table's ``digital_mac``, ``digital_op`` and ``buffer`` (per bit) entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

ELEMENTWISE_OPS = {nn.ReLU: 1, nn.ReLU6: 1, nn.LeakyReLU: 1, nn.Hardtanh: 1, nn.Dropout: 0,
                   nn.Identity: 0, nn.Flatten: 0, nn.BatchNorm1d: 2, nn.BatchNorm2d: 2,
                   nn.LayerNorm: 5, nn.GroupNorm: 5}
"""Simple operations per output element."""

TABLE_ACTIVATIONS = (nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Softmax, nn.Hardswish, nn.ELU)
"""Activations evaluated by a look-up table with interpolation: one MAC per element."""

GATE_OPS = {nn.GRU: (3, 5), nn.LSTM: (5, 6), nn.RNN: (1, 1)}
"""Recurrent layers: (activations, other element-wise operations) per hidden unit, step and
direction (GRU: 2 sigmoid + 1 tanh; r*h, n, (1-z), the two products and the sum. LSTM: 3
sigmoid + 2 tanh; f*c, i*g, c sum, o*tanh(c), the input and recurrent sums. RNN: the
activation and the sum)."""


@dataclass
class DigitalWork:
    """The digital work of one module per sample (see the module docstring)."""

    name: str
    kind: str
    macs: float = 0.0
    ops: float = 0.0
    lookups: float = 0.0
    counted: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _fan_in(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * _kernel(module)


def _count(module: nn.Module, inputs: tuple, output: object, batch: int) -> DigitalWork | None:
    """The work of one call of ``module`` per sample, or None where no rule applies."""
    out = output[0] if isinstance(output, tuple) else output
    n_out = out.numel() / batch if isinstance(out, torch.Tensor) else 0.0
    kind = type(module).__name__
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                           nn.ConvTranspose2d)):
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            fan = module.out_channels // module.groups * _kernel(module)
            n_in = inputs[0].numel() / batch  # every input spreads over fan outputs
            return DigitalWork("", kind, macs=n_in * fan)
        return DigitalWork("", kind, macs=n_out * _fan_in(module))
    if type(module) in ELEMENTWISE_OPS:
        return DigitalWork("", kind, ops=n_out * ELEMENTWISE_OPS[type(module)])
    if isinstance(module, TABLE_ACTIVATIONS):
        return DigitalWork("", kind, macs=n_out)
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                           nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                           nn.AdaptiveMaxPool2d)):
        return DigitalWork("", kind, ops=inputs[0].numel() / batch)
    if isinstance(module, nn.Embedding):
        return DigitalWork("", kind, lookups=n_out)
    if isinstance(module, nn.MultiheadAttention):
        query, key = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
        seq_dim = 1 if module.batch_first else 0
        length, source = query.shape[seq_dim], key.shape[seq_dim]
        # Q K^T and (softmax) V: L S E MACs each; the softmax: one table look-up per score
        return DigitalWork("", kind, macs=2 * length * source * module.embed_dim
                           + module.num_heads * length * source)
    if isinstance(module, tuple(GATE_OPS)):
        x = inputs[0]
        if isinstance(x, nn.utils.rnn.PackedSequence):
            steps = float(x.data.shape[0]) / batch
        else:
            steps = x.shape[1 if module.batch_first else 0] if x.dim() == 3 else x.shape[0]
        acts, ops = GATE_OPS[type(module)]
        units = module.hidden_size * module.num_layers * (2 if module.bidirectional else 1)
        return DigitalWork("", kind, macs=steps * units * acts, ops=steps * units * ops)
    return None


def _kernel(module: nn.Module) -> int:
    kernel = 1
    for k in module.kernel_size:
        kernel *= k
    return kernel


def _batch_size(example: torch.Tensor | Iterable) -> int:
    if isinstance(example, torch.Tensor):
        return example.shape[0]
    return next(iter(example)).shape[0]


def _forward(model: nn.Module, example: torch.Tensor, hooks: list) -> None:
    """One forward pass of ``model`` in eval mode without gradients; then the ``hooks`` are
    removed and the model's training mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def digital_work(model: nn.Module, mapped: Iterable[str], example: torch.Tensor
                 ) -> list[DigitalWork]:
    """Per module of ``model`` that runs off the crossbars, its work per sample, measured by one
    forward pass on ``example`` (a batch). ``mapped``: the names of the layers on crossbars (a
    plan's layers; a recurrent layer's matrices ``<rnn>.ih_l0``... leave its gate arithmetic
    here). Containers are not counted (their leaves are); a leaf module with no rule is
    returned with ``counted=False``."""
    mapped = set(mapped)
    batch = _batch_size(example)
    found: dict[str, DigitalWork] = {}
    hooks = []
    units = (nn.MultiheadAttention, *GATE_OPS)

    def inside_unit(name: str) -> bool:
        return any(name.startswith(u + ".") for u in unit_names)

    unit_names = [n for n, m in model.named_modules() if isinstance(m, units)]
    for name, module in model.named_modules():
        if not name or name in mapped or inside_unit(name):
            continue
        if list(module.children()) and not isinstance(module, units):
            continue  # a container: its leaves count

        def hook(mod, inputs, output, name=name):
            work = _count(mod, inputs, output, batch)
            if work is None:
                found.setdefault(name, DigitalWork(name, type(mod).__name__, counted=False))
                return
            prev = found.get(name)
            work.name = name
            if prev is not None:  # a module called more than once per forward: add up
                work.macs += prev.macs
                work.ops += prev.ops
                work.lookups += prev.lookups
            found[name] = work

        hooks.append(module.register_forward_hook(hook))
    _forward(model, example, hooks)
    return [w for w in found.values() if w.macs or w.ops or w.lookups or not w.counted]


def input_zero_fractions(model: nn.Module, mapped: Iterable[str], example: torch.Tensor
                         ) -> dict[str, float]:
    """Per mapped layer (a module named in ``mapped``), the share of its input elements that are
    exactly zero on ``example`` (e.g. after a ReLU): the drives a design that skips zero inputs
    would not spend (a convolution's zero padding is not counted). Layers whose input is not a
    tensor are left out."""
    mapped = set(mapped)
    zeros: dict[str, list[float]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in mapped:
            def hook(mod, inputs, name=name):
                x = inputs[0] if inputs else None
                if isinstance(x, torch.Tensor) and x.numel():
                    z = zeros.setdefault(name, [0.0, 0.0])
                    z[0] += float((x == 0).sum())
                    z[1] += x.numel()
            hooks.append(module.register_forward_pre_hook(hook))
    _forward(model, example, hooks)
    return {name: z / n for name, (z, n) in zeros.items()}


def digital_energy_pJ(work: DigitalWork, mac_J: float, op_J: float, lookup_J: float) -> float:
    """Energy of ``work`` per sample (pJ) at the given energies per MAC, operation and look-up."""
    return (work.macs * mac_J + work.ops * op_J + work.lookups * lookup_J) * 1e12
