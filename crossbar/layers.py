"""Crossbar layers: a Linear or Conv2d computed tile by tile on simulated memristor arrays.

Each layer holds the programmed conductances of its live tiles (see :mod:`crossbar.plan`). A
forward pass

1. drives the inputs through the DAC (``dac_bits``; optionally bit-serial),
2. computes every tile's partial sums from its programmed conductances (plus fresh read noise),
3. quantizes each tile's partial sums with its ADC (per weight slice, per input cycle),
4. adds the tiles' digital results (shift-and-add over slices and input bits) and the bias.

Programming variation and stuck-at faults are folded into the cached tile weights once per
``program()``; only read noise is drawn per forward call (one read of the array per call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .conductance import (
    conductance_to_values,
    reference_conductance,
    slice_values,
    values_to_conductance,
)
from .config import CrossbarConfig
from .device import DeviceModel
from .periphery import bit_planes, signed_steps
from .plan import LayerPlan, matrix_view


@dataclass
class _TileIndex:
    """Where a tile's weights and inputs live in the layer's matrix (derived from the plan)."""

    cols: torch.Tensor  # output indices
    rows: torch.Tensor  # matrix rows (linear) or input channels (conv)
    row_slice: slice | None  # contiguous input range, else None (gather)
    row_mask: torch.Tensor | None  # conv: [channels, kh*kw] rows of this tile, when partial
    n_rows: int  # live word lines of the tile


class InputShapeError(ValueError):
    """An input that does not fit a crossbar layer (names the layer and the expected shape)."""


@dataclass
class _Drive:
    """What the DAC puts on the word lines: ``x`` in codes (``x * step`` is the input value),
    the bit-plane weights of a bit-serial input, and the largest code (full scale)."""

    x: torch.Tensor
    plane_weights: torch.Tensor | None
    step: float
    max_code: float


def _as_slice(index: list[int]) -> slice | None:
    if index and index == list(range(index[0], index[-1] + 1)):
        return slice(index[0], index[-1] + 1)
    return None


class CrossbarLayer(nn.Module):
    """Common state and periphery of :class:`CrossbarLinear` and :class:`CrossbarConv2d`."""

    is_crossbar = True

    def __init__(
        self,
        source: nn.Linear | nn.Conv2d,
        plan: LayerPlan,
        device: DeviceModel,
        config: CrossbarConfig,
        seed: int = 0,
        scale: float | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        weight = matrix_view(source).float()
        if plan.in_features != weight.shape[1] or plan.out_features != weight.shape[0]:
            raise ValueError(
                f"plan for layer {plan.name!r} has shape "
                f"[{plan.out_features}, {plan.in_features}]; the layer's matrix is "
                f"{list(weight.shape)}"
            )
        self.plan = plan
        self.device_model = device
        self.config = config
        self.out_features, self.in_features = weight.shape
        self.bias = None if source.bias is None else nn.Parameter(source.bias.detach().clone())

        cell_mask = plan.cell_mask(weight.device)
        live = weight * cell_mask
        col_scale = _column_scale(plan.name, live, scale)
        values, factors = slice_values(live, col_scale, config.weight_bits, config.cell_bits)
        self.register_buffer("cell_mask", cell_mask)
        self.register_buffer("slice_factors", factors)
        self.register_buffer("g_nominal_uS", self._nominal(values, device, config.mapping))
        self.register_buffer("g_uS", torch.zeros_like(self.g_nominal_uS))
        n_slices, n_tiles = factors.shape[0], plan.n_tiles
        dev = weight.device
        g_ref = torch.zeros(n_slices, n_tiles, self.in_features, device=dev)
        self.register_buffer("g_ref_uS", g_ref)
        self.register_buffer("program_seed", torch.zeros((), dtype=torch.int64, device=dev))
        self.register_buffer("dac_range", torch.zeros((), device=dev))
        self.register_buffer("dac_signed", torch.ones((), dtype=torch.bool, device=dev))
        self.register_buffer("adc_range", torch.zeros(n_tiles, n_slices, device=dev))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool, device=dev))
        self._tiles = self._tile_indices()
        self._calibrating: str | None = None
        self._read_gen: torch.Generator | None = None
        self.register_load_state_dict_post_hook(_after_load)
        self.program(seed)

    # ------------------------------------------------------------------------------ programming
    @staticmethod
    def _nominal(values: torch.Tensor, device: DeviceModel, mapping: str) -> torch.Tensor:
        g_a, g_b = values_to_conductance(values, device, mapping)
        return torch.stack([g_a, g_b], dim=1) if g_b is not None else g_a.unsqueeze(1)

    def _tile_row_mask(self) -> torch.Tensor:
        """Bool ``[T, in]``: the rows each tile drives."""
        mask = torch.zeros(self.plan.n_tiles, self.in_features, dtype=torch.bool)
        for t, tile in enumerate(self.plan.tiles):
            mask[t, list(tile.rows)] = True
        return mask.to(self.cell_mask.device)

    def program(self, seed: int) -> None:
        """Program a new chip: sample programming variation and stuck-at faults (seeded).

        Same seed, same devices (bit-identical). Unmapped cells (outside every tile) hold no
        device and stay at 0 uS.
        """
        dev = self.device_model
        gen = torch.Generator()  # sampled on the CPU: the same seed is the same chip anywhere
        gen.manual_seed(int(seed) % (2**63))
        self.program_seed.fill_(int(seed) % (2**63))
        self._read_gen = None
        g = _perturb(self.g_nominal_uS, dev, gen)
        self.g_uS.copy_(g * self.cell_mask)
        if self.config.mapping == "offset":
            g_ref, _ = reference_conductance(dev)
            ref = torch.full_like(self.g_ref_uS, g_ref)
            self.g_ref_uS.copy_(_perturb(ref, dev, gen) * self._tile_row_mask())
        self._refresh()

    # ---------------------------------------------------------------------------------- caches
    def _tile_indices(self) -> list[_TileIndex]:
        raise NotImplementedError

    def _values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Programmed weights in weight units per slice ``[S, out, in]`` and the read-noise
        std of each (``read_sigma`` times the conductances, in the same units)."""
        factors = self.slice_factors
        sigma = self.device_model.read_sigma
        if self.config.mapping == "differential":
            g_pos, g_neg = self.g_uS[:, 0], self.g_uS[:, 1]
            values = conductance_to_values(g_pos, g_neg, self.device_model, "differential")
            std = sigma * torch.sqrt(g_pos**2 + g_neg**2) / self.device_model.g_range_uS
            return values * factors, std * factors
        _, half = reference_conductance(self.device_model)
        g = self.g_uS[:, 0]
        # Each weight reads against its tile's reference cell in the same row.
        ref = torch.einsum("ot,sti->soi", self._tile_of_output(), self.g_ref_uS)
        values = conductance_to_values(g, ref, self.device_model, "offset") * self.cell_mask
        return values * factors, sigma * g / half * factors

    def _tile_of_output(self) -> torch.Tensor:
        """One-hot ``[out, T]``: the tiles holding each output. An output meets several tiles
        (one per row range of its column group) whose rows are disjoint, so summing the tiles'
        reference rows picks, for every cell, the reference of its own tile."""
        onehot = torch.zeros(self.out_features, self.plan.n_tiles, device=self.g_uS.device)
        for t, idx in enumerate(self._tiles):
            onehot[idx.cols, t] = 1.0
        return onehot

    def _refresh(self) -> None:
        """Rebuild the cached per-tile weights from the programmed conductances."""
        self._sync_ranges()
        values, std = self._values()
        self._tile_w = [self._gather(values, idx) for idx in self._tiles]
        self._tile_std = [self._gather(std, idx) for idx in self._tiles]
        if self.config.mapping == "offset" and self.device_model.read_sigma > 0:
            _, half = reference_conductance(self.device_model)
            ref_std = self.device_model.read_sigma * self.g_ref_uS / half
            self._tile_ref_std = [self._gather_ref(ref_std[:, t], idx)
                                  * self._column_factors(idx)
                                  for t, idx in enumerate(self._tiles)]
        else:
            self._tile_ref_std = None

    def _gather(self, m: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        raise NotImplementedError

    def _column_factors(self, idx: _TileIndex) -> torch.Tensor:
        """Weight-unit factors of the tile's output columns, shaped like its weights."""
        f = self.slice_factors.index_select(1, idx.cols)  # [S, cols, 1]
        return f.view(*f.shape, *([1] * (self._tile_w[0].dim() - 3)))

    def _gather_ref(self, ref: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        raise NotImplementedError

    def _apply(self, fn, *args, **kwargs):  # keep caches on the module's device and dtype
        out = super()._apply(fn, *args, **kwargs)
        self._tiles = self._tile_indices()
        self._refresh()
        self._read_gen = None
        return out

    def _read_generator(self) -> torch.Generator:
        if self._read_gen is None or self._read_gen.device != self.g_uS.device:
            self._read_gen = torch.Generator(device=self.g_uS.device)
            self._read_gen.manual_seed((int(self.program_seed) * 7919 + 1) % (2**63))
        return self._read_gen

    def _read(self, t: int) -> torch.Tensor:
        """Tile ``t``'s weights as read now: programmed state plus fresh read noise."""
        w = self._tile_w[t]
        if self.device_model.read_sigma == 0 or self._calibrating is not None:
            return w
        gen = self._read_generator()
        noise = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
        w = torch.addcmul(w, self._tile_std[t], noise)
        if self._tile_ref_std is not None:
            ref = self._tile_ref_std[t]
            shape = (ref.shape[0], 1, *ref.shape[2:])  # one reference cell per row
            ref_noise = torch.randn(shape, generator=gen, device=w.device, dtype=w.dtype)
            w = w - ref * ref_noise  # one reference cell per row, shared by the tile's columns
        return w

    # ------------------------------------------------------------------------------- periphery
    # Inputs and partial sums are kept in converter code units: the DAC step is folded into the
    # tile weights and the ADC step divides them, so each converter costs a round and a clamp
    # on the activations and the scales are applied to the (small) weights instead.
    def _sync_ranges(self) -> None:
        """Cache the converter ranges as Python numbers (no device sync in the forward)."""
        self._dac = (float(self.dac_range), bool(self.dac_signed))
        self._adc = self.adc_range.tolist()
        self._is_calibrated = bool(self.calibrated)
        self._largest_factor = [
            self.slice_factors.index_select(1, idx.cols).amax(dim=(1, 2)).tolist()
            for idx in self._tiles
        ]

    def _input_range(self, x: torch.Tensor) -> tuple[float, bool]:
        if self._dac[0] > 0:
            return self._dac
        return float(x.detach().abs().max()), bool((x < 0).any())

    def _drive(self, x: torch.Tensor) -> _Drive:
        """DAC: the driven input (codes; bit planes stacked on dim 0 when bit-serial)."""
        if self._calibrating == "dac":
            peak = _peak(x.detach().abs().flatten(), self.config.range_percentile)
            self.dac_range.fill_(max(float(self.dac_range), float(peak)))
            self.dac_signed.fill_(bool(self.dac_signed) or bool((x < 0).any()))
            return _Drive(x, None, 1.0, 0.0)
        bits = self.config.dac_bits
        if bits is None:
            full = 0.0
            if self.config.adc_bits is not None and self.config.adc_range == "full_scale":
                full = self._input_range(x)[0]
            return _Drive(x, None, 1.0, full)
        full, signed = self._input_range(x)
        if self.config.bit_serial:
            planes, weights = bit_planes(x, full, bits, signed)
            step = max(full, 1e-30) / (2**bits - 1)  # the weight of the lowest bit plane
            return _Drive(planes.flatten(0, 1), weights / step, step, 1.0)
        q = signed_steps(bits) if signed else 2**bits - 1
        step = max(full, 1e-30) / q
        codes = torch.mul(x, 1.0 / step).round_().clamp_(-q if signed else 0, q)
        return _Drive(codes, None, step, float(q))

    def _adc_steps(self, t: int, drive: _Drive) -> list[float] | None:
        """ADC step per weight slice of tile ``t`` (``None``: ideal or calibrating)."""
        bits = self.config.adc_bits
        if bits is None or self._calibrating is not None:
            return None
        if self.config.adc_range == "full_scale":
            full = drive.step * drive.max_code * self._tiles[t].n_rows
            ranges = [full * f for f in self._largest_factor[t]]
        elif not self._is_calibrated:
            raise ValueError(
                f"crossbar layer {self.plan.name!r} has adc_range='calibrated' but was never "
                "calibrated; allowed: call calibrate(model, inputs) (or pass calibration= to "
                "to_crossbar), or use adc_range='full_scale'")
        else:
            ranges = self._adc[t]
        q = signed_steps(bits)
        return [max(r, 1e-30) / q for r in ranges]

    def _record_adc(self, p: torch.Tensor, t: int) -> None:
        per_slice = p.detach().abs().transpose(0, 1).reshape(p.shape[1], -1)
        peak = torch.stack([_peak(v, self.config.range_percentile) for v in per_slice])
        self.adc_range[t] = torch.maximum(self.adc_range[t], peak)

    def _accumulate(self, x: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
        drive = self._drive(x)
        out = None
        full_cover = all(idx.cols.numel() == self.out_features for idx in self._tiles)
        for t, idx in enumerate(self._tiles):
            steps = self._adc_steps(t, drive)
            w = self._read(t)
            if steps is not None and len(steps) == 1:
                w = w * (drive.step / steps[0])
            elif steps is not None:
                scale = torch.tensor([drive.step / s for s in steps], dtype=w.dtype,
                                     device=w.device)
                w = w * scale.view(-1, *([1] * (w.dim() - 1)))
            elif drive.step != 1.0:
                w = w * drive.step
            p = self._tile_product(drive.x, w, idx)  # [N', S, cols, ...] in ADC codes
            if self._calibrating == "adc":
                self._record_adc(p, t)
            if steps is not None:
                q = signed_steps(self.config.adc_bits)
                p = p.round_().clamp_(-q, q)
            p, alpha = self._combine(p, steps, drive.plane_weights)
            if full_cover and out is None:
                out = p if alpha == 1.0 else p.mul_(alpha)
            elif full_cover:
                out.add_(p, alpha=alpha)
            else:
                if out is None:
                    out = p.new_zeros(out_shape)
                out.index_add_(1, idx.cols, p, alpha=alpha)
        if out is None:  # nothing mapped: every weight pruned
            out = drive.x.new_zeros(out_shape)
        if self.bias is not None:
            out = out.add_(self.bias.view(1, -1, *([1] * (out.dim() - 2))))
        return out

    @staticmethod
    def _combine(p: torch.Tensor, steps: list[float] | None,
                 plane_w: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        """Digital side: ADC codes times their step, shift-and-add over input bit planes
        (dim 0 of ``[P*N, S, ...]``) and over weight slices (dim 1). A single scalar step is
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
        return (p.sum(dim=1) if p.shape[1] > 1 else p.squeeze(1)), alpha

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        raise NotImplementedError

    def get_extra_state(self) -> dict:
        """The device and periphery the conductances were programmed for (plain data)."""
        return {"device": self.device_model.to_dict(), "config": self.config.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        for key, mine in (("device", self.device_model.to_dict()),
                          ("config", self.config.to_dict())):
            theirs = state.get(key)
            if theirs is not None and {k: theirs.get(k) for k in mine} != mine:
                changed = sorted(k for k in mine if theirs.get(k) != mine[k])
                raise ValueError(
                    f"state_dict for crossbar layer {self.plan.name!r} was programmed with "
                    f"another {key}: {changed[0]}={theirs.get(changed[0])!r}; this layer has "
                    f"{changed[0]}={mine[changed[0]]!r}")

    def extra_repr(self) -> str:
        return (
            f"{self.in_features} rows -> {self.out_features} cols, tiles={self.plan.n_tiles}, "
            f"mapping={self.config.mapping}, dac_bits={self.config.dac_bits}, "
            f"adc_bits={self.config.adc_bits}"
        )


_PERCENTILE_SAMPLE = 1 << 20


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
    t = torch.as_tensor(scale, dtype=live.dtype, device=live.device)
    if t.numel() == 1:
        t = t.reshape(1).expand(out)
    if t.shape != (out,) or not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"scales[{name!r}]={scale!r} is invalid; allowed: a positive number or "
                         f"a tensor of {out} positive numbers (one per output)")
    return t.reshape(out, 1).clone()


def _perturb(g: torch.Tensor, dev: DeviceModel, gen: torch.Generator) -> torch.Tensor:
    """Programming variation (log-normal or Gaussian), clipping, then stuck-at faults."""
    g = g.clone()
    if dev.prog_sigma > 0:
        noise = torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)
        if dev.prog_noise == "lognormal":
            g = g * torch.exp(dev.prog_sigma * noise)
        else:
            g = g + dev.prog_sigma * dev.g_range_uS * noise
        g = g.clamp(dev.g_min_uS, dev.g_max_uS)
    if dev.sa0_rate > 0 or dev.sa1_rate > 0:
        u = torch.rand(g.shape, generator=gen, dtype=g.dtype).to(g.device)
        g = torch.where(u < dev.sa0_rate, torch.full_like(g, dev.g_min_uS), g)
        stuck_on = (u >= dev.sa0_rate) & (u < dev.sa0_rate + dev.sa1_rate)
        g = torch.where(stuck_on, torch.full_like(g, dev.g_max_uS), g)
    return g


def _after_load(module: CrossbarLayer, incompatible) -> None:
    expected = module.plan.cell_mask(module.cell_mask.device)
    if not torch.equal(expected, module.cell_mask):
        raise ValueError(
            f"state_dict for crossbar layer {module.plan.name!r} was programmed with another "
            "mapping plan (its cell mask differs from this layer's plan)"
        )
    module._read_gen = None
    module._refresh()


class CrossbarLinear(CrossbarLayer):
    """``nn.Linear`` on crossbar tiles (inputs on word lines, outputs on bit lines)."""

    def _tile_indices(self) -> list[_TileIndex]:
        dev = self.cell_mask.device
        return [
            _TileIndex(
                cols=torch.tensor(t.cols, dtype=torch.long, device=dev),
                rows=torch.tensor(t.rows, dtype=torch.long, device=dev),
                row_slice=_as_slice(list(t.rows)),
                row_mask=None,
                n_rows=t.n_rows,
            )
            for t in self.plan.tiles
        ]

    def _gather(self, m: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        return m.index_select(1, idx.cols).index_select(2, idx.rows)

    def _gather_ref(self, ref: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        return ref.index_select(1, idx.rows).unsqueeze(1)  # [S, 1, rows]

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        xt = x[:, idx.row_slice] if idx.row_slice is not None else x.index_select(1, idx.rows)
        s, c, r = w.shape
        return F.linear(xt, w.reshape(s * c, r)).unflatten(1, (s, c))

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
    tile is computed as a convolution over the input channels whose kernel rows it holds."""

    def __init__(self, source: nn.Conv2d, plan: LayerPlan, device: DeviceModel,
                 config: CrossbarConfig, seed: int = 0,
                 scale: float | torch.Tensor | None = None) -> None:
        if source.groups != 1:
            raise ValueError(
                f"layer {plan.name!r}: Conv2d groups={source.groups} is not supported; allowed: "
                "groups=1 (map a grouped convolution as separate layers)"
            )
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
        self.kernel_size = source.kernel_size
        self.stride = source.stride
        self.padding = source.padding
        self.dilation = source.dilation
        super().__init__(source, plan, device, config, seed, scale)

    @property
    def _kernel_area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def _tile_indices(self) -> list[_TileIndex]:
        dev = self.cell_mask.device
        k = self._kernel_area
        out = []
        for t in self.plan.tiles:
            channels = sorted({r // k for r in t.rows})
            mask = torch.zeros(len(channels), k, dtype=torch.bool)
            pos = {c: i for i, c in enumerate(channels)}
            for r in t.rows:
                mask[pos[r // k], r % k] = True
            out.append(
                _TileIndex(
                    cols=torch.tensor(t.cols, dtype=torch.long, device=dev),
                    rows=torch.tensor(channels, dtype=torch.long, device=dev),
                    row_slice=_as_slice(channels),
                    row_mask=None if bool(mask.all()) else mask.to(dev),
                    n_rows=t.n_rows,
                )
            )
        return out

    def _gather(self, m: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        w = m.view(m.shape[0], self.out_features, self.in_channels, self._kernel_area)
        w = w.index_select(1, idx.cols).index_select(2, idx.rows)
        if idx.row_mask is not None:
            w = w * idx.row_mask
        return w.unflatten(3, self.kernel_size)  # [S, cols, channels, kh, kw]

    def _gather_ref(self, ref: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        r = ref.view(ref.shape[0], 1, self.in_channels, self._kernel_area)
        return r.index_select(2, idx.rows).unflatten(3, self.kernel_size)

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: _TileIndex) -> torch.Tensor:
        xt = x[:, idx.row_slice] if idx.row_slice is not None else x.index_select(1, idx.rows)
        s, c = w.shape[:2]
        p = F.conv2d(xt, w.flatten(0, 1), None, self.stride, self.padding, self.dilation)
        return p.unflatten(1, (s, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputShapeError(f"crossbar layer {self.plan.name!r}: input of shape "
                                  f"{tuple(x.shape)}; expected [N, {self.in_channels}, H, W]")
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return self._accumulate(x, (x.shape[0], self.out_features, ho, wo))
