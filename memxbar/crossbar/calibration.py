"""Per-chip digital calibration of every output column (gain and offset after the ADCs).

After a chip is programmed, its layers' outputs differ from the software model's by
column-wise gain and offset errors: stuck and mismatched cells, converter ranges, IR drop.
A chip can measure and undo them once, digitally (the "chip-in-the-loop" calibration of
NeuRRAM, Wan et al., Nature 608, 504 (2022), and the per-column affine correction of Joshi et
al., Nature Communications 11, 2473 (2020)). For every crossbar layer, in the order the model
runs them, with the earlier layers already corrected, fit per output column ``o``

    min_{a_o, b_o}  sum_n ( a_o * y_chip[n, o] + b_o - y_ref[n, o] )^2

by least squares over N calibration inputs (and every output position of a convolution), where
``y_chip`` is the chip layer's output (bias included) and ``y_ref`` the software model's
pre-activation of the same layer on the same inputs; in closed form

    a_o = cov(y_chip, y_ref) / var(y_chip),   b_o = mean(y_ref) - a_o * mean(y_chip)

(``a_o = 1`` when the column's output does not vary). This is the correction with the least
mean squared error on the calibration data, so it also shrinks a column whose error does not
follow its signal (e.g. random missing weights) instead of amplifying that error, as the
inverse fit (the chip regressed on the software, then inverted) would. The reference outputs
are copied when captured: an in-place activation after the layer would overwrite them. The
layer then outputs ``a * y + b``: two registers per output column and one
multiply-add per output, which the
cost model charges (``CrossbarConfig.output_calibration``). The gains and offsets are buffers
of the layers, so they are saved with the chip's state dict.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .programming import check_input, crossbar_modules, first_layer, input_errors


class _Stop(Exception):
    """Ends a forward pass once the layer being calibrated has run."""


def _channels(y: torch.Tensor) -> torch.Tensor:
    """``[N, out, ...]`` -> ``[out, N * positions]`` in float64."""
    return y.detach().double().movedim(1, 0).reshape(y.shape[1], -1)


def _check_reference(model: nn.Module, reference: nn.Module, named: list) -> None:
    """``reference`` must be the software model ``model`` was converted from: another object,
    with no crossbar layer, holding each converted layer's name with the same matrix shape."""
    allowed = "allowed: the software model the chip was converted from"
    if reference is model:
        raise ValueError(f"calibrate_outputs: reference is the chip itself; {allowed}")
    software_modules = dict(reference.named_modules())
    for name, layer in named:
        ref = software_modules.get(name)
        if ref is None:
            raise ValueError(f"calibrate_outputs: the reference model has no layer {name!r}; "
                             f"{allowed}")
        if getattr(ref, "is_crossbar", False):
            raise ValueError(f"calibrate_outputs: the reference's layer {name!r} is a crossbar "
                             f"layer (a chip, not software); {allowed}")
        weight = getattr(ref, "weight", None)
        if isinstance(weight, torch.Tensor) and (
                weight.shape[0] != layer.out_features
                or weight[0].numel() != layer.in_features):
            raise ValueError(f"calibrate_outputs: the reference's layer {name!r} has a weight "
                             f"of shape {tuple(weight.shape)}, the chip's holds "
                             f"[{layer.out_features}, {layer.in_features}]; {allowed}")


def _batches(inputs: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, inputs.shape[0], batch_size):
        yield inputs[start:start + batch_size]


