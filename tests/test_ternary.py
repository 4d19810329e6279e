"""Ternary weights with Weight Penalty Clipping (issue 26, item 1): the exact ternary projection
against brute force, the WPC threshold, penalty and gradient against closed forms, the
straight-through forward, the ``ternary`` block's validation and ``compressor=ternary`` end to
end on digits (masks meet the constraints, at most three values per scale group)."""

import itertools
import math

import pytest
import torch
from test_experiments import METRIC_KEYS, TINY, _compose
from torch import nn

from memxbar.admm import pair_levels, project_levels
from memxbar.admm.ternary import (
    TernaryForward,
    WeightPenaltyClipping,
    ternary_project,
    wpc_clip_,
    wpc_penalty,
    wpc_threshold,
)
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.pipeline import run_compress


def _brute_force_error(w: torch.Tensor) -> float:
    """min over t in {-1,0,1}^n and a >= 0 of ||w - a t||^2 (a in closed form per t)."""
    best = float((w * w).sum())
    for t in itertools.product((-1.0, 0.0, 1.0), repeat=len(w)):
        t = torch.tensor(t, dtype=torch.float64)
        if not t.any():
            continue
        a = max(float(w @ t) / float(t @ t), 0.0)
        best = min(best, float(((w - a * t) ** 2).sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_ternary_projection_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 6, generator=g, dtype=torch.float64) * torch.rand(3, 6, generator=g,
                                                                          dtype=torch.float64)
    Q, a = ternary_project(W, per_column=True)
    for r in range(3):
        assert float(((W[r] - Q[r]) ** 2).sum()) == pytest.approx(_brute_force_error(W[r]),
                                                                  abs=1e-12)
        assert set(Q[r].unique().tolist()) <= {-float(a[r]), 0.0, float(a[r])}
    flat = W[:, :4].reshape(1, -1)[:, :9].reshape(1, 9)   # one scale for 9 weights
    Qf, af = ternary_project(flat)
    assert af.dim() == 0
    assert float(((flat - Qf) ** 2).sum()) == pytest.approx(_brute_force_error(flat[0]),
                                                            abs=1e-12)
    # the general level projection of admm (pair levels of two device states) agrees
    Qp, _ = project_levels(W, pair_levels(2), per_column=True)
    assert float(((W - Q) ** 2).sum()) == pytest.approx(float(((W - Qp) ** 2).sum()), abs=1e-12)


def test_ternary_projection_closed_form_mask_and_zero_group():
    w = torch.tensor([[4.0, -3.0, 0.5, 0.2, 9.0]])
    # S_k^2/k over |w| sorted 9,4,3,0.5,0.2: 81, 84.5, 85.33, 68.06, 54.08 -> k*=3, a=16/3
    Q, a = ternary_project(w)
    assert float(a) == pytest.approx(16 / 3)
    assert torch.allclose(Q, torch.tensor([[16 / 3, -16 / 3, 0, 0, 16 / 3]]))
    mask = torch.tensor([[True, True, True, True, False]])   # the 9 is pruned: it stays 0
    Qm, am = ternary_project(w, mask=mask)
    assert Qm[0, 4] == 0 and float(am) == pytest.approx(3.5)
    Q0, a0 = ternary_project(torch.zeros(2, 3), per_column=True)
    assert torch.equal(Q0, torch.zeros(2, 3)) and torch.equal(a0, torch.ones(2))


def test_wpc_threshold_by_hand():
    W = torch.tensor([[0.0, 1.0, -2.0, 3.0], [0.5, -0.5, 0.0, 0.0]])
    tau = wpc_threshold(W, c=1.5, per_column=True)
    # row 0: live |w| = 1, 2, 3: mean 2, population std sqrt(2/3)
    assert float(tau[0, 0]) == pytest.approx(2 + 1.5 * math.sqrt(2 / 3))
    assert float(tau[1, 0]) == pytest.approx(0.5)                # std 0
    layer = wpc_threshold(W, c=1.0)                           # live |w| = 1,2,3,.5,.5
    mags = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.5])
    assert float(layer) == pytest.approx(float(mags.mean() + mags.std(unbiased=False)))
    assert torch.isinf(wpc_threshold(torch.zeros(1, 3), c=2.0)).all()


def test_wpc_penalty_value_gradient_and_clip():
    W = torch.tensor([[0.0, 1.0, -2.0, 3.0]], requires_grad=True)
    tau = torch.tensor([[1.5]])
    value = wpc_penalty(W, tau)
    assert float(value.detach()) == pytest.approx(0.5**2 + 1.5**2)   # relu(|w| - tau)^2
    value.backward()
    assert torch.allclose(W.grad, torch.tensor([[0.0, 0.0, -1.0, 3.0]]))  # 2 relu(.) sign(w)
    V = W.detach().clone()
    wpc_clip_(V, tau)
    assert torch.equal(V, torch.tensor([[0.0, 1.0, -1.5, 1.5]]))


