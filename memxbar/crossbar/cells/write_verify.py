"""Write-verify (program-and-verify) programming.

Multilevel RRAM is programmed iteratively: apply a pulse, read the cell back, and apply another
pulse while the read value is outside a tolerance band around the target, up to a pulse budget
(NeuRRAM, Wan et al., Nature 608, 504 (2022), Methods "write-verify"; Milo et al., IRPS 2021,
the ISPVA / IGVVA algorithms). Modelled per cell, vectorised over a whole layer:

    pulse 1:      G_1 = programming model's sample at the target  (the single-shot cell)
    verify k:     R_k = G_k + std_read(G_k) * N      (the device's read noise model)
    pulse k + 1:  if |R_k - T| > tol:  G_{k+1} = max(0, T + pulse_sigma * spread(T) * N)

``spread(T)`` is the programming model's spread at the target, so ``pulse_sigma = 1`` makes a
corrective pulse as precise as a first pulse; a cell still outside the band after
``max_pulses`` pulses has failed to converge and keeps its last state. The verify reads use the
device's read noise: a band narrower than the read noise is hit only by chance (cells pass or
fail on a noisy read, as on a chip).

Result per cell: the programmed conductance, the pulse count and whether it converged; the
residual ``G - T`` is the programming error after verify (:class:`WriteVerifyResult`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .._validate import check_float, check_int
from .base import ProgrammingModel, ReadNoiseModel


@dataclass
class WriteVerifyResult:
    """Per cell: programmed conductance (uS), pulses applied, converged within tolerance."""

    g_uS: torch.Tensor
    pulses: torch.Tensor
    converged: torch.Tensor


@dataclass(frozen=True)
class WriteVerify:
    """``tolerance_uS``: half-width of the acceptance band around the target;
    ``max_pulses``: pulse budget per cell (the first programming pulse included);
    ``pulse_sigma``: spread of a corrective pulse relative to the programming model's spread;
    ``verify_reads``: reads averaged per verify (NeuRRAM averages 8; Wan et al., Nature 2022).
    The one setting drives both the simulated verify read, whose read-noise standard deviation
    is ``sigma_read(G) / sqrt(verify_reads)`` (the mean of independent reads of white noise),
    and the programming cost, which charges ``verify_reads`` reads per pulse
    (``crossbar.programming_cost``)."""

    tolerance_uS: float = 1.0
    max_pulses: int = 20
    pulse_sigma: float = 1.0
    verify_reads: int = 8

    def __post_init__(self) -> None:
        check_float("write_verify.tolerance_uS", self.tolerance_uS, 0.0, 1e4, low_open=True)
        check_int("write_verify.max_pulses", self.max_pulses, 1, 1000)
        check_float("write_verify.pulse_sigma", self.pulse_sigma, 0.0, 10.0)
        check_int("write_verify.verify_reads", self.verify_reads, 1, 1000)

    def to_dict(self) -> dict:
        return asdict(self)

    def program(
        self,
        target: torch.Tensor,
        programming: ProgrammingModel | None,
        read_noise: ReadNoiseModel | None,
        device,
        first: torch.Tensor,
        gen: torch.Generator,
        settle: Callable[[torch.Tensor], torch.Tensor] | None = None,
        select: torch.Tensor | None = None,
    ) -> WriteVerifyResult:
        """Program ``target`` (uS). ``first``: the standard-normal draws of the first pulse
        (the same as single-shot programming, so verify only changes the cells it re-pulses);
        ``gen``: the CPU generator of the corrective pulses and verify reads; ``settle``: what
        a pulse leaves in a cell (stuck-at faults pin their cells whatever the pulse);
        ``select``: the cells verified (bool, broadcast to ``target``; selective write-verify,
        SWIM: Yan et al., DAC 2022); the others keep their first pulse, unchecked (reported
        as converged). The draws do not depend on ``select``, so a verified cell ends as it
        would with every cell verified."""
        settle = settle or (lambda g: g)
        if programming is not None and programming.active:
            g = settle(programming.sample(target, first, device))
            spread = self.pulse_sigma * programming.spread_uS(target, device)
        else:
            g = settle(target.clone())
            spread = torch.zeros_like(target)
        pulses = torch.ones(target.shape, dtype=torch.int16)
        noisy_verify = read_noise is not None and read_noise.active
        averaged = 1.0 / math.sqrt(self.verify_reads)  # the mean of verify_reads reads
        for k in range(self.max_pulses):
            read = g
            if noisy_verify:
                normal = torch.randn(target.shape, generator=gen, dtype=target.dtype)
                read = g + averaged * read_noise.std_uS(g, device, t_s=0.0) * normal
            outside = (read - target).abs() > self.tolerance_uS
            if select is not None:
                outside &= select
            if k == self.max_pulses - 1 or not bool(outside.any()):
                return WriteVerifyResult(g, pulses, ~outside)
            normal = torch.randn(target.shape, generator=gen, dtype=target.dtype)
            again = (target + spread * normal).clamp_(min=0.0)
            g = torch.where(outside, settle(again), g)
            pulses += outside.to(torch.int16)
        raise AssertionError("unreachable")
