"""The device side of a crossbar layer: one chain from the targets to the weights the tiles
hold, in a fixed order.

    target conductances (the mapping style packs each weight slice into cells)
      -> programmed: faults (test read, placement, compensation: :mod:`crossbar.repair`),
         write-verify or single-shot programming (:mod:`crossbar.chip`)
      -> drifted to the inference time
      -> effective through the array model (wires, :mod:`crossbar.arrays`)
      -> weights per tile and read-noise variances (cached for the forward pass)

:class:`~crossbar.layers.CrossbarLayer` holds the conductances as buffers; these functions
take the layer and fill or read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .chip import drifted, program_cells, tile_faults
from .mappings.base import CellGroup
from .repair import place_tile, repaired

if TYPE_CHECKING:
    from .layers import CrossbarLayer

def column_scale(name: str, live: torch.Tensor, scale: float | torch.Tensor | None
                  ) -> torch.Tensor:
    """``[out, 1]``: the weight a full-range cell pair holds, per output column. ``None``: the
    layer's largest |weight|; a float: one per-layer scale; a tensor ``[out]``: per column
    (e.g. the ADMM quantizer's scales, so its level grid is the device's)."""
    out = live.shape[0]
    if scale is None:
        value = float(live.abs().max()) or 1.0
        return torch.full((out, 1), value, dtype=live.dtype, device=live.device)
    allowed = f"a positive number or a tensor of {out} positive numbers (one per output)"
    try:
        if isinstance(scale, (str, bytes, bool)):
            raise TypeError
        t = torch.as_tensor(scale, dtype=live.dtype, device=live.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"scales[{name!r}]={scale!r} is invalid; allowed: {allowed}") from None
    if t.numel() == 1:
        t = t.reshape(1).expand(out)
    if t.shape != (out,) or not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"scales[{name!r}]={scale!r} is invalid; allowed: {allowed}")
    return t.reshape(out, 1).clone()


def wire_gain(g_eff: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``G_eff / G`` per cell (1 where a cell holds no conductance or the array is ideal): how
    much of a cell's conductance fluctuation reaches its bit line through the wire network, to
    first order. The voltage across a cell is set by the drop along its shared word and bit
    lines, which all the other cells' currents make, so a fluctuation ``dG`` of the cell moves
    its current by ``dG * V_cell`` with ``V_cell / v = G_eff / G``: the read-noise std is scaled
    by ``G_eff / G``. Against the finite-difference sensitivities of the solved network
    (``tests/test_irdrop.py``): within 6 % at 50 ohm per segment on 16 x 6 cells of 1-100 uS,
    where the unscaled std was 14-28 % high and the series-resistor form ``(G_eff / G)^2``
    (right only when the cell's own current makes the drop) 7-15 % low."""
    if g_eff is g:
        return torch.ones((), dtype=g.dtype, device=g.device)
    return torch.where(g > 0, g_eff / torch.where(g > 0, g, 1.0), 1.0)




def tile_row_mask(layer: CrossbarLayer) -> torch.Tensor:
    """Bool ``[T, in]``: the rows each tile drives."""
    mask = torch.zeros(layer.plan.n_tiles, layer.in_features, dtype=torch.bool)
    for t, tile in enumerate(layer.plan.tiles):
        mask[t, list(tile.rows)] = True
    return mask.to(layer.cell_mask.device)


@dataclass
class Cells:
    """One group of a layer's physical cells (:meth:`MappingStyle.cell_groups`): the layer's
    conductance buffer, the programming targets before repair and the cells that sit on a
    tile (``live``, ``g``'s shape). Every step of the chain runs group by group, each group
    from its own streams."""

    group: CellGroup
    g: torch.Tensor
    target: torch.Tensor
    live: torch.Tensor


def cell_groups(layer: CrossbarLayer) -> list[Cells]:
    """The layer's physical cells, group by group, as its mapping style declares them."""
    out = []
    for group in layer.style.cell_groups():
        g = getattr(layer, group.buffer)
        if group.per_tile:  # a cell on every word line its tile drives
            live = tile_row_mask(layer)
            target = torch.full_like(g, layer.style.reference_uS(layer.device_model))
        else:
            live = layer.cell_mask.expand_as(g)
            target = layer.g_nominal_uS
        out.append(Cells(group, g, target, live))
    return out


def per_tile_group(layer: CrossbarLayer) -> str | None:
    """The name of the style's per-tile group (the offset reference column), if any."""
    return next((g.name for g in layer.style.cell_groups() if g.per_tile), None)


