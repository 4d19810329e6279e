"""Memristor device model: conductance range, programmable levels, mismatch, read noise, faults.

A signed weight is stored as a differential pair ``w = alpha * (G+ - G-)`` (or, with the offset
mapping, ``w = alpha * (G - G_ref)``), each conductance in ``[g_min_uS, g_max_uS]``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._validate import check_choice, check_float, check_optional_int, fail, from_mapping

PROG_NOISE_KINDS = ("lognormal", "gaussian")


@dataclass(frozen=True)
class DeviceModel:
    """One memristor cell.

    Attributes:
        g_min_uS, g_max_uS: conductance range in microsiemens, ``0 <= g_min < g_max`` (a finite
            on/off ratio ``g_max / g_min`` is modelled: ``g_min`` is what an "off" cell conducts).
        n_levels: number of uniformly spaced programmable conductances in the range (>= 2), or
            ``None`` for a continuous (analog) device. Mutually exclusive with ``levels_uS``.
        levels_uS: an explicit sorted list of programmable conductances inside the range.
        prog_sigma: device-to-device programming variation, sampled once per ``program()``.
            ``"lognormal"``: ``G' = G * exp(prog_sigma * N(0, 1))``;
            ``"gaussian"``: ``G' = G + prog_sigma * (g_max - g_min) * N(0, 1)``; then clipped.
        prog_noise: ``"lognormal"`` or ``"gaussian"``.
        read_sigma: cycle-to-cycle read noise, relative to the read conductance:
            ``G_read = G' * (1 + read_sigma * N(0, 1))``, drawn anew on every read (forward call).
        sa0_rate, sa1_rate: fractions of cells stuck at ``g_min`` (SA0) and ``g_max`` (SA1).
    """

    g_min_uS: float = 1.0
    g_max_uS: float = 100.0
    n_levels: int | None = None
    levels_uS: tuple[float, ...] | None = None
    prog_sigma: float = 0.0
    prog_noise: str = "lognormal"
    read_sigma: float = 0.0
    sa0_rate: float = 0.0
    sa1_rate: float = 0.0

    def __post_init__(self) -> None:
        check_float("g_min_uS", self.g_min_uS, 0.0)
        check_float("g_max_uS", self.g_max_uS, 0.0, low_open=True)
        if self.g_min_uS >= self.g_max_uS:
            fail("g_min_uS", self.g_min_uS, f"a value below g_max_uS={self.g_max_uS}")
        check_optional_int("n_levels", self.n_levels, 2)
        if self.levels_uS is not None:
            if self.n_levels is not None:
                fail("levels_uS", self.levels_uS, "None when n_levels is set (give one of them)")
            levels = tuple(float(v) for v in self.levels_uS)
            object.__setattr__(self, "levels_uS", levels)
            if len(levels) < 2:
                fail("levels_uS", self.levels_uS, "at least 2 conductance levels")
            if any(levels[k + 1] <= levels[k] for k in range(len(levels) - 1)):
                fail("levels_uS", self.levels_uS, "strictly increasing values")
            if levels[0] < self.g_min_uS or levels[-1] > self.g_max_uS:
                fail(
                    "levels_uS",
                    self.levels_uS,
                    f"values inside [g_min_uS, g_max_uS] = [{self.g_min_uS}, {self.g_max_uS}]",
                )
        check_float("prog_sigma", self.prog_sigma, 0.0)
        check_choice("prog_noise", self.prog_noise, PROG_NOISE_KINDS)
        check_float("read_sigma", self.read_sigma, 0.0)
        check_float("sa0_rate", self.sa0_rate, 0.0, 1.0)
        check_float("sa1_rate", self.sa1_rate, 0.0, 1.0)
        if self.sa0_rate + self.sa1_rate > 1.0:
            fail("sa0_rate + sa1_rate", self.sa0_rate + self.sa1_rate, "a sum in [0, 1]")

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def ideal(cls) -> DeviceModel:
        """Continuous conductances, no variation, noise or faults: reproduces the float model."""
        return cls()

    @classmethod
    def preset(cls, name: str) -> DeviceModel:
        """A named preset (see :data:`PRESETS`)."""
        if name not in PRESETS:
            fail("device preset", name, "one of " + ", ".join(sorted(PRESETS)))
        return PRESETS[name]()

    # ------------------------------------------------------------------------------ properties
    @property
    def g_range_uS(self) -> float:
        return self.g_max_uS - self.g_min_uS

    @property
    def is_continuous(self) -> bool:
        return self.n_levels is None and self.levels_uS is None

    @property
    def level_count(self) -> int | None:
        """Number of programmable states per cell (``None`` for an analog cell)."""
        if self.levels_uS is not None:
            return len(self.levels_uS)
        return self.n_levels

    def conductance_levels(self, device: torch.device | None = None) -> torch.Tensor | None:
        """Sorted programmable conductances in uS, or ``None`` for a continuous device."""
        if self.levels_uS is not None:
            return torch.tensor(self.levels_uS, dtype=torch.float32, device=device)
        if self.n_levels is not None:
            return torch.linspace(
                self.g_min_uS, self.g_max_uS, self.n_levels, dtype=torch.float32, device=device
            )
        return None

    def with_(self, **changes: object) -> DeviceModel:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> DeviceModel:
        return from_mapping(cls, data, "device")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# --------------------------------------------------------------------------------------- presets
# Numbers and their sources are listed in docs/crossbar.md ("Device presets").
def _rram_neurosim() -> DeviceModel:
    """NeuroSim's default RRAM cell (Peng, Huang, Lu, Yu, "DNN+NeuroSim", IEDM 2019; defaults of
    DNN_NeuroSim_V1.3 Param.cpp): R_on = 6 kOhm, R_off = 150 x R_on at 0.5 V read, so
    g_max = 166.7 uS, g_min = 1.11 uS; cellBit = 2 (4 levels). Variation 0.1 relative to the
    programmed value, the example value NeuroSim's inference wrapper documents for ``--vari``."""
    return DeviceModel(
        g_min_uS=1e6 / (6e3 * 150),
        g_max_uS=1e6 / 6e3,
        n_levels=4,
        prog_sigma=0.1,
        prog_noise="lognormal",
    )


def _rram_neurram() -> DeviceModel:
    """NeuRRAM (Wan et al., "A compute-in-memory chip based on resistive random-access memory",
    Nature 608, 504-512, 2022): g_max about 40 uS with g_min about 0, four-bit weights (16 levels);
    programming spread after write-verify peaks at about 2.5 uS (Extended Data Fig. 3, as fitted
    by CrossSim's RRAMWan model), i.e. 0.0625 of the range; 1% read noise as aihwkit suggests for
    this device (no measured value is published)."""
    return DeviceModel(
        g_min_uS=0.0,
        g_max_uS=40.0,
        n_levels=16,
        prog_sigma=0.0625,
        prog_noise="gaussian",
        read_sigma=0.01,
    )


def _rram_milo() -> DeviceModel:
    """Multilevel HfO2 RRAM of Milo et al., "Optimized programming algorithms for multilevel
    RRAM in hardware neural networks", IRPS 2021 (Fig. 4, IGVVA-100 algorithm): 50-225 uS,
    programming spread at most 4.33 uS, i.e. 0.025 of the range; analog (continuous) states."""
    return DeviceModel(
        g_min_uS=50.0,
        g_max_uS=225.0,
        prog_sigma=0.025,
        prog_noise="gaussian",
    )


PRESETS = {
    "ideal": DeviceModel.ideal,
    "rram_neurosim": _rram_neurosim,
    "rram_neurram": _rram_neurram,
    "rram_milo": _rram_milo,
}
