"""Hydra structured-config schemas of the config groups, generated from the classes that
validate them (no hand-written mirror): ``crossbar`` from ``crossbar.CrossbarConfig``,
``device`` from ``crossbar.DeviceModel`` (plus ``preset`` and the 0.1 shorthands), ``cost`` from
``crossbar.cost.CostConfig``, ``admm`` from ``experiments.config.AdmmSettings`` (itself generated
from ``admm.CompressConfig``), ``dataset`` and ``robustness`` from their settings classes, and
``model`` from the constructor arguments of every model in ``experiments.models.MODELS``.

Each schema is stored in Hydra's ``ConfigStore`` as ``schema/<group>`` and placed under its
group in ``conf/config.yaml``'s defaults list (``schema/crossbar@crossbar`` before
``crossbar: default``), so Hydra composes every group option onto a typed node: an unknown key
(``crossbar.tile_row=64``) or a value of the wrong type (``crossbar.tile_rows=abc``) fails at
composition, before the run starts, with OmegaConf's message naming the full key.

Every field defaults to ``MISSING``: the schema types and closes the key set but sets no value,
so a key the option file does not set stays unset (:func:`drop_missing` removes it) and the
library class's own default applies. Typing rules: ``int``, ``float``, ``str`` and lists of
them keep their type (``X | None`` becomes ``Optional[X]``); booleans are ``Any`` because
OmegaConf turns ``-1``, ``2`` or ``"yes"`` into ``True`` without a word, and the loader
(:mod:`experiments.config`) checks them strictly; polymorphic blocks (cell models, the array
model, constraints) are ``Any`` and validated by their registries. Ranges, finiteness and
cross-group rules are the loader's work, before any file is written.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, List, Optional  # noqa: UP035 (OmegaConf reads these forms)

from omegaconf import MISSING

_PRIMITIVES = (int, float, str)


def omegaconf_type(hint: object) -> object:
    """The OmegaConf field type for a Python annotation (see the module docstring)."""
    if hint in _PRIMITIVES:
        return hint
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:  # X | None
            inner = omegaconf_type(args[0])
            return Any if inner is Any else Optional[inner]  # noqa: UP007, UP045
        return Any
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        if len(args) == 1 or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            if args[0] in _PRIMITIVES:
                return List[args[0]]  # noqa: UP006
        return Any
    return Any


def make_schema(name: str, fields: Iterable[tuple[str, object]]) -> type:
    """A dataclass with one ``MISSING`` field per ``(name, annotation)``."""
    return dataclasses.make_dataclass(
        name, [(key, omegaconf_type(hint), dataclasses.field(default=MISSING))
               for key, hint in fields])


def fields_of(cls: type, *extra: str) -> list[tuple[str, object]]:
    """``(name, annotation)`` of dataclass ``cls``'s fields, plus ``extra`` names (``Any``)."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)] + [(k, Any) for k in extra]


def model_fields(models: Mapping[str, tuple]) -> list[tuple[str, object]]:
    """``name`` and the union of the constructor arguments of every registered model."""
    out: dict[str, object] = {"name": str}
    for builder, *_ in models.values():
        hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
        for param in inspect.signature(builder).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            hint = hints.get(param.name, Any)
            if param.name in out and out[param.name] != hint:
                hint = Any  # two models, two types: the loader checks the value
            out[param.name] = hint
    return list(out.items())


def group_schemas() -> dict[str, type]:
    """The schema of every config group, generated from its class."""
    from crossbar import CrossbarConfig, DeviceModel
    from crossbar.cost import CostConfig
    from crossbar.device import SHORTHANDS
    from experiments.config import AdmmSettings, DatasetSettings, RobustnessSettings
    from experiments.models import MODELS

    return {
        "model": make_schema("ModelSchema", model_fields(MODELS)),
        "dataset": make_schema("DatasetSchema", fields_of(DatasetSettings)),
        "device": make_schema("DeviceSchema", fields_of(DeviceModel, "preset", *SHORTHANDS)),
        "crossbar": make_schema("CrossbarSchema", fields_of(CrossbarConfig, "bit_serial")),
        "admm": make_schema("AdmmSchema", fields_of(AdmmSettings)),
        "cost": make_schema("CostSchema", fields_of(CostConfig)),
        "robustness": make_schema("RobustnessSchema", fields_of(RobustnessSettings)),
    }


_REGISTERED: dict[str, type] = {}


def register() -> dict[str, type]:
    """Store every group's schema in Hydra's ``ConfigStore`` as ``schema/<group>`` (once)."""
    if not _REGISTERED:
        from hydra.core.config_store import ConfigStore

        store = ConfigStore.instance()
        for group, schema in group_schemas().items():
            store.store(group="schema", name=group, node=schema)
            _REGISTERED[group] = schema
    return dict(_REGISTERED)


def drop_missing(data: object) -> object:
    """``data`` (plain containers) without the keys the schemas left unset (``"???"``)."""
    if isinstance(data, dict):
        return {k: drop_missing(v) for k, v in data.items() if v != MISSING}
    if isinstance(data, list):
        return [drop_missing(v) for v in data]
    return data
