"""A crossbar layer's state dict: the device and periphery its conductances were programmed for
(extra state), the checks after loading, and the upgrade of older states."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import physical
from .config import CrossbarConfig
from .device import DeviceModel

if TYPE_CHECKING:
    from .layers import CrossbarLayer


def check_extra_state(layer: CrossbarLayer, state: dict) -> None:
    """Refuse a state programmed for another device or periphery (the inference time is
    state: it is taken over)."""
    theirs_dev = state.get("device")
    if theirs_dev is not None:  # 0.1 states carry flat device keys: read them as 0.1 did
        theirs_dev = DeviceModel.from_dict(theirs_dev).to_dict()
    theirs_cfg = state.get("config")
    if theirs_cfg is not None:  # keys added after 0.1 take their defaults
        theirs_cfg = CrossbarConfig.from_dict(theirs_cfg).to_dict()
    mine_dev = layer.device_model.to_dict()
    if theirs_dev is not None:  # the chip's time is state, not a property of the device
        layer.device_model = layer.device_model.with_(t_inference_s=theirs_dev[
            "t_inference_s"])
        mine_dev["t_inference_s"] = theirs_dev["t_inference_s"]
    mine_cfg = layer.config.to_dict()
    if theirs_cfg is not None:  # simulation arithmetic, not a property of the chip
        theirs_cfg["noise_precision"] = mine_cfg["noise_precision"]
    for key, mine, theirs in (("device", mine_dev, theirs_dev),
                              ("config", mine_cfg, theirs_cfg)):
        if theirs is not None and theirs != mine:
            changed = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(
                f"state_dict for crossbar layer {layer.plan.name!r} was programmed with "
                f"another {key}: {changed[0]}={theirs.get(changed[0])!r}; this layer has "
                f"{changed[0]}={mine[changed[0]]!r}")


def after_load(module: CrossbarLayer, incompatible) -> None:
    expected = module.plan.cell_mask(module.cell_mask.device)
    if not torch.equal(expected, module.cell_mask):
        raise ValueError(
            f"state_dict for crossbar layer {module.plan.name!r} was programmed with another "
            "mapping plan (its cell mask differs from this layer's plan)"
        )
    module._gens = {}
    module._array_cache = {}  # another chip's conductances
    if module.device_model.write_verify is not None:  # pulse counts are not in the state
        module.records = {}
        module._pulses_known = False
    physical.refresh(module)


def upgrade_state(module: CrossbarLayer, state_dict: dict, prefix: str, local_metadata: dict,
                  *args) -> None:
    """Read older states: version 1 (0.2-0.4) names the auxiliary cells by the offset mapping
    (``MappingStyle.legacy_buffers``); 0.1 states hold one offset reference cell per weight slice
    ``[S, T, in]`` (all at the same target), while one column per tile is the hardware the plan
    describes: keep the first slice's cells; states before 0.2 have no output calibration."""
    if local_metadata.get("version", 1) < 2:
        for old, new in module.style.legacy_buffers.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
    for name, fill in (("out_gain", 1.0), ("out_offset", 0.0)):  # states before 0.2
        if prefix + "g_uS" in state_dict and prefix + name not in state_dict:
            state_dict[prefix + name] = torch.full_like(getattr(module, name), fill)
    key = prefix + "g_aux_uS"
    aux = state_dict.get(key)
    if aux is not None and aux.dim() == 3:
        state_dict[key] = aux[0] if module.g_aux_uS.numel() else aux[0, :0]