def test_weight_penalty_clipping_over_layers():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 1.0, -2.0, 3.0], [0.5, -0.5, 4.0, 0.0]]))
    wpc = WeightPenaltyClipping({"l": lin}, weight=0.1, c=1.0, per_column={"l": True})
    assert float(wpc.penalty()) == 0.0                      # no tau before the first epoch
    taus = wpc.new_epoch()
    tau = wpc_threshold(lin.weight.detach(), 1.0, per_column=True)
    assert taus["l"] == pytest.approx(float(tau.mean()))
    expected = 0.1 * float(torch.relu(lin.weight.detach().abs() - tau).pow(2).sum())
    assert float(wpc.penalty().detach()) == pytest.approx(expected) and expected > 0
    wpc.clip()
    assert bool((lin.weight.detach().abs() <= tau + 1e-7).all())


def test_ternary_forward_is_straight_through_and_restores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(2, 1, 6, 6)
    modules = {"0": model[0], "2": model[2]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tern = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    tern.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in (tern[0], tern[2]):
            Q, _ = ternary_project(m.weight.reshape(m.weight.shape[0], -1))
            m.weight.copy_(Q.reshape(m.weight.shape))
    with TernaryForward(modules):
        out = model(x)
        out.sum().backward()
    tern(x).sum().backward()
    assert torch.allclose(out, tern(x), atol=1e-6)
    assert torch.allclose(model[2].weight.grad, tern[2].weight.grad, atol=1e-6)  # straight through
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.allclose(model(x), out)                 # plain forward again


@pytest.mark.parametrize("override, words", [
    ("ternary.penalty=l1", ["ternary.penalty='l1'", "wpc, off"]),
    ("ternary.weight=-1", ["ternary.weight=-1", "[0, 1e6]"]),
    ("ternary.tau_std=20", ["ternary.tau_std=20", "[0, 10]"]),
    ("ternary.wpc_epochs=-2", ["ternary.wpc_epochs=-2", "[0, 100000]"]),
    ("+ternary.bogus=1", ["ternary.bogus=1", "penalty"]),
])
def test_ternary_validation(override, words):
    with pytest.raises(ValueError) as info:
        load_compress_config(_compose(["compressor=ternary", override]))
    for word in words:
        assert word in str(info.value)


TERNARY = [*TINY, "train.epochs=6", "compressor=ternary", "robustness.ablation=false"]


@pytest.fixture(scope="module")
def ternary_runs(tmp_path_factory):
    out = {}
    for penalty in ("wpc", "off"):
        run_dir = tmp_path_factory.mktemp(penalty)
        out[penalty] = run_dir, run_compress(_compose([*TERNARY, f"ternary.penalty={penalty}"]),
                                             run_dir)
    return out


def test_ternary_end_to_end(ternary_runs):
    run_dir, metrics = ternary_runs["wpc"]
    assert METRIC_KEYS <= set(metrics) and metrics["compressor"] == "ternary"
    for name in ("compressed.pt", "report.md", "metrics.json", "plan.json"):
        assert (run_dir / name).is_file(), name
    state = torch.load(run_dir / "compressed.pt", weights_only=True)
    assert state["compressor"] == "ternary"
    stages = [h["stage"] for h in state["history"] if h["event"] == "eval"]
    assert stages[0] == "dense" and stages[-2:] == ["wpc", "ternary"]
    taus = [h["tau"] for h in state["history"] if h.get("event") == "epoch" and "tau" in h]
    assert len(taus) == 1 and set(taus[0]) == set(state["masks"])   # one WPC epoch (TINY)
    exp = load_compress_config(_compose(TERNARY))
    keep = {c["pattern"]: c for c in exp.admm.constraints}
    for name, mask in state["masks"].items():
        W = state["model"][f"{name}.weight"].reshape(mask.shape[0], -1)
        assert torch.all(W[~mask] == 0)
        assert torch.equal(state["levels"][name], pair_levels(2))
        values = set(W.unique().tolist())
        a = float(state["scales"][name])
        assert len(values) <= 3 and values <= {-a, 0.0, a}, name
        c = keep[name]
        rows, cols = mask.any(0).sum().item(), mask.any(1).sum().item()
        if c.get("row_ratio"):
            assert rows <= mask.shape[1] - int(c["row_ratio"] * mask.shape[1])
        if c.get("col_ratio"):
            assert cols <= mask.shape[0] - int(c["col_ratio"] * mask.shape[0])


def test_ternary_ablation_has_the_same_prune(ternary_runs):
    (wpc_dir, wpc), (off_dir, off) = ternary_runs["wpc"], ternary_runs["off"]
    a = torch.load(wpc_dir / "admm_state.pt", weights_only=True)["masks"]
    b = torch.load(off_dir / "admm_state.pt", weights_only=True)["masks"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert wpc["compression_ratio"] == off["compression_ratio"]   # the same prune, the same
    off_state = torch.load(off_dir / "compressed.pt", weights_only=True)
    assert not any("tau" in h for h in off_state["history"])
    assert "penalty: 'off'" in (off_dir / "config.yaml").read_text() \
        or "penalty: off" in (off_dir / "config.yaml").read_text()
