"""Interfaces and registries of the memristor cell's non-idealities.

Every effect of the cell is one small model behind one interface, chosen by name:

* :class:`ProgrammingModel` (``programming``): device-to-device mismatch of a programmed cell,
  sampled once per programmed chip;
* :class:`ReadNoiseModel` (``read_noise``): cycle-to-cycle conductance noise, drawn for every
  matrix-vector product;
* :class:`DriftModel` (``drift``): conductance change with time after programming;
* :class:`FaultModel` (``faults``): cells that do not respond to programming.

A model is a frozen dataclass with a class attribute ``name`` and registers itself with
``@REGISTRY[concern].register``. In a config it is written as a mapping
``{"model": <name>, <field>: <value>, ...}``; :func:`build` turns such a mapping (or a bare
name, or an instance) into the model, validating every field. Adding an effect is one module
with one class, its registry entry and its docs (docs/crossbar.md).

All conductances are in microsiemens (uS); the random numbers a model consumes are handed to
it (standard normal or uniform tensors from the chip's derived streams, :mod:`crossbar.streams`),
so the same chip seed gives the same chip and a sweep over one effect keeps the others fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from .._validate import check_float, fail
from ..registry import Registry


class DeviceModel(Protocol):
    """What a cell model reads of the device it belongs to (``crossbar.DeviceModel`` has it):
    the conductance window. A protocol, not an import, so ``crossbar.device`` (which builds
    the cell models) and the cells do not import each other."""

    g_min_uS: float
    g_max_uS: float
    t_inference_s: float

    @property
    def g_range_uS(self) -> float: ...


REGISTRY: dict[str, Registry] = {
    concern: Registry(f"{concern}.model")
    for concern in ("programming", "read_noise", "drift", "faults")
}


class CellModel:
    """Common serialisation of the cell models: ``{"model": name, **fields}``."""

    name: ClassVar[str]
    concern: ClassVar[str]

    def to_dict(self) -> dict:
        return {"model": self.name, **dataclasses.asdict(self)}

    def key(self, field: str) -> str:
        """The config key of one of this model's fields, for error messages."""
        return f"{self.concern}.{field}"


def build(concern: str, spec: object) -> CellModel | None:
    """A cell model of ``concern`` from an instance, a name, a mapping ``{"model": name, ...}``
    or ``None`` (the effect is off)."""
    registry = REGISTRY[concern]
    if spec is None or isinstance(spec, CellModel):
        if isinstance(spec, CellModel) and spec.concern != concern:
            fail(concern, spec, f"a {concern} model, one of {registry.names}")
        return spec
    if isinstance(spec, str):
        return registry.get(spec)()
    if not isinstance(spec, Mapping):
        fail(concern, spec, f"null, a model name or a mapping with 'model': one of "
             f"{registry.names}")
    data = dict(spec)
    cls = registry.get(data.pop("model", None))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        fail(f"{concern}.{unknown[0]}", data[unknown[0]],
             f"a field of the {cls.name!r} {concern} model: " + ", ".join(sorted(known)))
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    return cls(**data)


def check_coefficients(key: str, coeffs: object) -> tuple[float, ...]:
    """A non-empty sequence of finite numbers (polynomial coefficients)."""
    if not isinstance(coeffs, Sequence) or isinstance(coeffs, str) or not coeffs:
        fail(key, coeffs, "a non-empty list of finite numbers (c0, c1, ...)")
    for c in coeffs:
        check_float(key, c)
    if len(coeffs) > 8:
        fail(key, coeffs, "at most 8 coefficients")
    return tuple(float(c) for c in coeffs)


