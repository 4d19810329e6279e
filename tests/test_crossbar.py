"""Device-level crossbar simulator: exactness, device statistics, periphery, mapping, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from memxbar import crossbar
from memxbar.crossbar.conductance import (
    conductance_to_values,
    pair_differences,
    values_to_conductance,
)

IDEAL = crossbar.DeviceModel.ideal()


def quantize(x: torch.Tensor, full_range: float, bits: int) -> torch.Tensor:
    """Reference signed uniform quantizer: codes -q..q, q = 2^(bits-1) - 1, step r / q."""
    q = 2 ** (bits - 1) - 1
    step = full_range / q
    return torch.clamp(torch.round(x / step), -q, q) * step


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Custom(nn.Module):
    """A nested custom module with a branch and non-crossbar layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.body = nn.Sequential(nn.BatchNorm2d(12), nn.ReLU(),
                                  nn.Conv2d(12, 20, 5, padding=4, dilation=2, bias=False))
        self.side = nn.Conv2d(12, 20, 1)
        self.head = nn.Linear(20 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = torch.relu(self.body(h)) + self.side(h)
        y = nn.functional.adaptive_avg_pool2d(y, 2).flatten(1)
        return self.head(y)


def random_mlp(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    sizes = [int(torch.randint(5, 300, (1,), generator=g)) for _ in range(4)]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b, bias=bool(torch.randint(0, 2, (1,), generator=g))), nn.Tanh()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("tile", [128, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ideal_mlp_matches_float(mapping: str, tile: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = random_mlp(seed)
    x = torch.randn(32, model[0].in_features)
    config = crossbar.CrossbarConfig(tile_rows=tile, tile_cols=tile, mapping=mapping)
    xmodel = crossbar.to_crossbar(model, IDEAL, config)
    with torch.no_grad():
        assert rel_err(xmodel(x), model(x)) < 1e-5


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("tile", [128, 20, 7])
def test_ideal_cnn_matches_float(mapping: str, tile: int) -> None:
    torch.manual_seed(3)
    model = Custom().eval()
    x = torch.randn(4, 3, 15, 15)
    config = crossbar.CrossbarConfig(tile_rows=tile, tile_cols=tile, mapping=mapping)
    xmodel = crossbar.to_crossbar(model, IDEAL, config)
    assert isinstance(xmodel, Custom) and isinstance(xmodel.stem, crossbar.CrossbarConv2d)
    assert isinstance(xmodel.body[0], nn.BatchNorm2d)  # other layers untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        assert rel_err(xmodel(x), model(x)) < 1e-5
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear  # original kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_high_resolution_periphery_reproduces_float() -> None:
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(8, 3, 15, 15)
    for config in (
        crossbar.CrossbarConfig(dac_bits=16, adc_bits=16, tile_rows=32, tile_cols=32),
        crossbar.CrossbarConfig(dac_bits=14, adc_bits=20, bit_serial=True),
        crossbar.CrossbarConfig(cell_bits=2, weight_bits=20, adc_bits=20, dac_bits=16),
        crossbar.CrossbarConfig(mapping="offset", cell_bits=4, weight_bits=16, tile_cols=40),
    ):
        xmodel = crossbar.to_crossbar(model, IDEAL, config, calibration=x)
        with torch.no_grad():
            assert rel_err(xmodel(x), model(x)) < 1e-3, config


def test_low_resolution_periphery_is_not_exact() -> None:
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(8, 3, 15, 15)
    xmodel = crossbar.to_crossbar(model, IDEAL, crossbar.CrossbarConfig(dac_bits=3, adc_bits=3),
                                  calibration=x)
    with torch.no_grad():
        assert rel_err(xmodel(x), model(x)) > 1e-2


# ------------------------------------------------------------------------- conductance mapping
@settings(max_examples=40, deadline=None)
@given(n_levels=st.integers(2, 17), mapping=st.sampled_from(["differential", "offset"]),
       seed=st.integers(0, 10_000))
def test_weight_conductance_weight_exact_on_level_grid(n_levels: int, mapping: str,
                                                       seed: int) -> None:
    device = crossbar.DeviceModel(g_min_uS=2.0, g_max_uS=50.0, n_levels=n_levels)
    levels = device.conductance_levels().double()
    if mapping == "differential":
        grid = pair_differences(levels)[0] / device.g_range_uS
    else:
        g_ref = float(crossbar.conductance.reference_conductance(device)[0])
        half = crossbar.conductance.reference_conductance(device)[1]
        grid = (levels - g_ref) / half
        grid = grid[grid.abs() <= 1 + 1e-12]
    g = torch.Generator().manual_seed(seed)
    v = grid[torch.randint(0, grid.numel(), (200,), generator=g)].float()
    g_a, g_b = values_to_conductance(v, device, mapping)
    assert torch.isin(g_a, device.conductance_levels()).all()
    back = conductance_to_values(g_a, g_b, device, mapping)
    assert torch.allclose(back, v, atol=1e-6)


def test_explicit_levels_pair_uses_cheapest_pair() -> None:
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=10.0, levels_uS=(1.0, 2.0, 4.0, 10.0))
    diffs, i, j = pair_differences(device.conductance_levels())
    assert torch.allclose(diffs, torch.tensor([-9.0, -8, -6, -3, -2, -1, 0, 1, 2, 3, 6, 8, 9]))
    zero = int(torch.nonzero(diffs == 0))
    assert int(i[zero]) == 0 and int(j[zero]) == 0  # zero stored as g_min, g_min


@pytest.mark.parametrize("preset", ["rram_neurosim", "rram_neurram"])
def test_float_levels_use_the_cheapest_pair(preset: str) -> None:
    """Equal differences of float32 levels are merged, so every value is programmed with one
    cell of the pair at the lowest level (least conductance, least read noise)."""
    device = crossbar.DeviceModel.preset(preset)
    diffs, i, j = pair_differences(device.conductance_levels())
    n = device.level_count
    assert diffs.numel() == 2 * n - 1
    assert bool(((i == 0) | (j == 0)).all())


def test_values_outside_range_clip() -> None:
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=11.0)
    g_pos, g_neg = values_to_conductance(torch.tensor([3.0, -2.0, 0.5]), device, "differential")
    assert g_pos.tolist() == [11.0, 1.0, 6.0] and g_neg.tolist() == [1.0, 11.0, 1.0]
    g, _ = values_to_conductance(torch.tensor([5.0, -5.0]), device, "offset")
    assert g.tolist() == [11.0, 1.0]


def test_layer_weights_on_level_grid_program_exactly() -> None:
    """A weight matrix already on the device's level grid survives programming unchanged."""
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=16.0, n_levels=16)
    layer = nn.Linear(40, 9)
    with torch.no_grad():
        codes = torch.randint(-15, 16, layer.weight.shape).float()
        codes[0, 0] = 15
        layer.weight.copy_(0.02 * codes)
    xl = crossbar.to_crossbar(layer, device, crossbar.CrossbarConfig())
    x = torch.randn(5, 40)
    with torch.no_grad():
        assert rel_err(xl(x), layer(x)) < 1e-6


# --------------------------------------------------------------------------- device statistics
def big_layer() -> nn.Linear:
    layer = nn.Linear(256, 256, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)  # every G+ at mid range, every G- at g_min ...
        layer.weight[0, 0] = -1.0  # ... with the layer's scale set by one full-range weight
    return layer


def test_programming_variation_follows_prog_sigma() -> None:
    for kind, sigma in (("lognormal", 0.1), ("gaussian", 0.05)):
        device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=101.0, prog_sigma=sigma,
                                      prog_noise=kind)
        xl = crossbar.to_crossbar(big_layer(), device, crossbar.CrossbarConfig())
        g_pos = xl.g_uS[0, 0].flatten()[1:]
        nominal = xl.g_nominal_uS[0, 0].flatten()[1:]
        assert torch.allclose(nominal, torch.full_like(nominal, 51.0))
        if kind == "lognormal":
            measured = torch.log(g_pos / nominal).std()
        else:
            measured = ((g_pos - nominal) / device.g_range_uS).std()
        assert abs(float(measured) - sigma) < 0.05 * sigma, (kind, float(measured))


