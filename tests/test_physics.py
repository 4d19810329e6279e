"""Simulator physics: per-MVM read noise against a brute-force per-sample oracle, state-dependent
programming, derived random streams, recalibration on program, one reference column per tile,
write-verify, drift and ADC noise against closed forms, pluggable cell models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from memxbar import crossbar
from memxbar.crossbar.cells import REGISTRY, ProgrammingModel
from memxbar.crossbar.streams import effects, stream_seed

IDEAL = crossbar.DeviceModel.ideal()
CONTINUOUS = crossbar.CrossbarConfig(tile_rows=64, tile_cols=64)


def linear(n_in: int, n_out: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=False)


def conductances(layer: crossbar.CrossbarLayer) -> np.ndarray:
    """Programmed conductances ``[S, cells, out, in]`` as float64 numpy."""
    return layer.g_uS.double().numpy()


# ------------------------------------------------------------------------ per-MVM read noise
def oracle_outputs(layer: crossbar.CrossbarLayer, x: np.ndarray, sigma: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Brute force: every sample reads every cell anew, ``G_read = G (1 + sigma N)``, and the
    output is ``x . (G+ - G-) / range * scale`` (differential pair, ideal converters)."""
    dev = layer.device_model
    g = conductances(layer)[0]  # [2, out, in]
    scale = layer.slice_factors[0].double().numpy()  # [out, 1]
    out = np.empty((x.shape[0], g.shape[1]))
    for n in range(x.shape[0]):
        read = g * (1 + sigma * rng.standard_normal(g.shape))
        w = (read[0] - read[1]) / dev.g_range_uS * scale
        out[n] = w @ x[n]
    return out


def test_read_noise_is_drawn_per_sample_like_a_brute_force_oracle() -> None:
    sigma = 0.05
    device = crossbar.DeviceModel(read_sigma=sigma)
    layer = crossbar.to_crossbar(linear(40, 6), device, CONTINUOUS)
    x = torch.randn(1, 40).repeat(3000, 1)  # one input vector read 3000 times in one batch
    with torch.no_grad():
        y = layer(x).double().numpy()
    ref = oracle_outputs(layer, x[:3000].double().numpy(), sigma, np.random.default_rng(0))
    # every sample is its own read: the batch is not one shared draw
    assert np.all(y.std(axis=0) > 0)
    np.testing.assert_allclose(y.mean(axis=0), ref.mean(axis=0),
                               atol=4 * ref.std(axis=0).max() / math.sqrt(3000))
    np.testing.assert_allclose(y.std(axis=0), ref.std(axis=0), rtol=0.08)


def test_conv_read_noise_is_independent_per_output_position() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, bias=False)
    device = crossbar.DeviceModel(read_sigma=0.05)
    layer = crossbar.to_crossbar(conv, device, CONTINUOUS)
    x = torch.ones(1, 2, 42, 42)  # every output position sees the same input patch
    with torch.no_grad():
        y = layer(x)[0].flatten(1)  # [channels, positions]
    g = conductances(layer)[0]
    scale = layer.slice_factors[0].double().numpy()
    # closed form: var_j = sum_i x_i^2 sigma^2 (G+_ij^2 + G-_ij^2) / range^2 * scale_j^2
    var = (0.05**2 * (g[0] ** 2 + g[1] ** 2)).sum(axis=1) / 99.0**2 * scale[:, 0] ** 2
    np.testing.assert_allclose(y.double().std(dim=1).numpy(), np.sqrt(var), rtol=0.06)
    # neighbouring positions are uncorrelated
    corr = np.corrcoef(y[0, :-1].numpy(), y[0, 1:].numpy())[0, 1]
    assert abs(corr) < 0.05


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_bf16_variance_product_keeps_the_noise_std_within_its_bound(kind, monkeypatch) -> None:
    """``noise_precision="auto"`` computes ``sum_i x_i^2 var_ij`` in bfloat16 (forced here, so
    any CPU runs the path): with the same draws, every output's noise is the exact one scaled
    by the ratio of the two standard deviations, which must stay within the documented 0.6 %
    (and differ somewhere: the bfloat16 path ran)."""
    from memxbar.crossbar import functional

    monkeypatch.setattr(functional, "cpu_has_bf16", lambda: True)
    torch.manual_seed(3)
    # one tile per output (60 and 54 rows): its noise is one draw times one std
    model = nn.Linear(60, 30) if kind == "linear" else nn.Conv2d(6, 8, 3)
    x = torch.randn(64, 60) if kind == "linear" else torch.randn(16, 6, 12, 12)
    config = crossbar.CrossbarConfig(tile_rows=64, tile_cols=64, dac_bits=8)
    out = {}
    for name, precision, sigma in (("clean", "exact", 0.0), ("exact", "exact", 0.05),
                                   ("auto", "auto", 0.05)):
        layer = crossbar.to_crossbar(
            model, crossbar.DeviceModel(prog_sigma=0.05, read_sigma=sigma),
            config.with_(noise_precision=precision), calibration=x, seed=4)
        with torch.no_grad():
            out[name] = layer(x).double()
    noise_exact, noise_auto = out["exact"] - out["clean"], out["auto"] - out["clean"]
    big = noise_exact.abs() > 1e-3 * noise_exact.abs().max()  # away from float rounding
    ratio = noise_auto[big] / noise_exact[big]
    assert float((ratio - 1).abs().max()) < 0.006
    assert float((ratio - 1).abs().max()) > 0  # the bfloat16 product was used


