"""Registries: the implementations of one concern (a cell effect, a mapping style, a DAC, an
ADC, an array model) by name, chosen from config. Adding an implementation is one module whose
class carries a ``name`` and registers itself with ``@REGISTRY.register``."""

from __future__ import annotations

from collections.abc import Iterator

from ._validate import fail


class Registry:
    """Classes by ``name``; ``key`` is the config key that names one (for error messages)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._models: dict[str, type] = {}
        self._instances: dict[str, object] = {}

    def register(self, cls: type) -> type:
        if cls.name in self._models:
            raise ValueError(f"{self.key} {cls.name!r} is registered twice")
        self._models[cls.name] = cls
        return cls

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._models)

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def get(self, name: object) -> type:
        """The class registered as ``name`` (ValueError naming the key and the choices)."""
        if not isinstance(name, str) or name not in self._models:
            fail(self.key, name, "one of " + ", ".join(map(repr, self._models)))
        return self._models[name]

    def instance(self, name: object) -> object:
        """A shared instance of a stateless implementation (mapping styles, converters)."""
        cls = self.get(name)
        if self._instances.get(name).__class__ is not cls:
            self._instances[name] = cls()
        return self._instances[name]
