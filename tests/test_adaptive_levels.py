"""Uncertainty-adaptive levels (issue 26, item 3): the Laplace precision and the log density
against closed forms, the level choice against a brute-force enumeration of every per-layer
assignment on a tiny model, the expected write-verify pulses against the geometric closed form,
the block's validation and ``compressor=adaptive_levels`` end to end on digits."""

import itertools
import math

import pytest
import torch
from test_experiments import METRIC_KEYS, TINY, _compose
from torch import nn

from memxbar.admm import pair_levels, project_levels
from memxbar.admm.adaptive_levels import (
    choose_levels,
    laplace_precision,
    level_front,
    level_score,
)
from memxbar.crossbar import DeviceModel
from memxbar.experiments.compressors.adaptive_levels import candidate_levels, expected_pulses
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.pipeline import run_compress


def test_laplace_precision_and_log_density_closed_form():
    fisher = torch.tensor([[0.0, 0.5], [2.0, 1.0]])
    prec = laplace_precision(fisher, n_data=10, prior_precision=0.5)
    assert torch.allclose(prec, torch.tensor([[0.5, 5.5], [20.5, 10.5]], dtype=torch.float64))
    W = torch.tensor([[0.9, -0.2], [0.4, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    logp, Q, scale = level_score(W, prec, 2, mask=mask)
    Qp, sp = project_levels(W, pair_levels(2), False, mask, prec)
    assert torch.equal(Q, Qp) and torch.equal(scale, sp)
    live = mask.flatten()
    err = ((Q - W).double() ** 2).flatten()[live]
    p = prec.flatten()[live]
    expected = float((-0.5 * p * err + 0.5 * torch.log(p / (2 * math.pi))).sum())
    assert logp == pytest.approx(expected)
    with pytest.raises(ValueError, match="prior_precision"):
        laplace_precision(fisher, 10, 0.0)


def test_log_density_grows_with_nested_grids():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(4, 7, generator=g) * 0.2
    prec = torch.rand(4, 7, generator=g, dtype=torch.float64) * 50 + 1
    scores = [level_score(W, prec, n)[0] for n in (2, 3, 5, 9)]   # nested pair-level grids
    assert all(a <= b + 1e-9 for a, b in zip(scores, scores[1:], strict=False))


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.1, 1.0, 10.0])
def test_choice_matches_brute_force_over_all_assignments(weight):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 2))
    counts = (2, 3, 5)
    scores, costs = {}, {}
    for name in ("0", "2", "3"):
        W = dict(model.named_modules())[name].weight.detach()
        prec = laplace_precision(torch.rand(W.shape), n_data=100, prior_precision=1.0)
        scores[name] = {n: level_score(W, prec, n)[0] for n in counts}
        costs[name] = {n: W.numel() * 2 * math.log2(n) for n in counts}
    choice = choose_levels(scores, costs, weight)

    def objective(assign):
        return sum(scores[k][n] - weight * costs[k][n] for k, n in assign.items())

    best = max(objective(dict(zip(scores, combo, strict=True)))
               for combo in itertools.product(counts, repeat=len(scores)))
    assert objective(choice) == pytest.approx(best)
    front = level_front(scores, costs, [0.0, weight])
    assert front[1]["levels"] == choice
    assert front[1]["cost"] <= front[0]["cost"] + 1e-9   # a cost penalty never costs more


def test_choice_ties_take_the_cheaper_then_fewer_levels():
    scores = {"a": {2: 1.0, 4: 1.0, 8: 1.0}}
    assert choose_levels(scores, {"a": {2: 5.0, 4: 3.0, 8: 3.0}}, 0.0) == {"a": 4}
    with pytest.raises(ValueError, match="weight"):
        choose_levels(scores, {"a": {2: 1.0, 4: 1.0, 8: 1.0}}, -1.0)


