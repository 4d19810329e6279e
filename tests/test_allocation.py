"""Budgeted allocation (multiple-choice knapsack, MILP with cvxpy/HiGHS) against brute force."""

import itertools
import random

import pytest

from memxbar.admm.allocation import Candidate, Link, allocate, min_cost


def _instance(rng, n_layers, n_options):
    return {f"layer{l}": [Candidate(error=rng.uniform(0, 10), cost=rng.randint(1, 20),
                                    setting={"row_ratio": k / n_options, "levels": 2 + k})
                          for k in range(n_options)] for l in range(n_layers)}


def _brute_force(candidates, budget):
    best = None
    for combo in itertools.product(*candidates.values()):
        cost = sum(c.cost for c in combo)
        err = sum(c.error for c in combo)
        if cost <= budget and (best is None or err < best):
            best = err
    return best


@pytest.mark.parametrize("seed", range(25))
def test_allocation_matches_brute_force(seed):
    rng = random.Random(seed)
    cands = _instance(rng, rng.randint(1, 4), rng.randint(1, 4))
    lo, hi = min_cost(cands), sum(max(c.cost for c in o) for o in cands.values())
    budget = rng.uniform(lo, hi)
    result = allocate(cands, budget, resource="tiles")
    assert result.total_cost <= budget + 1e-9
    assert result.total_error == pytest.approx(_brute_force(cands, budget), abs=1e-9)
    for name, k in result.choice.items():
        assert result.chosen[name] is cands[name][k]


@pytest.mark.parametrize("seed", range(20))
def test_linked_allocation_matches_brute_force(seed):
    """With :class:`Link` constraints between consecutive layers (kept rows of the next at
    most s x the kept outputs of the previous, and outputs at most rows), the MILP's optimum is
    the brute-force optimum over the choices that meet every link."""
    rng = random.Random(100 + seed)
    n_layers, n_options = rng.randint(2, 4), rng.randint(2, 4)
    cands = {f"layer{l}": [Candidate(error=rng.uniform(0, 10), cost=rng.randint(1, 20),
                                     kept=(rng.randint(1, 8), rng.randint(1, 8)))
                           for _ in range(n_options)] for l in range(n_layers)}
    names = list(cands)
    links = []
    for prev, name in zip(names, names[1:], strict=False):
        s = rng.choice([1, 2])
        rows = [float(c.kept[0]) for c in cands[name]]
        outs = [float(c.kept[1]) for c in cands[prev]]
        links += [Link(name, rows, prev, [s * o for o in outs]), Link(prev, outs, name, rows)]

    def ok(combo):
        pick = dict(zip(names, combo, strict=True))
        return all(sum(lk.below_coef[k] for k in [pick[lk.below]]) <=
                   sum(lk.above_coef[k] for k in [pick[lk.above]]) + 1e-9 for lk in links)

    budget = rng.uniform(min_cost(cands), sum(max(c.cost for c in o) for o in cands.values()))
    best = None
    for combo in itertools.product(*(range(n_options) for _ in names)):
        chosen = [cands[n][k] for n, k in zip(names, combo, strict=True)]
        if ok(combo) and sum(c.cost for c in chosen) <= budget:
            err = sum(c.error for c in chosen)
            best = err if best is None or err < best else best
    if best is None:
        with pytest.raises(ValueError, match="infeasible with the links"):
            allocate(cands, budget, links=links)
        return
    result = allocate(cands, budget, links=links)
    assert result.total_error == pytest.approx(best, abs=1e-9)
    assert ok(tuple(result.choice[n] for n in names))


def test_infeasible_budget_names_minimum_cost():
    cands = {"a": [Candidate(1.0, 3.0), Candidate(2.0, 5.0)], "b": [Candidate(0.0, 4.0)]}
    with pytest.raises(ValueError, match=r"minimum achievable total tiles is 7"):
        allocate(cands, 6.5, resource="tiles")
    assert allocate(cands, 7.0).total_cost == 7.0        # exactly the minimum is feasible


def test_summary_and_markdown():
    cands = {"fc1": [Candidate(0.5, 4, {"row_ratio": 0.5}), Candidate(0.1, 8, {"row_ratio": 0})],
             "fc2": [Candidate(0.2, 1, {"levels": 2}), Candidate(0.0, 2, {"levels": 16})]}
    res = allocate(cands, 9, resource="tiles")
    assert res.choice == {"fc1": 1, "fc2": 0}
    summary = res.summary()
    assert summary["total_cost"] == 9 and summary["min_cost"] == 5
    assert summary["layers"]["fc1"]["setting"] == {"row_ratio": 0}
    table = res.to_markdown()
    assert "| fc1 | row_ratio=0 | 0.1 | 8 |" in table and "tiles" in table.splitlines()[0]


def test_invalid_inputs():
    with pytest.raises(ValueError, match="no candidate"):
        allocate({"a": []}, 1.0)
    with pytest.raises(ValueError, match="finite"):
        allocate({"a": [Candidate(float("nan"), 1.0)]}, 1.0)
    with pytest.raises(ValueError, match="no layers"):
        allocate({}, 1.0)
