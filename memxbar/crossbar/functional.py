"""The per-MVM arithmetic of a crossbar layer, as ``torch.nn.functional`` is to ``nn``: the
DAC drive, the tile products, the read-noise variance product and its draws, the ADC and the
digital combine. :class:`~crossbar.layers.CrossbarLayer` keeps the state (conductances,
converter ranges, caches, noise streams); every function here takes the layer and reads it.

A forward pass (:func:`accumulate`)

1. drives the inputs through the DAC (``dac_bits``; optionally bit-serial),
2. computes every tile's partial sums from its cached weights (:mod:`crossbar.physical`), with
   read noise drawn for every matrix-vector product (per sample, convolution position,
   input-bit cycle and weight slice) and optional noise at the ADC input,
3. quantizes each tile's partial sums with its ADC (per weight slice, per input cycle),
4. adds the tiles' digital results (shift-and-add over slices and input bits, the drift
   compensation gain) and the bias.

Inputs and partial sums are kept in converter code units: the DAC step is folded into the tile
weights and the ADC step divides them, so each converter costs a round and a clamp on the
activations and the scales are applied to the (small) weights instead.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

from .converters import Drive
from .periphery import signed_steps
from .streams import stream

if TYPE_CHECKING:
    from .layers import CrossbarLayer
    from .tile_units import TileIndex

_PERCENTILE_SAMPLE = 1 << 20


@functools.cache
def cpu_has_bf16() -> bool:
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


def peak(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """The ``percentile`` of non-negative ``values`` (their maximum at 100). Large tensors are
    subsampled with a fixed stride (deterministic) to at most 2^20 values."""
    if percentile >= 100.0:
        return values.max()
    stride = max(1, values.numel() // _PERCENTILE_SAMPLE)
    return torch.quantile(values[::stride].float(), percentile / 100.0)




def tile_inputs(x: torch.Tensor, idx: TileIndex) -> torch.Tensor:
    """The inputs (dim 1 of ``x``) that drive the word lines of ``idx``'s tiles."""
    return x[:, idx.input_slice] if idx.input_slice is not None else x.index_select(1, idx.inputs)



def generators(layer: CrossbarLayer, effect: str) -> list[torch.Generator]:
    """The per-MVM streams of ``effect`` (read noise, ADC noise) of this chip and layer,
    on the module's device (continue across forward calls): :data:`NOISE_CHUNKS`
    generators, one per chunk of a noise tensor, so a CPU draw runs on several threads
    and gives the same numbers whatever the thread count."""
    gens = layer._gens.get(effect)
    if gens is None or gens[0].device != layer.g_uS.device:
        gens = [stream(int(layer.program_seed), f"{layer.plan.name}#{k}", effect,
                       layer.g_uS.device) for k in range(NOISE_CHUNKS)]
        layer._gens[effect] = gens
    return gens


def normal(layer: CrossbarLayer, like: torch.Tensor, effect: str) -> torch.Tensor:
    """Standard-normal draws shaped like ``like`` from the ``effect`` streams, in a buffer
    kept per (effect, shape) and reused by the next tile or call (drawing into fresh
    memory costs as much as the draw itself); consume it before the next draw."""
    key = (effect, tuple(like.shape))
    buf = layer._noise_buffers.get(key)
    if buf is None or buf.shape != like.shape or buf.device != like.device \
            or buf.dtype != like.dtype:
        buf = torch.empty_like(like, memory_format=torch.contiguous_format)
        layer._noise_buffers[key] = buf
    chunks = buf.view(-1).chunk(NOISE_CHUNKS)
    gens = generators(layer, effect)
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


def input_range(layer: CrossbarLayer, x: torch.Tensor) -> tuple[float, bool]:
    if layer._dac[0] > 0:
        return layer._dac
    return float(x.detach().abs().max()), bool((x < 0).any())


def dac_drive(layer: CrossbarLayer, x: torch.Tensor) -> Drive:
    """DAC: the driven input (codes; bit planes stacked on dim 0 when bit-serial)."""
    if layer._calibrating == "dac":
        top = peak(x.detach().abs().flatten(), layer.config.range_percentile)
        layer.dac_range.fill_(max(float(layer.dac_range), float(top)))
        layer.dac_signed.fill_(bool(layer.dac_signed) or bool((x < 0).any()))
        return Drive(x, None, 1.0, 0.0)
    bits = layer.config.dac_bits
    if bits is None:
        full = 0.0
        if layer.config.adc_bits is not None and not layer._adc_model.needs_calibration:
            full = input_range(layer, x)[0]
        return Drive(x, None, 1.0, full)
    full, signed = input_range(layer, x)
    return layer._dac_model.drive(x, full, signed, bits)


def adc_steps(layer: CrossbarLayer, idx: TileIndex, drive: Drive) -> list[float] | None:
    """ADC step per weight slice of each tile of ``idx``, tile after tile (``None``: ideal
    or calibrating)."""
    bits = layer.config.adc_bits
    if bits is None or layer._calibrating is not None:
        return None
    full = drive.step * drive.max_code * idx.n_rows
    q = signed_steps(bits)
    steps = []
    for t in idx.tiles:
        ranges = layer._adc_model.ranges(
            layer.plan.name, layer._adc[t] if layer._is_calibrated else None,
            [full * f for f in layer._largest_factor[t]])
        steps += [max(r, 1e-30) / q for r in ranges]
    return steps


