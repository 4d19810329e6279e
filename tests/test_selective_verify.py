"""Selective write-verify (issue 24): the verified cells end as with every cell verified, the
others as single-shot programming; the ranking against closed forms; fewer pulses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memxbar.crossbar import CrossbarConfig, DeviceModel, programming_stats, to_crossbar
from memxbar.crossbar.convert import crossbar_modules
from memxbar.crossbar.plan import plan_model
from memxbar.experiments.selective_verify import fisher_diagonal, programming_variance, verify_masks

WV = {"tolerance_uS": 0.5, "max_pulses": 12, "pulse_sigma": 1.0, "verify_reads": 4}


def _device(verify: bool = True) -> DeviceModel:
    dev = DeviceModel.preset("rram_neurram").with_(
        programming={"model": "lognormal", "sigma": 0.2})
    return dev.with_(write_verify=WV) if verify else dev


@pytest.fixture(scope="module")
def mlp():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 12, generator=g)
    y = (x @ torch.randn(12, 3, generator=g)).argmax(1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_selected_cells_verify_the_others_keep_their_first_pulse(mlp):
    model, x, _ = mlp
    xbar = CrossbarConfig(tile_rows=16, tile_cols=16)
    g = torch.Generator().manual_seed(0)
    masks = {"0": torch.rand(16, 12, generator=g) < 0.3, "2": torch.rand(3, 16, generator=g) < 0.3}
    every = dict(crossbar_modules(to_crossbar(model, _device(), xbar, seed=4)))
    single = dict(crossbar_modules(to_crossbar(model, _device(False), xbar, seed=4)))
    chip = to_crossbar(model, _device(), xbar, seed=4, verify=masks)
    some = dict(crossbar_modules(chip))
    for name, mask in masks.items():
        sel = mask.expand_as(some[name].g_uS)
        assert torch.equal(some[name].g_uS[sel], every[name].g_uS[sel])
        assert torch.equal(some[name].g_uS[~sel], single[name].g_uS[~sel])
        assert bool((some[name].pulses[~sel] <= 1).all())
    chip.program(9)  # a re-programmed chip keeps its selection
    again = to_crossbar(model, _device(), xbar, seed=9, verify=masks)
    assert torch.equal(dict(crossbar_modules(chip))["0"].g_uS,
                       dict(crossbar_modules(again))["0"].g_uS)
    full = programming_stats(to_crossbar(model, _device(), xbar, seed=4))["pulses"]
    assert programming_stats(chip)["pulses"] < full
    with pytest.raises(ValueError, match=r"verify key='1' is invalid; allowed: names"):
        to_crossbar(model, _device(), xbar, verify={"1": masks["0"]})
    with pytest.raises(ValueError, match=r"verify\['0'\] is invalid; allowed: a bool tensor"):
        to_crossbar(model, _device(), xbar, verify={"0": masks["0"].float()})


def test_fisher_diagonal_matches_the_softmax_closed_form():
    """For a linear softmax classifier, dL/dW = (softmax(Wx) - onehot(y)) x^T per image."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 5, generator=g), torch.randint(0, 4, (20,), generator=g)
    model = nn.Sequential(nn.Linear(5, 4, bias=False))
    fisher = fisher_diagonal(model, [(x[:7], y[:7]), (x[7:], y[7:])], ["0"])["0"]
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1) - nn.functional.one_hot(y, 4)
        brute = (p[:, :, None] * x[:, None, :]).square().mean(0)
    assert torch.allclose(fisher, brute, rtol=1e-5, atol=1e-8)


def test_masks_verify_the_largest_fisher_times_variance_among_live_weights(mlp):
    model, x, y = mlp
    xbar = CrossbarConfig(tile_rows=16, tile_cols=16)
    mask0 = torch.ones(16, 12, dtype=torch.bool)
    mask0[:, :3] = False  # three pruned inputs: never verified, never counted
    with torch.no_grad():
        model[0].weight[~mask0] = 0.0
    plan = plan_model(model, xbar, masks={"0": mask0})
    train = DataLoader(TensorDataset(x, y), batch_size=50)
    got = verify_masks(model, plan, _device(), xbar, train=train, fraction=0.25,
                       ranking="fisher", samples=64, seed=3)
    live = 16 * 9 + 3 * 16
    assert sum(int(m.sum()) for m in got.values()) == math.ceil(0.25 * live)
    assert not bool(got["0"][~mask0].any())
    # the brute force: the same score from its parts, the top quarter
    xmodel = to_crossbar(model, _device(False), xbar, seed=3, plan=plan)
    var = programming_variance(xmodel)
    from memxbar.experiments.data import labelled_subset

    fisher = fisher_diagonal(model, labelled_subset(train, 64, torch.device("cpu"), 3),
                             ["0", "2"])
    scores = torch.cat([(fisher["0"] * var["0"])[mask0], (fisher["2"] * var["2"]).flatten()])
    threshold = scores.sort(descending=True).values[math.ceil(0.25 * live) - 1]
    chosen = torch.cat([got["0"][mask0], got["2"].flatten()])
    assert bool((scores[chosen] >= threshold).all()) and bool((scores[~chosen] <= threshold).all())
    rand = verify_masks(model, plan, _device(), xbar, train=train, fraction=0.25,
                        ranking="random", samples=64, seed=3)
    assert sum(int(m.sum()) for m in rand.values()) == math.ceil(0.25 * live)
    assert not torch.equal(torch.cat([m.flatten() for m in rand.values()]),
                           torch.cat([m.flatten() for m in got.values()]))
    none = verify_masks(model, plan, _device(), xbar, train=train, fraction=0.0,
                        ranking="fisher", samples=8, seed=3)
    assert not any(bool(m.any()) for m in none.values())
    with pytest.raises(ValueError, match="verify_ranking='hessian' is invalid"):
        verify_masks(model, plan, _device(), xbar, train=train, fraction=0.5,
                     ranking="hessian", samples=8, seed=3)


def test_programming_variance_is_the_cells_spread_in_weight_units(mlp):
    """Differential pair, lognormal sigma: v = (sigma G+)^2 + (sigma G-)^2 over norm^2."""
    model, _, _ = mlp
    dev = _device(False)
    xbar = CrossbarConfig(tile_rows=16, tile_cols=16)
    m = dict(crossbar_modules(to_crossbar(model, dev, xbar, seed=0)))["2"]
    g = m.g_nominal_uS[0]  # [cells, out, in]
    spread = dev.programming.spread_uS(g, dev)
    expect = (spread.square().sum(0) * m.slice_factors[0].square()) / m.style.norm_uS(dev) ** 2
    got = programming_variance(to_crossbar(model, dev, xbar, seed=0))["2"]
    assert torch.allclose(got, expect * m.cell_mask, rtol=1e-5)
    assert bool((got > 0).any())
