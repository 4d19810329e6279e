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

import torch
import torch.nn.functional as F
from torch import nn

from . import functional, layer_state, physical, programming
from .conductance import slice_values
from .config import CrossbarConfig
from .converters import get_adc, get_dac
from .device import DeviceModel
from .mappings import mapping_style
from .plan import LayerPlan, matrix_view
from .repair import RepairConfig
from .tile_units import TileIndex, conv_units, linear_units


class CrossbarLayer(nn.Module):
    """Common state and periphery of :class:`CrossbarLinear` and :class:`CrossbarConv2d`."""

    groups = 1

    is_crossbar = True

    _version = 2
    """State-dict version: 2 names the mapping's auxiliary cells ``g_aux_uS``
    (:func:`crossbar.layer_state.upgrade_state` reads version 1)."""

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
        col_scale = physical.column_scale(plan.name, live, scale)
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
        # the mapping's auxiliary cells: its reference_columns per tile (offset: one reference
        # column, shared by the tile's slices and outputs)
        n_ref = n_tiles if self.style.reference_columns else 0
        self.register_buffer("g_aux_uS", torch.zeros(n_ref, self.in_features, device=dev))
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
        self._array_cache: dict[tuple, dict[str, torch.Tensor]] = {}
        # write-verify records per cell group: (pulses, converged); single-shot: none
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._pulses_known = True
        # selective write-verify: the weights ([out, in], bool) whose cells are verified (None:
        # all; crossbar.to_crossbar(verify=...)); not in the state dict
        self.verify_weights: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(layer_state.after_load)
        # fused fast paths (nn.TransformerEncoderLayer in eval mode) read ``weight`` directly
        # and would skip the simulation; they stand down when a submodule has a forward hook
        self.register_forward_pre_hook(_keep_module_forward)
        self._register_load_state_dict_pre_hook(layer_state.upgrade_state, with_module=True)
        physical.program_layer(self, seed)

    # ------------------------------------------------------------------------------ programming
    @property
    def weight(self) -> torch.Tensor:
        """The weights this chip holds now (programmed, drifted, through the array model;
        without read noise and converters), shaped like the source layer's ``weight``: a
        read-only view for code that reads ``layer.weight`` (e.g. attention modules)."""
        dev = self.device_model
        values = physical.weight_values(self, physical.through_array(
            self, physical.state_at_time(self), dev.t_inference_s)).sum(0)
        return values.reshape(self._weight_shape).detach()

    @property
    def n_devices(self) -> int:
        """Memristors this layer simulates (weight cells and reference cells); equals
        ``plan.n_devices``, which the cost model charges."""
        return sum(int(cells.live.sum()) for cells in physical.cell_groups(self))

    @property
    def pulses(self) -> torch.Tensor | None:
        """Write-verify pulses of every weight cell ``[S, cells, out, in]`` at the last
        programming (``None``: single-shot, one pulse per cell; see :attr:`records`)."""
        record = self.records.get("weights")
        return None if record is None else record[0]

    def program(self, seed: int) -> None:
        """Program a new chip (same seed, same chip) and recalibrate its converters on the
        stored calibration batch (see :func:`crossbar.program`)."""
        programming.program(self, seed)

    def programming_stats(self) -> dict:
        """Pulses, convergence and programming error of the last programming
        (:func:`crossbar.physical.programming_stats`)."""
        return physical.programming_stats(self)

    def set_inference_time(self, t_inference_s: float) -> None:
        """Let the programmed chip drift to ``t_inference_s`` seconds after programming."""
        self.device_model = self.device_model.with_(t_inference_s=t_inference_s)
        physical.refresh(self)

    def _tile_indices(self) -> list[TileIndex]:
        raise NotImplementedError

    @staticmethod
    def _tile_major(m: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        """``[S, tiles*cols, ...]`` gathered for a unit of tiles -> ``[tiles*S, cols, ...]``
        (each tile's slices together, the order of the unit's grouped product)."""
        n = len(idx.tiles)
        return m if n == 1 else m.unflatten(1, (n, -1)).transpose(0, 1).flatten(0, 1)

    def _gather(self, m: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        raise NotImplementedError

    def _gather_aux(self, ref: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        """One tile's reference column ``[in]`` as one more output ``[1, rows...]``."""
        raise NotImplementedError

    def _apply(self, fn, *args, **kwargs):  # keep caches on the module's device and dtype
        out = super()._apply(fn, *args, **kwargs)
        self._units = self._tile_indices()
        moved = {}
        for (t, _, dtype), vals in self._array_cache.items():  # a move keeps the solve,
            new = {name: fn(v) for name, v in vals.items()}  # a new dtype re-solves
            if new["weights"].dtype == dtype:
                moved[(t, new["weights"].device, dtype)] = new
        self._array_cache = moved
        physical.refresh(self)
        self._noise_buffers = {}  # streams continue (recreated only on another device)
        return out

    def _sync_ranges(self) -> None:
        """Cache the converter ranges as Python numbers (no device sync in the forward)."""
        self._dac = (float(self.dac_range), bool(self.dac_signed))
        self._adc = self.adc_range.tolist()
        self._is_calibrated = bool(self.calibrated)
        factors = self.slice_factors.amax(dim=2)  # [S, out]
        self._largest_factor = [factors[:, list(t.cols)].amax(dim=1).tolist()
                                for t in self.plan.tiles]

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        """``x`` through one tile's weights ``w[C, rows...]`` -> ``[N', C, ...]``."""
        raise NotImplementedError

    def get_extra_state(self) -> dict:
        """The device and periphery the conductances were programmed for (plain data)."""
        return {"device": self.device_model.to_dict(), "config": self.config.to_dict()}


    def set_extra_state(self, state: dict) -> None:
        layer_state.check_extra_state(self, state)

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return (
            f"{self.in_features} rows -> {self.out_features} cols{groups}, "
            f"tiles={self.plan.n_tiles}, "
            f"mapping={self.config.mapping}, dac_bits={self.config.dac_bits}, "
            f"adc_bits={self.config.adc_bits}"
        )


def _keep_module_forward(module: nn.Module, args: tuple) -> None:
    """No-op forward pre-hook: its presence turns off PyTorch's fused Transformer fast path,
    which reads ``linear.weight`` itself instead of calling the (crossbar) layer."""
    return None


class CrossbarLinear(CrossbarLayer):
    """``nn.Linear`` on crossbar tiles (inputs on word lines, outputs on bit lines)."""

    _exact_sums = True

    def _tile_indices(self) -> list[TileIndex]:
        return linear_units(self.plan, self.cell_mask.device)

    def _gather(self, m: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        # one advanced index: no [S, cols, in] intermediate per tile
        return m[:, idx.cols.unsqueeze(1), idx.rows.unsqueeze(0)]

    def _gather_aux(self, ref: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        return ref.index_select(0, idx.rows).unsqueeze(0)  # [1, rows]

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        return F.linear(functional.tile_inputs(x, idx), w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise programming.InputShapeError(f"crossbar layer {self.plan.name!r}: input of shape "
                                  f"{tuple(x.shape)}; expected [..., {self.in_features}]")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out = functional.accumulate(self, x2, (x2.shape[0], self.out_features))
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

    def _tile_indices(self) -> list[TileIndex]:
        return conv_units(self.plan, self._kernel_area, self._group_channels, self.groups,
                          self.cell_mask.device)

    def _gather(self, m: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        w = m.view(m.shape[0], self.out_features, self._group_channels, self._kernel_area)
        w = w[:, idx.cols.unsqueeze(1), idx.rows.unsqueeze(0)]  # one index, no intermediate
        if idx.row_mask is not None:
            w = w * idx.row_mask
        return w.unflatten(3, self.kernel_size)  # [S, cols, channels, kh, kw]

    def _gather_aux(self, ref: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        r = ref.view(1, self._group_channels, self._kernel_area).index_select(1, idx.rows)
        if idx.row_mask is not None:
            r = r * idx.row_mask
        return r.unflatten(2, self.kernel_size)  # [1, channels, kh, kw]

    def _tile_product(self, x: torch.Tensor, w: torch.Tensor, idx: TileIndex) -> torch.Tensor:
        return F.conv2d(functional.tile_inputs(x, idx), w, None, self.stride, self.padding,
                        self.dilation, len(idx.tiles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise programming.InputShapeError(f"crossbar layer {self.plan.name!r}: input of shape "
                                  f"{tuple(x.shape)}; expected [N, {self.in_channels}, H, W]")
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return functional.accumulate(self, x, (x.shape[0], self.out_features, ho, wo))


class CrossbarConv1d(CrossbarConv2d):
    """``nn.Conv1d`` on crossbar tiles: a convolution of height 1 (the kernel ``[out, in, k]``
    is mapped as ``[out, in*k]``; inputs ``[N, C, L]``)."""

    is_conv1d = True

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
            raise programming.InputShapeError(f"crossbar layer {self.plan.name!r}: input of shape "
                                  f"{tuple(x.shape)}; expected [N, {self.in_channels}, L]")
        return super().forward(x.unsqueeze(2)).squeeze(2)