def test_noise_precision_is_not_part_of_the_chip_state() -> None:
    model = linear(20, 5)
    device = crossbar.DeviceModel(read_sigma=0.05)
    auto = crossbar.to_crossbar(model, device, CONTINUOUS)
    exact = crossbar.to_crossbar(model, device, CONTINUOUS.with_(noise_precision="exact"), seed=9)
    exact.load_state_dict(auto.state_dict())
    assert torch.equal(exact.g_uS, auto.g_uS)
    with pytest.raises(ValueError, match="noise_precision.*'auto', 'exact'"):
        CONTINUOUS.with_(noise_precision="fast")


def test_output_distribution_does_not_depend_on_batch_size() -> None:
    device = crossbar.DeviceModel(read_sigma=0.05)
    layer = crossbar.to_crossbar(linear(30, 4), device, CONTINUOUS)
    x = torch.randn(1, 30)
    with torch.no_grad():
        big = layer(x.repeat(2000, 1))
        small = torch.cat([layer(x.repeat(4, 1)) for _ in range(500)])
    assert torch.allclose(big.std(0), small.std(0), rtol=0.1)
    assert torch.allclose(big.mean(0), small.mean(0), atol=float(4 * big.std(0).max() / 30))


def test_bit_serial_read_noise_mean_is_unbiased() -> None:
    """Bit-serial: every input bit cycle is its own read. With an ideal ADC the noisy outputs
    average to the noiseless ones, and their spread is the per-cycle oracle's."""
    sigma = 0.1
    model = linear(24, 3, seed=2)
    config = crossbar.CrossbarConfig(tile_rows=64, tile_cols=64, dac_bits=4, bit_serial=True)
    noisy = crossbar.to_crossbar(model, crossbar.DeviceModel(read_sigma=sigma), config)
    clean = crossbar.to_crossbar(model, IDEAL, config)
    x = torch.rand(1, 24).repeat(4000, 1)
    with torch.no_grad():
        y, ref = noisy(x).double(), clean(x[:1]).double()
    sem = y.std(0) / math.sqrt(4000)
    assert torch.all((y.mean(0) - ref[0]).abs() < 4 * sem)
    # per-cycle oracle: plane p (weight 2^p step) reads the array anew
    g = conductances(noisy)[0]
    scale = noisy.slice_factors[0].double().numpy()[:, 0]
    step = float(x.abs().max()) / 15
    code = np.round(x[0].double().numpy() / step).astype(int)
    var = np.zeros(3)
    for p in range(4):
        bit = (code >> p) & 1
        cell_var = sigma**2 * (g[0] ** 2 + g[1] ** 2) / 99.0**2 * scale[:, None] ** 2
        var += (2**p * step) ** 2 * (cell_var * bit[None, :]).sum(axis=1)
    np.testing.assert_allclose(y.std(0).numpy(), np.sqrt(var), rtol=0.08)


def test_offset_reference_noise_is_shared_by_the_tile_columns() -> None:
    """The reference column is read once per MVM and subtracted from every output: outputs of
    one tile are correlated through it (a per-output draw would make them independent)."""
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=100.0, read_sigma=0.1)
    config = crossbar.CrossbarConfig(tile_rows=64, tile_cols=64, mapping="offset")
    layer = crossbar.to_crossbar(nn.Linear(20, 2, bias=False).requires_grad_(False)
                                 .apply(lambda m: nn.init.zeros_(m.weight)), device, config,
                                 plan=None, masks={"": torch.ones(2, 20, dtype=torch.bool)})
    x = torch.ones(4000, 20)
    with torch.no_grad():
        y = layer(x)
    # both weights are 0 (G at G_ref): own noise and the shared reference noise have equal
    # variance, so the correlation of the two outputs is 1/2
    corr = float(torch.corrcoef(y.T)[0, 1])
    assert 0.42 < corr < 0.58


# ------------------------------------------------------------------------ programming spread
def program_many(device: crossbar.DeviceModel, target_uS: float, n: int = 20000) -> torch.Tensor:
    from memxbar.crossbar.chip import program_cells

    return program_cells(torch.full((n,), target_uS), device, seed=3, layer="probe").g_uS


def test_polynomial_programming_spread_follows_sigma_of_g() -> None:
    device = crossbar.DeviceModel.preset("rram_neurram")
    coeffs = device.programming.coeffs_uS
    for target in (10.0, 20.0, 40.0 * 14 / 15):
        g = program_many(device, target)
        sigma = sum(c * target**k for k, c in enumerate(coeffs))
        assert abs(float(g.std()) - sigma) < 0.03 * sigma
        assert abs(float(g.mean()) - target) < 0.05
    # the refit spread is about 1 uS at G = 0 (not 2.5 uS), and a cell at 0 uS is not
    # noiseless: it lands on max(0, N(0, sigma(0))), a half-normal of std sigma(0)*0.603
    g0 = program_many(device, 0.0)
    assert 1.0 < coeffs[0] < 1.1
    assert abs(float(g0.std()) - coeffs[0] * math.sqrt(0.5 - 1 / (2 * math.pi))) < 0.02
    assert float(g0.min()) >= 0.0


def test_programming_is_not_clipped_at_the_window_edges() -> None:
    """A Gaussian spread around g_min is centred on g_min: clipping at the window would shift
    the mean up (and bias small weights)."""
    device = crossbar.DeviceModel(g_min_uS=10.0, g_max_uS=50.0, prog_noise="gaussian",
                                  prog_sigma=0.05)
    for target in (10.0, 50.0):
        g = program_many(device, target)
        assert abs(float(g.mean()) - target) < 0.05
        assert abs(float(g.std()) - 2.0) < 0.05


