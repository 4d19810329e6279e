"""Array read energy from a programmed chip's conductances, measured on real inputs.

A word line driven at voltage ``V_i`` for a read pulse of ``t`` dissipates ``V_i^2 G_ij t`` in
every cell ``j`` on it (Joule heating of the cell; the bit lines are held at virtual ground by
the sense amplifiers), so one input cycle of one tile costs (e.g. Chen et al., NeuroSim, IEEE
TCAD 37(12) 2018, the array's read energy ``V^2 G t`` summed over the cells; Xia and Yang, Nat.
Mater. 18, 2019)::

    E = t * sum_i V_i^2 * sum_j G_ij        (i: word lines, j: every cell on line i:
                                              both arrays of a pair and the reference column)

with ``V_i = V_read * x_i / x_full`` for an amplitude-coded (parallel) DAC, and
``V_read`` on every bit that is 1 for a bit-serial DAC (one cycle per bit). The full-scale
read, every cell at ``g_max`` and every line at ``V_read`` in every cycle, is
``V_read^2 g_max t`` per cell read. Their ratio is the array's *activity*: the share of the
full-scale read energy a real input on a real chip dissipates. The cost model's table gives
the energy of a full array read; with ``cost.data_dependent`` the design's array energy is the
table's times the activity (otherwise the table's: the worst case).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from .digital import _batch_size as batch_size
from .digital import _forward as forward_once
from .layers import CrossbarConv2d, CrossbarLayer
from .physical import per_tile_group, state_at_time
from .programming import crossbar_modules

__all__ = ["READ_VOLTAGE_V", "ArrayActivity", "array_activity"]

READ_VOLTAGE_V = 0.2
"""Word-line voltage of a full-scale input when the crossbar config has no array model that
sets one (``array.read_voltage_V``, the same default; docs/crossbar.md)."""


@dataclass
class ArrayActivity:
    """One crossbar layer's measured array read, per sample."""

    name: str
    energy_pJ: float       # t * sum V^2 G over the sample's MVMs and input cycles
    full_scale_pJ: float   # V_read^2 g_max t per cell read, every cell of every cycle
    cells_read: float      # cells read per sample (MVMs x cycles x the layer's cells)

    @property
    def activity(self) -> float:
        return self.energy_pJ / self.full_scale_pJ if self.full_scale_pJ else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"activity": self.activity}


def _row_conductance(layer: CrossbarLayer) -> torch.Tensor:
    """``[groups, in]`` (uS): per word line, the conductance of every cell on it at the
    device's inference time (weight cells of every slice and array, reference column)."""
    g = state_at_time(layer)
    groups = getattr(layer, "groups", 1)
    per_out = g["weights"].detach().double().sum((0, 1))  # [out, in]
    rows = per_out.reshape(groups, -1, per_out.shape[-1]).sum(1)
    aux = per_tile_group(layer)
    if aux is not None:  # a tile's shared column lies on the word lines of its conv group
        width = layer.out_features // groups
        for t, tile in enumerate(layer.plan.tiles):
            if tile.cols:
                rows[tile.cols[0] // width] += g[aux][t].detach().double()
    return rows


def _drive_weight(layer: CrossbarLayer, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per input element, ``sum over cycles (V_i / V_read)^2`` and the cycles per MVM, from
    the layer's own DAC (:func:`crossbar.functional.dac_drive`): a parallel DAC's code over
    its largest code; a bit-serial DAC's bit planes (0/1 per cycle, the negative part of
    signed inputs on planes of its own), summed over the planes."""
    drive = functional.dac_drive(layer, x.detach())
    codes = drive.x.detach().double()
    if drive.plane_weights is not None:
        planes = codes.abs().unflatten(0, (drive.plane_weights.numel(), -1))
        return planes.sum(0), layer.config.dac_bits
    # an ideal DAC (no dac_bits) drives the value itself: full scale is the calibrated range
    top = drive.max_code if drive.max_code > 0 else (
        float(layer.dac_range) if float(layer.dac_range) > 0 else float(codes.abs().max()))
    u = (codes.abs() / top).clamp(max=1.0) if top > 0 else torch.zeros_like(codes)
    return u * u, 1


def _mvm_energy(layer: CrossbarLayer, x: torch.Tensor) -> tuple[float, float]:
    """``(sum V^2 G / (V_read^2 * 1 uS), MVMs)`` of one forward call, summed over the batch."""
    weight, _ = _drive_weight(layer, x)
    rows = _row_conductance(layer)
    if isinstance(layer, CrossbarConv2d):
        if weight.dim() == 3:  # CrossbarConv1d: [N, C, L] runs as a convolution of height 1
            weight = weight.unsqueeze(2)
        kernel = rows.reshape(rows.shape[0], -1, *layer.kernel_size).to(weight.dtype)
        out = F.conv2d(weight, kernel, None, layer.stride, layer.padding, layer.dilation,
                       layer.groups)
        return float(out.sum()), float(out[:, 0].numel())
    total = weight.reshape(-1, weight.shape[-1]) @ rows[0].to(weight.dtype)
    return float(total.sum()), float(total.numel())


def array_activity(model: nn.Module, example: torch.Tensor, read_voltage_V: float,
                   pulse_s: float) -> dict[str, ArrayActivity]:
    """Per crossbar layer of ``model`` (a chip from :func:`crossbar.to_crossbar`), its array
    read energy per sample on ``example`` (a batch of real inputs) and the full-scale read of
    the same cells (module docstring); ``pulse_s``: the read pulse of one input cycle (the
    table's array read time), ``read_voltage_V``: the word-line voltage of a full-scale
    input."""
    sums: dict[str, list[float]] = {}
    layers = dict(crossbar_modules(model))
    hooks = []
    for name, layer in layers.items():
        def hook(module, args, name=name):
            e, mvms = _mvm_energy(module, args[0])
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += e
            acc[1] += mvms
        hooks.append(layer.register_forward_pre_hook(hook))
    forward_once(model, example, hooks)
    batch = int(batch_size(example))
    scale = read_voltage_V ** 2 * 1e-6 * pulse_s * 1e12  # V^2 * uS * s -> pJ
    out = {}
    for name, (e, mvms) in sums.items():
        layer = layers[name]
        cycles = layer.config.dac_bits if (layer.config.bit_serial
                                           and layer.config.dac_bits) else 1
        cells = mvms / batch * cycles * layer.n_devices
        out[name] = ArrayActivity(name, e / batch * scale,
                                  cells * read_voltage_V ** 2 * layer.device_model.g_max_uS
                                  * 1e-6 * pulse_s * 1e12, cells)
    return out
