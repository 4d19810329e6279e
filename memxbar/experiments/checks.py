"""Value checks shared by the settings classes: every failure is one ``ValueError`` naming the
key, the value and what is allowed (``device.programming.sigma=-0.1 is invalid; allowed: ...``)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import types
import typing
from collections.abc import Mapping


def fail(key: str, value: object, allowed: str) -> typing.NoReturn:
    raise ValueError(f"{key}={value!r} is invalid; allowed: {allowed}")


def type_ok(value: object, annotation: object) -> bool:
    """Whether ``value`` fits a simple annotation (int, float, str, bool, X | None, list, dict)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is list or annotation is list:
        args = typing.get_args(annotation)
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value) \
            if args else isinstance(value, list)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def type_name(annotation: object) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def build(cls: type, data: Mapping | None, prefix: str) -> object:
    """Instantiate dataclass ``cls`` from ``data``: unknown keys and wrong types raise a
    ``ValueError`` naming ``prefix.key``; range checks run in the class's ``__post_init__``."""
    if data is not None and not isinstance(data, Mapping):
        fail(prefix, data, f"a mapping of {prefix} settings (key: value)")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            fail(f"{prefix}.{key}", data[key], f"a key of {prefix}: " + ", ".join(names))
    for key, value in data.items():
        if not type_ok(value, hints[key]):
            fail(f"{prefix}.{key}", value, f"a value of type {type_name(hints[key])}")
    try:
        return cls(**data)
    except ValueError as exc:
        raise ValueError(f"{prefix}.{exc}") from None


def check_range(key: str, value: float | int | None, low: float, high: float = math.inf,
                 optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not low <= value <= high:
        fail(key, value, f"a number in [{low}, {high}]"
              + (" or null" if optional else ""))


def known_keys(prefix: str, data: Mapping | None, cls: type, *extra: str) -> dict:
    """``data`` as a dict after checking that every key is a field of dataclass ``cls`` (or in
    ``extra``): an unknown key fails naming ``prefix.key``, its value and the allowed keys."""
    if data is not None and not isinstance(data, Mapping):
        fail(prefix, data, f"a mapping of {prefix} settings (key: value)")
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)] + list(extra)
    for key in data:
        if key not in names:
            fail(f"{prefix}.{key}", data[key], f"a key of {prefix}: " + ", ".join(names))
    return data


def library_call(prefix: str, make, data: Mapping):
    """Run a library constructor, prefixing its ValueError with the config group."""
    try:
        return make(dict(data))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{prefix}.{exc}") from None


def import_target(key: str, path: object) -> object:
    """The object a ``_target_`` names (``package.module.Attribute``), imported now, so that a
    wrong path fails before any work (``key``: the config key, e.g. ``model._target_``)."""
    if not isinstance(path, str) or "." not in path.strip(".") or any(
            not part.isidentifier() for part in path.split(".")):
        fail(key, path, "an importable dotted path, module.attribute (e.g. mypkg.models.MyNet)")
    module, _, attribute = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        fail(key, path, f"an importable dotted path (import of {module!r} failed: {exc}; is its "
                        "folder on PYTHONPATH?)")
    except AttributeError:
        fail(key, path, f"an attribute of module {module!r}; it has no {attribute!r}")
    if not callable(found):
        fail(key, path, "a callable (a class or a function)")
    return found


def check_call_args(prefix: str, target: str, fn: object, kwargs: Mapping) -> None:
    """Every key of ``kwargs`` is a parameter of ``fn`` (the object ``target`` names), unless
    it takes ``**kwargs``: an unknown key fails naming ``prefix.key`` and the parameters."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: the call checks
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key, value in kwargs.items():
        if key not in names:
            fail(f"{prefix}.{key}", value, f"a parameter of {target}: " + (", ".join(names)
                                                                          or "none"))