def test_small_weights_keep_their_mean_under_programming_spread() -> None:
    device = crossbar.DeviceModel.preset("rram_neurram")
    model = nn.Linear(1, 2000, bias=False)
    with torch.no_grad():
        model.weight.fill_(1 / 15)  # the smallest non-zero level
        model.weight[0] = 1.0  # sets the layer scale
    config = crossbar.CrossbarConfig(tile_rows=64, tile_cols=256)
    means = []
    for seed in range(5):
        layer = crossbar.to_crossbar(model, device.with_(read_noise=None), config, seed=seed)
        with torch.no_grad():
            means.append(layer(torch.ones(1, 1))[0, 1:].mean())
    # a conductance cannot go below 0 uS: each cell lands on max(0, T + sigma(T) N), whose mean
    # is T Phi(T / sigma) + sigma phi(T / sigma) (closed form); G- sits at 0 uS with sigma(0)
    coeffs = device.programming.coeffs_uS

    def floored_mean(target: float) -> float:
        sigma = sum(c * target**k for k, c in enumerate(coeffs))
        z = target / sigma
        cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
        return target * cdf + sigma * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    expected = (floored_mean(40 / 15) - floored_mean(0.0)) / 40
    measured = float(torch.stack(means).mean())
    assert abs(measured - expected) < 0.01 / 15
    # the refit spread (1.05 uS at 0, not 2.5 uS clipped at the window) keeps the smallest
    # level within 15 % of its value (it lost 31 % before)
    assert abs(measured - 1 / 15) < 0.15 / 15


# --------------------------------------------------------------------------- random streams
def test_streams_are_distinct_per_seed_layer_and_effect() -> None:
    seeds = {stream_seed(s, layer, e) for s in range(4) for layer in ("0", "2", "fc")
             for e in effects()}
    assert len(seeds) == 4 * 3 * len(effects())


def stuck_map(layer: crossbar.CrossbarLayer) -> torch.Tensor:
    dev = layer.device_model
    g = layer.g_uS
    return (g == dev.g_min_uS) | (g == dev.g_max_uS)


def test_sweeping_one_effect_keeps_the_others() -> None:
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    base = crossbar.DeviceModel(prog_sigma=0.05, sa0_rate=0.02, sa1_rate=0.02)
    raw = crossbar.RepairConfig(compensation=False)  # the streams, not the repair
    a = crossbar.to_crossbar(model, base, CONTINUOUS, seed=7, repair=raw)
    b = crossbar.to_crossbar(model, base.with_(prog_sigma=0.2), CONTINUOUS, seed=7, repair=raw)
    c = crossbar.to_crossbar(model, base.with_(sa1_rate=0.05), CONTINUOUS, seed=7, repair=raw)
    for i in (0, 2):
        assert stuck_map(a[i]).any()
        assert torch.equal(stuck_map(a[i]), stuck_map(b[i]))  # same faults at any spread
        # programming noise: ln(G / G_nominal) scales with sigma on the healthy cells
        ok = ~stuck_map(a[i]) & (a[i].g_nominal_uS > 0)
        draws_b = torch.log(b[i].g_uS[ok] / b[i].g_nominal_uS[ok]) / 0.2
        draws_a = torch.log(a[i].g_uS[ok] / a[i].g_nominal_uS[ok]) / 0.05
        assert torch.allclose(draws_a, draws_b, atol=2e-3)
        # a higher SA1 rate adds faults and leaves every other cell as it was
        healthy = ~stuck_map(c[i])
        assert torch.equal(a[i].g_uS[healthy], c[i].g_uS[healthy])
    # layers do not share a stream: their normalised programming draws differ
    n0 = torch.log(a[0].g_uS / a[0].g_nominal_uS).flatten()[:50]
    n2 = torch.log(a[2].g_uS / a[2].g_nominal_uS).flatten()[:50]
    assert not torch.allclose(n0, n2)


# --------------------------------------------------------------- program() and calibration
def test_program_recalibrates_like_a_fresh_conversion() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    device = crossbar.DeviceModel(prog_sigma=0.2, sa0_rate=0.02)
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16, dac_bits=6, adc_bits=6)
    calib, x = torch.randn(128, 16), torch.randn(256, 16)
    fresh = crossbar.to_crossbar(model, device, config, calibration=calib, seed=5)
    reprogrammed = crossbar.to_crossbar(model, device, config, calibration=calib, seed=0)
    reprogrammed.program(5)
    with torch.no_grad():
        assert torch.equal(fresh(x), reprogrammed(x))
    for a, b in zip(fresh.modules(), reprogrammed.modules(), strict=True):
        if isinstance(a, crossbar.CrossbarLayer):
            assert torch.equal(a.adc_range, b.adc_range)


def test_program_without_a_calibration_batch_is_refused_before_any_change() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    device = crossbar.DeviceModel(prog_sigma=0.1)
    config = crossbar.CrossbarConfig(dac_bits=6, adc_bits=6)
    calib = torch.randn(32, 8)
    source = crossbar.to_crossbar(model, device, config, calibration=calib, seed=1)
    target = crossbar.to_crossbar(model, device, config, calibration=calib, seed=2)
    del target._calibration_inputs
    target.load_state_dict(source.state_dict())
    before = target[0].g_uS.clone()
    with pytest.raises(ValueError, match="calibration=inputs"):
        target.program(3)
    assert torch.equal(target[0].g_uS, before)
    target.program(3, calibration=calib)
    assert bool(target[0].calibrated)


