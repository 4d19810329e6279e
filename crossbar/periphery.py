"""DAC and ADC models (uniform quantizers with a straight-through gradient).

``torch.fake_quantize_per_*_affine`` does the scale, round, clamp and rescale in one fused pass,
which keeps the periphery cheap next to the matrix products.
"""

from __future__ import annotations

import torch

_TINY = 1e-30


def signed_steps(bits: int) -> int:
    """Largest code of a symmetric signed converter: ``2^(bits-1) - 1`` (at least 1, so a 1-bit
    signed converter is modelled as a comparator pair giving {-r, 0, +r})."""
    return max(2 ** (bits - 1) - 1, 1)


def quantize(x: torch.Tensor, full_range: float, bits: int, signed: bool) -> torch.Tensor:
    """Uniform quantization of ``x`` to ``bits`` over ``[-r, r]`` (signed) or ``[0, r]``.

    Signed: codes ``-q..q`` with ``q = 2^(bits-1) - 1``, step ``r / q``; unsigned: codes
    ``0..2^bits - 1``, step ``r / (2^bits - 1)``. Values outside the range saturate.
    """
    q = signed_steps(bits) if signed else 2**bits - 1
    scale = max(float(full_range), _TINY) / q
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, -q if signed else 0, q)


def quantize_per_slice(x: torch.Tensor, ranges: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed quantization of ``x[N, S, ...]`` with one range per slice (dim 1)."""
    q = signed_steps(bits)
    scale = ranges.clamp(min=_TINY).to(torch.float32) / q
    zero = torch.zeros(ranges.numel(), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_channel_affine(x, scale, zero, 1, -q, q)


def bit_planes(
    x: torch.Tensor, full_range: float, bits: int, signed: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit-serial input: ``x ~ sum_p weight_p * plane_p`` with 0/1 planes.

    The magnitude is quantized to ``bits`` unsigned over ``[0, r]``; with signed inputs the
    positive and negative parts are streamed separately (negative planes carry a negative
    weight). Returns ``(planes[P, *x.shape], weights[P])``.
    """
    levels = 2**bits - 1
    step = max(float(full_range), _TINY) / levels
    code = torch.round((x.abs() / step).clamp(max=levels)).to(torch.int32)
    shifts = torch.arange(bits, device=x.device, dtype=torch.int32).view(-1, *([1] * x.dim()))
    planes = ((code.unsqueeze(0) >> shifts) & 1).to(x.dtype)
    weights = step * 2.0 ** torch.arange(bits, device=x.device, dtype=x.dtype)
    if not signed:
        return planes, weights
    positive = (x > 0).to(x.dtype).unsqueeze(0)
    negative = (x < 0).to(x.dtype).unsqueeze(0)
    return torch.cat([planes * positive, planes * negative]), torch.cat([weights, -weights])