def test_stuck_at_fractions_match_rates() -> None:
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=101.0, sa0_rate=0.05, sa1_rate=0.1)
    xl = crossbar.to_crossbar(big_layer(), device, crossbar.CrossbarConfig(),
                              repair=crossbar.RepairConfig(compensation=False))  # raw faults
    g_pos = xl.g_uS[0, 0].flatten()[1:]  # nominal 51 uS: any cell at a bound is stuck
    n = g_pos.numel()
    sa0 = float((g_pos == 1.0).sum()) / n
    sa1 = float((g_pos == 101.0).sum()) / n
    tol = 4 * math.sqrt(0.1 * 0.9 / n)
    assert abs(sa0 - 0.05) < tol and abs(sa1 - 0.1) < tol


def test_read_noise_changes_outputs_but_programming_variation_does_not() -> None:
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(4, 3, 15, 15)
    varied = crossbar.DeviceModel(prog_sigma=0.1)
    xm = crossbar.to_crossbar(model, varied, crossbar.CrossbarConfig())
    with torch.no_grad():
        a, b = xm(x), xm(x)
        assert torch.equal(a, b)  # variation is frozen at programming time
        assert rel_err(a, model(x)) > 1e-3
        noisy = crossbar.to_crossbar(model, varied.with_(read_sigma=0.02),
                                     crossbar.CrossbarConfig())
        c, d = noisy(x), noisy(x)
        assert not torch.equal(c, d)  # fresh read noise per read
        assert rel_err(c, d) < 0.2