# ------------------------------------------------------------ offset mapping and the plan
@pytest.mark.parametrize("cell_bits", [None, 2])
def test_offset_reference_columns_match_the_plan(cell_bits: int | None) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10))
    config = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32, mapping="offset",
                                     cell_bits=cell_bits, weight_bits=8)
    xmodel = crossbar.to_crossbar(model, crossbar.DeviceModel(read_sigma=0.01), config)
    plan = xmodel.mapping_plan
    for name, layer in ((n, m) for n, m in xmodel.named_modules()
                        if isinstance(m, crossbar.CrossbarLayer)):
        assert layer.n_devices == plan[name].n_devices
        assert layer.g_aux_uS.shape == (plan[name].n_tiles, layer.in_features)
    cost = crossbar.model_cost(plan, config, crossbar.CostConfig(assume_mvms_per_sample=1))
    assert cost.totals()["devices"] == sum(m.n_devices for m in xmodel.modules()
                                         if isinstance(m, crossbar.CrossbarLayer))


# ------------------------------------------------------------------------------ write-verify
def test_write_verify_pulse_counts_match_the_geometric_closed_form() -> None:
    """Gaussian spread sigma, band +-tol, exact verify reads: each pulse lands in the band with
    p = erf(tol / (sigma sqrt 2)), so pulses ~ Geometric(p) truncated at the budget M:
    E[pulses] = (1 - (1 - p)^M) / p and P(fail) = (1 - p)^M."""
    sigma_uS, tol, budget = 4.0, 2.0, 6
    device = crossbar.DeviceModel(g_min_uS=0.0, g_max_uS=100.0,
                                  programming={"model": "gaussian", "sigma": sigma_uS / 100},
                                  write_verify={"tolerance_uS": tol, "max_pulses": budget})
    from memxbar.crossbar.chip import program_cells

    target = torch.full((40000,), 50.0)
    cells = program_cells(target, device, seed=0, layer="probe")
    p = math.erf(tol / (sigma_uS * math.sqrt(2)))
    mean = (1 - (1 - p) ** budget) / p
    assert abs(float(cells.pulses.double().mean()) - mean) < 0.02 * mean
    assert abs(float((~cells.converged).double().mean()) - (1 - p) ** budget) < 0.005
    residual = (cells.g_uS - target)[cells.converged]
    assert float(residual.abs().max()) <= tol
    # in the band the residual is the Gaussian truncated to [-tol, tol]
    a = tol / sigma_uS
    trunc_var = sigma_uS**2 * (1 - 2 * a * math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
                               / math.erf(a / math.sqrt(2)))
    assert abs(float(residual.std()) - math.sqrt(trunc_var)) < 0.03 * math.sqrt(trunc_var)


def test_write_verify_reports_pulses_and_failures_per_layer() -> None:
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 4))
    device = crossbar.DeviceModel.preset("rram_milo").with_(
        write_verify={"tolerance_uS": 1.0, "max_pulses": 3})
    xmodel = crossbar.to_crossbar(model, device, CONTINUOUS)
    stats = crossbar.programming_stats(xmodel)
    assert stats["cells"] == sum(p.n_devices for p in xmodel.mapping_plan)
    assert stats["pulses"] == int(stats["pulse_counts"].sum())
    assert stats["max_pulses"] == 3
    assert 0 < stats["failed"] < stats["cells"]
    # residual error per cell: inside the band unless the cell failed (exact verify reads)
    residual, counts = stats["residual_uS"], stats["pulse_counts"]
    assert residual.shape == counts.shape == (stats["cells"],)
    inside = residual.abs() <= 1.0
    assert int((~inside).sum()) == stats["failed"]
    assert bool((counts[~inside] == 3).all())
    single = crossbar.programming_stats(crossbar.to_crossbar(model, device.with_(
        write_verify=None), CONTINUOUS))
    assert single["pulses"] == single["cells"] and single["failed"] == 0


def test_write_verify_narrows_the_weight_error() -> None:
    model = linear(60, 30)
    device = crossbar.DeviceModel.preset("rram_milo")
    config = crossbar.CrossbarConfig(tile_rows=64, tile_cols=64)
    x = torch.eye(60)

    def weight_error(dev: crossbar.DeviceModel) -> float:
        with torch.no_grad():
            w = crossbar.to_crossbar(model, dev, config, seed=1)(x).T - model.weight
        return float(w.norm() / model.weight.norm())

    verified = device.with_(write_verify={"tolerance_uS": 1.0, "max_pulses": 50})
    assert weight_error(verified) < 0.4 * weight_error(device)


# ------------------------------------------------------------------------------------ drift
def test_rram_cmo_drift_matches_its_log_time_law() -> None:
    device = crossbar.DeviceModel(g_min_uS=9.0, g_max_uS=88.2, drift="rram_cmo",
                                  t_inference_s=3600.0)
    from memxbar.crossbar.chip import drifted

    g = torch.full((40000,), 50.0)
    out = drifted(g, device, seed=0, layer="probe")
    lt = math.log(3600.0)
    assert abs(float(out.mean()) - (50 - 0.08900206 * lt)) < 0.02
    assert abs(float(out.std()) - (0.04201137 * lt + 0.41183342)) < 0.02


