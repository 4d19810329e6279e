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

from typing import TYPE_CHECKING

import torch

from .chip import drifted, program_cells, tile_faults
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


def program_layer(layer: CrossbarLayer, seed: int) -> None:
    """Sample programming mismatch (or write-verify) and faults of every cell from chip
    ``seed``'s derived streams; unmapped cells (outside every tile) stay at 0 uS."""
    seed = int(seed) % (2**63)
    dev = layer.device_model
    layer.program_seed.fill_(seed)
    layer._gens = {}
    layer._noise_buffers = {}
    layer._array_cache = {}
    targets, stuck, aux_target, aux_stuck = repair_targets(layer, seed)
    cells = program_cells(targets, dev, seed, layer.plan.name, stuck=stuck,
                          select=layer.verify_weights)
    mask = layer.cell_mask.cpu()
    layer.g_uS.copy_(cells.g_uS * mask)
    verified = cells.pulses is not None  # single-shot: one pulse per cell, kept implicit
    layer._pulses_known = True
    layer.pulses = cells.pulses * mask if verified else None
    layer.converged = cells.converged | ~mask if verified else None
    if layer.style.reference_columns:
        aux_mask = tile_row_mask(layer).cpu()
        ref = program_cells(aux_target, dev, seed, layer.plan.name, prefix=layer.style.aux_prefix,
                            stuck=aux_stuck)
        layer.g_aux_uS.copy_(ref.g_uS * aux_mask)
        layer.aux_pulses = ref.pulses * aux_mask if verified else None
        layer.aux_converged = ref.converged | ~aux_mask if verified else None
    refresh(layer)


