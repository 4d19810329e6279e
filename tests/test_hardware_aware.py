"""Hardware-aware training (crossbar.hardware_aware): the training forward is the simulator's
forward (exactly for one chip, in distribution over chips), gradients flow straight through,
and it plugs into admm.compress as a perturbation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memxbar import crossbar
from memxbar.crossbar.hardware_aware import HardwareAware

DEV = crossbar.DeviceModel(n_levels=16, prog_sigma=0.1, read_sigma=0.02, sa0_rate=0.01,
                           sa1_rate=0.01)
CFG = crossbar.CrossbarConfig(tile_rows=16, tile_cols=8, dac_bits=6, adc_bits=6)


def _x(n: int = 64, d: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_training_forward_is_the_programmed_chip_exactly():
    torch.manual_seed(0)
    layer = nn.Linear(20, 12)
    x = _x()
    layer.train()
    torch.manual_seed(5)
    with HardwareAware(DEV, CFG)(layer):
        y = layer(x)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, ()))
    chip = crossbar.to_crossbar(layer, DEV, CFG, calibration=x, seed=seed)
    with torch.no_grad():
        assert torch.allclose(y, chip(x), atol=1e-5)
        assert not torch.allclose(y, layer(x), atol=1e-2)  # it is not the software layer
    layer.eval()
    with HardwareAware(DEV, CFG)(layer), torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # eval: untouched


def test_training_forward_matches_the_simulator_in_distribution():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 6))
    x = _x(32)
    model.train()
    hwa = HardwareAware(DEV, CFG)
    with torch.no_grad(), hwa(model):
        trained = torch.stack([model(x) for _ in range(120)])
    chip = crossbar.to_crossbar(model, DEV, CFG, calibration=x)
    sims = []
    with torch.no_grad():
        for seed in range(120):
            chip.program(1000 + seed)
            sims.append(chip(x))
    sims = torch.stack(sims)
    # per output element: the mean and spread over chips agree (120 chips each)
    spread = sims.std(0)
    assert float((trained.mean(0) - sims.mean(0)).abs().mean()) < 0.25 * float(spread.mean())
    ratio = float(trained.std(0).mean() / spread.mean())
    assert 0.85 < ratio < 1.15, ratio
    assert hwa.steps == 240  # a new chip per layer and step


def test_gradients_are_those_of_the_programmed_weights():
    torch.manual_seed(2)
    layer = nn.Linear(20, 12)
    x = _x().requires_grad_(True)
    layer.train()
    torch.manual_seed(7)
    with HardwareAware(DEV, CFG)(layer):
        layer(x).square().sum().backward()
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**62, ()))
    chip = crossbar.to_crossbar(layer, DEV, CFG, calibration=x.detach(), seed=seed)
    with torch.no_grad():
        y = chip(x)
    w_hw = chip.weight
    # d/dx of sum(y^2) through the straight-through forward: 2 y W_hw
    assert torch.allclose(x.grad, 2 * y @ w_hw, atol=1e-4)
    assert torch.allclose(layer.weight.grad, 2 * y.T @ x.detach(), atol=1e-3)
    assert torch.allclose(layer.bias.grad, 2 * y.sum(0), atol=1e-3)


def test_hardware_aware_retraining_inside_admm_compress():
    from memxbar.admm import CompressConfig, LayerConstraint, compress

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    x = _x(96)
    y = (x[:, :3].argmax(1))
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    hwa = HardwareAware(DEV, CFG)
    config = CompressConfig(constraints=[LayerConstraint(pattern="0", row_keep=10, levels=16)],
                            prune_epochs=1, prune_retrain_epochs=1, quant_epochs=1,
                            quant_retrain_epochs=1, progress=False)
    compress(model, loader, config, perturbation=hwa)
    assert hwa.steps > 0
    # only the retraining stages ran through the chip: 2 stages x 3 batches x 2 layers
    assert hwa.steps == len(config.perturb_stages) * 3 * 2
    assert all(not m._forward_hooks for m in model.modules())  # no hook left behind


def test_attention_projections_are_left_out_loudly_and_refused_by_name():
    """nn.MultiheadAttention reads its projection weights directly (no module call a hook
    could see): by default they train without the chip, with a warning; naming one is an
    error. The feed-forward layers of the same block do get the chip."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                                     batch_first=True), nn.Flatten(),
                          nn.Linear(4 * 16, 3)).train()
    x = torch.randn(5, 4, 16)
    hwa = HardwareAware(DEV, CFG)
    with pytest.warns(UserWarning, match=r"attention projections and recurrent matrices "
                                         r"\['0.self_attn.in_proj', '0.self_attn.out_proj'\]"), \
            hwa(model):
        model(x)
    assert hwa.steps == 3  # linear1, linear2 and the head ran through a chip
    with pytest.raises(ValueError, match="'0.self_attn.in_proj' is a projection of an "
                                         "nn.MultiheadAttention"):
        with HardwareAware(DEV, CFG, layers=["0.linear1", "0.self_attn.in_proj"])(model):
            pass


def test_converter_aware_step_is_the_simulators_quantized_forward():
    """With an ideal device the training forward is the simulator's DAC/ADC-quantized output
    (ranges calibrated on the batch, as ``crossbar.calibrate`` sets them at inference), not
    the float layer's; coarser converters move it further from the float layer."""
    ideal = crossbar.DeviceModel(n_levels=None)
    layer = nn.Linear(20, 12)
    layer.train()
    x = _x()
    errors = []
    for bits in (8, 4, 3):
        cfg = crossbar.CrossbarConfig(tile_rows=16, tile_cols=8, dac_bits=bits, adc_bits=bits)
        with HardwareAware(ideal, cfg)(layer):
            y = layer(x)
        chip = crossbar.to_crossbar(layer, ideal, cfg, calibration=x, seed=0)
        with torch.no_grad():
            assert torch.allclose(y, chip(x), atol=1e-5), bits
            errors.append(float((y - F.linear(x, layer.weight, layer.bias)).abs().mean()))
    assert 0 < errors[0] < errors[1] < errors[2]
    y.sum().backward()  # straight through: the float layer's gradient
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_converters_only_mode_trains_on_the_grid_and_converters(tmp_path, caplog):
    """``robustness.hardware_aware_effects=converters``: the retraining forward is the
    simulator on the device's ideal version (its conductance grid, no variation, noise or
    faults) with the DAC/ADC; the setting is part of the compressed model's fingerprint."""
    from test_experiments import TINY, _compose

    from memxbar.experiments.config import load_compress_config
    from memxbar.experiments.guard import fingerprint
    from memxbar.experiments.pipeline import run_compress
    cfg = [*TINY, "robustness.ablation=false", "robustness.hardware_aware_effects=converters",
           "device.programming.sigma=0.3"]
    with caplog.at_level("INFO"):
        run_compress(_compose(cfg), tmp_path)
    line = next(r.message for r in caplog.records if "hardware-aware retraining" in r.message)
    assert "(converters and conductance grid)" in line and "sigma=0.3" not in line
    fp = fingerprint(load_compress_config(_compose(cfg)))
    assert fp["robustness"]["hardware_aware_effects"] == "converters"
    with pytest.raises(ValueError, match="robustness.hardware_aware_effects='noise'.*chip, "
                                         "converters"):
        load_compress_config(_compose([*TINY, "robustness.hardware_aware_effects=noise"]))