def record_adc(layer: CrossbarLayer, p: torch.Tensor, idx: TileIndex) -> None:
    """Calibration: widen each tile's per-slice ADC range to the partial sums ``p``
    (``[N', tiles*S, cols, ...]``) seen."""
    per_slice = p.detach().abs().transpose(0, 1).reshape(p.shape[1], -1)
    top = torch.stack([peak(v, layer.config.range_percentile) for v in per_slice])
    tiles = list(idx.tiles)
    layer.adc_range[tiles] = torch.maximum(layer.adc_range[tiles], top.view(len(tiles), -1))


def read_noise(layer: CrossbarLayer, p: torch.Tensor, x2: torch.Tensor, u: int, idx: TileIndex,
                k: torch.Tensor | float) -> torch.Tensor:
    """Add this matrix-vector product's read noise to the partial sums ``p`` (codes,
    ``[N', S*cols, ...]``). Every cell's read is ``G + std(G) N`` with a new ``N`` per
    product, so output ``j`` gets Gaussian noise of variance ``sum_i x_i^2 var_ij``: one
    product of ``x^2`` with the tile's variance matrix (exact, no per-sample conductances).
    The offset style's reference column is one more column of that product whose noise is
    shared by every output of the tile (subtracted with each output's weight factor). A unit
    of ``b`` tiles holds ``b`` such blocks, tile after tile (``u``: the unit's index)."""
    var = layer._tile_var[u]
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
    std = layer._tile_product(x2, var.to(x2.dtype), idx).to(p.dtype).sqrt_()
    if std.shape[1] == n_out:
        return p.addcmul_(std, normal(layer, std, "read"))
    std = std.mul_(normal(layer, std, "read")).unflatten(1, (b, -1))
    own = p.unflatten(1, (b, m))  # a view: p changes in place
    own.add_(std[:, :, :m])
    factor = layer._aux_factor[u] * (k_cols if k_cols is not None else k)
    own.sub_(std[:, :, m:] * factor.view(1, b, m, *([1] * (p.dim() - 2))))
    return p


def bf16_variance(layer: CrossbarLayer, x2: torch.Tensor) -> bool:
    """Whether the read-noise variance product runs in bfloat16 (``noise_precision``
    ``"auto"`` on a CPU with native bfloat16, float32 models only)."""
    return (layer.config.noise_precision == "auto" and x2.dtype == torch.float32
            and x2.device.type == "cpu" and cpu_has_bf16())


def variance_input(layer: CrossbarLayer, drive: Drive) -> torch.Tensor:
    """``x^2`` of the driven inputs, the read-noise variance product's input (bit planes are
    0/1: their square is themselves), in bfloat16 where :func:`bf16_variance` says so."""
    x2 = drive.x if drive.plane_weights is not None else drive.x * drive.x
    return x2.to(torch.bfloat16) if bf16_variance(layer, x2) else x2


def accumulate(layer: CrossbarLayer, x: torch.Tensor, out_shape: tuple[int, ...]
               ) -> torch.Tensor:
    """The layer's output for inputs ``x`` (module docstring: DAC, tile products with read
    noise, ADC, digital combine, bias, output calibration)."""
    drive = dac_drive(layer, x)
    noisy = layer._tile_var is not None and layer._calibrating is None
    x2 = variance_input(layer, drive) if noisy else None
    adc_noise = layer.config.adc_noise if layer._calibrating is None else 0.0
    out = None
    full_cover = all(idx.cols.numel() == layer.out_features for idx in layer._units)
    for u, idx in enumerate(layer._units):
        steps = adc_steps(layer, idx, drive)
        w = layer._tile_w[u]
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
        if steps is not None and layer._exact_sums and w.dtype == torch.float32 \
                and layer._calibrating is None:
            # float64 sums, rounded once to float32: the same codes in any batch
            p = layer._tile_product(drive.x.double(), w.flatten(0, 1).double(), idx).float()
        else:
            p = layer._tile_product(drive.x, w.flatten(0, 1), idx)  # [N', S*cols, ...]
        if noisy:
            p = read_noise(layer, p, x2, u, idx, k)
        if steps is not None and adc_noise > 0:
            q = signed_steps(layer.config.adc_bits)
            p = p.add_(normal(layer, p, "adc_noise"), alpha=adc_noise * q)
        p = p.unflatten(1, (n_slices, -1))
        if layer._calibrating == "adc":
            record_adc(layer, p, idx)
        if steps is not None:
            q = signed_steps(layer.config.adc_bits)
            p = p.round_().clamp_(-q, q)
        p, alpha = combine(p, steps, drive.plane_weights, len(idx.tiles))
        alpha *= layer._gain
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
    if layer.bias is not None:
        out = out.add_(layer.bias.view(1, -1, *([1] * (out.dim() - 2))))
    if layer.config.output_calibration and layer._calibrating is None:
        shape = (1, -1, *([1] * (out.dim() - 2)))
        out = out.mul_(layer.out_gain.view(shape)).add_(layer.out_offset.view(shape))
    return out


def combine(p: torch.Tensor, steps: list[float] | None,
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