def test_same_seed_same_chip_and_program_resamples() -> None:
    torch.manual_seed(0)
    model = Custom().eval()
    device = crossbar.DeviceModel(prog_sigma=0.1, sa0_rate=0.01, sa1_rate=0.01)
    config = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32)
    a = crossbar.to_crossbar(model, device, config, seed=7)
    b = crossbar.to_crossbar(model, device, config, seed=7)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and (torch.equal(va, vb) if torch.is_tensor(va) else va == vb)
    g_before = a.stem.g_uS.clone()
    a.program(8)
    assert not torch.equal(a.stem.g_uS, g_before)
    a.program(7)
    assert torch.equal(a.stem.g_uS, g_before)
    crossbar.program(b, 8)
    assert torch.equal(b.head.g_uS, crossbar.to_crossbar(model, device, config, seed=8).head.g_uS)


def test_reprogrammed_chip_reads_like_a_fresh_one() -> None:
    """program(seed) resets the read-noise stream too: same seed, same chip, same reads."""
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(2, 3, 15, 15)
    device = crossbar.DeviceModel(prog_sigma=0.05, read_sigma=0.02)
    a = crossbar.to_crossbar(model, device, crossbar.CrossbarConfig(), seed=0)
    with torch.no_grad():
        a(x)
        a.program(5)
        fresh = crossbar.to_crossbar(model, device, crossbar.CrossbarConfig(), seed=5)
        assert torch.equal(a(x), fresh(x))


def test_state_dict_from_another_device_or_config_is_refused() -> None:
    layer = nn.Sequential(nn.Linear(12, 3))
    a = crossbar.to_crossbar(layer, crossbar.DeviceModel.preset("rram_neurosim"),
                             crossbar.CrossbarConfig())
    b = crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig())
    with pytest.raises(ValueError, match="another device: g_max_uS"):
        b.load_state_dict(a.state_dict())
    c = crossbar.to_crossbar(layer, crossbar.DeviceModel.preset("rram_neurosim"),
                             crossbar.CrossbarConfig(dac_bits=6))
    with pytest.raises(ValueError, match="another config: dac_bits"):
        c.load_state_dict(a.state_dict())


