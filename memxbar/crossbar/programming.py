"""Programming and calibrating a model's chip (every crossbar layer in it), and the checks of
its input batches. ``CrossbarLayer.program`` is the same operation on a bare layer;
:mod:`crossbar.convert` and the package re-export these."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import physical

if TYPE_CHECKING:
    from .layers import CrossbarLayer


class InputShapeError(ValueError):
    """An input that does not fit a crossbar layer (names the layer and the expected shape)."""


def crossbar_modules(model: nn.Module) -> Iterator[tuple[str, CrossbarLayer]]:
    """``(name, layer)`` of every crossbar layer in ``model`` (modules marked
    ``is_crossbar``: :class:`~crossbar.layers.CrossbarLayer`; this module does not import the
    layers, which import it)."""
    for name, module in model.named_modules():
        if getattr(module, "is_crossbar", False):
            yield name, module


def _is_conv1d(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv1d) or getattr(layer, "is_conv1d", False)


def _expected_input(name: str, layer: nn.Module) -> str:
    """The input shape a model takes, described from its first Linear/Conv2d layer."""
    if _is_conv1d(layer):
        return (f"(N, {layer.in_channels}, L) (its first layer {name!r} is a 1-D "
                f"convolution with {layer.in_channels} input channels)")
    if hasattr(layer, "in_channels"):
        return (f"(N, {layer.in_channels}, H, W) with the H x W the model was built for (its "
                f"first layer {name!r} is a convolution with {layer.in_channels} "
                "input channels)")
    return (f"(N, ..., {layer.in_features}) as the model was built for (its first "
            f"layer {name!r} is a linear layer with {layer.in_features} inputs)")


def check_input(inputs: object, name: str, layer: nn.Module, what: str) -> None:
    """A ``what`` batch must be a non-empty floating tensor with a batch dimension, and
    ``(N, C, H, W)`` (``(N, C, L)`` for Conv1d) with the layer's ``C`` when the first layer is
    a convolution (the crossbar
    convolution gathers its live rows by index and would not notice extra channels)."""
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"{what} batch of type {type(inputs).__name__} is invalid; allowed: a "
                         f"float tensor of shape {_expected_input(name, layer)}")
    dtype = next((t.dtype for t in [*layer.parameters(), *layer.buffers()]
                  if t.is_floating_point()), torch.float32)
    if inputs.dim() < 2 or inputs.shape[0] == 0 or inputs.dtype != dtype:
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} and dtype {inputs.dtype} "
                         f"is invalid; allowed: a non-empty {dtype} tensor (the model's dtype) "
                         f"of shape {_expected_input(name, layer)}")
    channels = getattr(layer, "in_channels", None)
    dims = 3 if _is_conv1d(layer) else 4
    if channels is not None and (inputs.dim() != dims or inputs.shape[1] != channels):
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} is invalid; allowed: "
                         f"a tensor of shape {_expected_input(name, layer)}")


def check_float32(key: str, model: nn.Module) -> None:
    """Every floating parameter and buffer of ``model`` must be float32: crossbar layers are
    built in float32 (a converted chip may then be moved to float64 with ``.double()``); a
    float64 or half model is refused by name, not by a later dtype clash."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ValueError(f"{key}: {name or 'the module'} of dtype {tensor.dtype} is invalid; "
                             "allowed: torch.float32 (crossbar layers are built in float32: "
                             "call .float() on the model first, and .double() on the chip "
                             "after conversion if wanted)")


@contextlib.contextmanager
def input_errors(inputs: torch.Tensor, name: str, layer: nn.Module, what: str) -> Iterator[None]:
    """Turn a shape error of a forward pass on ``inputs`` into one ``ValueError`` naming the
    batch's shape and the expected input shape."""
    try:
        yield
    except (RuntimeError, InputShapeError) as exc:  # PyTorch's shape errors, a crossbar layer's
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} does not fit the model; "
                         f"allowed: inputs of shape {_expected_input(name, layer)} (cause: "
                         f"{str(exc).strip().splitlines()[0]})") from None


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's first Linear/Conv layer in module order, kept digital or on crossbars: the
    one its inputs enter (a crossbar layer further in may take other channels)."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or getattr(module, "is_crossbar",
                                                                           False):
            return name, module
    return next(crossbar_modules(model))