def repair_targets(layer: CrossbarLayer, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Test read, fault-aware placement and compensation (:mod:`crossbar.repair`): the
    targets to program and the stuck value of every cell (NaN healthy), for the weight
    cells ``[S, C, out, in]`` and the reference cells ``[T, in]``."""
    dev, style, plan = layer.device_model, layer.style, layer.plan
    nominal = layer.g_nominal_uS.detach().cpu()
    aux_target = torch.full(layer.g_aux_uS.shape, style.reference_uS(dev)) \
        if style.reference_columns else torch.zeros(0)
    layer.repair_stats = {}
    if not dev.active("faults"):
        return nominal, None, aux_target, None
    repair, compensate = layer.repair, layer.repair.compensates(dev)
    n_slices, n_cells = nominal.shape[:2]
    nan = float("nan")
    stuck = torch.full_like(nominal, nan)
    detected = torch.full_like(nominal, nan)
    aux_stuck = torch.full_like(aux_target, nan)
    aux_detected = torch.full_like(aux_target, nan)
    tile_of = torch.full((layer.out_features, layer.in_features), -1, dtype=torch.long)
    factors = layer.slice_factors.detach().cpu()[..., 0]  # [S, out]
    error_before = error_after = 0.0
    for t, tile in enumerate(plan.tiles):
        rows = torch.tensor(tile.rows, dtype=torch.long)
        cols = torch.tensor(tile.cols, dtype=torch.long)
        shape = (n_slices, n_cells, len(cols) + layer.config.spare_cols,
                 len(rows) + layer.config.spare_rows)
        grid, found = tile_faults(shape, dev, seed, plan.name, t, miss_rate=repair.miss_rate)
        aux_grid = aux_found = None
        if style.reference_columns:
            aux_grid, aux_found = tile_faults(shape[-1:], dev, seed, plan.name, t,
                                              prefix=layer.style.aux_prefix,
                                              miss_rate=repair.miss_rate)
        row_at, col_at = torch.arange(len(rows)), torch.arange(len(cols))
        if repair.placement:
            block = nominal[:, :, cols.unsqueeze(1), rows.unsqueeze(0)].permute(0, 2, 3, 1)
            row_at, col_at, before, after = place_tile(
                style, block, factors[:, cols], found, aux_found, dev, compensate,
                repair.placement_rounds)
            error_before += before
            error_after += after
        at = (slice(None), slice(None), cols.unsqueeze(1), rows.unsqueeze(0))
        stuck[at] = grid[:, :, col_at][:, :, :, row_at]
        detected[at] = found[:, :, col_at][:, :, :, row_at]
        tile_of[cols.unsqueeze(1), rows.unsqueeze(0)] = t
        if aux_grid is not None:
            aux_stuck[t, rows] = aux_grid[row_at]
            aux_detected[t, rows] = aux_found[row_at]
    aux_cell = None
    if style.reference_columns:  # each weight's own tile's reference cell in its row
        aux_cell = aux_detected[tile_of.clamp(min=0), torch.arange(layer.in_features)]
        aux_cell = torch.where(tile_of >= 0, aux_cell, torch.full_like(aux_cell, nan))
        aux_cell = aux_cell.expand(n_slices, -1, -1)
    targets, _ = repaired(style, nominal.movedim(1, -1), detected.movedim(1, -1), aux_cell,
                          dev, compensate)
    targets = targets.movedim(-1, 1)
    live = layer.cell_mask.cpu().bool().expand_as(nominal)
    aux_live = tile_row_mask(layer).cpu() if style.reference_columns else None

    def count(cells: torch.Tensor, ref: torch.Tensor) -> int:  # stuck live cells
        n = int((~torch.isnan(cells) & live).sum())
        return n if aux_live is None else n + int((~torch.isnan(ref) & aux_live).sum())

    layer.repair_stats = {
        "stuck": count(stuck, aux_stuck), "detected": count(detected, aux_detected),
        "compensated": int(((targets != nominal) & live & torch.isnan(stuck)).sum()),
    }
    if repair.placement:
        layer.repair_stats.update(placement_error_identity=error_before,
                                 placement_error=error_after)
    return targets, stuck, aux_target, (aux_stuck if style.reference_columns else None)


def programming_stats(layer: CrossbarLayer) -> dict:
    """Pulses, convergence and programming error (``residual_uS`` = programmed - target,
    per live cell, before drift) of the last programming (weight and reference cells)."""
    if not layer._pulses_known:
        raise ValueError(
            f"programming_stats: crossbar layer {layer.plan.name!r} holds a chip loaded from "
            "a state dict, which does not store write-verify pulse counts; allowed: "
            "program(seed) the chip here to count them")

    def counts(p: torch.Tensor | None, c: torch.Tensor | None, live: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if p is None:  # single-shot: one pulse on every live cell
            return live.to(torch.int16), torch.ones_like(live)
        return p, c

    live_w = layer.cell_mask.cpu().expand_as(layer.g_uS)
    pulses_w, conv_w = counts(layer.pulses, layer.converged, live_w)
    pulses, converged, live = [pulses_w.flatten()], [conv_w.flatten()], [live_w.flatten()]
    if layer.style.reference_columns:
        live_r = tile_row_mask(layer).cpu()
        pulses_r, conv_r = counts(layer.aux_pulses, layer.aux_converged, live_r)
        pulses.append(pulses_r.flatten())
        converged.append(conv_r.flatten())
        live.append(live_r.flatten())
    pulses_t, conv_t, live_t = torch.cat(pulses), torch.cat(converged), torch.cat(live)
    per_weight = pulses_w.sum(dim=(0, 1), dtype=torch.int64)  # [out, in]
    tile_pulses = []
    for t, tile in enumerate(layer.plan.tiles):
        n = int(per_weight[list(tile.cols)][:, list(tile.rows)].sum())
        if layer.style.reference_columns:
            n += int(pulses_r[t].sum())
        tile_pulses.append(n)
    residual = [(layer.g_uS - layer.g_nominal_uS).cpu().flatten()]
    if layer.style.reference_columns:
        target = layer.style.reference_uS(layer.device_model)
        residual.append((layer.g_aux_uS.cpu() - target).flatten())
    return {"cells": int(live_t.sum()), "pulses": int(pulses_t.sum()),
            "tile_pulses": tile_pulses,
            "residual_uS": torch.cat(residual)[live_t],
            "max_pulses": int(pulses_t.max()) if pulses_t.numel() else 0,
            "failed": int((~conv_t & live_t).sum()),
            "pulse_counts": pulses_t[live_t].to(torch.int64)}


def state_at_time(layer: CrossbarLayer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and reference conductances at the device's inference time."""
    dev, seed, name = layer.device_model, int(layer.program_seed), layer.plan.name
    if dev.drift is None or dev.t_inference_s <= 0:
        return layer.g_uS, (layer.g_aux_uS if layer.g_aux_uS.numel() else None)
    # cells without a device stay at 0 uS (an additive drift law would move them)
    g = drifted(layer.g_uS, dev, seed, name, target=layer.g_nominal_uS) * layer.cell_mask
    ref = None
    if layer.g_aux_uS.numel():
        target = torch.full_like(layer.g_aux_uS, layer.style.reference_uS(dev))
        ref = drifted(layer.g_aux_uS, dev, seed, name, layer.style.aux_prefix, target=target) \
            * tile_row_mask(layer)
    return g, ref


def weight_values(layer: CrossbarLayer, g: torch.Tensor, g_aux: torch.Tensor | None
                  ) -> torch.Tensor:
    """Weights ``[S, out, in]`` (weight units) that conductances ``g`` hold."""
    ref = None
    if g_aux is not None:
        # each cell reads against its own tile's reference cell in the same row
        ref = torch.einsum("ot,ti->oi", tile_of_output(layer), g_aux)
    values = layer.style.weights(g.movedim(1, -1), ref, layer.device_model)
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
    g, g_aux = state_at_time(layer)
    values = weight_values(layer, *through_array(layer, g, g_aux, dev.t_inference_s))
    layer._tile_w = [layer._tile_major(layer._gather(values, idx), idx) for idx in layer._units]
    layer._gain = 1.0
    if layer.config.drift_compensation and dev.drift is not None and dev.t_inference_s > 0:
        programmed = weight_values(layer, *through_array(layer,
            layer.g_uS, layer.g_aux_uS if g_aux is not None else None, 0.0))
        now = float(values.abs().sum())
        layer._gain = float(programmed.abs().sum()) / now if now > 0 else 1.0
    layer._tile_var = None
    if dev.active("read_noise") and layer._units:
        norm = layer.style.norm_uS(dev)
        g_eff, aux_eff = through_array(layer, g, g_aux, dev.t_inference_s)
        var = (dev.read_noise.std_uS(g, dev, layer.g_uS) * wire_gain(g_eff, g) / norm
               ).square().sum(dim=1)
        var = var * layer.cell_mask * layer.slice_factors.square()
        tile_var = [layer._tile_major(layer._gather(var, idx), idx).flatten(0, 1)
                    for idx in layer._units]
        if g_aux is not None:  # each tile's reference column after its own outputs
            aux_var = (dev.read_noise.std_uS(g_aux, dev, layer.g_aux_uS)
                       * wire_gain(aux_eff, g_aux) / norm).square()
            tile_var = [torch.cat([v.unflatten(0, (len(idx.tiles), -1)), torch.stack(
                [layer._gather_aux(aux_var[t], idx) for t in idx.tiles])], dim=1).flatten(0, 1)
                for v, idx in zip(tile_var, layer._units, strict=True)]
        layer._tile_var = tile_var
        layer._aux_factor = [
            layer._tile_major(layer.slice_factors.index_select(1, idx.cols), idx).flatten()
            for idx in layer._units]
    del values


def through_array(layer: CrossbarLayer, g: torch.Tensor, g_aux: torch.Tensor | None,
                   t_inference_s: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Effective conductances (uS) of every cell as the array model sees them: each tile's
    physical arrays, as the mapping packs them (``style.pack_tile``: one per cell of a pair,
    bit lines output by output, the auxiliary column last), are solved once and
    ``G_eff[i, j] = M[j, i]`` replaces the cell (``style.unpack_tile``), so the cached weights
    reproduce the array's column currents exactly (``I = M v`` is linear in the inputs)."""
    array = layer.config.array
    if array is None or array.ideal:
        return g, g_aux
    key = (t_inference_s, g.device, g.dtype)
    if key in layer._array_cache:  # solved once per chip and time (not per .to() or call)
        return layer._array_cache[key]
    g_eff = g.clone()
    aux_eff = None if g_aux is None else g_aux.clone()
    size = (layer.config.tile_rows, layer.config.tile_cols)
    for t, tile in enumerate(layer.plan.tiles):
        rows = torch.tensor(tile.rows, dtype=torch.long, device=g.device)
        cols = torch.tensor(tile.cols, dtype=torch.long, device=g.device)
        block = g[:, :, cols.unsqueeze(1), rows.unsqueeze(0)]  # [S, cells, cols, rows]
        phys = [a.double() * 1e-6 for a in layer.style.pack_tile(
            block, None if g_aux is None else g_aux[t, rows])]
        # a pair's G+ and G- arrays share each word line's driver (one DAC per word line)
        solved = array.effective_pair_in_tile(*phys, *size) if len(phys) == 2 else \
            [array.effective_in_tile(p, *size) for p in phys]
        eff, eff_aux = layer.style.unpack_tile([m.T * 1e6 for m in solved], block.shape[0],
                                               len(tile.cols))
        g_eff[:, :, cols.unsqueeze(1), rows.unsqueeze(0)] = eff.to(g.dtype)
        if aux_eff is not None:
            aux_eff[t, rows] = eff_aux.to(g.dtype)
    layer._array_cache[key] = (g_eff, aux_eff)
    return g_eff, aux_eff

