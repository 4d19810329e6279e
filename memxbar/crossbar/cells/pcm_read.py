"""PCM read noise that grows with time: the accumulated 1/f noise law of aihwkit's
``PCMLikeNoiseModel`` (fit to IBM's PCM by Nandakumar et al., ICECS 2019; the 1/f form of
Joshi et al., Nature Communications 11, 2473 (2020)),

    std(G, t) = scale * |G(t)| * Q_s(G_prog / g_max) * sqrt( ln((t + t0 + t_read) / (2 t_read)) )
    Q_s(x)    = min( 0.0088 / max(x^0.65, 1e-3), 0.2 )

with ``G(t)`` the (drifted) conductance read, ``G_prog`` the conductance right after
programming, ``t`` the time since programming (``device.t_inference_s``), ``t0 = 20 s`` the
first read and ``t_read = 250 ns`` the read window. At ``G = g_max`` and ``t = 0`` it is 3.7 %
of ``G`` (the flat value this project used before); at ``G <= 0.5 g_max`` it is 1.6-7x that,
and it grows as ``sqrt(ln t)``: 4.8 % at ``g_max`` after 30 days, 33 % at ``0.05 g_max``.

aihwkit draws this noise once per evaluation time (a quasi-static error of each cell); the
simulator draws it, like every read-noise model, for every matrix-vector product: the variance
of each read is the law's, reads are independent. A write-verify read, right after a pulse,
takes ``t = 0`` (the law at ``t0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_float
from .base import REGISTRY, ReadNoiseModel


@REGISTRY["read_noise"].register
@dataclass(frozen=True)
class Pcm1fReadNoise(ReadNoiseModel):
    """``t0_s``: first read after programming; ``t_read_s``: read window; ``scale``: multiplier
    of the fit (aihwkit's ``read_noise_scale``)."""

    name = "pcm_1f"
    t0_s: float = 20.0
    t_read_s: float = 250e-9
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_float(self.key("t0_s"), self.t0_s, 0.0, 1e6, low_open=True)
        check_float(self.key("t_read_s"), self.t_read_s, 0.0, 1.0, low_open=True)
        check_float(self.key("scale"), self.scale, 0.0, 100.0)
        if self.t0_s <= self.t_read_s:
            raise ValueError(f"{self.key('t0_s')}={self.t0_s!r} is invalid; allowed: a time "
                             f"above t_read_s={self.t_read_s!r} (the law needs t0 > t_read)")

    @property
    def active(self) -> bool:
        return self.scale > 0

    def relative_std(self, programmed: torch.Tensor, device, t_s: float) -> torch.Tensor:
        """``std / |G(t)|`` of cells programmed to ``programmed`` (uS), ``t_s`` after
        programming."""
        x = (programmed.abs() / device.g_max_uS).clamp(min=0.0)
        q_s = (0.0088 / x.pow(0.65).clamp(min=1e-3)).clamp(max=0.2)
        t = max(float(t_s), 0.0) + self.t0_s
        return self.scale * q_s * math.sqrt(math.log((t + self.t_read_s) / (2 * self.t_read_s)))

    def std_uS(self, g: torch.Tensor, device, programmed: torch.Tensor | None = None,
               t_s: float | None = None) -> torch.Tensor:
        t = device.t_inference_s if t_s is None else t_s
        return g.abs() * self.relative_std(g if programmed is None else programmed, device, t)