@torch.no_grad()
def calibrate_outputs(model: nn.Module, reference: nn.Module, inputs: torch.Tensor,
                      batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Fit every crossbar layer's per-output gain and offset of chip ``model`` (converted with
    ``CrossbarConfig(output_calibration=True)`` and programmed) against ``reference`` (the
    software model it was converted from) on ``inputs``.

    Returns per layer: ``gain_min``, ``gain_max``, ``offset_max`` (largest |b|),
    ``rmse_before`` and ``rmse_after`` (of the layer's output against the reference, with the
    earlier layers calibrated)."""
    for key, value in (("model", model), ("reference", reference)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"calibrate_outputs: {key} of type {type(value).__name__} is "
                            "invalid; allowed: an nn.Module")
    named = list(crossbar_modules(model))
    if not named:
        raise ValueError("calibrate_outputs: the model has no crossbar layer; convert it first")
    off = [name for name, m in named if not m.config.output_calibration]
    if off:
        raise ValueError(f"calibrate_outputs: layer {off[0]!r} has output_calibration=False; "
                         "allowed: convert with CrossbarConfig(output_calibration=True) (the "
                         "cost model then counts the gain/offset registers)")
    _check_reference(model, reference, named)
    chip_dtype = named[0][1].g_uS.dtype
    software_dtype = next((p.dtype for p in reference.parameters() if p.is_floating_point()),
                     chip_dtype)
    if software_dtype != chip_dtype:
        raise ValueError(f"calibrate_outputs: reference of dtype {software_dtype} is invalid; "
                         f"allowed: the chip's dtype {chip_dtype} (.float() or .double() one "
                         "of them)")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: an integer >= 1")
    check_input(inputs, *first_layer(reference), "calibrate_outputs: inputs")
    if inputs.shape[0] < 2:
        raise ValueError(f"calibrate_outputs: inputs of shape {tuple(inputs.shape)} are "
                         "invalid; allowed: a batch of at least 2 samples")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("calibrate_outputs: the calibration inputs hold NaN or inf values")
    software_modules = dict(reference.named_modules())
    layers = dict(named)
    was = (model.training, reference.training)
    model.eval()
    reference.eval()
    param = next(iter(layers.values())).g_uS
    inputs = inputs.to(param.device)

    # the reference's pre-activations, and the order in which the chip runs its layers
    targets: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    hooks = [software_modules[name].register_forward_hook(
        lambda m, i, o, name=name: targets[name].append(o.detach().clone()))  # before any
        for name in layers]  # in-place activation overwrites it
    try:
        with input_errors(inputs, *first_layer(reference), "calibrate_outputs: inputs"):
            for batch in _batches(inputs, batch_size):
                reference(batch.to(next(reference.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: order.append(name)
                                     if name not in order else None)
             for name, m in layers.items()]
    try:
        model(inputs[:2])
    finally:
        for h in hooks:
            h.remove()

    stats: dict[str, dict[str, float]] = {}
    for name in order:
        layer = layers[name]
        layer.out_gain.fill_(1.0)
        layer.out_offset.zero_()
        sums = None
        captured: list[torch.Tensor] = []

        def stop(m: nn.Module, i: tuple, o: torch.Tensor, captured=captured) -> None:
            captured.append(o.detach())
            raise _Stop

        hook = layer.register_forward_hook(stop)
        try:
            for k, batch in enumerate(_batches(inputs, batch_size)):
                captured.clear()
                try:
                    model(batch)
                except _Stop:
                    pass
                y, t = _channels(captured[0]), _channels(targets[name][k].to(param.device))
                part = torch.stack([y.sum(1), t.sum(1), (y * y).sum(1), (y * t).sum(1),
                                    (t * t).sum(1)])
                count = y.shape[1]
                sums = (part, count) if sums is None else (sums[0] + part, sums[1] + count)
        finally:
            hook.remove()
        (sy, st, syy, syt, stt), n = sums
        var = syy / n - (sy / n) ** 2
        cov = syt / n - (sy / n) * (st / n)
        flat = var <= 1e-12 * (syy / n).clamp(min=1e-30)
        gain = torch.where(flat, torch.ones_like(var), cov / var.clamp(min=1e-300))
        offset = st / n - gain * sy / n
        before = (syy - 2 * syt + stt) / n
        # residual of the fit: E[(a y + b - t)^2]
        after = (gain**2 * syy + offset**2 * n + stt + 2 * gain * offset * sy
                 - 2 * gain * syt - 2 * offset * st) / n
        layer.out_gain.copy_(gain.to(layer.out_gain.dtype))
        layer.out_offset.copy_(offset.to(layer.out_offset.dtype))
        stats[name] = {"gain_min": float(gain.min()), "gain_max": float(gain.max()),
                       "offset_max": float(offset.abs().max()),
                       "rmse_before": float(before.clamp(min=0).mean().sqrt()),
                       "rmse_after": float(after.clamp(min=0).mean().sqrt())}
    model.train(was[0])
    reference.train(was[1])
    return stats
