"""Convert any PyTorch model to run its Linear/Conv1d/Conv2d layers, attention projections and
recurrent (LSTM/GRU/RNN) matrices on simulated crossbars."""

from __future__ import annotations

import copy
import ctypes
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import physical
from .attention import CrossbarMultiheadAttention
from .calibration import calibrate_outputs
from .config import CrossbarConfig
from .converters import get_adc
from .device import DeviceModel
from .layers import CrossbarConv1d, CrossbarConv2d, CrossbarLayer, CrossbarLinear
from .plan import (
    MAPPABLE,
    MappingPlan,
    check_plan,
    crossbar_layers,
    matches,
    plan_model,
    unmapped_layers,
)
from .programming import (  # re-exported
    calibrate,
    check_float32,
    check_input,
    check_seed,
    crossbar_modules,
    input_errors,
    program,
)
from .recurrent import CrossbarRecurrent
from .repair import RepairConfig


def _release_freed_memory() -> None:
    """Hand memory freed by the last layer's temporaries back to the OS (glibc
    ``malloc_trim``). Converting a large model frees many medium-sized temporaries between
    long-lived tensors; glibc keeps those pages, so without this the resident memory during
    conversion grew to 3x the converted model (VGG-16, BENCHMARKS.md). A no-op elsewhere."""
    trim = _MALLOC_TRIM[0] if _MALLOC_TRIM else None
    if not _MALLOC_TRIM:
        try:
            trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            trim = None
        _MALLOC_TRIM.append(trim)
    if trim is not None:
        trim(0)


_MALLOC_TRIM: list = []


class CrossbarModel:
    """Methods added to a converted model (its class becomes a subclass of the original)."""

    def program(self, seed: int, calibration: torch.Tensor | None = None) -> None:
        """Program a new chip from ``seed`` and recalibrate it (see :func:`program`)."""
        program(self, seed, calibration)

    def calibrate(self, inputs: torch.Tensor) -> None:
        """Calibrate DAC and ADC ranges on a batch of inputs."""
        calibrate(self, inputs)

    def calibrate_outputs(self, reference: nn.Module, inputs: torch.Tensor) -> dict:
        """Fit per-output digital gains and offsets against ``reference`` (see
        :func:`crossbar.calibrate_outputs`)."""
        return calibrate_outputs(self, reference, inputs)

    def set_inference_time(self, t_inference_s: float) -> None:
        """Let the programmed chip drift to ``t_inference_s`` (see :func:`set_inference_time`)."""
        set_inference_time(self, t_inference_s)

    @property
    def mapping_plan(self) -> MappingPlan:
        return mapping_plan(self)


def set_inference_time(model: nn.Module, t_inference_s: float) -> None:
    """Let every layer's programmed chip drift to ``t_inference_s`` seconds after programming
    (the device's drift model; the chip, its calibration and its drift draws stay the same)."""
    layers = [m for _, m in crossbar_modules(model)]
    if not layers:
        raise ValueError("set_inference_time: the model has no crossbar layer")
    layers[0].device_model.with_(t_inference_s=t_inference_s)  # validate before any change
    for module in layers:
        module.set_inference_time(t_inference_s)


def programming_stats(model: nn.Module) -> dict:
    """Pulses and convergence of the last programming over all layers: ``cells``,
    ``pulses`` (total), ``max_pulses``, ``failed`` (cells outside the write-verify band),
    ``tile_pulses`` (per tile), and per live cell ``pulse_counts`` and ``residual_uS`` (the
    programming error, programmed - target conductance, faults included)."""
    stats = [m.programming_stats() for _, m in crossbar_modules(model)]
    if not stats:
        raise ValueError("programming_stats: the model has no crossbar layer")
    return {"cells": sum(s["cells"] for s in stats), "pulses": sum(s["pulses"] for s in stats),
            "max_pulses": max(s["max_pulses"] for s in stats),
            "failed": sum(s["failed"] for s in stats),
            "tile_pulses": [n for s in stats for n in s["tile_pulses"]],
            "pulse_counts": torch.cat([s["pulse_counts"] for s in stats]),
            "residual_uS": torch.cat([s["residual_uS"] for s in stats])}


