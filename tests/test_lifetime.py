"""Lifetime policies on a tiny model (issue 24): each policy's logic against the same chip
made by hand, the time to failure, the re-programming count and cost, the settings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memxbar.crossbar import (
    CrossbarConfig,
    DeviceModel,
    RepairConfig,
    calibrate_outputs,
    to_crossbar,
)
from memxbar.crossbar.plan import plan_model
from memxbar.experiments.chips import ChipDesign, ChipJob
from memxbar.experiments.lifetime import (
    _quantile_time,
    lifetime_summary,
    reprogram_seed,
    run_lifetime,
)
from memxbar.experiments.settings import LifetimeSettings, StudySettings
from memxbar.experiments.train import evaluate

TIMES = (1.0, 100.0, 1e4, 1e6)


@pytest.fixture(scope="module")
def job():
    """A 16-24-4 MLP fitted to a random teacher, on PCM (programming spread, drift),
    with output calibration: every policy has something to do."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    teacher = torch.randn(16, 4, generator=g)
    y = (x @ teacher).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:400]), y[:400]).backward()
        opt.step()
    model.eval()
    xbar = CrossbarConfig(tile_rows=32, tile_cols=32, adc_bits=8, output_calibration=True)
    # no read noise: each policy's chip is compared with the same chip made by hand, and read
    # noise streams continue across tests (a chip tested at four times draws more noise)
    design = ChipDesign(DeviceModel.preset("pcm_aihwkit").with_(read_noise=None), xbar,
                        RepairConfig())
    test = DataLoader(TensorDataset(x[400:], y[400:]), batch_size=100)
    return ChipJob(model, plan_model(model, xbar), design, x[:64], test, None, x[64:192],
                   seed=5, strata=None)


def _by_hand(job, seed, t, recalibrated_at=None, compensate=True):
    """The chip of ``seed`` made directly: programmed, outputs calibrated at t = 0 (and again
    at ``recalibrated_at``), tested at ``t``."""
    d = job.design
    xbar = d.crossbar.with_(drift_compensation=compensate)
    x = to_crossbar(job.model, d.device, xbar, calibration=job.calibration, seed=seed,
                    plan=job.plan, repair=d.repair)
    calibrate_outputs(x, job.model, job.outputs)
    if recalibrated_at is not None:
        x.set_inference_time(recalibrated_at)
        calibrate_outputs(x, job.model, job.outputs)
    x.set_inference_time(t)
    return evaluate(x, job.test)


def test_policies_do_what_they_say(job):
    out = run_lifetime(job, policies=["none", "drift_compensation", "recalibrate",
                                      "reprogram"], times=TIMES, floor=0.0, every_s=5e3,
                       chips=2)
    for chip in (0, 1):
        seed = 5 + chip
        none = out["none"][chip]["accuracies"]
        comp = out["drift_compensation"][chip]["accuracies"]
        recal = out["recalibrate"][chip]["accuracies"]
        assert none[-1] == _by_hand(job, seed, 1e6, compensate=False)
        assert comp[-1] == _by_hand(job, seed, 1e6)
        # before the first period the recalibrate policy is the compensated chip; after, the
        # fit of the last multiple of the period (1e4 -> 1e4, 1e6 -> 1e6)
        assert recal[:2] == comp[:2]
        assert recal[2] == _by_hand(job, seed, 1e4, recalibrated_at=1e4)
        assert recal[3] == _by_hand(job, seed, 1e6, recalibrated_at=1e6)
        # a floor of 0 never re-programs: the compensated chip
        assert out["reprogram"][chip]["accuracies"] == comp
        assert out["reprogram"][chip]["reprograms"] == 0
    assert none != comp  # drift compensation changes the drifted chip


def test_reprogramming_happens_below_the_floor_and_is_priced(job):
    out = run_lifetime(job, policies=["reprogram", "drift_compensation"], times=TIMES,
                       floor=100.1, every_s=5e3, chips=2)  # every test finds a failure
    for row, comp in zip(out["reprogram"], out["drift_compensation"], strict=True):
        assert row["reprograms"] == len(TIMES) and row["time_to_failure_s"] == TIMES[0]
        assert row["reprogram_pulses"] == len(TIMES) * row["programming_pulses"] > 0
        assert row["reprogram_energy_uJ"] > 0
        assert row["accuracies"][0] == comp["accuracies"][0]  # the same first chip
        # after a re-programming at 1 s the chip tested at 100 s is 99 s old, new draws
        seed = row["seed"]
        d = job.design
        x = to_crossbar(job.model, d.device, d.crossbar.with_(drift_compensation=True),
                        calibration=job.calibration, seed=reprogram_seed(seed, 1),
                        plan=job.plan, repair=d.repair)
        calibrate_outputs(x, job.model, job.outputs)
        x.set_inference_time(99.0)
        assert row["accuracies"][1] == evaluate(x, job.test)
    assert reprogram_seed(5, 1) != reprogram_seed(5, 2) != reprogram_seed(6, 1)