def test_uncalibrated_adc_fails_clearly() -> None:
    layer = nn.Sequential(nn.Linear(12, 3))
    xm = crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig(adc_bits=8),
                              calibration=torch.randn(4, 12))
    fresh = crossbar.CrossbarLinear(layer[0], xm.mapping_plan["0"], IDEAL, xm[0].config)
    with pytest.raises(ValueError, match="never calibrated"):
        fresh(torch.randn(2, 12))


def test_scales_align_the_quantizer_grid_with_the_device() -> None:
    """Per-column scales (as ADMM's per_column quantization gives) map exactly when passed."""
    torch.manual_seed(0)
    layer = nn.Linear(20, 4, bias=False)
    scales = torch.tensor([0.1, 0.2, 0.05, 0.4])
    codes = torch.randint(-5, 6, (4, 20)).float()  # no column uses the top levels (+-7)
    with torch.no_grad():
        layer.weight.copy_(codes / 7 * scales.view(-1, 1))
    model = nn.Sequential(layer)
    device = crossbar.DeviceModel(n_levels=8)
    x = torch.randn(6, 20)
    exact = crossbar.to_crossbar(model, device, crossbar.CrossbarConfig(), scales={"0": scales})
    with torch.no_grad():
        assert rel_err(exact(x), model(x)) < 1e-5
    guessed = crossbar.to_crossbar(model, device, crossbar.CrossbarConfig())  # max|w| per layer
    with torch.no_grad():
        assert rel_err(guessed(x), model(x)) > 1e-3
    with pytest.raises(ValueError, match="scales"):
        crossbar.to_crossbar(model, device, crossbar.CrossbarConfig(), scales={"0": -1.0})


def test_state_dict_round_trip_restores_programmed_state() -> None:
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(4, 3, 15, 15)
    device = crossbar.DeviceModel(prog_sigma=0.1, n_levels=8)
    config = crossbar.CrossbarConfig(dac_bits=6, adc_bits=6, mapping="offset")
    a = crossbar.to_crossbar(model, device, config, calibration=x, seed=1)
    b = crossbar.to_crossbar(model, device, config, calibration=x[:1] * 3, seed=2)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    other = crossbar.to_crossbar(nn.Sequential(nn.Linear(10, 3)), IDEAL,
                                 crossbar.CrossbarConfig())
    with pytest.raises(RuntimeError):
        other.load_state_dict(a.state_dict())


def test_state_dict_from_another_plan_is_refused() -> None:
    layer = nn.Linear(30, 4)
    a = crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig())
    masks = {"": torch.ones(4, 30, dtype=torch.bool)}
    masks[""][:, :10] = False
    plan = crossbar.plan_model(nn.Sequential(layer), crossbar.CrossbarConfig(),
                               masks={"0": masks[""]})
    b = crossbar.to_crossbar(nn.Sequential(layer), IDEAL, crossbar.CrossbarConfig(), plan=plan)
    with pytest.raises(ValueError, match="another mapping plan"):
        b[0].load_state_dict(a.state_dict())


# ----------------------------------------------------------------------------------- periphery
def test_adc_quantizes_each_tile_before_the_digital_sum() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 3, bias=False)
    x = torch.rand(200, 64)
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16, adc_bits=3)
    xl = crossbar.to_crossbar(layer, IDEAL, config, calibration=x)
    assert xl.plan.n_tiles == 4
    with torch.no_grad():
        y = xl(x)
        # Reference: quantize every tile's partial sums with its own range, then add.
        w = layer.weight
        per_tile = torch.zeros_like(y)
        whole = x @ w.T
        for t, tile in enumerate(xl.plan.tiles):
            rows = list(tile.rows)
            part = x[:, rows] @ w[:, rows].T
            per_tile += quantize(part, float(xl.adc_range[t, 0]), 3)
        quantized_total = quantize(whole, float(whole.abs().max()), 3)
    assert torch.allclose(y, per_tile, atol=1e-5)
    assert not torch.allclose(y, quantized_total, atol=1e-2)