def test_pcm_drift_mean_matches_numerical_integration() -> None:
    """E[G(t)] = G0 E[((t + t0) / t0)^(-|mu + s N|)] by quadrature over N."""
    t, t0 = 1e5, 20.0
    device = crossbar.DeviceModel(g_min_uS=0.0, g_max_uS=25.0, drift="pcm_power_law",
                                  t_inference_s=t)
    from memxbar.crossbar.chip import drifted

    g0 = 25.0  # g_rel = 1: mu = 0.049 (clamped), s = 0.008 (clamped)
    out = drifted(torch.full((40000,), g0), device, seed=0, layer="probe")
    z = np.linspace(-8, 8, 4001)
    pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    expected = g0 * np.trapezoid(((t + t0) / t0) ** (-np.abs(0.049 + 0.008 * z)) * pdf, z)
    assert abs(float(out.mean()) - expected) < 1e-3 * expected


def test_drift_keeps_the_chip_and_compensation_restores_the_scale() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    device = crossbar.DeviceModel.preset("pcm_aihwkit").with_(read_noise=None)
    x = torch.randn(64, 30)
    plain = crossbar.to_crossbar(model, device, CONTINUOUS, seed=3)
    comp = crossbar.to_crossbar(model, device, CONTINUOUS.with_(drift_compensation=True),
                                seed=3)
    with torch.no_grad():
        y0 = plain(x)
        programmed = plain[0].g_uS.clone()
        plain.set_inference_time(1e6)
        comp.set_inference_time(1e6)
        y_plain, y_comp = plain(x), comp(x)
        assert torch.equal(plain[0].g_uS, programmed)  # drift is in the cache, not the chip
        err_plain = float((y_plain - y0).norm() / y0.norm())
        err_comp = float((y_comp - y0).norm() / y0.norm())
        assert err_plain > 0.2  # ~ (5e4)^-0.05 shrink per layer
        assert err_comp < 0.3 * err_plain
        plain.set_inference_time(0.0)
        assert torch.equal(plain(x), y0)


# ---------------------------------------------------------------------------------- ADC noise
def test_adc_noise_has_the_configured_share_of_full_scale() -> None:
    model = linear(32, 4)
    config = crossbar.CrossbarConfig(tile_rows=64, tile_cols=64, dac_bits=8, adc_bits=10,
                                     adc_range="full_scale", adc_noise=0.01)
    layer = crossbar.to_crossbar(model, IDEAL, config)
    x = torch.ones(1, 32).repeat(4000, 1)
    layer.dac_range.fill_(1.0)
    layer.dac_signed.fill_(False)
    layer._sync_ranges()
    with torch.no_grad():
        y = layer(x)
    full_scale = 1.0 * 32 * float(layer.slice_factors.max())  # input range x rows x scale
    assert torch.allclose(y.std(0), torch.full((4,), 0.01 * full_scale), rtol=0.06)
    with pytest.raises(ValueError, match="adc_noise"):
        crossbar.CrossbarConfig(adc_noise=0.01)


# ------------------------------------------------------------------------- pluggable models
def test_a_new_programming_model_is_one_class_and_a_registry_entry() -> None:
    @dataclass(frozen=True)
    class Uniform(ProgrammingModel):
        name = "uniform_test"
        half_width_uS: float = 1.0

        def spread_uS(self, g_target: torch.Tensor, device) -> torch.Tensor:
            return torch.full_like(g_target, self.half_width_uS / math.sqrt(3))

    REGISTRY["programming"].register(Uniform)
    try:
        device = crossbar.DeviceModel.from_dict(
            {"g_min_uS": 10.0, "programming": {"model": "uniform_test", "half_width_uS": 3.0}})
        assert device.programming == Uniform(3.0)
        g = program_many(device, 50.0)
        assert abs(float(g.std()) - math.sqrt(3.0)) < 0.05
        assert crossbar.DeviceModel.from_dict(device.to_dict()) == device
    finally:
        REGISTRY["programming"]._models.pop("uniform_test")


def test_cell_model_errors_name_the_key_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"programming.model='uniformish'.*'gaussian'"):
        crossbar.DeviceModel(programming={"model": "uniformish"})
    with pytest.raises(ValueError, match=r"drift.speed=.*field of the 'rram_cmo'"):
        crossbar.DeviceModel(drift={"model": "rram_cmo", "speed": 2})
    with pytest.raises(ValueError, match=r"write_verify.max_pulses=0"):
        crossbar.DeviceModel(write_verify={"max_pulses": 0})
    with pytest.raises(ValueError, match=r"prog_sigma=.*programming model is 'polynomial'"):
        crossbar.DeviceModel.preset("rram_neurram").with_(prog_sigma=0.1)
    with pytest.raises(ValueError, match=r"device key='prog_sgima'"):
        crossbar.DeviceModel.from_dict({"prog_sgima": 0.1})


def test_version_0_1_device_dicts_still_load() -> None:
    old = {"g_min_uS": 1.0, "g_max_uS": 100.0, "n_levels": 16, "levels_uS": None,
           "prog_sigma": 0.1, "prog_noise": "lognormal", "read_sigma": 0.01,
           "sa0_rate": 0.0025, "sa1_rate": 0.0025}
    device = crossbar.DeviceModel.from_dict(old)
    assert device.programming.to_dict() == {"model": "lognormal", "sigma": 0.1}
    assert device.read_noise.to_dict() == {"model": "relative", "sigma": 0.01}
    assert device.faults.to_dict() == {"model": "stuck_at", "sa0_rate": 0.0025,
                                       "sa1_rate": 0.0025}
    # a state dict written with a 0.1 device record loads into the equivalent device
    layer = crossbar.to_crossbar(linear(8, 4), device, CONTINUOUS)
    state = layer.state_dict()
    state["_extra_state"] = {"device": old, "config": {
        k: v for k, v in CONTINUOUS.to_dict().items()
        if k not in ("adc_noise", "drift_compensation")}}
    crossbar.to_crossbar(linear(8, 4), device, CONTINUOUS, seed=9).load_state_dict(state)