def test_time_to_failure_and_summary(job):
    out = run_lifetime(job, policies=["none"], times=TIMES, floor=None, every_s=5e3, chips=3)
    accs = [r["accuracies"] for r in out["none"]]
    floor = sorted(a[-1] for a in accs)[1] + 1e-9  # between chips at the last time
    out = run_lifetime(job, policies=["none"], times=TIMES, floor=floor, every_s=5e3, chips=3)
    for row in out["none"]:
        first = next((t for t, a in zip(TIMES, row["accuracies"], strict=True) if a < floor),
                     None)
        assert row["time_to_failure_s"] == first
    s = lifetime_summary(out, times=TIMES, floor=floor, dense_accuracy=floor + 1.0,
                         spec={"max_drop": 1.0, "min_accuracy": None}, every_s=5e3,
                         service_life_s=1e6, calibration_images=128,
                         energy_per_inference_nJ=2.0)
    end = s["policies"]["none"]["series"][-1]
    passed = sum(r["accuracies"][-1] >= floor for r in out["none"])
    assert end["yield_pct"] == pytest.approx(100 * passed / 3)
    assert s["policies"]["none"]["maintenance_per_chip"]["recalibrations"] == 0
    assert _quantile_time([None, 10.0, 100.0, None], 0.5) == 100.0
    assert _quantile_time([None, 10.0, 100.0, None], 0.05) == 10.0
    assert _quantile_time([None, None], 0.5) is None
    recal = lifetime_summary({"recalibrate": out["none"]}, times=TIMES, floor=floor,
                             dense_accuracy=floor + 1.0, spec={"max_drop": 1.0,
                                                               "min_accuracy": None},
                             every_s=5e3, service_life_s=1e6, calibration_images=128,
                             energy_per_inference_nJ=2.0)
    cost = recal["policies"]["recalibrate"]["maintenance_per_chip"]
    assert cost["recalibrations"] == math.floor(1e6 / 5e3) == 200
    assert cost["recalibration_images"] == 200 * 128
    assert cost["recalibration_energy_nJ"] == pytest.approx(200 * 128 * 2.0)


@pytest.mark.parametrize("data, match", [
    ({"times_s": [10, 1]}, r"times_s=\[10, 1\] is invalid; allowed: times in ascending"),
    ({"times_s": [1, 1e9]}, r"times_s=.* in \(0, service_life_s"),
    ({"times_s": []}, "times_s=.*non-empty"),
    ({"policies": ["sometimes"]}, r"policies=\['sometimes'\] is invalid.*none, "
                                  "drift_compensation, recalibrate, reprogram"),
    ({"policies": ["none", "none"]}, "distinct"),
    ({"recalibrate_every_s": 0}, r"recalibrate_every_s=0 is invalid"),
    ({"service_life_s": -1}, r"service_life_s=-1 is invalid"),
    ({"every": 1}, r"lifetime.every=1 is invalid; allowed: a key of lifetime"),
])
def test_lifetime_settings_refuse_bad_input(data, match):
    with pytest.raises(ValueError, match=match):
        StudySettings(sweeps=None, lifetime=data)


def test_lifetime_defaults_and_reprogram_needs_a_spec(job):
    s = LifetimeSettings()
    assert s.times_s[0] == 1.0 and s.times_s[-1] == s.service_life_s == 365 * 86400.0
    assert StudySettings(sweeps=None, lifetime={}).sweeps == {}
    with pytest.raises(ValueError, match="sweeps=None.*null or empty only with study.lifetime"):
        StudySettings(sweeps=None)
    assert StudySettings(sweeps=None, layer_sensitivity=True).sweeps == {}
    with pytest.raises(ValueError, match="'reprogram'.*spec_max_drop.*both null"):
        run_lifetime(job, policies=["reprogram"], times=TIMES, floor=None, every_s=1.0,
                     chips=1)