def program_layer(layer: CrossbarLayer, seed: int) -> None:
    """Sample programming mismatch (or write-verify) and faults of every cell from chip
    ``seed``'s derived streams; unmapped cells (outside every tile) stay at 0 uS."""
    seed = int(seed) % (2**63)
    dev = layer.device_model
    layer.program_seed.fill_(seed)
    layer._gens = {}
    layer._noise_buffers = {}
    layer._array_cache = {}
    groups = cell_groups(layer)
    targets, stuck = repair_targets(layer, groups, seed)
    layer.records = {}  # write-verify (pulses, converged) per group; single-shot: implicit
    layer._pulses_known = True
    for cells in groups:
        name = cells.group.name
        done = program_cells(targets[name], dev, seed, layer.plan.name,
                             prefix=cells.group.prefix, stuck=stuck.get(name),
                             select=None if cells.group.per_tile else layer.verify_weights)
        live = cells.live.cpu()
        cells.g.copy_(done.g_uS * live)
        if done.pulses is not None:
            layer.records[name] = (done.pulses * live, done.converged | ~live)
    refresh(layer)


def _tile_shape(layer: CrossbarLayer, cells: Cells, tile) -> tuple[int, ...]:
    """The physical cells of ``cells``' group on one tile, spare lines included."""
    rows = len(tile.rows) + layer.config.spare_rows
    if cells.group.per_tile:
        return (rows,)
    return (*cells.g.shape[:2], len(tile.cols) + layer.config.spare_cols, rows)


def _place(cells: Cells, into: torch.Tensor, grid: torch.Tensor, t: int, rows: torch.Tensor,
           cols: torch.Tensor, row_at: torch.Tensor, col_at: torch.Tensor) -> None:
    """Write a tile's per-cell ``grid`` (physical positions) into ``into`` (logical layout),
    logical row ``i`` at word line ``row_at[i]`` and output ``j`` at ``col_at[j]``."""
    if cells.group.per_tile:
        into[t, rows] = grid[row_at]
    else:
        into[:, :, cols.unsqueeze(1), rows.unsqueeze(0)] = grid[:, :, col_at][:, :, :, row_at]