def test_converters_are_chosen_by_name_and_0_1_bit_serial_still_works() -> None:
    from memxbar.crossbar.converters import DACS

    assert set(DACS) == {"parallel", "bit_serial"}
    config = crossbar.CrossbarConfig(dac_bits=4, bit_serial=True)
    assert config.dac == "bit_serial" and config.bit_serial
    old = {k: v for k, v in config.to_dict().items() if k != "dac"} | {"bit_serial": True}
    assert crossbar.CrossbarConfig.from_dict(old) == config
    assert config.with_(bit_serial=False).dac == "parallel"
    with pytest.raises(ValueError, match=r"dac='serial'.*'bit_serial'"):
        crossbar.CrossbarConfig(dac="serial", dac_bits=4)
    with pytest.raises(ValueError, match=r"dac_bits=None.*dac='bit_serial'"):
        crossbar.CrossbarConfig(dac="bit_serial")
    # the cost model reads cycles and per-cycle bits from the DAC model
    model = nn.Sequential(nn.Linear(16, 8))
    costs = {}
    for dac in ("parallel", "bit_serial"):
        cfg = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32, dac_bits=6, adc_bits=6,
                                      dac=dac)
        plan = crossbar.plan_model(model, cfg, example_input=torch.randn(2, 16))
        costs[dac] = crossbar.model_cost(plan, cfg).totals()
    assert costs["bit_serial"]["adc_conversions"] == 6 * costs["parallel"]["adc_conversions"]


def test_calibration_batch_with_nan_is_refused_before_any_change() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    config = crossbar.CrossbarConfig(dac_bits=6, adc_bits=6)
    calib = torch.randn(16, 8)
    xmodel = crossbar.to_crossbar(model, IDEAL, config, calibration=calib)
    ranges = xmodel[0].adc_range.clone()
    bad = calib.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        xmodel.calibrate(bad)
    assert torch.equal(xmodel[0].adc_range, ranges) and bool(xmodel[0].calibrated)


def test_offset_states_of_version_0_1_load() -> None:
    """0.1 stored one offset reference cell per weight slice ``[S, T, in]``; it loads into the
    one reference column per tile the plan describes."""
    model = linear(40, 12)
    config = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32, mapping="offset", cell_bits=4)
    device = crossbar.DeviceModel(prog_sigma=0.05)
    source = crossbar.to_crossbar(model, device, config, seed=1)
    state = source.state_dict()
    n_slices = source.slice_factors.shape[0]
    state["g_aux_uS"] = state["g_aux_uS"].unsqueeze(0).repeat(n_slices, 1, 1)  # 0.1 layout
    target = crossbar.to_crossbar(model, device, config, seed=2)
    target.load_state_dict(state)
    x = torch.randn(8, 40)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


# ------------------------------------------------------------------------ review regressions
def test_offset_references_outside_a_tile_stay_empty_under_additive_drift() -> None:
    """An output spanning several row tiles reads each cell against its own tile's reference:
    the empty reference entries of the other tiles must not drift into the sum."""
    model = nn.Linear(64, 512, bias=False)
    nn.init.zeros_(model.weight)
    masks = {"": torch.ones(512, 64, dtype=torch.bool)}
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=64, mapping="offset")
    device = crossbar.DeviceModel(g_min_uS=9.0, g_max_uS=88.2, drift="rram_cmo",
                                  t_inference_s=86400.0)
    layer = crossbar.to_crossbar(model, device, config, masks=masks, scales={"": 1.0})
    from memxbar.crossbar import physical

    g_ref = physical.state_at_time(layer)["reference"]
    outside = ~physical.tile_row_mask(layer)
    assert bool(outside.any()) and bool((g_ref[outside] == 0).all())
    assert bool((g_ref[~outside] != layer.g_aux_uS[~outside]).all())  # the devices did drift
    # every weight is read against its own tile's (drifted) reference cell
    ref_of_cell = torch.einsum("ot,ti->oi", physical.tile_of_output(layer), g_ref)
    for t, tile in enumerate(layer.plan.tiles):
        rows, cols = list(tile.rows), list(tile.cols)
        assert torch.equal(ref_of_cell[cols][:, rows], g_ref[t, rows].expand(len(cols), -1))


def test_program_follows_the_model_dtype_and_a_failed_calibration_keeps_the_ranges() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    config = crossbar.CrossbarConfig(dac_bits=6, adc_bits=6)
    calib = torch.randn(16, 8)
    xmodel = crossbar.to_crossbar(model, crossbar.DeviceModel(prog_sigma=0.1), config,
                                  calibration=calib).double()
    xmodel.program(3)  # the stored float32 batch follows the float64 model
    assert bool(xmodel[0].calibrated) and xmodel[0].adc_range.dtype == torch.float64
    ranges = xmodel[0].adc_range.clone()
    with pytest.raises(ValueError, match="does not fit the model"):
        xmodel.calibrate(torch.randn(16, 9, dtype=torch.float64))
    assert torch.equal(xmodel[0].adc_range, ranges) and bool(xmodel[0].calibrated)