def test_range_percentile_clips_outliers_in_calibration() -> None:
    layer = nn.Linear(1, 1, bias=False)
    x = torch.cat([torch.linspace(0, 1, 1000), torch.tensor([50.0])]).unsqueeze(1)
    full = crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig(dac_bits=4, adc_bits=4),
                                calibration=x)
    clipped = crossbar.to_crossbar(
        layer, IDEAL, crossbar.CrossbarConfig(dac_bits=4, adc_bits=4, range_percentile=99.0),
        calibration=x)
    assert float(full.dac_range) == 50.0
    assert abs(float(clipped.dac_range) - 0.99) < 0.01
    assert float(clipped.adc_range.max()) < float(full.adc_range.max()) / 10
    with pytest.raises(ValueError, match="range_percentile"):
        crossbar.CrossbarConfig(range_percentile=0.0)


def test_adc_full_scale_needs_no_calibration_and_calibrated_does() -> None:
    layer = nn.Linear(20, 5)
    with pytest.raises(ValueError, match="calibration"):
        crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig(adc_bits=8))
    xl = crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig(adc_bits=12, dac_bits=12,
                                                                    adc_range="full_scale"))
    x = torch.randn(10, 20)
    with torch.no_grad():
        assert rel_err(xl(x), layer(x)) < 0.05


def test_dac_quantizes_inputs_to_its_levels() -> None:
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.linspace(0, 1, 101).unsqueeze(1)
    xl = crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig(dac_bits=2), calibration=x)
    with torch.no_grad():
        y = xl(x).flatten()
    assert torch.allclose(torch.unique(y), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]), atol=1e-6)


# ------------------------------------------------------------------------------------- mapping
def test_all_zero_rows_and_columns_get_no_device() -> None:
    layer = nn.Linear(300, 200)
    with torch.no_grad():
        layer.weight[:, 100:250] = 0  # 150 dead word lines
        layer.weight[50:150] = 0  # 100 dead bit lines
    config = crossbar.CrossbarConfig()
    xl = crossbar.to_crossbar(layer, IDEAL, config)
    plan = xl.plan
    assert len(plan.live_rows) == 150 and len(plan.live_cols) == 100
    assert plan.n_tiles == 2  # 150 rows -> 2 row tiles, 100 cols -> 1 column group
    assert plan.n_dacs == 150  # one DAC per live word line
    assert plan.adcs_per_tile() == [100, 100]  # one per output: G+ - G- subtracted in analog
    assert plan.adcs_per_tile(cols_per_adc=8) == [13, 13]
    assert int((xl.g_uS != 0).sum()) == plan.n_devices
    dense = crossbar.to_crossbar(nn.Linear(300, 200), IDEAL, config)
    assert dense.plan.n_tiles == 6
    x = torch.randn(3, 300)
    with torch.no_grad():
        assert rel_err(xl(x), layer(x)) < 1e-5


def test_block_pruned_tile_is_never_instantiated() -> None:
    layer = nn.Linear(256, 256, bias=False)
    with torch.no_grad():
        layer.weight[128:, :128] = 0  # one whole 128 x 128 block (rows 0-127 of outputs 128+)
    plan = crossbar.to_crossbar(layer, IDEAL, crossbar.CrossbarConfig()).plan
    assert plan.n_tiles == 3
    assert plan.mapped_weights == 3 * 128 * 128