def repair_targets(layer: CrossbarLayer, groups: list[Cells], seed: int
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Test read, fault-aware placement and compensation (:mod:`crossbar.repair`): per cell
    group, the targets to program and the stuck value of every cell (NaN healthy; no entry
    without faults)."""
    dev, style, plan = layer.device_model, layer.style, layer.plan
    targets = {c.group.name: c.target.detach().cpu() for c in groups}
    layer.repair_stats = {}
    if not dev.active("faults"):
        return targets, {}
    repair, compensate = layer.repair, layer.repair.compensates(dev)
    nominal = targets["weights"]
    aux = per_tile_group(layer)
    nan = float("nan")
    stuck = {name: torch.full_like(t, nan) for name, t in targets.items()}
    detected = {name: torch.full_like(t, nan) for name, t in targets.items()}
    tile_of = torch.full((layer.out_features, layer.in_features), -1, dtype=torch.long)
    factors = layer.slice_factors.detach().cpu()[..., 0]  # [S, out]
    error_before = error_after = 0.0
    for t, tile in enumerate(plan.tiles):
        rows = torch.tensor(tile.rows, dtype=torch.long)
        cols = torch.tensor(tile.cols, dtype=torch.long)
        grids = {c.group.name: tile_faults(_tile_shape(layer, c, tile), dev, seed, plan.name, t,
                                           prefix=c.group.prefix, miss_rate=repair.miss_rate)
                 for c in groups}
        row_at, col_at = torch.arange(len(rows)), torch.arange(len(cols))
        if repair.placement:
            block = nominal[:, :, cols.unsqueeze(1), rows.unsqueeze(0)].permute(0, 2, 3, 1)
            row_at, col_at, before, after = place_tile(
                style, block, factors[:, cols], grids["weights"][1],
                None if aux is None else grids[aux][1], dev, compensate,
                repair.placement_rounds)
            error_before += before
            error_after += after
        for c in groups:
            grid, found = grids[c.group.name]
            _place(c, stuck[c.group.name], grid, t, rows, cols, row_at, col_at)
            _place(c, detected[c.group.name], found, t, rows, cols, row_at, col_at)
        tile_of[cols.unsqueeze(1), rows.unsqueeze(0)] = t
    aux_cell = None
    if aux is not None:  # each weight's own tile's reference cell in its row
        aux_cell = detected[aux][tile_of.clamp(min=0), torch.arange(layer.in_features)]
        aux_cell = torch.where(tile_of >= 0, aux_cell, torch.full_like(aux_cell, nan))
        aux_cell = aux_cell.expand(nominal.shape[0], -1, -1)
    repaired_w, _ = repaired(style, nominal.movedim(1, -1), detected["weights"].movedim(1, -1),
                             aux_cell, dev, compensate)
    targets["weights"] = repaired_w.movedim(-1, 1)

    def count(found: dict[str, torch.Tensor]) -> int:  # stuck live cells, every group
        return sum(int((~torch.isnan(found[c.group.name]) & c.live.cpu()).sum())
                   for c in groups)

    live_w = groups[0].live.cpu()
    layer.repair_stats = {
        "stuck": count(stuck), "detected": count(detected),
        "compensated": int(((targets["weights"] != nominal) & live_w
                            & torch.isnan(stuck["weights"])).sum()),
    }
    if repair.placement:
        layer.repair_stats.update(placement_error_identity=error_before,
                                 placement_error=error_after)
    return targets, stuck


def programming_stats(layer: CrossbarLayer) -> dict:
    """Pulses, convergence and programming error (``residual_uS`` = programmed - target,
    per live cell, before drift) of the last programming (every cell group)."""
    if not layer._pulses_known:
        raise ValueError(
            f"programming_stats: crossbar layer {layer.plan.name!r} holds a chip loaded from "
            "a state dict, which does not store write-verify pulse counts; allowed: "
            "program(seed) the chip here to count them")
    pulses, converged, live, residual = [], [], [], []
    tile_pulses = [0] * layer.plan.n_tiles
    for cells in cell_groups(layer):
        on = cells.live.cpu()
        record = layer.records.get(cells.group.name)
        # single-shot: one pulse on every live cell
        p, c = (on.to(torch.int16), torch.ones_like(on)) if record is None else record
        pulses.append(p.flatten())
        converged.append(c.flatten())
        live.append(on.flatten())
        residual.append((cells.g - cells.target).cpu().flatten())
        per_weight = p if cells.group.per_tile else p.sum(dim=(0, 1), dtype=torch.int64)
        for t, tile in enumerate(layer.plan.tiles):
            tile_pulses[t] += int(per_weight[t].sum()) if cells.group.per_tile else \
                int(per_weight[list(tile.cols)][:, list(tile.rows)].sum())
    pulses_t, conv_t, live_t = torch.cat(pulses), torch.cat(converged), torch.cat(live)
    return {"cells": int(live_t.sum()), "pulses": int(pulses_t.sum()),
            "tile_pulses": tile_pulses,
            "residual_uS": torch.cat(residual)[live_t],
            "max_pulses": int(pulses_t.max()) if pulses_t.numel() else 0,
            "failed": int((~conv_t & live_t).sum()),
            "pulse_counts": pulses_t[live_t].to(torch.int64)}


def programmed(layer: CrossbarLayer) -> dict[str, torch.Tensor]:
    """The programmed conductances of every cell group (at ``t = 0``): the layer's buffers."""
    return {g.name: getattr(layer, g.buffer) for g in layer.style.cell_groups()}


def state_at_time(layer: CrossbarLayer) -> dict[str, torch.Tensor]:
    """The conductances of every cell group at the device's inference time."""
    dev, seed, name = layer.device_model, int(layer.program_seed), layer.plan.name
    if dev.drift is None or dev.t_inference_s <= 0:
        return programmed(layer)
    # cells without a device stay at 0 uS (an additive drift law would move them)
    return {c.group.name: drifted(c.g, dev, seed, name, c.group.prefix, target=c.target)
            * c.live for c in cell_groups(layer)}


def weight_values(layer: CrossbarLayer, g: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weights ``[S, out, in]`` (weight units) that the cell groups' conductances ``g`` hold."""
    aux = per_tile_group(layer)
    ref = None
    if aux is not None:
        # each cell reads against its own tile's reference cell in the same row
        ref = torch.einsum("ot,ti->oi", tile_of_output(layer), g[aux])
    values = layer.style.weights(g["weights"].movedim(1, -1), ref, layer.device_model)
    return values * layer.cell_mask * layer.slice_factors


def tile_of_output(layer: CrossbarLayer) -> torch.Tensor:
    """One-hot ``[out, T]``: the tiles holding each output. An output meets several tiles
    (one per row range of its column group) whose rows are disjoint, and a tile's reference
    row is 0 uS outside its own rows (kept so after drift), so summing the tiles' reference
    rows picks, for every cell, the reference of its own tile."""
    onehot = torch.zeros(layer.out_features, layer.plan.n_tiles, device=layer.g_uS.device,
                         dtype=layer.g_uS.dtype)
    for idx in layer._units:
        onehot[idx.cols, torch.tensor(idx.tiles, device=onehot.device).repeat_interleave(
            idx.cols.numel() // len(idx.tiles))] = 1.0
    return onehot


def refresh(layer: CrossbarLayer) -> None:
    """Rebuild the cached per-tile weights (and read-noise variances) from the programmed
    conductances at the inference time."""
    layer._sync_ranges()
    dev = layer.device_model
    g = state_at_time(layer)
    g_eff = through_array(layer, g, dev.t_inference_s)
    values = weight_values(layer, g_eff)
    layer._tile_w = [layer._tile_major(layer._gather(values, idx), idx) for idx in layer._units]
    layer._gain = 1.0
    if layer.config.drift_compensation and dev.drift is not None and dev.t_inference_s > 0:
        at_zero = weight_values(layer, through_array(layer, programmed(layer), 0.0))
        now = float(values.abs().sum())
        layer._gain = float(at_zero.abs().sum()) / now if now > 0 else 1.0
    layer._tile_var = None
    if dev.active("read_noise") and layer._units:
        read_variances(layer, g, g_eff)
    del values


def read_variances(layer: CrossbarLayer, g: dict[str, torch.Tensor],
                   g_eff: dict[str, torch.Tensor]) -> None:
    """Cache each tile unit's read-noise variance matrix (weight units squared): every cell
    group's ``(std(G) G_eff/G / norm)^2``; the weight cells summed over a weight's cells, the
    per-tile group's column after each tile's own outputs (its noise is shared by them)."""
    dev, norm, at_zero = layer.device_model, layer.style.norm_uS(layer.device_model), \
        programmed(layer)

    def variance(name: str) -> torch.Tensor:
        return (dev.read_noise.std_uS(g[name], dev, at_zero[name])
                * wire_gain(g_eff[name], g[name]) / norm).square()

    var = variance("weights").sum(dim=1) * layer.cell_mask * layer.slice_factors.square()
    tile_var = [layer._tile_major(layer._gather(var, idx), idx).flatten(0, 1)
                for idx in layer._units]
    aux = per_tile_group(layer)
    if aux is not None:
        aux_var = variance(aux)
        tile_var = [torch.cat([v.unflatten(0, (len(idx.tiles), -1)), torch.stack(
            [layer._gather_aux(aux_var[t], idx) for t in idx.tiles])], dim=1).flatten(0, 1)
            for v, idx in zip(tile_var, layer._units, strict=True)]
    layer._tile_var = tile_var
    layer._aux_factor = [
        layer._tile_major(layer.slice_factors.index_select(1, idx.cols), idx).flatten()
        for idx in layer._units]


def through_array(layer: CrossbarLayer, g: dict[str, torch.Tensor], t_inference_s: float
                  ) -> dict[str, torch.Tensor]:
    """Effective conductances (uS) of every cell as the array model sees them: each tile's
    physical arrays, as the mapping packs them (``style.pack_tile``: one per cell of a pair,
    bit lines output by output, the auxiliary column last), are solved once and
    ``G_eff[i, j] = M[j, i]`` replaces the cell (``style.unpack_tile``), so the cached weights
    reproduce the array's column currents exactly (``I = M v`` is linear in the inputs)."""
    array = layer.config.array
    if array is None or array.ideal:
        return g
    w = g["weights"]
    key = (t_inference_s, w.device, w.dtype)
    if key in layer._array_cache:  # solved once per chip and time (not per .to() or call)
        return layer._array_cache[key]
    eff = {name: v.clone() for name, v in g.items()}
    aux = per_tile_group(layer)
    size = (layer.config.tile_rows, layer.config.tile_cols)
    for t, tile in enumerate(layer.plan.tiles):
        rows = torch.tensor(tile.rows, dtype=torch.long, device=w.device)
        cols = torch.tensor(tile.cols, dtype=torch.long, device=w.device)
        block = w[:, :, cols.unsqueeze(1), rows.unsqueeze(0)]  # [S, cells, cols, rows]
        phys = [a.double() * 1e-6 for a in layer.style.pack_tile(
            block, None if aux is None else g[aux][t, rows])]
        # a pair's G+ and G- arrays share each word line's driver (one DAC per word line)
        solved = array.effective_pair_in_tile(*phys, *size) if len(phys) == 2 else \
            [array.effective_in_tile(p, *size) for p in phys]
        cells, cells_aux = layer.style.unpack_tile([m.T * 1e6 for m in solved],
                                                   block.shape[0], len(tile.cols))
        eff["weights"][:, :, cols.unsqueeze(1), rows.unsqueeze(0)] = cells.to(w.dtype)
        if aux is not None:
            eff[aux][t, rows] = cells_aux.to(w.dtype)
    layer._array_cache[key] = eff
    return eff
