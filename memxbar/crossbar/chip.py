"""Programming a chip: target conductances -> the conductances a chip holds (pure functions).

For every cell, in this order, each effect from its own derived stream (:mod:`.streams`):

1. programming mismatch (the device's programming model), single-shot or with write-verify;
2. faults: stuck cells ignore every pulse (write-verify keeps pulsing them and reports them
   as failed unless the stuck value happens to lie in the band);
3. drift to ``t_inference_s`` (applied when the cached weights are built, so a new inference
   time re-uses the programmed chip).

Draws are made on the CPU so that the same seed gives the same chip on any torch device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .device import DeviceModel
from .streams import stream


@dataclass
class ProgrammedCells:
    """Conductances (uS), pulses per cell and whether each cell converged (write-verify;
    ``None`` for single-shot programming: one pulse per cell, nothing to converge)."""

    g_uS: torch.Tensor
    pulses: torch.Tensor | None
    converged: torch.Tensor | None


def program_cells(target: torch.Tensor, device: DeviceModel, seed: int, layer: str,
                  prefix: str = "", stuck: torch.Tensor | None = None,
                  select: torch.Tensor | None = None) -> ProgrammedCells:
    """Program ``target`` (uS, any shape) on chip ``seed``; ``prefix`` separates the streams of
    the reference cells (``"reference_"``) from the weight cells'. ``stuck``: the stuck value
    of each cell (NaN healthy), as the crossbar layers draw them per physical tile
    (:func:`tile_faults`); by default each cell draws its fault from the ``faults`` stream in
    ``target``'s own layout. ``select``: with write-verify, the cells verified (bool,
    broadcast to ``target``; None: all)."""
    target = target.detach().to("cpu", torch.float32)
    programming = device.programming if device.active("programming") else None
    if stuck is None and device.active("faults"):
        uniform = torch.rand(target.shape, generator=stream(seed, layer, prefix + "faults"))
        stuck = device.faults.stuck(uniform, device)
    settle = None
    if stuck is not None and bool(torch.isfinite(stuck).any()):
        stuck = stuck.to("cpu", torch.float32)

        def settle(g: torch.Tensor) -> torch.Tensor:  # a stuck cell ignores every pulse
            return torch.where(torch.isnan(stuck), g, stuck)

    normal = None
    if programming is not None:
        normal = torch.randn(target.shape, generator=stream(seed, layer, prefix + "programming"))
    if device.write_verify is not None:
        result = device.write_verify.program(
            target, programming, device.read_noise if device.active("read_noise") else None,
            device, normal if normal is not None else torch.zeros_like(target),
            stream(seed, layer, prefix + "write_verify"), settle,
            None if select is None else select.to("cpu", torch.bool).expand(target.shape))
        return ProgrammedCells(result.g_uS, result.pulses, result.converged)
    g = target.clone() if programming is None else programming.sample(target, normal, device)
    return ProgrammedCells(g if settle is None else settle(g), None, None)


def drifted(g: torch.Tensor, device: DeviceModel, seed: int, layer: str, prefix: str = "",
            target: torch.Tensor | None = None) -> torch.Tensor:
    """The conductances ``g`` at ``device.t_inference_s`` after programming (``g`` itself
    without a drift model or at ``t = 0``). ``target``: the programmed targets, for drift laws
    whose parameters depend on the state (default ``g``). The per-cell drift draws depend only
    on the chip seed, so one chip drifts consistently over time."""
    if device.drift is None or device.t_inference_s <= 0:
        return g
    normal = torch.randn(g.shape, generator=stream(seed, layer, prefix + "drift"))
    return device.drift.at_time(g, device.t_inference_s, normal.to(g.device, g.dtype), device,
                                g if target is None else target)


def tile_faults(shape: tuple[int, ...], device: DeviceModel, seed: int, layer: str, tile: int,
                prefix: str = "", miss_rate: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stuck cells of one physical tile array ``shape`` (e.g. ``[S, C, P_out, P_in]`` with the
    spare lines), each tile from its own stream so placement can move logical cells over it:
    ``(stuck, detected)``, the stuck conductance of every cell and the ones the test read
    finds (a stuck cell is missed with probability ``miss_rate``), NaN where healthy / missed.
    """
    if not device.active("faults"):
        nan = torch.full(shape, float("nan"))
        return nan, nan
    uniform = torch.rand(shape, generator=stream(seed, layer, f"{prefix}faults.tile{tile}"))
    stuck = device.faults.stuck(uniform, device)
    if miss_rate <= 0:
        return stuck, stuck
    miss = torch.rand(shape, generator=stream(seed, layer, f"{prefix}detection.tile{tile}"))
    return stuck, torch.where(miss < miss_rate, torch.full_like(stuck, float("nan")), stuck)