def test_conv_tiles_keep_kernels_whole() -> None:
    conv = nn.Conv2d(6, 16, 5)
    plan = crossbar.plan_model(nn.Sequential(conv), crossbar.CrossbarConfig(),
                               example_input=torch.randn(1, 6, 14, 14))["0"]
    assert [t.n_rows for t in plan.tiles] == [125, 25]
    assert plan.mvms_per_sample == 100
    assert plan.row_unit == 25


def test_masks_define_the_plan_and_plan_round_trips(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10))
    masks = {"0": torch.rand(40, 50) > 0.5, "2": torch.ones(10, 40, dtype=torch.bool)}
    masks["0"][:, :20] = False
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16)
    plan = crossbar.plan_model(model, config, masks=masks)
    assert min(plan["0"].live_rows) >= 20
    plan.save(tmp_path / "plan.json")
    loaded = crossbar.MappingPlan.load(tmp_path / "plan.json")
    assert loaded.to_dict() == plan.to_dict()
    xm = crossbar.to_crossbar(model, IDEAL, config, plan=loaded)
    assert xm.mapping_plan.to_dict() == plan.to_dict()
    with pytest.raises(ValueError, match="masks key"):
        crossbar.plan_model(model, config, masks={"nope": masks["0"]})


# --------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"g_min_uS": 10.0, "g_max_uS": 10.0}, "g_min_uS"),
        ({"g_min_uS": -1.0}, "g_min_uS"),
        ({"prog_sigma": -0.1}, "prog_sigma"),
        ({"read_sigma": -1e-3}, "read_sigma"),
        ({"n_levels": 1}, "n_levels"),
        ({"sa0_rate": 1.5}, "sa0_rate"),
        ({"sa1_rate": -0.01}, "sa1_rate"),
        ({"sa0_rate": 0.6, "sa1_rate": 0.6}, "sa0_rate \\+ sa1_rate"),
        ({"prog_noise": "uniform"}, "prog_noise"),
        ({"levels_uS": (1.0, 200.0)}, "levels_uS"),
        ({"g_max_uS": float("nan")}, "g_max_uS"),
    ],
)
def test_device_model_rejects_invalid_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}=.*allowed"):
        crossbar.DeviceModel(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tile_rows": 0}, "tile_rows"),
        ({"tile_cols": 0}, "tile_cols"),
        ({"adc_bits": 0}, "adc_bits"),
        ({"dac_bits": 0}, "dac_bits"),
        ({"mapping": "single"}, "mapping"),
        ({"adc_range": "auto"}, "adc_range"),
        ({"bit_serial": True}, "dac_bits"),
        ({"cell_bits": 9, "weight_bits": 8}, "cell_bits"),
        ({"tile_rows": 2.5}, "tile_rows"),
    ],
)
def test_crossbar_config_rejects_invalid_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}=.*allowed"):
        crossbar.CrossbarConfig(**kwargs)


def test_error_message_names_field_value_and_range() -> None:
    with pytest.raises(ValueError) as info:
        crossbar.CrossbarConfig(adc_bits=0)
    assert str(info.value) == "adc_bits=0 is invalid; allowed: an integer in [1, 24]"


def test_presets_are_valid_and_unknown_preset_fails() -> None:
    for name in crossbar.PRESETS:
        device = crossbar.DeviceModel.preset(name)
        assert crossbar.DeviceModel.from_dict(device.to_dict()) == device
    with pytest.raises(ValueError, match="preset=.* is invalid; allowed: one of ideal"):
        crossbar.DeviceModel.preset("pcm")


def test_unsupported_layers_fail_clearly() -> None:
    with pytest.raises(ValueError, match="padding='same' is not supported"):
        crossbar.to_crossbar(nn.Sequential(nn.Conv2d(4, 4, 3, padding="same")), IDEAL,
                             crossbar.CrossbarConfig())
    with pytest.raises(ValueError, match="no Linear, Conv1d, Conv2d or attention projection"):
        crossbar.to_crossbar(nn.Sequential(nn.ReLU()), IDEAL, crossbar.CrossbarConfig())
    with pytest.raises(ValueError, match="tile_cols"):
        crossbar.to_crossbar(nn.Linear(3, 3), IDEAL,
                             crossbar.CrossbarConfig(mapping="offset", tile_cols=1))


