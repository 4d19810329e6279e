"""The device presets of the ``device`` config group, from the one place they are defined:
``crossbar.device.PRESETS`` (each with its sources in docs/crossbar.md).

:func:`register` stores every preset in Hydra's ``ConfigStore`` as the option ``device=<name>``,
with every field written out (``DeviceModel.preset(name).to_dict()``), so that ``device=
rram_neurram device.n_levels=8`` overrides one field of it and ``--cfg job`` shows them all.
No YAML copy exists; the project's own test devices (``rram16``, ``rram16_var10_sa05``, ...)
are plain files in ``memxbar/conf/device/``.
"""

from __future__ import annotations

from memxbar.crossbar.device import PRESETS, DeviceModel

__all__ = ["register"]

_REGISTERED: list[str] = []


def register() -> list[str]:
    """Store every preset as ``device=<name>`` in Hydra's ``ConfigStore`` (once); returns the
    names."""
    if not _REGISTERED:
        from hydra.core.config_store import ConfigStore

        store = ConfigStore.instance()
        for name in PRESETS:
            store.store(group="device", name=name, node=DeviceModel.preset(name).to_dict())
            _REGISTERED.append(name)
    return list(_REGISTERED)
