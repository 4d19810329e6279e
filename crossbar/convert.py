"""Convert any PyTorch model to run its Linear/Conv2d layers on simulated crossbars."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .config import CrossbarConfig
from .device import DeviceModel
from .layers import CrossbarConv2d, CrossbarLayer, CrossbarLinear, InputShapeError
from .plan import MappingPlan, check_plan, crossbar_layers, plan_model

_SEED_STRIDE = 1_000_003


def layer_seed(seed: int, index: int) -> int:
    """Per-layer seed derived from the chip seed (layers get independent device samples)."""
    return (int(seed) * _SEED_STRIDE + index) % (2**63)


def crossbar_modules(model: nn.Module) -> Iterator[tuple[str, CrossbarLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, CrossbarLayer):
            yield name, module


def _expected_input(name: str, layer: nn.Module) -> str:
    """The input shape a model takes, described from its first Linear/Conv2d layer."""
    if hasattr(layer, "in_channels"):
        return (f"(N, {layer.in_channels}, H, W) with the H x W the model was built for (its "
                f"first crossbar layer {name!r} is a convolution with {layer.in_channels} "
                "input channels)")
    return (f"(N, ..., {layer.in_features}) as the model was built for (its first crossbar "
            f"layer {name!r} is a linear layer with {layer.in_features} inputs)")


def check_input(inputs: object, name: str, layer: nn.Module, what: str) -> None:
    """A ``what`` batch must be a non-empty floating tensor with a batch dimension, and
    ``(N, C, H, W)`` with the layer's ``C`` when the first layer is a convolution (the crossbar
    convolution gathers its live rows by index and would not notice extra channels)."""
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"{what} batch of type {type(inputs).__name__} is invalid; allowed: a "
                         f"float tensor of shape {_expected_input(name, layer)}")
    if inputs.dim() < 2 or inputs.shape[0] == 0 or not inputs.is_floating_point():
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} and dtype {inputs.dtype} "
                         "is invalid; allowed: a non-empty float tensor of shape "
                         f"{_expected_input(name, layer)}")
    channels = getattr(layer, "in_channels", None)
    if channels is not None and (inputs.dim() != 4 or inputs.shape[1] != channels):
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} is invalid; allowed: "
                         f"a tensor of shape {_expected_input(name, layer)}")


@contextlib.contextmanager
def _input_errors(inputs: torch.Tensor, name: str, layer: nn.Module, what: str) -> Iterator[None]:
    """Turn a shape error of a forward pass on ``inputs`` into one ``ValueError`` naming the
    batch's shape and the expected input shape."""
    try:
        yield
    except (RuntimeError, InputShapeError) as exc:  # PyTorch's shape errors, a crossbar layer's
        raise ValueError(f"{what} batch of shape {tuple(inputs.shape)} does not fit the model; "
                         f"allowed: inputs of shape {_expected_input(name, layer)} (cause: "
                         f"{str(exc).strip().splitlines()[0]})") from None


class CrossbarModel:
    """Methods added to a converted model (its class becomes a subclass of the original)."""

    def program(self, seed: int) -> None:
        """Program a new chip: re-sample every layer's devices from ``seed``."""
        program(self, seed)

    def calibrate(self, inputs: torch.Tensor) -> None:
        """Calibrate DAC and ADC ranges on a batch of inputs."""
        calibrate(self, inputs)

    @property
    def mapping_plan(self) -> MappingPlan:
        return mapping_plan(self)


def program(model: nn.Module, seed: int) -> None:
    """Re-sample the device state of every crossbar layer (a new chip). Same seed, same chip."""
    for index, (_, module) in enumerate(crossbar_modules(model)):
        module.program(layer_seed(seed, index))


def mapping_plan(model: nn.Module) -> MappingPlan:
    """The mapping plan of a converted model (the one its simulator and cost model use)."""
    return MappingPlan({name: m.plan for name, m in crossbar_modules(model)})