def test_wrong_input_shape_fails_clearly() -> None:
    xm = crossbar.to_crossbar(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2)),
                              IDEAL, crossbar.CrossbarConfig())
    with pytest.raises(ValueError, match=r"expected \[N, 3, H, W\]"):
        xm(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 16\]"):
        xm[2](torch.randn(2, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_unchanged_on_cuda() -> None:
    torch.manual_seed(0)
    model = Custom().eval().cuda()
    x = torch.randn(4, 3, 15, 15, device="cuda")
    device = crossbar.DeviceModel(prog_sigma=0.05, read_sigma=0.01, sa0_rate=0.01)
    config = crossbar.CrossbarConfig(dac_bits=8, adc_bits=8, tile_rows=32, tile_cols=32)
    xm = crossbar.to_crossbar(model, device, config, calibration=x)
    with torch.no_grad():
        y = xm(x)
    assert y.is_cuda and torch.isfinite(y).all()
    ideal = crossbar.to_crossbar(model, IDEAL, crossbar.CrossbarConfig())
    with torch.no_grad():
        assert rel_err(ideal(x), model(x)) < 1e-4
    cpu = crossbar.to_crossbar(model.cpu(), IDEAL, crossbar.CrossbarConfig()).cuda()
    with torch.no_grad():
        assert rel_err(cpu(x), model.cuda()(x)) < 1e-4


@pytest.mark.parametrize("pruned", [False, True])
def test_outputs_spread_over_column_tiles_are_summed_in_place(pruned) -> None:
    """Column groups of contiguous outputs are added by slice, scattered ones (pruned columns
    leave gaps) by index: both reproduce the float layer on an ideal device."""
    torch.manual_seed(5)
    layer = nn.Linear(40, 300)
    mask = torch.ones(300, 40, dtype=torch.bool)
    if pruned:
        mask[::3] = False  # every third output pruned: each tile's outputs are not a range
        with torch.no_grad():
            layer.weight[::3] = 0
    config = crossbar.CrossbarConfig(tile_rows=32, tile_cols=64)
    x = torch.randn(16, 40)
    xl = crossbar.to_crossbar(layer, crossbar.DeviceModel.ideal(), config,
                              masks={"": mask})
    slices = [idx.col_slice is not None for idx in xl._units]
    assert all(slices) if not pruned else not any(slices)
    with torch.no_grad():
        assert torch.allclose(xl(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("mapping", ["offset", "differential"])
def test_version_1_state_dict_with_the_offset_names_loads(mapping):
    """State-dict version 2 (issue 21) stores the mapping's auxiliary cells as ``g_aux_uS``;
    a version-1 state (0.2-0.4: the offset mapping's ``g_ref_uS``, empty for a differential
    layer) loads into the same chip."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(12, 5))
    config = crossbar.CrossbarConfig(tile_rows=8, tile_cols=8, mapping=mapping)
    device = crossbar.DeviceModel(prog_sigma=0.05)
    chip = crossbar.to_crossbar(lin, device, config, seed=4)
    state = chip.state_dict()
    old = type(state)((k.replace("g_aux_uS", "g_ref_uS"), v) for k, v in state.items())
    old._metadata = {k: dict(v) for k, v in state._metadata.items()}
    old._metadata["0"]["version"] = 1
    assert "0.g_ref_uS" in old and "0.g_aux_uS" not in old
    other = crossbar.to_crossbar(lin, device, config, seed=9)
    other.load_state_dict(old)
    assert torch.equal(other[0].g_aux_uS, chip[0].g_aux_uS)
    x = torch.randn(3, 12)
    with torch.no_grad():
        assert torch.equal(other(x), chip(x))
