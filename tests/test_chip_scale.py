"""Chips by the thousand (issue 24): stratified per-chip test sets, worker processes, common
random numbers.

The stratified estimator is checked against brute force (every sample enumerated), against
each chip's exact accuracy (its mean difference within a few standard errors over many chips),
and its limits (all images risky: the full evaluation, bit for bit). Worker processes must give
the records of one process, bit for bit.
"""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memxbar.crossbar import CrossbarConfig, DeviceModel, RepairConfig
from memxbar.crossbar.plan import plan_model
from memxbar.experiments.chip_test import (
    Strata,
    chip_indices,
    estimate,
    make_strata,
    standard_error,
)
from memxbar.experiments.chips import ChipDesign, evaluate_chips


@pytest.fixture(scope="module")
def trained():
    """A 64-32-10 MLP trained on scikit-learn's digits (about 95 % on 397 test images)."""
    x, y = load_digits(return_X_y=True)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x = torch.tensor(x, dtype=torch.float32)[perm] / 16
    y = torch.tensor(y)[perm]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:1400]), y[:1400]).backward()
        opt.step()
    model.eval()
    test = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=128)
    return model, x[:256], test


def _design(prog_sigma: float = 0.25) -> ChipDesign:
    device = DeviceModel.preset("rram_neurram").with_(
        programming={"model": "lognormal", "sigma": prog_sigma})
    return ChipDesign(device, CrossbarConfig(tile_rows=32, tile_cols=32, adc_bits=6),
                      RepairConfig(compensation=False))


def _chips(trained, chips, design=None, **kw):
    model, calib, test = trained
    design = design or _design()
    plan = plan_model(model, design.crossbar)
    return evaluate_chips(model, plan, design, calibration=calib, test=test, chips=chips,
                          seed=3, **kw)


def test_estimator_is_unbiased_over_every_possible_sample():
    """Brute force: over all C(|S|, m) samples of the safe stratum, the mean of the estimate
    is the accuracy on all the images; its variance is the standard error's formula."""
    correct = torch.tensor([1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    risky, safe = torch.arange(4), torch.arange(4, 12)
    for m in (1, 3, 5):
        strata = Strata(risky, safe, m, 12)
        values = [estimate(strata, int(correct[risky].sum()), int(correct[list(pick)].sum()))
                  for pick in itertools.combinations(safe.tolist(), m)]
        assert statistics.fmean(values) == pytest.approx(100 * correct.float().mean().item())
        # the variance formula with the true error rate of S (the finite population one)
        q = 1 - correct[safe].float().mean().item()
        var = statistics.pvariance(values)
        errors, draws = round(q * 1e6), 10**6  # a pooled rate equal to q
        assert math.sqrt(var) == pytest.approx(standard_error(strata, errors, draws), rel=1e-3)


def test_strata_hold_the_least_certain_images_and_every_chip_keeps_its_sample(trained):
    model, _, test = trained
    strata = make_strata(model, test, 0.1, 0.25)
    n = len(test.dataset)
    assert len(strata.risky) == math.ceil(0.1 * n) and strata.total == n
    assert set(strata.risky.tolist()).isdisjoint(strata.safe.tolist())
    assert len(strata.risky) + len(strata.safe) == n
    wrong = (model(test.dataset.tensors[0]).argmax(1) != test.dataset.tensors[1]).nonzero()
    assert set(wrong.flatten().tolist()) <= set(strata.risky.tolist())  # errors are risky
    a, b = chip_indices(strata, 7), chip_indices(strata, 7)
    assert torch.equal(a, b) and not torch.equal(a, chip_indices(strata, 8))
    assert len(a) == strata.images_per_chip and len(set(a.tolist())) == len(a)
    with pytest.raises(ValueError, match=r"eval.safe_fraction=0 is invalid.*\(0, 1\]"):
        make_strata(model, test, 0.1, 0)


def test_all_images_risky_is_the_full_evaluation_bit_for_bit(trained):
    full = _chips(trained, 3)
    every = _chips(trained, 3, sampling=(1.0, 1.0))
    assert every.accuracies == full.accuracies
    assert every.sampling["standard_error"] == 0.0


def test_stratified_estimates_center_on_the_exact_accuracies(trained):
    """40 chips: each chip's estimate minus its accuracy on all images averages to zero
    within 4 standard errors of that mean; chips near the spec are measured exactly."""
    full = _chips(trained, 40)
    sampled = _chips(trained, 40, sampling=(0.1, 0.2))
    diff = [s - f for s, f in zip(sampled.accuracies, full.accuracies, strict=True)]
    sd = statistics.stdev(diff)
    assert abs(statistics.fmean(diff)) <= 4 * sd / math.sqrt(len(diff)) + 1e-9
    assert sampled[0].test_images == sampled.sampling["images_per_chip"] < len(
        trained[2].dataset)
    floor = statistics.median(full.accuracies)
    near = _chips(trained, 40, sampling=(0.1, 0.2), spec_floor=floor)
    exact = [r for r in near if r.exact_accuracy is not None]
    assert exact and near.sampling["exact_chips"] == len(exact)
    for r in exact:  # the chip again, on every image: its full-test accuracy
        assert r.exact_accuracy == full[r.chip].accuracy
    assert near.accuracies == sampled.accuracies  # the mean stays the unbiased estimate


def test_worker_processes_give_the_records_of_one_process(trained):
    one = _chips(trained, 5, sampling=(0.2, 0.3))
    two = _chips(trained, 5, sampling=(0.2, 0.3), workers=2)
    assert [r.accuracy for r in one] == [r.accuracy for r in two]
    assert [r.programming for r in one] == [r.programming for r in two]
    assert [r.seed for r in two] == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="workers=0 is invalid"):
        _chips(trained, 2, workers=0)


def test_common_random_numbers_the_same_chip_at_every_design_point(trained):
    """A chip seed draws the same standard normals at every programming sigma: the log
    deviation of each cell scales with sigma exactly, so two design points differ by the
    setting, not by which chips were drawn."""
    from memxbar.crossbar import to_crossbar
    from memxbar.crossbar.convert import crossbar_modules

    model, calib, _ = trained
    logs = []
    for sigma in (0.1, 0.2):
        d = _design(sigma)
        x = to_crossbar(model, d.device, d.crossbar, calibration=calib, seed=11,
                        repair=d.repair)
        m = dict(crossbar_modules(x))["0"]
        live = m.g_nominal_uS > 0
        logs.append(torch.log(m.g_uS[live] / m.g_nominal_uS[live]))
    assert torch.allclose(logs[1], 2 * logs[0], rtol=1e-4, atol=1e-5)
