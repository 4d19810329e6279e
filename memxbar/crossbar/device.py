"""Memristor device model: conductance window and levels, composed with pluggable cell effects.

A signed weight is stored as a differential pair ``w = alpha * (G+ - G-)`` (or, with the offset
mapping, ``w = alpha * (G - G_ref)``), each conductance in ``[g_min_uS, g_max_uS]``. What
happens to a cell between the target and the read is composed from one model per concern
(:mod:`crossbar.cells`): programming mismatch (optionally with write-verify), faults, drift to
``t_inference_s`` and read noise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from ._validate import check_choice, check_float, check_optional_int, fail
from .cells import (
    DriftModel,
    FaultModel,
    ProgrammingModel,
    ReadNoiseModel,
    WriteVerify,
    build,
    describe,
)

SHORTHANDS = ("prog_sigma", "prog_noise", "read_sigma", "sa0_rate", "sa1_rate")
"""Flat keys of version 0.1 configs, still accepted: ``prog_noise``/``prog_sigma`` set a
``lognormal`` or ``gaussian`` programming model, ``read_sigma`` a ``relative`` read noise and
``sa0_rate``/``sa1_rate`` a ``stuck_at`` fault model."""

_COMPONENTS = ("programming", "read_noise", "drift", "faults")


@dataclass(frozen=True, init=False)
class DeviceModel:
    """One memristor cell.

    Attributes:
        g_min_uS, g_max_uS: conductance window in microsiemens, ``0 <= g_min < g_max`` (a
            finite on/off ratio ``g_max / g_min`` is modelled: ``g_min`` is the lowest target).
        n_levels: number of uniformly spaced programmable conductances in the window (>= 2),
            or ``None`` for a continuous (analog) device. Mutually exclusive with ``levels_uS``.
        levels_uS: an explicit sorted list of programmable conductances inside the window.
        programming: device-to-device mismatch (``lognormal``, ``gaussian``, ``polynomial``),
            sampled once per programmed chip; ``None`` = exact programming.
        read_noise: cycle-to-cycle read noise (``relative``, ``polynomial``), drawn for every
            matrix-vector product; ``None`` = noiseless reads.
        drift: conductance drift after programming (``pcm_power_law``, ``rram_cmo``); ``None``.
        faults: cells that ignore programming (``stuck_at``); ``None``.
        write_verify: program-and-verify settings (:class:`crossbar.cells.WriteVerify`), or
            ``None`` for single-shot programming.
        t_inference_s: seconds between programming and inference (drift; 0 = just programmed).

    Each model is given as an instance, a name, or a mapping ``{"model": name, **fields}``;
    the 0.1 shorthand keys :data:`SHORTHANDS` are accepted too.
    """

    g_min_uS: float
    g_max_uS: float
    n_levels: int | None
    levels_uS: tuple[float, ...] | None
    programming: ProgrammingModel | None
    read_noise: ReadNoiseModel | None
    drift: DriftModel | None
    faults: FaultModel | None
    write_verify: WriteVerify | None
    t_inference_s: float

    def __init__(
        self,
        g_min_uS: float = 1.0,
        g_max_uS: float = 100.0,
        n_levels: int | None = None,
        levels_uS: tuple[float, ...] | None = None,
        programming: object = None,
        read_noise: object = None,
        drift: object = None,
        faults: object = None,
        write_verify: WriteVerify | Mapping | None = None,
        t_inference_s: float = 0.0,
        **shorthand: object,
    ) -> None:
        unknown = sorted(set(shorthand) - set(SHORTHANDS))
        if unknown:
            fail("device key", unknown[0], "one of " + ", ".join(FIELDS + SHORTHANDS))
        programming, read_noise, faults = _expand(shorthand, programming, read_noise, faults)
        if isinstance(write_verify, Mapping):
            write_verify = _write_verify(write_verify)
        elif write_verify is not None and not isinstance(write_verify, WriteVerify):
            fail("write_verify", write_verify, "null or a mapping of tolerance_uS, "
                 "max_pulses, pulse_sigma")
        values = dict(g_min_uS=g_min_uS, g_max_uS=g_max_uS, n_levels=n_levels,
                      levels_uS=levels_uS, programming=build("programming", programming),
                      read_noise=build("read_noise", read_noise), drift=build("drift", drift),
                      faults=build("faults", faults), write_verify=write_verify,
                      t_inference_s=t_inference_s)
        for key, value in values.items():
            object.__setattr__(self, key, value)
        self._validate()

    def _validate(self) -> None:
        check_float("g_min_uS", self.g_min_uS, 0.0, 1e6)
        check_float("g_max_uS", self.g_max_uS, 0.0, 1e6, low_open=True)
        if self.g_min_uS >= self.g_max_uS:
            fail("g_min_uS", self.g_min_uS, f"a value below g_max_uS={self.g_max_uS}")
        check_optional_int("n_levels", self.n_levels, 2, 4096)
        if self.levels_uS is not None:
            if self.n_levels is not None:
                fail("levels_uS", self.levels_uS, "None when n_levels is set (give one of them)")
            if isinstance(self.levels_uS, (str, bytes)) or not hasattr(self.levels_uS,
                                                                        "__iter__"):
                fail("levels_uS", self.levels_uS, "a list of conductances in uS")
            for v in self.levels_uS:
                check_float("levels_uS", v)
            levels = tuple(float(v) for v in self.levels_uS)
            object.__setattr__(self, "levels_uS", levels)
            if not 2 <= len(levels) <= 4096:
                fail("levels_uS", self.levels_uS, "between 2 and 4096 conductance levels")
            if any(levels[k + 1] <= levels[k] for k in range(len(levels) - 1)):
                fail("levels_uS", self.levels_uS, "strictly increasing values")
            if levels[0] < self.g_min_uS or levels[-1] > self.g_max_uS:
                fail("levels_uS", self.levels_uS,
                     f"values inside [g_min_uS, g_max_uS] = [{self.g_min_uS}, {self.g_max_uS}]")
        check_float("t_inference_s", self.t_inference_s, 0.0, 1e10)

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def ideal(cls) -> DeviceModel:
        """Continuous conductances, no variation, noise, drift or faults: reproduces the float
        model."""
        return cls()

    @classmethod
    def preset(cls, name: str) -> DeviceModel:
        """A named preset (see :data:`PRESETS`)."""
        if not isinstance(name, str) or name not in PRESETS:
            fail("preset", name, "one of " + ", ".join(sorted(PRESETS)))
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

    def active(self, concern: str) -> bool:
        """Whether the effect ``concern`` (a field holding a cell model) changes anything."""
        model = getattr(self, concern)
        return model is not None and getattr(model, "active", True)

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
        """A copy with some fields (or 0.1 shorthand keys) changed, validated again."""
        data = self.to_dict()
        if changes.get("n_levels") is not None:
            data["levels_uS"] = None
        data.update(changes)
        return DeviceModel.from_dict(data)

    def with_setting(self, key: str, value: object) -> DeviceModel:
        """A copy with one setting changed; ``key`` is a field, a shorthand, or a dotted path
        into a cell model (``programming.scale``, ``write_verify.tolerance_uS``)."""
        head, _, rest = key.partition(".")
        if not rest:
            return self.with_(**{key: value})
        if head not in _COMPONENTS + ("write_verify",):
            fail("device setting", key, "a field, a shorthand or <effect>.<field> with effect "
                 "one of " + ", ".join(_COMPONENTS + ("write_verify",)))
        current = self.to_dict()[head]
        if current is None:
            fail(key, value, f"a setting of an active {head} model (this device has none)")
        return self.with_(**{head: {**current, rest: value}})

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        if out["levels_uS"] is not None:
            out["levels_uS"] = list(out["levels_uS"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> DeviceModel:
        if not isinstance(data, Mapping):
            fail("device", data, "a mapping of DeviceModel fields")
        unknown = sorted(set(data) - set(FIELDS) - set(SHORTHANDS))
        if unknown:
            fail("device key", unknown[0], "one of " + ", ".join(FIELDS + SHORTHANDS))
        # a shorthand set to null is not given (config files list them for overrides)
        return cls(**{k: v for k, v in data.items() if not (k in SHORTHANDS and v is None)})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def describe(self) -> str:
        """One line per effect, for reports."""
        levels = (f"{self.level_count} levels" if self.level_count else "continuous")
        lines = [f"window {self.g_min_uS:g}-{self.g_max_uS:g} uS, {levels}"]
        for concern in _COMPONENTS:
            lines.append(f"{concern}: {describe(getattr(self, concern))}")
        wv = self.write_verify
        lines.append("write_verify: " + ("none" if wv is None else
                                         ", ".join(f"{k}={v}" for k, v in wv.to_dict().items())))
        lines.append(f"t_inference_s: {self.t_inference_s:g}")
        return "\n".join(lines)


FIELDS = tuple(f.name for f in fields(DeviceModel))


def _write_verify(data: Mapping) -> WriteVerify:
    known = {f.name for f in fields(WriteVerify)}
    unknown = sorted(set(data) - known)
    if unknown:
        fail(f"write_verify.{unknown[0]}", data[unknown[0]], "one of " + ", ".join(sorted(known)))
    return WriteVerify(**data)


def _expand(short: Mapping, programming: object, read_noise: object, faults: object
            ) -> tuple[object, object, object]:
    """Turn 0.1 shorthand keys into cell models (on top of the given ones)."""
    if "prog_sigma" in short or "prog_noise" in short:
        current = build("programming", programming)
        kind = short.get("prog_noise")
        if kind is not None:
            check_choice("prog_noise", kind, ("lognormal", "gaussian"))
        elif current is not None and current.name in ("lognormal", "gaussian"):
            kind = current.name
        elif current is not None:
            fail("prog_sigma", short.get("prog_sigma"), f"no shorthand: this device's "
                 f"programming model is {current.name!r}; set programming.<field> (e.g. "
                 "programming.scale) instead")
        else:
            kind = "lognormal"
        if "prog_sigma" in short:
            check_float("prog_sigma", short["prog_sigma"], 0.0, 1.0)
        same = current is not None and current.name == kind
        sigma = short.get("prog_sigma", current.sigma if same else 0.0)
        programming = {"model": kind, "sigma": sigma}
    if "read_sigma" in short:
        current = build("read_noise", read_noise)
        if current is not None and current.name != "relative":
            fail("read_sigma", short["read_sigma"], f"no shorthand: this device's read_noise "
                 f"model is {current.name!r}; set read_noise.<field> instead")
        check_float("read_sigma", short["read_sigma"], 0.0, 1.0)
        read_noise = {"model": "relative", "sigma": short["read_sigma"]}
    if "sa0_rate" in short or "sa1_rate" in short:
        current = build("faults", faults)
        if current is not None and current.name != "stuck_at":
            fail("sa0_rate", short.get("sa0_rate"), f"no shorthand: this device's faults "
                 f"model is {current.name!r}; set faults.<field> instead")
        for key in ("sa0_rate", "sa1_rate"):
            if key in short:
                check_float(key, short[key], 0.0, 1.0)
        base = current.to_dict() if current is not None else {"model": "stuck_at"}
        base.update({k: short[k] for k in ("sa0_rate", "sa1_rate") if k in short})
        faults = base
    return programming, read_noise, faults


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
        programming={"model": "lognormal", "sigma": 0.1},
    )


def _rram_neurram() -> DeviceModel:
    """NeuRRAM (Wan et al., "A compute-in-memory chip based on resistive random-access memory",
    Nature 608, 504-512, 2022): a window of about 40 uS with the low state near 0, four-bit
    weights (16 levels). The spread after the chip's write-verify (Extended Data Fig. 3, 1 s
    after programming) as CrossSim's RRAMWan fits it, ``sigma(G) = 1.053 + 0.2374 G
    - 1.167e-2 G^2 + 1.536e-4 G^3`` uS (1.05 uS at 0, 2.5 uS peak, 1.7 uS at 40 uS); 1 %
    relative read noise, the value aihwkit's ReRamWan2022 model suggests (no measured value is
    published)."""
    return DeviceModel(
        g_min_uS=0.0,
        g_max_uS=40.0,
        n_levels=16,
        programming={"model": "polynomial", "coeffs_uS": (1.053, 0.2374, -1.167e-2, 1.536e-4)},
        read_noise={"model": "relative", "sigma": 0.01},
    )


def _rram_milo() -> DeviceModel:
    """Multilevel HfO2 RRAM of Milo et al., "Optimized programming algorithms for multilevel
    RRAM in hardware neural networks", IRPS 2021 (Fig. 4, IGVVA-100 algorithm): 50-225 uS,
    analog states; spread after programming ``sigma(G) = 4.782321 - 0.009107 G`` uS (4.33 uS at
    50 uS, 2.73 uS at 225 uS), CrossSim's RRAMMilo fit."""
    return DeviceModel(
        g_min_uS=50.0,
        g_max_uS=225.0,
        programming={"model": "polynomial", "coeffs_uS": (4.782321, -0.009107)},
    )