def check_seed(key: str, seed: object) -> int:
    """A chip seed: an integer in [0, 2**63) (not a bool, float or string: distinct values
    must be distinct chips)."""
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)  # ints, numpy ints
    except TypeError:
        value = None
    if value is None or not 0 <= value < 2**63:
        raise ValueError(f"{key}={seed!r} is invalid; allowed: an integer in [0, 2**63)")
    return value


def program(model: nn.Module, seed: int, calibration: torch.Tensor | None = None) -> None:
    """Program a new chip: re-sample every layer's cells from ``seed`` (same seed, same chip;
    each layer and effect from its own derived stream, :mod:`crossbar.streams`).

    Calibrated converter ranges belong to one chip, so a calibrated model is recalibrated on
    ``calibration`` or, by default, on the batch it was last calibrated on (kept by
    :func:`calibrate`). A model that holds calibrated ranges but no batch (e.g. loaded from a
    state dict) is refused before anything changes: pass ``calibration=``.
    """
    check_seed("program: seed", seed)
    layers = [m for _, m in crossbar_modules(model)]
    if not layers:
        raise ValueError("program: the model has no crossbar layer; convert it first")
    if calibration is None:
        calibration = getattr(model, "_calibration_inputs", None)
    if calibration is None and any(bool(m.calibrated) for m in layers):
        raise ValueError(
            f"program(seed={seed}): this model's DAC/ADC ranges were calibrated for the chip it "
            "holds and it keeps no calibration batch (loaded from a state dict?); allowed: "
            "program(model, seed, calibration=inputs) or to_crossbar(..., calibration=inputs)")
    if calibration is not None:  # follow the model's device and dtype (``.to()``, ``.double()``)
        calibration = calibration.to(layers[0].g_uS.device, layers[0].g_uS.dtype)
        check_input(calibration, *first_layer(model), "calibration")
    for module in layers:
        physical.program_layer(module, seed)
    if calibration is not None:
        calibrate(model, calibration)


@torch.no_grad()
def calibrate(model: nn.Module, inputs: torch.Tensor) -> None:
    """Set each layer's DAC range (largest |input|, signed or not) and each tile's ADC range
    (largest |partial sum| per weight slice) from one batch; read noise is off meanwhile."""
    named = list(crossbar_modules(model))
    if not named:
        raise ValueError("calibrate: the model has no crossbar layer; convert it first")
    layers = [m for _, m in named]
    first = first_layer(model)  # the model's input layer, digital or on crossbars
    check_input(inputs, *first, "calibration")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError(f"calibration batch of shape {tuple(inputs.shape)} holds NaN or inf "
                         "values; allowed: finite inputs")
    was_training = model.training
    model.eval()
    saved = [(m.dac_range.clone(), m.dac_signed.clone(), m.adc_range.clone(),
              m.calibrated.clone()) for m in layers]
    for m in layers:
        m.dac_range.zero_()
        m.dac_signed.fill_(False)
        m.adc_range.zero_()
        m.calibrated.fill_(False)
    try:
        for phase in ("dac", "adc"):
            for m in layers:
                m._calibrating = phase
                m._sync_ranges()  # the DAC phase's ranges drive the ADC phase
            with input_errors(inputs, *first, "calibration"):
                model(inputs)
        for m in layers:
            m.calibrated.fill_(True)
        model._calibration_inputs = inputs.detach()  # recalibrates the next program(seed)
    except BaseException:  # a failed calibration leaves the earlier ranges in place
        for m, (dac, signed, adc, done) in zip(layers, saved, strict=True):
            m.dac_range.copy_(dac)
            m.dac_signed.copy_(signed)
            m.adc_range.copy_(adc)
            m.calibrated.copy_(done)
        raise
    finally:
        for m in layers:
            m._calibrating = None
            m._sync_ranges()
        model.train(was_training)
