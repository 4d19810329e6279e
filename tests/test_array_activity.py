"""Array read energy from the programmed conductances (crossbar.activity) against a
brute-force sum of V^2 G t over every cell of every MVM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memxbar.crossbar import CrossbarConfig, DeviceModel, to_crossbar
from memxbar.crossbar.activity import array_activity
from memxbar.crossbar.physical import state_at_time, tile_row_mask
from memxbar.crossbar.programming import crossbar_modules

V, T = 0.2, 100e-9


def _chip(model, x, **xbar):
    device = DeviceModel(g_min_uS=1.0, g_max_uS=100.0, n_levels=16, prog_sigma=0.05)
    config = CrossbarConfig(tile_rows=8, tile_cols=4, **xbar)
    return to_crossbar(model, device, config, calibration=x, seed=3)


def _drive(layer, x: torch.Tensor) -> torch.Tensor:
    """Per input element: sum over the input cycles of (V_i / V_read)^2, cycle by cycle from
    the layer's DAC model (codes over the largest code; bit planes 0/1)."""
    full, signed = layer._dac if layer._dac[0] > 0 else (float(x.abs().max()), True)
    bits = layer.config.dac_bits
    if bits is None:
        return (x.double().abs() / full) ** 2
    d = layer._dac_model.drive(x.detach(), full, signed, bits)
    if d.plane_weights is not None:
        planes = d.x.double().unflatten(0, (d.plane_weights.numel(), -1))
        return sum(planes[k].abs() ** 2 for k in range(planes.shape[0]))
    return (d.x.double().abs() / d.max_code) ** 2


def _brute_linear(layer, x) -> float:
    """sum over samples, rows i and every cell j on row i of V_i^2 G_ij t, in pJ / sample."""
    state = state_at_time(layer)
    g, ref = state["weights"], state.get("reference")
    w = _drive(layer, x)
    total = 0.0
    for n in range(x.shape[0]):
        for i in range(layer.in_features):
            cells = float(g[..., i].double().sum())
            if ref is not None:
                cells += float(ref[:, i].double().sum())
            total += V ** 2 * float(w[n, i]) * cells * 1e-6 * T
    return total / x.shape[0] * 1e12


def _brute_conv(layer, x) -> float:
    """Patch by patch (F.unfold), group by group, cell by cell."""
    state = state_at_time(layer)
    g, ref = state["weights"], state.get("reference")
    w = _drive(layer, x)
    groups, cg = layer.groups, layer.in_channels // layer.groups
    og = layer.out_features // groups
    total = 0.0
    for k in range(groups):
        patches = F.unfold(w[:, k * cg:(k + 1) * cg], layer.kernel_size, layer.dilation,
                           layer.padding, layer.stride)  # [N, cg*kh*kw, L]
        row_g = g[:, :, k * og:(k + 1) * og, :].double().sum((0, 1, 2))
        if ref is not None:
            for t, tile in enumerate(layer.plan.tiles):
                if tile.cols and tile.cols[0] // og == k:
                    row_g = row_g + ref[t].double()
        for n in range(x.shape[0]):
            for p in range(patches.shape[2]):
                for i in range(patches.shape[1]):
                    total += V ** 2 * float(patches[n, i, p]) * float(row_g[i]) * 1e-6 * T
    return total / x.shape[0] * 1e12


@pytest.mark.parametrize("xbar", [{}, {"dac_bits": 4}, {"dac_bits": 3, "dac": "bit_serial"},
                                  {"mapping": "offset"}])
def test_linear_matches_brute_force(xbar):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(5, 10)
    chip = _chip(model, x, **xbar)
    acts = array_activity(chip, x, V, T)
    layers = dict(crossbar_modules(chip))
    with torch.no_grad():
        inputs = {"0": x, "2": torch.relu(layers["0"](x))}
    for name in ("0", "2"):
        want = _brute_linear(layers[name], inputs[name])
        assert acts[name].energy_pJ == pytest.approx(want, rel=1e-9)
        assert 0.0 < acts[name].activity <= 1.0


@pytest.mark.parametrize("groups,mapping", [(1, "differential"), (2, "offset")])
def test_conv_matches_brute_force(groups, mapping):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=groups))
    x = torch.randn(2, 4, 7, 7)
    chip = _chip(model, x, mapping=mapping, dac_bits=5)
    got = array_activity(chip, x, V, T)["0"].energy_pJ
    want = _brute_conv(dict(crossbar_modules(chip))["0"], x)
    assert got == pytest.approx(want, rel=1e-9)


def test_full_scale_read_has_activity_one():
    """Every cell at g_max and every input at full scale: exactly the full-scale read."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(9, 5))
    x = torch.ones(3, 9)
    chip = _chip(model, x, mapping="offset")
    layer = dict(crossbar_modules(chip))["0"]
    with torch.no_grad():
        layer.g_uS.copy_(layer.cell_mask.expand_as(layer.g_uS) * 100.0)
        layer.g_aux_uS.copy_(tile_row_mask(layer) * 100.0)
    a = array_activity(chip, x, V, T)["0"]
    assert a.activity == pytest.approx(1.0, rel=1e-9)
    # half the voltage on every line: a quarter of the energy (V^2)
    assert array_activity(chip, x * 0.5, V, T)["0"].activity == pytest.approx(0.25, rel=1e-9)
    # energy scales with V^2 t
    b = array_activity(chip, x, 2 * V, 3 * T)["0"]
    assert b.energy_pJ == pytest.approx(12 * a.energy_pJ, rel=1e-9)
