"""Retraining-aware greedy allocation (``allocation.method: greedy``, NetAdapt-style; issue 19):
each iteration meets its resource target, links between fed layers hold, the search is
deterministic, and the pipeline runs on it end to end."""

import math
import zlib

import pytest
import torch
from test_experiments import TINY, _compose

from memxbar.experiments.allocation import (
    AllocationSettings,
    feeding_links,
    layer_candidates,
    milp_budget,
)
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.data import load_data
from memxbar.experiments.greedy import GreedyTrajectory
from memxbar.experiments.models import build_model
from memxbar.experiments.pipeline import run_compress


def _trajectory(seed=0, steps=5, beam=1):
    exp = load_compress_config(_compose([*TINY, "admm=budget", "allocation={budget: 8}"]))
    train, _, info = load_data(exp.dataset, exp.seed)
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=info.input_shape)
    a = AllocationSettings(budget=8.0, method="greedy", n_samples=64, finetune_steps=steps)
    example = train.dataset[0][0][None]
    costs = layer_candidates(model, a, exp.admm.layer_constraints(), exp.crossbar, exp.cost,
                             example, errors=False)
    links = feeding_links(model, example)
    traj = GreedyTrajectory(model, train, costs, links, seed=seed, n_samples=64, steps=steps,
                            step=0.6, lr=1e-3, batch=32, beam=beam)
    return model, a, costs, links, traj


def test_each_iteration_meets_its_target_and_keeps_the_links():
    model, a, costs, links, traj = _trajectory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget = milp_budget(costs, a, 8.0)
    choice = traj.choice(budget)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored
    picked = {n: costs[n][k] for n, k in choice.items()}
    assert sum(c.cost for c in picked.values()) <= budget
    cost_path = [s.cost for s in traj.states]  # every iteration cuts:
    assert all(b < a_ for a_, b in zip(cost_path, cost_path[1:], strict=False))
    assert cost_path[-1] <= budget < cost_path[-2]  # it lands on the budget
    assert not traj.branches  # its last iteration aimed at the budget: nothing re-run
    for state in traj.states:
        for name, (prev, per_output) in traj.links.items():
            rows, prev_cols = state.kept[name][0], state.kept[prev][1]
            assert prev_cols <= rows <= per_output * prev_cols, (name, state.kept)
    assert picked["classifier.4"].kept[1] == 10  # the final layer keeps its outputs


def test_the_search_is_deterministic_and_extends_on_demand():
    *_, first = _trajectory()
    *_, second = _trajectory()
    budget = first.states[0].cost / 4
    assert first.choice(budget) == second.choice(budget)
    n = len(first.states)
    first.choice(budget / 2)  # a tighter point of the accuracy-budget search: more iterations
    assert len(first.states) > n and first.choice(budget) == second.choice(budget)
    looser = budget * 0.9  # asked after tighter ones: a branch lands just within it
    picked = first.choice(looser)
    cost = sum(first.candidates[n][k].cost for n, k in picked.items())
    undershot = next(s.cost for s in first.states if s.cost <= looser)
    assert undershot <= cost <= looser


def _hashed_losses(traj):
    """Replace the fine-tuning by a fixed, seeded loss per allocation (a rugged landscape, so
    that the best first step need not lead to the best state): returns the loss function."""
    applied = {}

    def loss_of(kept):
        g = torch.Generator().manual_seed(zlib.crc32(repr(sorted(kept.items())).encode()))
        return float(torch.rand(1, generator=g)) + 1.0 / (1 + traj._cost(kept))

    apply = traj._apply

    def _apply(kept):
        applied["kept"] = dict(kept)
        return apply(kept)

    traj._apply = _apply
    traj._finetune = lambda masks, iteration: loss_of(applied["kept"])
    return loss_of


