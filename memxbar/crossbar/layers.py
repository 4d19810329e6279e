"""Crossbar layers: a Linear or Conv2d computed tile by tile on simulated memristor arrays.

Each layer holds the programmed conductances of its live tiles (see :mod:`crossbar.plan`). A
forward pass

1. drives the inputs through the DAC (``dac_bits``; optionally bit-serial),
2. computes every tile's partial sums from its programmed conductances, with read noise drawn
   for every matrix-vector product (per sample, convolution position, input-bit cycle and
   weight slice) and optional noise at the ADC input,
3. quantizes each tile's partial sums with its ADC (per weight slice, per input cycle),
4. adds the tiles' digital results (shift-and-add over slices and input bits, the drift
   compensation gain) and the bias.

Programming (mismatch, write-verify), faults and drift are folded into the cached tile weights
once per ``program()`` / inference time; the forward pass only adds read noise.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .chip import drifted, program_cells, tile_faults
from .conductance import slice_values
from .config import CrossbarConfig
from .converters import Drive, get_adc, get_dac
from .device import DeviceModel
from .mappings import mapping_style
from .periphery import signed_steps
from .plan import LayerPlan, matrix_view
from .repair import RepairConfig, place_tile, repaired
from .streams import stream


@dataclass
class _TileIndex:
    """Where the weights and inputs of the tiles one product computes live (derived from the
    plan): one tile, or, in a grouped convolution, the tiles that hold the same group-local
    rows and as many outputs each, computed together as one grouped convolution with one
    group per tile (every tile keeps its own weights, read noise, ADCs and ranges)."""

    tiles: tuple[int, ...]  # the plan's tile indices
    cols: torch.Tensor  # output indices, tile after tile
    rows: torch.Tensor  # matrix rows (linear) or group-local input channels (conv), shared
    inputs: torch.Tensor  # input indices (rows or channels of x), tile after tile
    input_slice: slice | None  # ``inputs`` as a contiguous range, else None (gather)
    row_mask: torch.Tensor | None  # conv: [channels, kh*kw] rows of the tiles, when partial
    n_rows: int  # live word lines of each tile
    col_slice: slice | None = None  # ``cols`` as a contiguous range, else None (index_add)


class InputShapeError(ValueError):
    """An input that does not fit a crossbar layer (names the layer and the expected shape)."""


def _as_slice(index: list[int]) -> slice | None:
    if index and index == list(range(index[0], index[-1] + 1)):
        return slice(index[0], index[-1] + 1)
    return None


class CrossbarLayer(nn.Module):
    """Common state and periphery of :class:`CrossbarLinear` and :class:`CrossbarConv2d`."""

    groups = 1

    is_crossbar = True

    _exact_sums = False
    """Whether tile products feeding an ADC are summed in float64 and rounded once to float32
    (:class:`CrossbarLinear`): BLAS picks another summation order for another batch size, so
    a partial sum exactly half-way between two ADC codes (inputs and weights on their grids)
    fell on either side, and a batch of 1 and of 256 gave 5 of 52,224 LeNet-5 outputs one
    step apart. Rounded from float64, an exact tie is the same float32 tie in any batch.
    Convolutions keep float32 (oneDNN's convolution gave the same codes in every batch
    measured, and float64 would double the simulator's time)."""

    def __init__(
        self,
        source: nn.Linear | nn.Conv2d,
        plan: LayerPlan,
        device: DeviceModel,
        config: CrossbarConfig,
        seed: int = 0,
        scale: float | torch.Tensor | None = None,
        repair: RepairConfig | None = None,
    ) -> None:
        super().__init__()
        weight = matrix_view(source).detach().float()
        self._weight_shape = tuple(source.weight.shape)
        if plan.in_features != weight.shape[1] or plan.out_features != weight.shape[0]:
            raise ValueError(
                f"plan for layer {plan.name!r} has shape "
                f"[{plan.out_features}, {plan.in_features}]; the layer's matrix is "
                f"{list(weight.shape)}"
            )
        self.plan = plan
        self.device_model = device
        self.config = config
        self.style = mapping_style(config.mapping)
        self._dac_model = get_dac(config.dac)
        self._adc_model = get_adc(config.adc_range)
        self.out_features, self.in_features = weight.shape
        self.bias = None if source.bias is None else nn.Parameter(source.bias.detach().clone())

        cell_mask = plan.cell_mask(weight.device)
        live = weight * cell_mask
        col_scale = _column_scale(plan.name, live, scale)
        values, factors = slice_values(live, col_scale, config.weight_bits, config.cell_bits)
        del live
        self.register_buffer("cell_mask", cell_mask)
        self.register_buffer("slice_factors", factors)
        # [S, cells, out, in]: cells of each weight slice (G+, G- or the single offset cell)
        nominal = self.style.nominal(values, device).movedim(-1, 1)
        del values
        self.register_buffer("g_nominal_uS", nominal)
        self.register_buffer("g_uS", torch.zeros_like(nominal))
        n_slices, n_tiles = factors.shape[0], plan.n_tiles
        dev = weight.device
        # one reference column per tile (offset style), shared by the tile's slices and outputs
        n_ref = n_tiles if self.style.reference_columns else 0
        self.register_buffer("g_ref_uS", torch.zeros(n_ref, self.in_features, device=dev))
        self.register_buffer("program_seed", torch.zeros((), dtype=torch.int64, device=dev))
        self.register_buffer("dac_range", torch.zeros((), device=dev))
        self.register_buffer("dac_signed", torch.ones((), dtype=torch.bool, device=dev))
        self.register_buffer("adc_range", torch.zeros(n_tiles, n_slices, device=dev))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool, device=dev))
        # per-output digital gain and offset after the ADCs (CrossbarConfig.output_calibration)
        self.register_buffer("out_gain", torch.ones(self.out_features, device=dev))
        self.register_buffer("out_offset", torch.zeros(self.out_features, device=dev))
        self.repair = repair if repair is not None else RepairConfig()
        self.repair_stats: dict = {}
        self._units = self._tile_indices()
        self._calibrating: str | None = None
        self._calibration_inputs: torch.Tensor | None = None
        self._gens: dict[str, list[torch.Generator]] = {}
        self._noise_buffers: dict[tuple, torch.Tensor] = {}
        self._array_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.pulses: torch.Tensor | None = None
        self.converged: torch.Tensor | None = None
        self.ref_pulses: torch.Tensor | None = None
        self.ref_converged: torch.Tensor | None = None
        self._pulses_known = True
        # selective write-verify: the weights ([out, in], bool) whose cells are verified (None:
        # all; crossbar.to_crossbar(verify=...)); not in the state dict
        self.verify_weights: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(_after_load)
        # fused fast paths (nn.TransformerEncoderLayer in eval mode) read ``weight`` directly
        # and would skip the simulation; they stand down when a submodule has a forward hook
        self.register_forward_pre_hook(_keep_module_forward)
        self._register_load_state_dict_pre_hook(_upgrade_state, with_module=True)
        self._program(seed)

    # ------------------------------------------------------------------------------ programming
    def _tile_row_mask(self) -> torch.Tensor:
        """Bool ``[T, in]``: the rows each tile drives."""
        mask = torch.zeros(self.plan.n_tiles, self.in_features, dtype=torch.bool)
        for t, tile in enumerate(self.plan.tiles):
            mask[t, list(tile.rows)] = True
        return mask.to(self.cell_mask.device)

    @property
    def weight(self) -> torch.Tensor:
        """The weights this chip holds now (programmed, drifted, through the array model;
        without read noise and converters), shaped like the source layer's ``weight``: a
        read-only view for code that reads ``layer.weight`` (e.g. attention modules)."""
        dev = self.device_model
        g, g_ref = self._state_at_time()
        values = self._values(*self._through_array(g, g_ref, dev.t_inference_s)).sum(0)
        return values.reshape(self._weight_shape).detach()

    @property
    def n_devices(self) -> int:
        """Memristors this layer simulates (weight cells and reference cells); equals
        ``plan.n_devices``, which the cost model charges."""
        s, c = self.g_uS.shape[:2]
        ref = int(self._tile_row_mask().sum()) * self.style.reference_columns
        return int(self.cell_mask.sum()) * s * c + ref

    def program(self, seed: int) -> None:
        """Program a new chip (same seed, same chip) and recalibrate its converters on the
        stored calibration batch (see :func:`crossbar.program`)."""
        program(self, seed)

    def _program(self, seed: int) -> None:
        """Sample programming mismatch (or write-verify) and faults of every cell from chip
        ``seed``'s derived streams; unmapped cells (outside every tile) stay at 0 uS."""
        seed = int(seed) % (2**63)
        dev = self.device_model
        self.program_seed.fill_(seed)
        self._gens = {}
        self._noise_buffers = {}
        self._array_cache = {}
        targets, stuck, ref_target, ref_stuck = self._repair(seed)
        cells = program_cells(targets, dev, seed, self.plan.name, stuck=stuck,
                              select=self.verify_weights)
        mask = self.cell_mask.cpu()
        self.g_uS.copy_(cells.g_uS * mask)
        verified = cells.pulses is not None  # single-shot: one pulse per cell, kept implicit
        self._pulses_known = True
        self.pulses = cells.pulses * mask if verified else None
        self.converged = cells.converged | ~mask if verified else None
        if self.style.reference_columns:
            ref_mask = self._tile_row_mask().cpu()
            ref = program_cells(ref_target, dev, seed, self.plan.name, prefix="reference_",
                                stuck=ref_stuck)
            self.g_ref_uS.copy_(ref.g_uS * ref_mask)
            self.ref_pulses = ref.pulses * ref_mask if verified else None
            self.ref_converged = ref.converged | ~ref_mask if verified else None
        self._refresh()

    def _repair(self, seed: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                          torch.Tensor | None]:
        """Test read, fault-aware placement and compensation (:mod:`crossbar.repair`): the
        targets to program and the stuck value of every cell (NaN healthy), for the weight
        cells ``[S, C, out, in]`` and the reference cells ``[T, in]``."""
        dev, style, plan = self.device_model, self.style, self.plan
        nominal = self.g_nominal_uS.detach().cpu()
        ref_target = torch.full(self.g_ref_uS.shape, style.reference_uS(dev)) \
            if style.reference_columns else torch.zeros(0)
        self.repair_stats = {}
        if not dev.active("faults"):
            return nominal, None, ref_target, None
        repair, compensate = self.repair, self.repair.compensates(dev)
        n_slices, n_cells = nominal.shape[:2]
        nan = float("nan")
        stuck = torch.full_like(nominal, nan)
        detected = torch.full_like(nominal, nan)
        ref_stuck = torch.full_like(ref_target, nan)
        ref_detected = torch.full_like(ref_target, nan)
        tile_of = torch.full((self.out_features, self.in_features), -1, dtype=torch.long)
        factors = self.slice_factors.detach().cpu()[..., 0]  # [S, out]
        error_before = error_after = 0.0
        for t, tile in enumerate(plan.tiles):
            rows = torch.tensor(tile.rows, dtype=torch.long)
            cols = torch.tensor(tile.cols, dtype=torch.long)
            shape = (n_slices, n_cells, len(cols) + self.config.spare_cols,
                     len(rows) + self.config.spare_rows)
            grid, found = tile_faults(shape, dev, seed, plan.name, t, miss_rate=repair.miss_rate)
            ref_grid = ref_found = None
            if style.reference_columns:
                ref_grid, ref_found = tile_faults(shape[-1:], dev, seed, plan.name, t,
                                                  prefix="reference_",
                                                  miss_rate=repair.miss_rate)
            row_at, col_at = torch.arange(len(rows)), torch.arange(len(cols))
            if repair.placement:
                block = nominal[:, :, cols.unsqueeze(1), rows.unsqueeze(0)].permute(0, 2, 3, 1)
                row_at, col_at, before, after = place_tile(
                    style, block, factors[:, cols], found, ref_found, dev, compensate,
                    repair.placement_rounds)
                error_before += before
                error_after += after
            at = (slice(None), slice(None), cols.unsqueeze(1), rows.unsqueeze(0))
            stuck[at] = grid[:, :, col_at][:, :, :, row_at]
            detected[at] = found[:, :, col_at][:, :, :, row_at]
            tile_of[cols.unsqueeze(1), rows.unsqueeze(0)] = t
            if ref_grid is not None:
                ref_stuck[t, rows] = ref_grid[row_at]
                ref_detected[t, rows] = ref_found[row_at]
        ref_cell = None
        if style.reference_columns:  # each weight's own tile's reference cell in its row
            ref_cell = ref_detected[tile_of.clamp(min=0), torch.arange(self.in_features)]
            ref_cell = torch.where(tile_of >= 0, ref_cell, torch.full_like(ref_cell, nan))
            ref_cell = ref_cell.expand(n_slices, -1, -1)
        targets, _ = repaired(style, nominal.movedim(1, -1), detected.movedim(1, -1), ref_cell,
                              dev, compensate)
        targets = targets.movedim(-1, 1)
        live = self.cell_mask.cpu().bool().expand_as(nominal)
        ref_live = self._tile_row_mask().cpu() if style.reference_columns else None

        def count(cells: torch.Tensor, ref: torch.Tensor) -> int:  # stuck live cells
            n = int((~torch.isnan(cells) & live).sum())
            return n if ref_live is None else n + int((~torch.isnan(ref) & ref_live).sum())

        self.repair_stats = {
            "stuck": count(stuck, ref_stuck), "detected": count(detected, ref_detected),
            "compensated": int(((targets != nominal) & live & torch.isnan(stuck)).sum()),
        }
        if repair.placement:
            self.repair_stats.update(placement_error_identity=error_before,
                                     placement_error=error_after)
        return targets, stuck, ref_target, (ref_stuck if style.reference_columns else None)

    def set_inference_time(self, t_inference_s: float) -> None:
        """Let the programmed chip drift to ``t_inference_s`` seconds after programming."""
        self.device_model = self.device_model.with_(t_inference_s=t_inference_s)
        self._refresh()

    def programming_stats(self) -> dict:
        """Pulses, convergence and programming error (``residual_uS`` = programmed - target,
        per live cell, before drift) of the last programming (weight and reference cells)."""
        if not self._pulses_known:
            raise ValueError(
                f"programming_stats: crossbar layer {self.plan.name!r} holds a chip loaded from "
                "a state dict, which does not store write-verify pulse counts; allowed: "
                "program(seed) the chip here to count them")

        def counts(p: torch.Tensor | None, c: torch.Tensor | None, live: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if p is None:  # single-shot: one pulse on every live cell
                return live.to(torch.int16), torch.ones_like(live)
            return p, c

        live_w = self.cell_mask.cpu().expand_as(self.g_uS)
        pulses_w, conv_w = counts(self.pulses, self.converged, live_w)
        pulses, converged, live = [pulses_w.flatten()], [conv_w.flatten()], [live_w.flatten()]
        if self.style.reference_columns:
            live_r = self._tile_row_mask().cpu()
            pulses_r, conv_r = counts(self.ref_pulses, self.ref_converged, live_r)
            pulses.append(pulses_r.flatten())
            converged.append(conv_r.flatten())
            live.append(live_r.flatten())
        pulses_t, conv_t, live_t = torch.cat(pulses), torch.cat(converged), torch.cat(live)
        per_weight = pulses_w.sum(dim=(0, 1), dtype=torch.int64)  # [out, in]
        tile_pulses = []
        for t, tile in enumerate(self.plan.tiles):
            n = int(per_weight[list(tile.cols)][:, list(tile.rows)].sum())
            if self.style.reference_columns:
                n += int(pulses_r[t].sum())
            tile_pulses.append(n)
        residual = [(self.g_uS - self.g_nominal_uS).cpu().flatten()]
        if self.style.reference_columns:
            target = self.style.reference_uS(self.device_model)
            residual.append((self.g_ref_uS.cpu() - target).flatten())
        return {"cells": int(live_t.sum()), "pulses": int(pulses_t.sum()),
                "tile_pulses": tile_pulses,
                "residual_uS": torch.cat(residual)[live_t],
                "max_pulses": int(pulses_t.max()) if pulses_t.numel() else 0,
                "failed": int((~conv_t & live_t).sum()),
                "pulse_counts": pulses_t[live_t].to(torch.int64)}

    # ---------------------------------------------------------------------------------- caches
    def _tile_indices(self) -> list[_TileIndex]:
        raise NotImplementedError

    @staticmethod
    def _tile_major(m: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        """``[S, tiles*cols, ...]`` gathered for a unit of tiles -> ``[tiles*S, cols, ...]``
        (each tile's slices together, the order of the unit's grouped product)."""
        n = len(idx.tiles)
        return m if n == 1 else m.unflatten(1, (n, -1)).transpose(0, 1).flatten(0, 1)

    def _state_at_time(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and reference conductances at the device's inference time."""
        dev, seed, name = self.device_model, int(self.program_seed), self.plan.name
        if dev.drift is None or dev.t_inference_s <= 0:
            return self.g_uS, (self.g_ref_uS if self.g_ref_uS.numel() else None)
        # cells without a device stay at 0 uS (an additive drift law would move them)
        g = drifted(self.g_uS, dev, seed, name, target=self.g_nominal_uS) * self.cell_mask
        ref = None
        if self.g_ref_uS.numel():
            target = torch.full_like(self.g_ref_uS, self.style.reference_uS(dev))
            ref = drifted(self.g_ref_uS, dev, seed, name, "reference_", target=target) \
                * self._tile_row_mask()
        return g, ref

    def _values(self, g: torch.Tensor, g_ref: torch.Tensor | None) -> torch.Tensor:
        """Weights ``[S, out, in]`` (weight units) that conductances ``g`` hold."""
        ref = None
        if g_ref is not None:
            # each cell reads against its own tile's reference cell in the same row
            ref = torch.einsum("ot,ti->oi", self._tile_of_output(), g_ref)
        values = self.style.weights(g.movedim(1, -1), ref, self.device_model)
        return values * self.cell_mask * self.slice_factors

    def _tile_of_output(self) -> torch.Tensor:
        """One-hot ``[out, T]``: the tiles holding each output. An output meets several tiles
        (one per row range of its column group) whose rows are disjoint, and a tile's reference
        row is 0 uS outside its own rows (kept so after drift), so summing the tiles' reference
        rows picks, for every cell, the reference of its own tile."""
        onehot = torch.zeros(self.out_features, self.plan.n_tiles, device=self.g_uS.device,
                             dtype=self.g_uS.dtype)
        for idx in self._units:
            onehot[idx.cols, torch.tensor(idx.tiles, device=onehot.device).repeat_interleave(
                idx.cols.numel() // len(idx.tiles))] = 1.0
        return onehot

    def _refresh(self) -> None:
        """Rebuild the cached per-tile weights (and read-noise variances) from the programmed
        conductances at the inference time."""
        self._sync_ranges()
        dev = self.device_model
        g, g_ref = self._state_at_time()
        values = self._values(*self._through_array(g, g_ref, dev.t_inference_s))
        self._tile_w = [self._tile_major(self._gather(values, idx), idx) for idx in self._units]
        self._gain = 1.0
        if self.config.drift_compensation and dev.drift is not None and dev.t_inference_s > 0:
            programmed = self._values(*self._through_array(
                self.g_uS, self.g_ref_uS if g_ref is not None else None, 0.0))
            now = float(values.abs().sum())
            self._gain = float(programmed.abs().sum()) / now if now > 0 else 1.0
        self._tile_var = None
        if dev.active("read_noise") and self._units:
            norm = self.style.norm_uS(dev)
            g_eff, ref_eff = self._through_array(g, g_ref, dev.t_inference_s)
            var = (dev.read_noise.std_uS(g, dev, self.g_uS) * _wire_gain(g_eff, g) / norm
                   ).square().sum(dim=1)
            var = var * self.cell_mask * self.slice_factors.square()
            tile_var = [self._tile_major(self._gather(var, idx), idx).flatten(0, 1)
                        for idx in self._units]
            if g_ref is not None:  # each tile's reference column after its own outputs
                ref_var = (dev.read_noise.std_uS(g_ref, dev, self.g_ref_uS)
                           * _wire_gain(ref_eff, g_ref) / norm).square()
                tile_var = [torch.cat([v.unflatten(0, (len(idx.tiles), -1)), torch.stack(
                    [self._gather_ref(ref_var[t], idx) for t in idx.tiles])], dim=1).flatten(0, 1)
                    for v, idx in zip(tile_var, self._units, strict=True)]
            self._tile_var = tile_var
            self._ref_factor = [
                self._tile_major(self.slice_factors.index_select(1, idx.cols), idx).flatten()
                for idx in self._units]
        del values

    def _through_array(self, g: torch.Tensor, g_ref: torch.Tensor | None,
                       t_inference_s: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Effective conductances (uS) of every cell as the array model sees them: each tile's
        physical arrays (one per cell of a pair; bit lines ordered output by output, the weight
        slices of an output side by side, the offset reference column last) are solved once
        and ``G_eff[i, j] = M[j, i]`` replaces the cell, so the cached weights reproduce the
        array's column currents exactly (``I = M v`` is linear in the inputs)."""
        array = self.config.array
        if array is None or array.ideal:
            return g, g_ref
        key = (t_inference_s, g.device, g.dtype)
        if key in self._array_cache:  # solved once per chip and time (not per .to() or call)
            return self._array_cache[key]
        g_eff = g.clone()
        ref_eff = None if g_ref is None else g_ref.clone()
        n_slices, n_cells = g.shape[:2]
        for t, tile in enumerate(self.plan.tiles):
            rows = torch.tensor(tile.rows, dtype=torch.long, device=g.device)
            cols = torch.tensor(tile.cols, dtype=torch.long, device=g.device)
            n_rows, n_cols = len(tile.rows), len(tile.cols)
            block = g[:, :, cols.unsqueeze(1), rows.unsqueeze(0)]  # [S, cells, cols, rows]
            phys = [block[:, k].permute(2, 1, 0).reshape(n_rows, n_cols * n_slices).double()
                    * 1e-6 for k in range(n_cells)]
            if ref_eff is not None:
                phys[0] = torch.cat([phys[0], g_ref[t, rows].unsqueeze(1).double() * 1e-6], 1)
            size = (self.config.tile_rows, self.config.tile_cols)
            # a pair's G+ and G- arrays share each word line's driver (one DAC per word line)
            solved = array.effective_pair_in_tile(*phys, *size) if n_cells == 2 else \
                [array.effective_in_tile(p, *size) for p in phys]
            for k, m in enumerate(solved):
                eff = m.T * 1e6  # [rows, bit lines] uS
                main = eff[:, :n_cols * n_slices].reshape(n_rows, n_cols, n_slices)
                g_eff[:, k, cols.unsqueeze(1), rows.unsqueeze(0)] = main.permute(2, 1, 0).to(
                    g.dtype)
                if ref_eff is not None:
                    ref_eff[t, rows] = eff[:, -1].to(g.dtype)
        self._array_cache[key] = (g_eff, ref_eff)
        return g_eff, ref_eff

    def _gather(self, m: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        raise NotImplementedError

    def _gather_ref(self, ref: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        """One tile's reference column ``[in]`` as one more output ``[1, rows...]``."""
        raise NotImplementedError

    def _apply(self, fn, *args, **kwargs):  # keep caches on the module's device and dtype
        out = super()._apply(fn, *args, **kwargs)
        self._units = self._tile_indices()
        moved = {}
        for (t, _, dtype), vals in self._array_cache.items():  # a move keeps the solve,
            new = tuple(None if v is None else fn(v) for v in vals)  # a new dtype re-solves
            if new[0].dtype == dtype:
                moved[(t, new[0].device, dtype)] = new
        self._array_cache = moved
        self._refresh()
        self._noise_buffers = {}  # streams continue (recreated only on another device)
        return out

    def _generators(self, effect: str) -> list[torch.Generator]:
        """The per-MVM streams of ``effect`` (read noise, ADC noise) of this chip and layer,
        on the module's device (continue across forward calls): :data:`NOISE_CHUNKS`
        generators, one per chunk of a noise tensor, so a CPU draw runs on several threads
        and gives the same numbers whatever the thread count."""
        gens = self._gens.get(effect)
        if gens is None or gens[0].device != self.g_uS.device:
            gens = [stream(int(self.program_seed), f"{self.plan.name}#{k}", effect,
                           self.g_uS.device) for k in range(NOISE_CHUNKS)]
            self._gens[effect] = gens
        return gens

    def _normal(self, like: torch.Tensor, effect: str) -> torch.Tensor:
        """Standard-normal draws shaped like ``like`` from the ``effect`` streams, in a buffer
        kept per (effect, shape) and reused by the next tile or call (drawing into fresh
        memory costs as much as the draw itself); consume it before the next draw."""
        key = (effect, tuple(like.shape))
        buf = self._noise_buffers.get(key)
        if buf is None or buf.shape != like.shape or buf.device != like.device \
                or buf.dtype != like.dtype:
            buf = torch.empty_like(like, memory_format=torch.contiguous_format)
            self._noise_buffers[key] = buf
        chunks = buf.view(-1).chunk(NOISE_CHUNKS)
        gens = self._generators(effect)
        if buf.device.type == "cpu" and buf.numel() >= 1 << 16 and torch.get_num_threads() > 1:
            inference = torch.is_inference(buf)  # inference mode is per thread

            def fill(chunk: torch.Tensor, gen: torch.Generator) -> None:
                with torch.inference_mode(inference):
                    chunk.normal_(generator=gen)

            rest = [_noise_pool().submit(fill, c, g) for c, g in zip(chunks[1:], gens[1:],
                                                                   strict=False)]
            chunks[0].normal_(generator=gens[0])  # the calling thread draws the first chunk
            for future in rest:
                future.result()
        else:
            for chunk, gen in zip(chunks, gens, strict=False):
                chunk.normal_(generator=gen)
        return buf.clone() if torch.is_grad_enabled() else buf  # autograd keeps it

    # ------------------------------------------------------------------------------- periphery
    # Inputs and partial sums are kept in converter code units: the DAC step is folded into the
    # tile weights and the ADC step divides them, so each converter costs a round and a clamp
    # on the activations and the scales are applied to the (small) weights instead.
    def _sync_ranges(self) -> None:
        """Cache the converter ranges as Python numbers (no device sync in the forward)."""
        self._dac = (float(self.dac_range), bool(self.dac_signed))
        self._adc = self.adc_range.tolist()
        self._is_calibrated = bool(self.calibrated)
        factors = self.slice_factors.amax(dim=2)  # [S, out]
        self._largest_factor = [factors[:, list(t.cols)].amax(dim=1).tolist()
                                for t in self.plan.tiles]

    def _input_range(self, x: torch.Tensor) -> tuple[float, bool]:
        if self._dac[0] > 0:
            return self._dac
        return float(x.detach().abs().max()), bool((x < 0).any())

    def _drive(self, x: torch.Tensor) -> Drive:
        """DAC: the driven input (codes; bit planes stacked on dim 0 when bit-serial)."""
        if self._calibrating == "dac":
            peak = _peak(x.detach().abs().flatten(), self.config.range_percentile)
            self.dac_range.fill_(max(float(self.dac_range), float(peak)))
            self.dac_signed.fill_(bool(self.dac_signed) or bool((x < 0).any()))
            return Drive(x, None, 1.0, 0.0)
        bits = self.config.dac_bits
        if bits is None:
            full = 0.0
            if self.config.adc_bits is not None and not self._adc_model.needs_calibration:
                full = self._input_range(x)[0]
            return Drive(x, None, 1.0, full)
        full, signed = self._input_range(x)
        return self._dac_model.drive(x, full, signed, bits)

    def _adc_steps(self, idx: _TileIndex, drive: Drive) -> list[float] | None:
        """ADC step per weight slice of each tile of ``idx``, tile after tile (``None``: ideal
        or calibrating)."""
        bits = self.config.adc_bits
        if bits is None or self._calibrating is not None:
            return None
        full = drive.step * drive.max_code * idx.n_rows
        q = signed_steps(bits)
        steps = []
        for t in idx.tiles:
            ranges = self._adc_model.ranges(
                self.plan.name, self._adc[t] if self._is_calibrated else None,
                [full * f for f in self._largest_factor[t]])
            steps += [max(r, 1e-30) / q for r in ranges]
        return steps

    def _record_adc(self, p: torch.Tensor, idx: _TileIndex) -> None:
        """Calibration: widen each tile's per-slice ADC range to the partial sums ``p``
        (``[N', tiles*S, cols, ...]``) seen."""
        per_slice = p.detach().abs().transpose(0, 1).reshape(p.shape[1], -1)
        peak = torch.stack([_peak(v, self.config.range_percentile) for v in per_slice])
        tiles = list(idx.tiles)
        self.adc_range[tiles] = torch.maximum(self.adc_range[tiles],
                                              peak.view(len(tiles), -1))

    def _read_noise(self, p: torch.Tensor, x2: torch.Tensor, u: int, idx: _TileIndex,
                    k: torch.Tensor | float) -> torch.Tensor:
        """Add this matrix-vector product's read noise to the partial sums ``p`` (codes,
        ``[N', S*cols, ...]``). Every cell's read is ``G + std(G) N`` with a new ``N`` per
        product, so output ``j`` gets Gaussian noise of variance ``sum_i x_i^2 var_ij``: one
        product of ``x^2`` with the tile's variance matrix (exact, no per-sample conductances).
        The offset style's reference column is one more column of that product whose noise is
        shared by every output of the tile (subtracted with each output's weight factor). A unit
        of ``b`` tiles holds ``b`` such blocks, tile after tile (``u``: the unit's index)."""
        var = self._tile_var[u]
        n_out, b = p.shape[1], len(idx.tiles)
        m = n_out // b  # outputs x slices of each tile
        ones = [1] * (var.dim() - 1)
        if isinstance(k, torch.Tensor):  # per-slice scale, repeated over each slice's columns
            k_cols = k.repeat_interleave(n_out // k.numel())
        else:
            k_cols = None
        if var.shape[0] > n_out:  # reference columns: unscaled (per-output factors below)
            blocks = var.unflatten(0, (b, -1))
            own = blocks[:, :m] * (k_cols.square().view(b, m, *ones)
                                   if k_cols is not None else k * k)
            var = torch.cat([own, blocks[:, m:]], dim=1).flatten(0, 1)
        elif k_cols is not None:
            var = var * k_cols.square().view(-1, *ones)
        else:
            var = var * (k * k)
        # a sum of non-negative products: no clamp needed before the root
        std = self._tile_product(x2, var.to(x2.dtype), idx).to(p.dtype).sqrt_()
        if std.shape[1] == n_out:
            return p.addcmul_(std, self._normal(std, "read"))
        std = std.mul_(self._normal(std, "read")).unflatten(1, (b, -1))
        own = p.unflatten(1, (b, m))  # a view: p changes in place
        own.add_(std[:, :, :m])
        factor = self._ref_factor[u] * (k_cols if k_cols is not None else k)
        own.sub_(std[:, :, m:] * factor.view(1, b, m, *([1] * (p.dim() - 2))))
        return p

    def _bf16_variance(self, x2: torch.Tensor) -> bool:
        """Whether the read-noise variance product runs in bfloat16 (``noise_precision``
        ``"auto"`` on a CPU with native bfloat16, float32 models only)."""
        return (self.config.noise_precision == "auto" and x2.dtype == torch.float32
                and x2.device.type == "cpu" and _cpu_has_bf16())

    def _accumulate(self, x: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
        drive = self._drive(x)
        noisy = self._tile_var is not None and self._calibrating is None
        x2 = None
        if noisy:  # bit planes are 0/1: their square is themselves
            x2 = drive.x if drive.plane_weights is not None else drive.x * drive.x
            if self._bf16_variance(x2):
                x2 = x2.to(torch.bfloat16)
        adc_noise = self.config.adc_noise if self._calibrating is None else 0.0
        out = None
        full_cover = all(idx.cols.numel() == self.out_features for idx in self._units)
        for u, idx in enumerate(self._units):
            steps = self._adc_steps(idx, drive)
            w = self._tile_w[u]
            n_slices = w.shape[0]
            if steps is not None and len(steps) == 1:
                k: torch.Tensor | float = drive.step / steps[0]
            elif steps is not None:
                k = torch.tensor([drive.step / s for s in steps], dtype=w.dtype,
                                 device=w.device)
            else:
                k = drive.step
            if isinstance(k, torch.Tensor):
                w = w * k.view(-1, *([1] * (w.dim() - 1)))
            elif k != 1.0:
                w = w * k
            if steps is not None and self._exact_sums and w.dtype == torch.float32 \
                    and self._calibrating is None:
                # float64 sums, rounded once to float32: the same codes in any batch
                p = self._tile_product(drive.x.double(), w.flatten(0, 1).double(), idx).float()
            else:
                p = self._tile_product(drive.x, w.flatten(0, 1), idx)  # [N', S*cols, ...]
            if noisy:
                p = self._read_noise(p, x2, u, idx, k)
            if steps is not None and adc_noise > 0:
                q = signed_steps(self.config.adc_bits)
                p = p.add_(self._normal(p, "adc_noise"), alpha=adc_noise * q)
            p = p.unflatten(1, (n_slices, -1))
            if self._calibrating == "adc":
                self._record_adc(p, idx)
            if steps is not None:
                q = signed_steps(self.config.adc_bits)
                p = p.round_().clamp_(-q, q)
            p, alpha = self._combine(p, steps, drive.plane_weights, len(idx.tiles))
            alpha *= self._gain
            if full_cover and out is None:
                out = p if alpha == 1.0 else p.mul_(alpha)
            elif full_cover:
                out.add_(p, alpha=alpha)
            else:
                if out is None:
                    out = p.new_zeros(out_shape)
                if idx.col_slice is not None:  # a slice add is ~10x cheaper than index_add_
                    out[:, idx.col_slice].add_(p, alpha=alpha)
                else:
                    out.index_add_(1, idx.cols, p, alpha=alpha)
        if out is None:  # nothing mapped: every weight pruned
            out = drive.x.new_zeros(out_shape)
        if self.bias is not None:
            out = out.add_(self.bias.view(1, -1, *([1] * (out.dim() - 2))))
        if self.config.output_calibration and self._calibrating is None:
            shape = (1, -1, *([1] * (out.dim() - 2)))
            out = out.mul_(self.out_gain.view(shape)).add_(self.out_offset.view(shape))
        return out

    @staticmethod
    def _combine(p: torch.Tensor, steps: list[float] | None,
                 plane_w: torch.Tensor | None, n_tiles: int = 1) -> tuple[torch.Tensor, float]:
        """Digital side: ADC codes times their step, shift-and-add over input bit planes
        (dim 0 of ``[P*N, S, ...]``) and over weight slices (dim 1; ``[P*N, tiles*S, ...]``
        for a unit of ``n_tiles`` tiles, each tile's slices summed). A single scalar step is
        returned instead of applied, so the caller folds it into the accumulation."""
        alpha = 1.0
        if steps is not None:
            if len(steps) == 1 and plane_w is None:
                alpha = steps[0]
            elif len(steps) == 1:
                p = p.mul_(steps[0])
            else:
                scale = torch.tensor(steps, dtype=p.dtype, device=p.device)
                p = p.mul_(scale.view(1, -1, *([1] * (p.dim() - 2))))
        if plane_w is not None:
            p = torch.tensordot(plane_w, p.unflatten(0, (plane_w.numel(), -1)), dims=([0], [0]))
        if n_tiles > 1:
            return p.unflatten(1, (n_tiles, -1)).sum(dim=2).flatten(1, 2), alpha
        return (p.sum(dim=1) if p.shape[1] > 1 else p.squeeze(1)), alpha

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        """``x`` through one tile's weights ``w[C, rows...]`` -> ``[N', C, ...]``."""
        raise NotImplementedError

    def get_extra_state(self) -> dict:
        """The device and periphery the conductances were programmed for (plain data)."""
        return {"device": self.device_model.to_dict(), "config": self.config.to_dict()}


    def set_extra_state(self, state: dict) -> None:
        theirs_dev = state.get("device")
        if theirs_dev is not None:  # 0.1 states carry flat device keys: read them as 0.1 did
            theirs_dev = DeviceModel.from_dict(theirs_dev).to_dict()
        theirs_cfg = state.get("config")
        if theirs_cfg is not None:  # keys added after 0.1 take their defaults
            theirs_cfg = CrossbarConfig.from_dict(theirs_cfg).to_dict()
        mine_dev = self.device_model.to_dict()
        if theirs_dev is not None:  # the chip's time is state, not a property of the device
            self.device_model = self.device_model.with_(t_inference_s=theirs_dev[
                "t_inference_s"])
            mine_dev["t_inference_s"] = theirs_dev["t_inference_s"]
        mine_cfg = self.config.to_dict()
        if theirs_cfg is not None:  # simulation arithmetic, not a property of the chip
            theirs_cfg["noise_precision"] = mine_cfg["noise_precision"]
        for key, mine, theirs in (("device", mine_dev, theirs_dev),
                                  ("config", mine_cfg, theirs_cfg)):
            if theirs is not None and theirs != mine:
                changed = sorted(k for k in mine if theirs.get(k) != mine[k])
                raise ValueError(
                    f"state_dict for crossbar layer {self.plan.name!r} was programmed with "
                    f"another {key}: {changed[0]}={theirs.get(changed[0])!r}; this layer has "
                    f"{changed[0]}={mine[changed[0]]!r}")

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return (
            f"{self.in_features} rows -> {self.out_features} cols{groups}, "
            f"tiles={self.plan.n_tiles}, "
            f"mapping={self.config.mapping}, dac_bits={self.config.dac_bits}, "
            f"adc_bits={self.config.adc_bits}"
        )


_PERCENTILE_SAMPLE = 1 << 20


@functools.cache
def _cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions and matmuls natively on this CPU
    (AVX512-BF16 or AMX); emulated bfloat16 would be slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


NOISE_CHUNKS = 2
"""Streams per noise effect and layer (a CPU draw runs one chunk per thread)."""
_POOL: list[ThreadPoolExecutor] = []


def _noise_pool() -> ThreadPoolExecutor:
    """Threads that draw noise chunks in parallel (torch releases the GIL while it fills)."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(NOISE_CHUNKS, thread_name_prefix="crossbar-noise"))
    return _POOL[0]


def _peak(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """The ``percentile`` of non-negative ``values`` (their maximum at 100). Large tensors are
    subsampled with a fixed stride (deterministic) to at most 2^20 values."""
    if percentile >= 100.0:
        return values.max()
    stride = max(1, values.numel() // _PERCENTILE_SAMPLE)
    return torch.quantile(values[::stride].float(), percentile / 100.0)


def _column_scale(name: str, live: torch.Tensor, scale: float | torch.Tensor | None
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


def _wire_gain(g_eff: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
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


def _tile_inputs(x: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
    """The inputs (dim 1 of ``x``) that drive the word lines of ``idx``'s tiles."""
    return x[:, idx.input_slice] if idx.input_slice is not None else x.index_select(1, idx.inputs)


def _keep_module_forward(module: nn.Module, args: tuple) -> None:
    """No-op forward pre-hook: its presence turns off PyTorch's fused Transformer fast path,
    which reads ``linear.weight`` itself instead of calling the (crossbar) layer."""
    return None


def _after_load(module: CrossbarLayer, incompatible) -> None:
    expected = module.plan.cell_mask(module.cell_mask.device)
    if not torch.equal(expected, module.cell_mask):
        raise ValueError(
            f"state_dict for crossbar layer {module.plan.name!r} was programmed with another "
            "mapping plan (its cell mask differs from this layer's plan)"
        )
    module._gens = {}
    module._array_cache = {}  # another chip's conductances
    if module.device_model.write_verify is not None:  # pulse counts are not in the state
        module.pulses = module.converged = module.ref_pulses = module.ref_converged = None
        module._pulses_known = False
    module._refresh()


def _upgrade_state(module: CrossbarLayer, state_dict: dict, prefix: str, *args) -> None:
    """0.1 states hold one offset reference cell per weight slice ``[S, T, in]`` (all at the
    same target); one reference column per tile is the hardware the plan describes: keep the
    first slice's cells."""
    for name, fill in (("out_gain", 1.0), ("out_offset", 0.0)):  # states before 0.2
        if prefix + "g_uS" in state_dict and prefix + name not in state_dict:
            state_dict[prefix + name] = torch.full_like(getattr(module, name), fill)
    key = prefix + "g_ref_uS"
    ref = state_dict.get(key)
    if ref is not None and ref.dim() == 3:
        state_dict[key] = ref[0] if module.g_ref_uS.numel() else ref[0, :0]


class CrossbarLinear(CrossbarLayer):
    """``nn.Linear`` on crossbar tiles (inputs on word lines, outputs on bit lines)."""

    _exact_sums = True

    def _tile_indices(self) -> list[_TileIndex]:
        dev = self.cell_mask.device
        out = []
        for i, t in enumerate(self.plan.tiles):
            rows = torch.tensor(t.rows, dtype=torch.long, device=dev)
            out.append(_TileIndex(tiles=(i,), cols=torch.tensor(t.cols, dtype=torch.long,
                                                                device=dev),
                                  rows=rows, inputs=rows, input_slice=_as_slice(list(t.rows)),
                                  row_mask=None, n_rows=t.n_rows,
                                  col_slice=_as_slice(list(t.cols))))
        return out

    def _gather(self, m: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        # one advanced index: no [S, cols, in] intermediate per tile
        return m[:, idx.cols.unsqueeze(1), idx.rows.unsqueeze(0)]

    def _gather_ref(self, ref: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        return ref.index_select(0, idx.rows).unsqueeze(0)  # [1, rows]

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        return F.linear(_tile_inputs(x, idx), w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise InputShapeError(f"crossbar layer {self.plan.name!r}: input of shape "
                                  f"{tuple(x.shape)}; expected [..., {self.in_features}]")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out = self._accumulate(x2, (x2.shape[0], self.out_features))
        return out.reshape(*lead, self.out_features)


class CrossbarConv2d(CrossbarLayer):
    """``nn.Conv2d`` on crossbar tiles: the im2col matrix ``W[out, in*kh*kw]`` is mapped; each
    tile is computed as a convolution over the input channels whose kernel rows it holds.

    Grouped and depthwise convolutions (``groups = G``): each group is its own matrix
    ``[out/G, in/G*kh*kw]`` on its own tiles (:func:`crossbar.plan.plan_layer`); tiles of
    different groups that hold the same group-local rows are computed together as one grouped
    convolution (one product for all 128 tiles of a 128-channel depthwise layer)."""

    def __init__(self, source: nn.Conv2d, plan: LayerPlan, device: DeviceModel,
                 config: CrossbarConfig, seed: int = 0,
                 scale: float | torch.Tensor | None = None,
                 repair: RepairConfig | None = None) -> None:
        if plan.groups != source.groups:
            raise ValueError(
                f"plan for layer {plan.name!r} has groups={plan.groups}; allowed: "
                f"groups={source.groups}, the layer's")
        if isinstance(source.padding, str):
            raise ValueError(
                f"layer {plan.name!r}: padding={source.padding!r} is not supported; allowed: "
                "explicit integer padding (e.g. kernel_size // 2 for 'same' with stride 1)"
            )
        if source.padding_mode != "zeros":
            raise ValueError(
                f"layer {plan.name!r}: padding_mode={source.padding_mode!r} is not supported; "
                "allowed: 'zeros'"
            )
        self.in_channels = source.in_channels
        self.groups = source.groups
        self.kernel_size = source.kernel_size
        self.stride = source.stride
        self.padding = source.padding
        self.dilation = source.dilation
        super().__init__(source, plan, device, config, seed, scale, repair)

    @property
    def _kernel_area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def _group_channels(self) -> int:
        return self.in_channels // self.groups

    def _tile_indices(self) -> list[_TileIndex]:
        dev = self.cell_mask.device
        k, plan = self._kernel_area, self.plan
        units: dict[object, list[int]] = {}  # tiles of the same local rows share a product
        for t, tile in enumerate(plan.tiles):
            units.setdefault((tile.rows, tile.n_cols) if self.groups > 1 else t, []).append(t)
        out = []
        for tiles in units.values():
            first = plan.tiles[tiles[0]]
            channels = sorted({r // k for r in first.rows})
            mask = torch.zeros(len(channels), k, dtype=torch.bool)
            pos = {c: i for i, c in enumerate(channels)}
            for r in first.rows:
                mask[pos[r // k], r % k] = True
            inputs = [plan.group_of(plan.tiles[t].cols[0]) * self._group_channels + c
                      for t in tiles for c in channels]
            cols = [c for t in tiles for c in plan.tiles[t].cols]
            out.append(_TileIndex(
                tiles=tuple(tiles),
                cols=torch.tensor(cols, dtype=torch.long, device=dev),
                col_slice=_as_slice(cols),
                rows=torch.tensor(channels, dtype=torch.long, device=dev),
                inputs=torch.tensor(inputs, dtype=torch.long, device=dev),
                input_slice=_as_slice(inputs),
                row_mask=None if bool(mask.all()) else mask.to(dev),
                n_rows=first.n_rows,
            ))
        return out

    def _gather(self, m: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        w = m.view(m.shape[0], self.out_features, self._group_channels, self._kernel_area)
        w = w[:, idx.cols.unsqueeze(1), idx.rows.unsqueeze(0)]  # one index, no intermediate
        if idx.row_mask is not None:
            w = w * idx.row_mask
        return w.unflatten(3, self.kernel_size)  # [S, cols, channels, kh, kw]

    def _gather_ref(self, ref: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        r = ref.view(1, self._group_channels, self._kernel_area).index_select(1, idx.rows)
        if idx.row_mask is not None:
            r = r * idx.row_mask
        return r.unflatten(2, self.kernel_size)  # [1, channels, kh, kw]

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        return F.conv2d(_tile_inputs(x, idx), w, None, self.stride, self.padding, self.dilation,
                        len(idx.tiles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputShapeError(f"crossbar layer {self.plan.name!r}: input of shape "
                                  f"{tuple(x.shape)}; expected [N, {self.in_channels}, H, W]")
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return self._accumulate(x, (x.shape[0], self.out_features, ho, wo))


class CrossbarConv1d(CrossbarConv2d):
    """``nn.Conv1d`` on crossbar tiles: a convolution of height 1 (the kernel ``[out, in, k]``
    is mapped as ``[out, in*k]``; inputs ``[N, C, L]``)."""

    def __init__(self, source: nn.Conv1d, plan: LayerPlan, device: DeviceModel,
                 config: CrossbarConfig, seed: int = 0,
                 scale: float | torch.Tensor | None = None,
                 repair: RepairConfig | None = None) -> None:
        if isinstance(source.padding, str):
            raise ValueError(
                f"layer {plan.name!r}: padding={source.padding!r} is not supported; allowed: "
                "explicit integer padding")
        as_2d = nn.Conv2d(source.in_channels, source.out_channels, (1, source.kernel_size[0]),
                          stride=(1, source.stride[0]), padding=(0, source.padding[0]),
                          dilation=(1, source.dilation[0]), groups=source.groups,
                          bias=source.bias is not None, padding_mode=source.padding_mode,
                          device=source.weight.device)
        with torch.no_grad():
            as_2d.weight.copy_(source.weight.unsqueeze(2))
            if source.bias is not None:
                as_2d.bias.copy_(source.bias)
        super().__init__(as_2d, plan, device, config, seed, scale, repair)
        self._weight_shape = tuple(source.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise InputShapeError(f"crossbar layer {self.plan.name!r}: input of shape "
                                  f"{tuple(x.shape)}; expected [N, {self.in_channels}, L]")
        return super().forward(x.unsqueeze(2)).squeeze(2)


def crossbar_modules(model: nn.Module) -> Iterator[tuple[str, CrossbarLayer]]:
    """``(name, layer)`` of every crossbar layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, CrossbarLayer):
            yield name, module


# ---------------------------------------------------------------- programming a chip
# Programming and calibrating a model's chip (every crossbar layer in it), and the checks
# of its input batches. ``CrossbarLayer.program`` is the same operation on a bare layer, so
# it lives here, with the layers; :mod:`crossbar.convert` and the package re-export it.


def _expected_input(name: str, layer: nn.Module) -> str:
    """The input shape a model takes, described from its first Linear/Conv2d layer."""
    if isinstance(layer, (nn.Conv1d, CrossbarConv1d)):
        return (f"(N, {layer.in_channels}, L) (its first layer {name!r} is a 1-D "
                f"convolution with {layer.in_channels} input channels)")
    if hasattr(layer, "in_channels"):
        return (f"(N, {layer.in_channels}, H, W) with the H x W the model was built for (its "
                f"first layer {name!r} is a convolution with {layer.in_channels} "
                "input channels)")
    return (f"(N, ..., {layer.in_features}) as the model was built for (its first "
            f"layer {name!r} is a linear layer with {layer.in_features} inputs)")


def check_input(inputs: object, name: str, layer: nn.Module, what: str) -> None:
    """A ``what`` batch must be a non-empty floating tensor with a batch dimension, and
    ``(N, C, H, W)`` (``(N, C, L)`` for Conv1d) with the layer's ``C`` when the first layer is
    a convolution (the crossbar
    convolution gathers its live rows by index and would not notice extra channels)."""
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"{what} batch of type {type(inputs).__name__} is invalid; allowed: a "
                         f"float tensor of shape {_expected_input(name, layer)}")
    dtype = next((t.dtype for t in [*layer.parameters(), *layer.buffers()]
                  if t.is_floating_point()), torch.float32)
    if inputs.dim() < 2 or inputs.shape[0] == 0 or inputs.dtype != dtype:
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} and dtype {inputs.dtype} "
                         f"is invalid; allowed: a non-empty {dtype} tensor (the model's dtype) "
                         f"of shape {_expected_input(name, layer)}")
    channels = getattr(layer, "in_channels", None)
    dims = 3 if isinstance(layer, (nn.Conv1d, CrossbarConv1d)) else 4
    if channels is not None and (inputs.dim() != dims or inputs.shape[1] != channels):
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} is invalid; allowed: "
                         f"a tensor of shape {_expected_input(name, layer)}")


def check_float32(key: str, model: nn.Module) -> None:
    """Every floating parameter and buffer of ``model`` must be float32: crossbar layers are
    built in float32 (a converted chip may then be moved to float64 with ``.double()``); a
    float64 or half model is refused by name, not by a later dtype clash."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ValueError(f"{key}: {name or 'the module'} of dtype {tensor.dtype} is invalid; "
                             "allowed: torch.float32 (crossbar layers are built in float32: "
                             "call .float() on the model first, and .double() on the chip "
                             "after conversion if wanted)")


@contextlib.contextmanager
def input_errors(inputs: torch.Tensor, name: str, layer: nn.Module, what: str) -> Iterator[None]:
    """Turn a shape error of a forward pass on ``inputs`` into one ``ValueError`` naming the
    batch's shape and the expected input shape."""
    try:
        yield
    except (RuntimeError, InputShapeError) as exc:  # PyTorch's shape errors, a crossbar layer's
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} does not fit the model; "
                         f"allowed: inputs of shape {_expected_input(name, layer)} (cause: "
                         f"{str(exc).strip().splitlines()[0]})") from None


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's first Linear/Conv layer in module order, kept digital or on crossbars: the
    one its inputs enter (a crossbar layer further in may take other channels)."""
    for name, module in model.named_modules():
        if isinstance(module, (CrossbarLayer, nn.Linear, nn.Conv1d, nn.Conv2d)):
            return name, module
    return next(crossbar_modules(model))


def check_seed(key: str, seed: object) -> int:
    """A chip seed: an integer in [0, 2**63) (not a bool, float or string: distinct values
    must be distinct chips)."""
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)  # ints, numpy ints
    except TypeError:
        value = None
    if value is None or not 0 <= value < 2**63:
        raise ValueError(f"{key}={seed!r} is invalid; allowed: an integer in [0, 2**63)")
    return value


def program(model: nn.Module, seed: int, calibration: torch.Tensor | None = None) -> None:
    """Program a new chip: re-sample every layer's cells from ``seed`` (same seed, same chip;
    each layer and effect from its own derived stream, :mod:`crossbar.streams`).

    Calibrated converter ranges belong to one chip, so a calibrated model is recalibrated on
    ``calibration`` or, by default, on the batch it was last calibrated on (kept by
    :func:`calibrate`). A model that holds calibrated ranges but no batch (e.g. loaded from a
    state dict) is refused before anything changes: pass ``calibration=``.
    """
    check_seed("program: seed", seed)
    layers = [m for _, m in crossbar_modules(model)]
    if not layers:
        raise ValueError("program: the model has no crossbar layer; convert it first")
    if calibration is None:
        calibration = getattr(model, "_calibration_inputs", None)
    if calibration is None and any(bool(m.calibrated) for m in layers):
        raise ValueError(
            f"program(seed={seed}): this model's DAC/ADC ranges were calibrated for the chip it "
            "holds and it keeps no calibration batch (loaded from a state dict?); allowed: "
            "program(model, seed, calibration=inputs) or to_crossbar(..., calibration=inputs)")
    if calibration is not None:  # follow the model's device and dtype (``.to()``, ``.double()``)
        calibration = calibration.to(layers[0].g_uS.device, layers[0].g_uS.dtype)
        check_input(calibration, *first_layer(model), "calibration")
    for module in layers:
        module._program(seed)
    if calibration is not None:
        calibrate(model, calibration)


@torch.no_grad()
def calibrate(model: nn.Module, inputs: torch.Tensor) -> None:
    """Set each layer's DAC range (largest |input|, signed or not) and each tile's ADC range
    (largest |partial sum| per weight slice) from one batch; read noise is off meanwhile."""
    named = list(crossbar_modules(model))
    if not named:
        raise ValueError("calibrate: the model has no crossbar layer; convert it first")
    layers = [m for _, m in named]
    first = first_layer(model)  # the model's input layer, digital or on crossbars
    check_input(inputs, *first, "calibration")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError(f"calibration batch of shape {tuple(inputs.shape)} holds NaN or inf "
                         "values; allowed: finite inputs")
    was_training = model.training
    model.eval()
    saved = [(m.dac_range.clone(), m.dac_signed.clone(), m.adc_range.clone(),
              m.calibrated.clone()) for m in layers]
    for m in layers:
        m.dac_range.zero_()
        m.dac_signed.fill_(False)
        m.adc_range.zero_()
        m.calibrated.fill_(False)
    try:
        for phase in ("dac", "adc"):
            for m in layers:
                m._calibrating = phase
                m._sync_ranges()  # the DAC phase's ranges drive the ADC phase
            with input_errors(inputs, *first, "calibration"):
                model(inputs)
        for m in layers:
            m.calibrated.fill_(True)
        model._calibration_inputs = inputs.detach()  # recalibrates the next program(seed)
    except BaseException:  # a failed calibration leaves the earlier ranges in place
        for m, (dac, signed, adc, done) in zip(layers, saved, strict=True):
            m.dac_range.copy_(dac)
            m.dac_signed.copy_(signed)
            m.adc_range.copy_(adc)
            m.calibrated.copy_(done)
        raise
    finally:
        for m in layers:
            m._calibrating = None
            m._sync_ranges()
        model.train(was_training)