def mapping_plan(model: nn.Module) -> MappingPlan:
    """The mapping plan of a converted model (the one its simulator and cost model use)."""
    return MappingPlan({name: m.plan for name, m in crossbar_modules(model)})


def to_crossbar(
    model: nn.Module,
    device: DeviceModel,
    config: CrossbarConfig,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
    plan: MappingPlan | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    scales: Mapping[str, float | torch.Tensor] | None = None,
    digital: Sequence[str] = (),
    devices: Mapping[str, DeviceModel] | None = None,
    repair: RepairConfig | None = None,
    verify: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A copy of ``model`` with every Linear/Conv1d/Conv2d (grouped and depthwise included)
    replaced by a crossbar layer, and every ``nn.MultiheadAttention`` by a
    :class:`~crossbar.attention.CrossbarMultiheadAttention` whose projections (named
    ``<attention>.in_proj`` or ``.q_proj``/``.k_proj``/``.v_proj``, and ``<attention>.out_proj``)
    are crossbar layers; attention's activation products stay digital. Every ``nn.LSTM``,
    ``nn.GRU`` and ``nn.RNN`` becomes a :class:`~crossbar.recurrent.CrossbarRecurrent` whose
    input, hidden (and LSTM projection) matrices, named ``<rnn>.ih_l{k}``, ``.hh_l{k}``
    (``.hr_l{k}``) and ``..._reverse``, are crossbar layers driven once per time step; gates
    and state updates stay digital.

    Args:
        model: any ``nn.Module`` (nested, Sequential or custom); other layers are untouched.
        device: the memristor model; config: tiles and periphery.
        calibration: a batch of inputs for the DAC/ADC ranges and for measuring each layer's
            matrix-vector products per sample. Required when ``adc_range="calibrated"`` and
            ``adc_bits`` is set; without it the DAC range follows each batch's largest input.
        seed: chip seed for programming variation, write-verify, faults, drift and the read
            noise streams (``program(seed)`` programs another chip).
        plan: a mapping plan to use (e.g. from a compressed model's masks); by default it is
            derived from ``masks`` or, without masks, from the non-zero weights, so all-zero
            rows and columns never get devices.
        masks: live-weight masks per layer name (bool, matrix view or weight shape).
        scales: per layer name, the weight a full-range cell pair holds (a float, or one per
            output column): pass the quantizer's scales (``admm`` ``CompressResult.scales``)
            so its level grid is exactly the device's; default: each layer's largest |weight|.
        digital: layer patterns (fnmatch, or ``re:`` + regex, on module names) kept digital:
            not converted and not in the mapping plan (nor in its cost). An attention or
            recurrent module whose matrices are all digital stays PyTorch's own module.
        devices: per-layer devices, layer pattern -> ``DeviceModel`` for the layers it matches
            (e.g. a more precise device for the first and last layer); others get ``device``.
        repair: fault repair at programming time (:class:`crossbar.RepairConfig`: test read,
            fault-aware placement, pair compensation); default: compensation on when the
            device has stuck-at faults, no placement.
        verify: selective write-verify, layer name -> bool mask of the weights whose cells
            are verified (matrix view or weight shape; layers not named: every cell), when
            the device has ``write_verify``; the others keep their first pulse
            (``experiments.selective_verify`` ranks weights by sensitivity).

    The copy's class is a subclass of the original that adds ``program(seed)``,
    ``calibrate(inputs)`` and ``mapping_plan``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_float32("to_crossbar: model", model)
    if not isinstance(device, DeviceModel):
        raise TypeError(f"device must be a crossbar.DeviceModel, got {type(device).__name__}")
    if not isinstance(config, CrossbarConfig):
        raise TypeError(f"config must be a crossbar.CrossbarConfig, got {type(config).__name__}")
    if repair is not None and not isinstance(repair, RepairConfig):
        raise TypeError(f"repair must be a crossbar.RepairConfig, got {type(repair).__name__}")
    check_seed("to_crossbar: seed", seed)
    if config.adc_bits is not None and get_adc(config.adc_range).needs_calibration \
            and calibration is None:
        raise ValueError(
            f"calibration=None is invalid with adc_bits={config.adc_bits} and "
            "adc_range='calibrated'; allowed: a batch of inputs, or adc_range='full_scale'"
        )
    every = list(crossbar_layers(model))
    skipped = unmapped_layers(model)
    if skipped:
        warnings.warn("to_crossbar: these layers stay digital (not simulated): " + "; ".join(
            f"{name} ({why})" for name, why in skipped), stacklevel=2)
    if not every:
        raise ValueError(f"model {type(model).__name__} has no Linear, Conv1d, Conv2d or "
                         "attention projection to map onto crossbars")
    kept = match_layers("digital", digital, [n for n, _ in every])
    layers = [(n, m) for n, m in every if n not in kept]
    if not layers:
        raise ValueError(f"digital={list(digital)!r} keeps every layer digital; allowed: "
                         "patterns that leave at least one layer to map")
    per_layer = layer_devices(devices, [n for n, _ in layers], device)
    if scales is not None and not isinstance(scales, Mapping):
        raise ValueError(f"scales of type {type(scales).__name__} is invalid; allowed: a "
                         "mapping of layer name -> scale")
    unknown = sorted(set(scales or {}) - {n for n, _ in every})
    if unknown:
        raise ValueError(f"scales key={unknown[0]!r} is invalid; allowed: names of mapped "
                         f"layers: {', '.join(n for n, _ in every)}")
    if masks is not None and not isinstance(masks, Mapping):
        raise ValueError(f"masks of type {type(masks).__name__} is invalid; allowed: a "
                         "mapping of layer name -> bool mask")
    if calibration is not None:
        check_input(calibration, *every[0], "calibration")
    verify = _verify_masks(verify, dict(layers))
    if plan is not None and not isinstance(plan, MappingPlan):
        raise TypeError(f"plan must be a crossbar.MappingPlan (MappingPlan.load(path) reads a "
                        f"plan.json), got {type(plan).__name__}")
    if plan is None:
        with input_errors(calibration, *every[0], "calibration"):
            plan = plan_model(model, config, masks=masks, example_input=calibration,
                              exclude=kept)
    missing = [name for name, _ in layers if name not in plan.layers]
    if missing:
        raise ValueError(f"plan has no entry for layer {missing[0]!r}; it maps "
                         f"{sorted(plan.layers)}")
    if isinstance(model, MAPPABLE):  # a bare layer converts to a crossbar layer
        cls = _crossbar_class(model)
        check_plan(plan[""], config)
        layer = cls(model, plan[""], per_layer[""], config, seed=seed,
                    scale=(scales or {}).get(""), repair=repair)
        _select_verified(layer, verify.get(""), seed)
        if calibration is not None:
            calibrate(layer, calibration)
        return layer
    xmodel = _unpack_composites(copy.deepcopy(model), {n for n, _ in layers})
    for name, module in layers:
        cls = _crossbar_class(module)
        check_plan(plan[name], config)
        new = cls(module, plan[name], per_layer[name], config, seed=seed,
                  scale=(scales or {}).get(name), repair=repair)
        _select_verified(new, verify.get(name), seed)
        _set_submodule(xmodel, name, new.to(module.weight.device))
        _release_freed_memory()
    _no_nested_tensors(xmodel)
    base = type(xmodel)
    xmodel.__class__ = type(f"Crossbar{base.__name__}", (CrossbarModel, base), {})
    if calibration is not None:
        calibrate(xmodel, calibration)
    return xmodel


def _verify_masks(verify: Mapping[str, torch.Tensor] | None, layers: Mapping[str, nn.Module]
                  ) -> dict[str, torch.Tensor]:
    """``to_crossbar``'s ``verify`` checked: names of converted layers, bool masks with one
    entry per weight; returned as ``[out, in]`` matrix views."""
    if verify is None:
        return {}
    if not isinstance(verify, Mapping):
        raise ValueError(f"verify of type {type(verify).__name__} is invalid; allowed: a "
                         "mapping of layer name -> bool mask")
    out = {}
    for name, mask in verify.items():
        if name not in layers:
            raise ValueError(f"verify key={name!r} is invalid; allowed: names of converted "
                             f"layers: {', '.join(layers)}")
        weight = layers[name].weight
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool \
                or mask.numel() != weight.numel():
            raise ValueError(f"verify[{name!r}] is invalid; allowed: a bool tensor with one "
                             f"entry per weight ({weight.numel()}, shape "
                             f"{tuple(weight.shape)} or its matrix view)")
        out[name] = mask.detach().reshape(weight.shape[0], -1).cpu()
    return out


def _select_verified(layer: CrossbarLayer, mask: torch.Tensor | None, seed: int) -> None:
    """Selective write-verify on ``layer``: re-programmed with only ``mask``'s weights
    verified (nothing to do without a mask or without write-verify)."""
    if mask is None:
        return
    layer.verify_weights = mask
    if layer.device_model.write_verify is not None:
        physical.program_layer(layer, seed)


def _unpack_composites(root: nn.Module, mapped: set[str]) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` of ``root`` that has a projection in ``mapped``
    by a :class:`CrossbarMultiheadAttention`, and every ``nn.LSTM``/``nn.GRU``/``nn.RNN``
    that has a matrix in ``mapped`` by a :class:`CrossbarRecurrent` (their matrices digital
    ``nn.Linear`` modules, ready to be replaced by name); returns the root (the new module if
    ``root`` itself is one)."""
    for name, module in list(root.named_modules()):
        prefix = f"{name}." if name else ""
        kind = (CrossbarMultiheadAttention if isinstance(module, nn.MultiheadAttention)
                else CrossbarRecurrent if isinstance(module, nn.RNNBase) else None)
        if kind is not None and any(n.startswith(prefix) for n in mapped):
            new = kind(module)
            if not name:
                return new
            _set_submodule(root, name, new)
    return root


def _no_nested_tensors(root: nn.Module) -> None:
    """``nn.TransformerEncoder`` in eval mode turns a padded batch into a nested tensor (its
    fast path, decided from the first layer's attributes alone); crossbar layers compute on
    dense tensors, so an encoder that holds one keeps the padded path."""
    for module in root.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
                isinstance(m, CrossbarLayer) for m in module.modules()):
            module.use_nested_tensor = False


def _crossbar_class(module: nn.Module) -> type[CrossbarLayer]:
    if isinstance(module, nn.Conv2d):
        return CrossbarConv2d
    return CrossbarConv1d if isinstance(module, nn.Conv1d) else CrossbarLinear


def match_layers(key: str, patterns: Sequence[str], names: Sequence[str]) -> set[str]:
    """The layer names ``patterns`` match; a pattern that matches nothing is an error."""
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{key}={patterns!r} is invalid; allowed: a list of layer patterns")
    chosen = set()
    for pattern in patterns:
        hit = {n for n in names if matches(pattern, n)}
        if not hit:
            raise ValueError(f"{key} pattern {pattern!r} matches no Linear/Conv2d layer; "
                             f"layers are {list(names)}")
        chosen |= hit
    return chosen


def layer_devices(devices: Mapping[str, DeviceModel] | None, names: Sequence[str],
                  default: DeviceModel) -> dict[str, DeviceModel]:
    """The device of every converted layer (a layer matched by two patterns is an error)."""
    out: dict[str, DeviceModel] = {}
    for pattern, dev in (devices or {}).items():
        if not isinstance(dev, DeviceModel):
            raise TypeError(f"devices[{pattern!r}] must be a crossbar.DeviceModel, got "
                            f"{type(dev).__name__}")
        for name in match_layers("devices", [pattern], names):
            if name in out:
                raise ValueError(f"layer {name!r} is matched by two devices patterns; allowed: "
                                 "one pattern per layer")
            out[name] = dev
    return {name: out.get(name, default) for name in names}


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
