"""Small validation helpers shared by the crossbar dataclasses.

Every failure is a ``ValueError`` naming the field, the value and the allowed range, so a bad
configuration stops before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any


def fail(field: str, value: object, allowed: str) -> None:
    raise ValueError(f"{field}={value!r} is invalid; allowed: {allowed}")


def check_int(field: str, value: object, low: int, high: int | None = None) -> None:
    """Integer in ``[low, high]`` (``high=None``: no upper bound)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return
    upper = "inf" if high is None else str(high)
    fail(field, value, f"an integer in [{low}, {upper}]")


def check_optional_int(field: str, value: object, low: int, high: int | None = None) -> None:
    if value is not None:
        check_int(field, value, low, high)


def check_float(
    field: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
) -> None:
    """Finite number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and math.isfinite(value):
        above = value > low if low_open else value >= low
        if above and value <= high:
            return
    bracket = "(" if low_open else "["
    fail(field, value, f"a finite number in {bracket}{low}, {high}]")


def check_choice(field: str, value: object, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(field, value, "one of " + ", ".join(repr(c) for c in choices))


def from_mapping(cls: Any, data: Mapping, label: str) -> Any:
    """Build the dataclass ``cls`` from ``data``, refusing unknown keys (``<label> key``)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        fail(f"{label} key", unknown[0], "one of " + ", ".join(sorted(known)))
    return cls(**data)
