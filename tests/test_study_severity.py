"""The per-layer sensitivity's harsher device (issue 25): what it scales, and the search that
stops at the mildest factor whose every-layer drop reaches study.sensitivity_drop."""

from __future__ import annotations

import pytest

from memxbar.crossbar import DeviceModel
from memxbar.experiments.study import SEVERITIES, harsher


def test_harsher_scales_spread_noise_and_faults_not_drift():
    base = DeviceModel.from_dict({
        "g_min_uS": 1.0, "g_max_uS": 100.0, "n_levels": 16,
        "programming": {"model": "lognormal", "sigma": 0.1},
        "read_noise": {"model": "relative", "sigma": 0.02},
        "faults": {"model": "stuck_at", "sa0_rate": 0.0025, "sa1_rate": 0.001},
        "drift": {"model": "rram_cmo", "scale": 1.0}})
    d = harsher(base, 4.0).to_dict()
    assert d["programming"]["sigma"] == pytest.approx(0.4)
    assert d["read_noise"]["sigma"] == pytest.approx(0.08)
    assert d["faults"]["sa0_rate"] == pytest.approx(0.01)
    assert d["faults"]["sa1_rate"] == pytest.approx(0.004)
    assert d["drift"] == base.to_dict()["drift"]  # a function of time: swept as t_inference_s
    capped = harsher(base, 32.0).to_dict()  # what the device model accepts
    assert capped["programming"]["sigma"] == 1.0 and capped["faults"]["sa0_rate"] == 0.08
    poly = harsher(DeviceModel.preset("pcm_aihwkit"), 2.0).to_dict()
    assert poly["programming"]["scale"] == 2.0 and poly["read_noise"]["scale"] == 2.0
    assert harsher(base, 1.0) == base
    assert list(SEVERITIES) == sorted(SEVERITIES) and SEVERITIES[0] == 1.0
