"""DAC and ADC code ranges and bit-serial input planes.

The converters themselves are a round and a clamp in code units inside the crossbar layers
(``memxbar/crossbar/layers.py``): the DAC and ADC steps are folded into the tile weights.
Rounding has zero gradient; the crossbar forward pass is for inference.
"""

from __future__ import annotations

import torch

_TINY = 1e-30


def signed_steps(bits: int) -> int:
    """Largest code of a symmetric signed converter: ``2^(bits-1) - 1`` (at least 1, so a 1-bit
    signed converter is modelled as a comparator pair giving {-r, 0, +r})."""
    return max(2 ** (bits - 1) - 1, 1)


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