def test_expected_pulses_closed_form_and_candidates():
    ideal = DeviceModel.from_dict({"g_min_uS": 1.0, "g_max_uS": 101.0, "n_levels": 16})
    assert expected_pulses(4, ideal, 0.25) == 1.0
    assert candidate_levels(None, ideal) == [2, 4, 6, 16]
    assert candidate_levels([8, 3], ideal) == [3, 8]
    sigma, K = 0.02, 20
    dev = DeviceModel.from_dict({"g_min_uS": 1.0, "g_max_uS": 101.0, "n_levels": 16,
                                 "programming": {"model": "gaussian", "sigma": sigma},
                                 "write_verify": {"tolerance_uS": 1.0, "max_pulses": K}})
    for n in (2, 6, 16):
        tol = 0.25 * 100.0 / (n - 1)
        p = math.erf(tol / (math.sqrt(2) * sigma * 100.0))
        assert expected_pulses(n, dev, 0.25) == pytest.approx(
            1 + (1 - p) * (1 - (1 - p) ** (K - 1)) / p)
    assert expected_pulses(16, dev, 0.25) > expected_pulses(2, dev, 0.25)


@pytest.mark.parametrize("override, words", [
    ("adaptive_levels.cost_weight=-1", ["adaptive_levels.cost_weight=-1", "[0, 1e12]"]),
    ("adaptive_levels.candidates=[1,4]", ["candidates=[1, 4]", "integers >= 2"]),
    ("adaptive_levels.candidates=[8]", ["adaptive_levels.candidates[0]=8", "[2, 4, 6]"]),
    ("adaptive_levels.n_calib=0", ["adaptive_levels.n_calib=0", "[1, 1024]"]),
    ("adaptive_levels.tolerance_fraction=0.9", ["tolerance_fraction=0.9", "(0, 0.5]"]),
    ("adaptive_levels.front=[]", ["adaptive_levels.front=[]", "non-empty"]),
    ("+adaptive_levels.bogus=1", ["adaptive_levels.bogus=1", "cost_weight"]),
])
def test_adaptive_levels_validation(override, words):
    with pytest.raises(ValueError) as info:
        load_compress_config(_compose(["compressor=adaptive_levels", override]))
    for word in words:
        assert word in str(info.value)


ADAPTIVE = [*TINY, "train.epochs=6", "compressor=adaptive_levels", "robustness.ablation=false",
            "adaptive_levels.n_calib=128", "adaptive_levels.front=[0.0,1.0]"]


def test_adaptive_levels_end_to_end(tmp_path):
    metrics = run_compress(_compose(ADAPTIVE), tmp_path)
    assert METRIC_KEYS <= set(metrics) and metrics["compressor"] == "adaptive_levels"
    state = torch.load(tmp_path / "compressed.pt", weights_only=True)
    (rec,) = [h for h in state["history"] if h.get("event") == "adaptive_levels"]
    assert [p["weight"] for p in rec["front"]] == [0.0, 0.01, 1.0]   # front + configured
    assert all(n == 16 for n in rec["front"][0]["levels"].values())   # free levels: the most
    assert rec["levels"] == choose_levels(rec["scores"], rec["costs"], 0.01)
    assert 0 <= rec["saving_pct"] < 100
    pruned = torch.load(tmp_path / "admm_state.pt", weights_only=True)["masks"]
    for name, n in rec["levels"].items():
        assert torch.equal(state["levels"][name], pair_levels(n))
        mask = state["masks"][name]
        assert not (mask & ~pruned[name]).any()                  # the pruned stay pruned
        W = state["model"][f"{name}.weight"].reshape(mask.shape[0], -1)
        q = W / state["scales"][name]
        gap = (q.flatten()[:, None] - pair_levels(n)[None].float()).abs().min(1).values
        assert gap.max() < 1e-4, name
    report = (tmp_path / "report.md").read_text()
    assert "## Adaptive levels" in report and "less programming time" in report