@torch.no_grad()
def calibrate(model: nn.Module, inputs: torch.Tensor) -> None:
    """Set each layer's DAC range (largest |input|, signed or not) and each tile's ADC range
    (largest |partial sum| per weight slice) from one batch; read noise is off meanwhile."""
    named = list(crossbar_modules(model))
    if not named:
        raise ValueError("calibrate: the model has no crossbar layer; convert it first")
    layers = [m for _, m in named]
    check_input(inputs, *named[0], "calibration")
    was_training = model.training
    model.eval()
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
            with _input_errors(inputs, *named[0], "calibration"):
                model(inputs)
        for m in layers:
            m.calibrated.fill_(True)
    finally:
        for m in layers:
            m._calibrating = None
            m._sync_ranges()
        model.train(was_training)


def to_crossbar(
    model: nn.Module,
    device: DeviceModel,
    config: CrossbarConfig,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
    plan: MappingPlan | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    scales: Mapping[str, float | torch.Tensor] | None = None,
) -> nn.Module:
    """A copy of ``model`` with every Linear/Conv2d replaced by a crossbar layer.

    Args:
        model: any ``nn.Module`` (nested, Sequential or custom); other layers are untouched.
        device: the memristor model; config: tiles and periphery.
        calibration: a batch of inputs for the DAC/ADC ranges and for measuring each layer's
            matrix-vector products per sample. Required when ``adc_range="calibrated"`` and
            ``adc_bits`` is set; without it the DAC range follows each batch's largest input.
        seed: chip seed for programming variation and faults (``program(seed)`` re-samples).
        plan: a mapping plan to use (e.g. from a compressed model's masks); by default it is
            derived from ``masks`` or, without masks, from the non-zero weights, so all-zero
            rows and columns never get devices.
        masks: live-weight masks per layer name (bool, matrix view or weight shape).
        scales: per layer name, the weight a full-range cell pair holds (a float, or one per
            output column): pass the quantizer's scales (``admm`` ``CompressResult.scales``)
            so its level grid is exactly the device's; default: each layer's largest |weight|.

    The copy's class is a subclass of the original that adds ``program(seed)``,
    ``calibrate(inputs)`` and ``mapping_plan``.
    """
    if not isinstance(device, DeviceModel):
        raise TypeError(f"device must be a crossbar.DeviceModel, got {type(device).__name__}")
    if not isinstance(config, CrossbarConfig):
        raise TypeError(f"config must be a crossbar.CrossbarConfig, got {type(config).__name__}")
    if config.adc_bits is not None and config.adc_range == "calibrated" and calibration is None:
        raise ValueError(
            f"calibration=None is invalid with adc_bits={config.adc_bits} and "
            "adc_range='calibrated'; allowed: a batch of inputs, or adc_range='full_scale'"
        )
    layers = list(crossbar_layers(model))
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no Linear or Conv2d layer to map "
                         "onto crossbars")
    if calibration is not None:
        check_input(calibration, *layers[0], "calibration")
    if plan is None:
        with _input_errors(calibration, *layers[0], "calibration"):
            plan = plan_model(model, config, masks=masks, example_input=calibration)
    missing = [name for name, _ in layers if name not in plan.layers]
    if missing:
        raise ValueError(f"plan has no entry for layer {missing[0]!r}; it maps "
                         f"{sorted(plan.layers)}")
    if isinstance(model, (nn.Linear, nn.Conv2d)):  # a bare layer converts to a crossbar layer
        cls = CrossbarConv2d if isinstance(model, nn.Conv2d) else CrossbarLinear
        check_plan(plan[""], config)
        layer = cls(model, plan[""], device, config, seed=layer_seed(seed, 0),
                    scale=(scales or {}).get(""))
        if calibration is not None:
            calibrate(layer, calibration)
        return layer
    xmodel = copy.deepcopy(model)
    for index, (name, module) in enumerate(layers):
        cls = CrossbarConv2d if isinstance(module, nn.Conv2d) else CrossbarLinear
        check_plan(plan[name], config)
        new = cls(module, plan[name], device, config, seed=layer_seed(seed, index),
                  scale=(scales or {}).get(name))
        _set_submodule(xmodel, name, new.to(module.weight.device))
    base = type(model)
    xmodel.__class__ = type(f"Crossbar{base.__name__}", (CrossbarModel, base), {})
    if calibration is not None:
        calibrate(xmodel, calibration)
    return xmodel


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