def _rram_cmo() -> DeviceModel:
    """IBM's CMO/HfOx ReRAM as aihwkit's ``ReRamCMONoiseModel`` describes it (Falcone et al.,
    arXiv:2502.04524, 2025): 9-88.2 uS analog window; programming spread of the 2 % acceptance
    band ``0.01122 + 0.01129 G`` uS; log-time relaxation (``rram_cmo`` drift); read noise
    0.34 % of G (aihwkit's law ``0.0277 log10(G) sqrt(ln((t + 1us) / 2us))`` uS at 50 uS,
    t = 1 s, Lombardo et al., DRC 2024, made relative)."""
    return DeviceModel(
        g_min_uS=9.0,
        g_max_uS=88.2,
        programming={"model": "polynomial", "coeffs_uS": (0.0112185391, 0.01129027418)},
        read_noise={"model": "relative", "sigma": 0.0034},
        drift={"model": "rram_cmo"},
    )


def _pcm_aihwkit() -> DeviceModel:
    """PCM as aihwkit's ``PCMLikeNoiseModel`` describes it (Nandakumar et al., ICECS 2019):
    0-25 uS window; programming spread ``0.26348 + 1.9650 x - 1.1731 x^2`` uS with
    ``x = G / 25 uS``; power-law drift with the state-dependent exponent (``pcm_power_law``);
    aihwkit's accumulated 1/f read noise law (``pcm_1f``: 3.7 % of G at g_max right after
    programming, more at lower states and growing with ``t_inference_s``)."""
    return DeviceModel(
        g_min_uS=0.0,
        g_max_uS=25.0,
        programming={"model": "polynomial",
                     "coeffs_uS": (0.26348, 1.9650 / 25.0, -1.1731 / 25.0**2)},
        read_noise={"model": "pcm_1f"},
        drift={"model": "pcm_power_law"},
    )


PRESETS = {
    "ideal": DeviceModel.ideal,
    "rram_neurosim": _rram_neurosim,
    "rram_neurram": _rram_neurram,
    "rram_milo": _rram_milo,
    "rram_cmo": _rram_cmo,
    "pcm_aihwkit": _pcm_aihwkit,
}