def test_stuck_cells_fail_write_verify() -> None:
    device = crossbar.DeviceModel(g_min_uS=10.0, g_max_uS=100.0, prog_noise="gaussian",
                                  prog_sigma=0.01, sa0_rate=0.05, sa1_rate=0.05,
                                  write_verify={"tolerance_uS": 2.0, "max_pulses": 8})
    from memxbar.crossbar.chip import program_cells

    target = torch.full((20000,), 55.0)
    cells = program_cells(target, device, seed=1, layer="probe")
    stuck = (cells.g_uS == 10.0) | (cells.g_uS == 100.0)
    assert 0.08 < float(stuck.double().mean()) < 0.12
    assert torch.equal(~cells.converged, stuck)  # healthy cells converge, stuck ones cannot
    assert bool((cells.pulses[stuck] == 8).all())


def test_a_drifted_chip_round_trips_through_its_state_dict() -> None:
    model = linear(20, 6)
    device = crossbar.DeviceModel.preset("pcm_aihwkit").with_(read_noise=None)
    source = crossbar.to_crossbar(model, device, CONTINUOUS, seed=4)
    source.set_inference_time(3600.0)
    target = crossbar.to_crossbar(model, device, CONTINUOUS, seed=5)
    target.load_state_dict(source.state_dict())
    assert target.device_model.t_inference_s == 3600.0
    x = torch.randn(3, 20)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
    with pytest.raises(ValueError, match="bit_serial=False.*dac='bit_serial'"):
        crossbar.CrossbarConfig(dac_bits=4, dac="bit_serial", bit_serial=False)


def test_converted_layers_keep_a_weight_view() -> None:
    """Code that reads ``layer.weight`` (attention, weight tying, inspection) keeps working:
    the chip's weights now, shaped like the source."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    lin = nn.Linear(10, 5)
    for source in (conv, lin):
        ideal = crossbar.to_crossbar(source, IDEAL, CONTINUOUS)
        assert ideal.weight.shape == source.weight.shape
        assert torch.allclose(ideal.weight, source.weight, atol=1e-6)
        noisy = crossbar.to_crossbar(source, crossbar.DeviceModel(prog_sigma=0.2), CONTINUOUS)
        assert not torch.allclose(noisy.weight, source.weight, atol=1e-3)


def test_digital_layers_and_per_layer_devices() -> None:
    """Chosen layers stay digital (exact, not planned, not costed); per-layer devices by
    pattern; patterns that match nothing or twice are refused before any work."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(),
                          nn.Linear(8, 4))
    noisy = crossbar.DeviceModel(prog_sigma=0.3)
    precise = crossbar.DeviceModel(prog_sigma=0.01)
    xmodel = crossbar.to_crossbar(model, noisy, CONTINUOUS, digital=["4"],
                                  devices={"re:0|2": precise})
    assert type(xmodel[4]) is nn.Linear and torch.equal(xmodel[4].weight, model[4].weight)
    assert set(xmodel.mapping_plan.layers) == {"0", "2"}
    assert xmodel[0].device_model == precise and xmodel[2].device_model == precise
    only_first = crossbar.to_crossbar(model, noisy, CONTINUOUS, devices={"0": precise})
    assert only_first[2].device_model == noisy
    with pytest.raises(ValueError, match="digital pattern 'head' matches no"):
        crossbar.to_crossbar(model, noisy, CONTINUOUS, digital=["head"])
    with pytest.raises(ValueError, match="layer '2' is matched by two devices patterns"):
        crossbar.to_crossbar(model, noisy, CONTINUOUS, devices={"2": precise, "re:.*": noisy})
    with pytest.raises(ValueError, match="keeps every layer digital"):
        crossbar.to_crossbar(model, noisy, CONTINUOUS, digital=["*"])


class _Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 5, stride=2, padding=2, dilation=1)
        self.head = nn.Linear(6 * 10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_conv1d_maps_onto_crossbars_exactly() -> None:
    torch.manual_seed(0)
    model = _Conv1dNet().eval()
    x = torch.randn(8, 3, 20)
    config = crossbar.CrossbarConfig(tile_rows=8, tile_cols=8)
    xmodel = crossbar.to_crossbar(model, IDEAL, config, calibration=x)
    assert isinstance(xmodel.conv, crossbar.CrossbarConv1d)
    assert xmodel.conv.weight.shape == model.conv.weight.shape
    plan = xmodel.mapping_plan
    assert plan["conv"].kind == "conv1d" and plan["conv"].mvms_per_sample == 10
    assert plan["conv"].row_unit == 5 and plan["conv"].n_tiles > 1  # 15 rows on 8-row tiles
    with torch.no_grad():
        assert torch.allclose(xmodel(x), model(x), atol=1e-5)
    noisy = crossbar.to_crossbar(model, crossbar.DeviceModel(read_sigma=0.05),
                                 config.with_(dac_bits=8, adc_bits=8), calibration=x)
    with torch.no_grad():
        assert not torch.equal(noisy(x), noisy(x))  # read noise per MVM on a 1-D conv too
    with pytest.raises(ValueError, match=r"\(N, 3, L\)"):
        crossbar.to_crossbar(model, IDEAL, config, calibration=torch.randn(8, 3, 4, 20))


def test_transformer_layers_convert_with_their_attention_projections() -> None:
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                       batch_first=True).eval()
    x = torch.randn(4, 5, 16)
    xblock = crossbar.to_crossbar(block, IDEAL, CONTINUOUS, calibration=x)
    assert isinstance(xblock.linear1, crossbar.CrossbarLinear)
    assert isinstance(xblock.self_attn, crossbar.CrossbarMultiheadAttention)
    assert isinstance(xblock.self_attn.out_proj, crossbar.CrossbarLinear)
    assert set(xblock.mapping_plan.layers) == {"linear1", "linear2", "self_attn.in_proj",
                                               "self_attn.out_proj"}
    with torch.no_grad():
        assert torch.allclose(xblock(x), block(x), atol=1e-4)
    # the fused fast path of nn.TransformerEncoderLayer (eval, no grad) would read .weight and
    # skip the simulation: with read noise, two passes must differ
    noisy = crossbar.to_crossbar(block, crossbar.DeviceModel(read_sigma=0.2), CONTINUOUS,
                                 calibration=x)
    with torch.inference_mode():
        assert not torch.equal(noisy(x), noisy(x))