def test_the_beam_carries_the_least_loss_distinct_allocations_of_every_parent():
    """Against a brute-force oracle: each iteration's beam is the ``beam`` allocations of least
    loss among every proposal of every state carried from the iteration before."""
    *_, a, costs, _, traj = _trajectory(beam=3)
    loss_of = _hashed_losses(traj)
    budget = milp_budget(costs, a, 8.0)
    traj.choice(budget)
    assert len(traj.beams) > 3
    for before, beam in zip(traj.beams, traj.beams[1:], strict=False):
        cost = max(s.cost for s in before)
        needed = max(1, math.ceil(math.log(budget / cost) / math.log(traj.step) - 1e-9))
        target = budget if cost <= budget or needed == 1 else \
            cost * (budget / cost) ** (1 / needed)
        pool = {tuple(sorted(k.items())): loss_of(k)
                for s in before for k in traj._proposals(s.kept, target)}
        expected = sorted(pool.items(), key=lambda kv: kv[1])[:3]
        assert [tuple(sorted(s.kept.items())) for s in beam] == [k for k, _ in expected]
        assert [s.loss for s in beam] == [v for _, v in expected]
    assert traj.states == [b[0] for b in traj.beams]


def test_a_wider_beam_reaches_a_state_of_less_loss_on_a_rugged_landscape():
    """One carried proposal (NetAdapt's greedy) follows the best first step; a beam of 3 keeps
    the runners-up, and on this landscape one of them leads to a state of less loss."""
    finals = {}
    for beam in (1, 3):
        *_, a, costs, _, traj = _trajectory(beam=beam)
        _hashed_losses(traj)
        choice = traj.choice(milp_budget(costs, a, 8.0))
        finals[beam] = traj.chosen_loss
        assert all(len(b) <= beam for b in traj.beams)
        assert sum(costs[n][k].cost for n, k in choice.items()) <= milp_budget(costs, a, 8.0)
    assert finals[3] < finals[1] - 0.05, finals


@pytest.mark.parametrize("key, value, words", [
    ("method", "annealing", "method='annealing' is invalid; allowed: one of auto, milp, greedy"),
    ("greedy_step", 1.0, "greedy_step=1.0 is invalid"),
    ("finetune_steps", 0, "finetune_steps=0 is invalid"),
    ("greedy_beam", 0, "greedy_beam=0 is invalid; allowed: an integer in [1, 16]"),
    ("greedy_beam", 17, "greedy_beam=17 is invalid"),
    ("greedy_beam", True, "greedy_beam=True is invalid"),
    ("candidates", [{"row_ratio": 0.5}], "method='greedy' is invalid with candidates"),
])
def test_bad_greedy_settings_are_refused(key, value, words):
    base = {"budget": 4.0, "method": "greedy"}
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        AllocationSettings(**{**base, key: value})


def test_the_pipeline_runs_on_a_greedy_allocation(tmp_path):
    metrics = run_compress(_compose([*TINY, "admm=budget", "robustness.ablation=false",
                                     "allocation={budget: 3, method: greedy, n_samples: 64, "
                                     "finetune_steps: 5}"]), tmp_path)
    alloc = metrics["allocation"]
    assert alloc["method"] == "greedy" and alloc["total_cost"] <= alloc["budget"]
    assert metrics["compression_ratio"] >= 3
    report = (tmp_path / "report.md").read_text()
    assert "## Budgeted allocation" in report and "MILP" not in report.split("## Budget")[1]
    assert "retraining-aware greedy search" in report and "| step | cost | held-out loss" in report
    assert "| 0 | " + f"{alloc['path'][0]['cost']:.6g} | dense |" in report
    assert alloc["greedy"] == {"beam": 3, "finetune_steps": 5, "greedy_step": 0.75,
                               "n_samples": 64}
    path = alloc["path"]  # from the dense model to the chosen split, every step a cut
    assert path[-1]["cost"] == alloc["total_cost"] and math.isnan(path[0]["loss"])
    assert all(b["cost"] < a_["cost"] for a_, b in zip(path, path[1:], strict=False))
    assert path[-1]["loss"] == alloc["total_error"]
    for name, r in alloc["layers"].items():  # the path ends on the chosen rows x columns
        rows, cols = path[-1]["kept"][name]
        assert r["setting"].get("row_keep", rows) == rows
        assert r["setting"].get("col_keep", cols) == cols