def polynomial_sigma_uS(g_uS: torch.Tensor, coeffs: Sequence[float]) -> torch.Tensor:
    """``sigma(G) = max(0, sum_k c_k G^k)`` in uS with ``G`` in uS: a state-dependent spread
    fitted as a polynomial of the conductance (as CrossSim's device files fit measured RRAM
    data). Evaluated with Horner's rule."""
    x = g_uS
    sigma = torch.full_like(g_uS, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        sigma = sigma * x + c
    return sigma.clamp_(min=0.0)


@dataclass(frozen=True)
class PolynomialSpread:
    """A state-dependent spread ``scale * sigma(G)``, ``sigma`` a polynomial (uS): the fields
    and checks shared by the programming and read-noise models fitted that way."""

    coeffs_uS: tuple[float, ...] = (0.0,)
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeffs_uS", check_coefficients(self.key("coeffs_uS"),
                                                                 self.coeffs_uS))
        check_float(self.key("scale"), self.scale, 0.0, 100.0)

    @property
    def active(self) -> bool:
        return self.scale > 0 and any(c != 0 for c in self.coeffs_uS)

    def sigma_uS(self, g_uS: torch.Tensor) -> torch.Tensor:
        return self.scale * polynomial_sigma_uS(g_uS, self.coeffs_uS)


# ------------------------------------------------------------------------------ interfaces
class ProgrammingModel(CellModel):
    """Device-to-device mismatch: where a cell lands when programmed to ``g_target``."""

    concern: ClassVar[str] = "programming"

    def spread_uS(self, g_target: torch.Tensor, device: DeviceModel) -> torch.Tensor:
        """Standard deviation of the programmed conductance at each target (uS)."""
        raise NotImplementedError

    def sample(self, g_target: torch.Tensor, normal: torch.Tensor, device: DeviceModel
               ) -> torch.Tensor:
        """Programmed conductances from standard-normal draws ``normal`` (same shape).
        Conductances cannot be negative: the result is floored at 0 uS (the window edges
        ``g_min``/``g_max`` are targets, not bounds: a cell may land outside them)."""
        return (g_target + self.spread_uS(g_target, device) * normal).clamp_(min=0.0)

    @property
    def active(self) -> bool:
        return True


class ReadNoiseModel(CellModel):
    """Cycle-to-cycle noise: a read of a cell at ``G`` gives ``G + std(G) * N(0, 1)``, a new
    draw for every matrix-vector product."""

    concern: ClassVar[str] = "read_noise"

    def std_uS(self, g: torch.Tensor, device: DeviceModel,
               programmed: torch.Tensor | None = None, t_s: float | None = None
               ) -> torch.Tensor:
        """The std (uS) of a read of cells at ``g``: ``programmed``, their conductance right
        after programming (default ``g``), and ``t_s``, the time since programming (default
        ``device.t_inference_s``), for laws that change with time."""
        raise NotImplementedError

    @property
    def active(self) -> bool:
        return True


class DriftModel(CellModel):
    """Conductance at ``t`` seconds after programming from the programmed conductance and one
    standard-normal draw per cell (the cell's drift variability, fixed per chip)."""

    concern: ClassVar[str] = "drift"

    def at_time(self, g: torch.Tensor, t_s: float, normal: torch.Tensor, device: DeviceModel,
                target: torch.Tensor) -> torch.Tensor:
        """``g`` drifted to ``t_s``; ``target``: the programmed targets (state-dependent laws
        are fitted against the target state)."""
        raise NotImplementedError


class FaultModel(CellModel):
    """Cells that ignore programming, from one uniform draw per cell (fixed per chip)."""

    concern: ClassVar[str] = "faults"

    def stuck(self, uniform: torch.Tensor, device: DeviceModel) -> torch.Tensor:
        """The conductance each stuck cell holds whatever it is programmed to, NaN for a
        healthy cell (same shape as ``uniform``)."""
        raise NotImplementedError

    def apply(self, g: torch.Tensor, uniform: torch.Tensor, device: DeviceModel
              ) -> torch.Tensor:
        """``g`` with the stuck cells at their stuck values."""
        stuck = self.stuck(uniform, device).to(g.dtype)
        return torch.where(torch.isnan(stuck), g, stuck)

    @property
    def active(self) -> bool:
        return True


def describe(model: Any) -> str:
    """``name(field=value, ...)`` of a cell model, ``none`` when the effect is off."""
    if model is None:
        return "none"
    fields = ", ".join(f"{k}={v}" for k, v in model.to_dict().items() if k != "model")
    return f"{model.name}({fields})"