def _aihwkit_pcm_read_rel(g_prog: np.ndarray, t_inference_s: float) -> np.ndarray:
    """aihwkit's accumulated 1/f read noise of ``PCMLikeNoiseModel`` relative to |G(t)|,
    transcribed from its published law in numpy (g_max 25 uS, t0 20 s, t_read 250 ns)."""
    q_s = np.minimum(0.0088 / np.maximum((np.abs(g_prog) / 25.0) ** 0.65, 1e-3), 0.2)
    t = t_inference_s + 20.0
    return q_s * np.sqrt(np.log((t + 250e-9) / (2 * 250e-9)))


@pytest.mark.parametrize("t_inference_s", [0.0, 86400.0 * 30])
def test_pcm_read_noise_follows_the_aihwkit_law_per_state_and_time(t_inference_s) -> None:
    """Issue 21, item 3: the ``pcm_aihwkit`` preset's read noise was a flat 3.7 % of G; the law
    it cites is 1.6-7x larger at G <= 0.5 g_max and grows with time (to 9x after 30 days at
    0.05 g_max). Per MVM, each output's std must match a brute-force read of every cell with
    the law's std (no drift here, so G(t) = G_prog)."""
    device = crossbar.DeviceModel.preset("pcm_aihwkit").with_(
        programming=None, drift=None, t_inference_s=t_inference_s)
    layer = crossbar.to_crossbar(linear(40, 6), device, CONTINUOUS)
    x = torch.randn(1, 40).repeat(3000, 1)
    with torch.no_grad():
        y = layer(x).double().numpy()
    g = conductances(layer)[0]                                          # [2, out, in]
    rel = _aihwkit_pcm_read_rel(g, t_inference_s)
    scale = layer.slice_factors[0].double().numpy()
    rng = np.random.default_rng(0)
    ref = np.empty((3000, 6))
    xn = x[0].double().numpy()
    for n in range(3000):
        read = g * (1 + rel * rng.standard_normal(g.shape))
        ref[n] = ((read[0] - read[1]) / device.g_range_uS * scale) @ xn
    np.testing.assert_allclose(y.std(axis=0), ref.std(axis=0), rtol=0.08)
    # the old flat 3.7 %: far below the law for the typical programmed cell
    assert float(np.median(rel[g > 0] / 0.037)) > 1.5


def test_pcm_read_noise_takes_the_programmed_state_and_the_time() -> None:
    """The law's Q_s reads the programmed conductance, its multiplier the drifted one; a
    write-verify read right after a pulse takes t = 0."""
    from memxbar.crossbar.cells.pcm_read import Pcm1fReadNoise

    dev = crossbar.DeviceModel.preset("pcm_aihwkit").with_(t_inference_s=3600.0)
    model = Pcm1fReadNoise()
    g_prog = torch.tensor([25.0, 12.5, 2.5, 1.25, 0.0])
    g_now = 0.6 * g_prog
    got = model.std_uS(g_now, dev, g_prog).numpy()
    want = np.abs(g_now.numpy()) * _aihwkit_pcm_read_rel(g_prog.numpy(), 3600.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    at_zero = model.std_uS(g_prog, dev, t_s=0.0).numpy()
    np.testing.assert_allclose(at_zero, np.abs(g_prog.numpy())
                               * _aihwkit_pcm_read_rel(g_prog.numpy(), 0.0), rtol=1e-6)
    assert abs(float(at_zero[0]) / 25.0 - 0.0368) < 5e-4  # 3.7 % at g_max, 20 s
    with pytest.raises(ValueError, match=r"read_noise\.t0_s=1e-07 is invalid"):
        Pcm1fReadNoise(t0_s=1e-7)


def test_adc_codes_do_not_depend_on_the_batch_size() -> None:
    """Issue 21, item 6: values exactly half-way between two ADC codes (inputs and weights on
    their grids) came out a hair above or below it depending on the tile product's summation
    order, which changes with the batch size: 5 of 52,224 LeNet-5 outputs were one ADC step
    apart between a batch of 256 and batches of 1."""
    from memxbar.experiments.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 28, 28)).eval()
    x = (torch.rand(256, 1, 28, 28) * 255).round() / 255
    chip = crossbar.to_crossbar(model, crossbar.DeviceModel(n_levels=16),
                                crossbar.CrossbarConfig(dac_bits=6, adc_bits=6), calibration=x)
    outs: dict[str, list[torch.Tensor]] = {}
    for name, module in chip.named_modules():
        if getattr(module, "is_crossbar", False):
            module.register_forward_hook(
                lambda m, i, o, name=name: outs.setdefault(name, []).append(o.detach().clone()))
    with torch.no_grad():
        chip(x)
        for i in range(256):
            chip(x[i:i + 1])
    for name, seen in outs.items():
        assert torch.equal(seen[0], torch.cat(seen[1:])), name
