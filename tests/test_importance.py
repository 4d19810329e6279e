"""Rate-distortion importance: diagonal Fisher against a per-sample loop, Hutchinson on a known
Hessian, and importance-weighted pruning and level fitting."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memxbar.admm import ADMM, LayerConstraint, pair_levels, project_levels, weight_matrix
from memxbar.admm.importance import (
    calibration_batches,
    compute_importance,
    fisher_diagonal,
    hessian_diagonal,
    importance_projectors,
    weighted_project_levels,
    weighted_prune_mask,
    weighted_scale,
)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))


def test_fisher_equals_per_sample_squared_gradients():
    model = _mlp()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    fisher = fisher_diagonal(model, [(x[:6], y[:6]), (x[6:], y[6:])], n_samples=9)
    ref = {n: torch.zeros_like(m.weight) for n, m in (("0", model[0]), ("2", model[2]))}
    for i in range(9):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n in ref:
            ref[n] += model.get_submodule(n).weight.grad ** 2 / 9
    for n in ref:
        torch.testing.assert_close(fisher[n], ref[n], rtol=1e-5, atol=1e-8)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    f = compute_importance(conv, [(torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 0, 1]))])
    assert f["0"].shape == (2, 9) and (f["0"] >= 0).all()


def test_hutchinson_exact_on_diagonal_hessian():
    lin = nn.Sequential(nn.Linear(3, 2, bias=False))
    x = torch.eye(3) * torch.tensor([1.0, 2.0, 3.0])[:, None]    # orthogonal inputs
    y = torch.zeros(3, 2)
    h = hessian_diagonal(lin, [(x, y)], loss_fn=F.mse_loss, n_probes=2)
    # loss = sum (Wx - y)^2 / (3 * 2): d2/dW_ri^2 = 2 sum_b x_bi^2 / 6
    expected = (2 * x.pow(2).sum(0) / 6).expand(2, 3)
    torch.testing.assert_close(h["0"], expected)
    with pytest.raises(ValueError, match="method"):
        compute_importance(lin, [(x, y)], method="magic")


def test_weighted_prune_mask_is_the_weighted_projection():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, generator=g)
    imp = torch.rand(3, 5, generator=g)
    c = LayerConstraint(row_keep=2)
    mask = weighted_prune_mask(c, W, imp)
    best = max(itertools.combinations(range(5), 2),
               key=lambda cols: (imp * W**2)[:, list(cols)].sum())
    assert mask.any(0).nonzero().squeeze(1).tolist() == list(best)
    assert torch.equal(weighted_prune_mask(c, W, torch.ones_like(W)), c.prune_mask(W))


def test_weighted_scale_closed_form_and_not_worse_than_unweighted():
    levels = pair_levels(4)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(4, 20, generator=g, dtype=torch.float64)
        imp = torch.rand(4, 20, generator=g, dtype=torch.float64) ** 3
        _, s0 = project_levels(W, levels)
        assert torch.equal(weighted_scale(W, levels), s0)
        Q, s = weighted_project_levels(W, levels, imp)
        Q0, _ = project_levels(W, levels)
        assert (imp * (W - Q) ** 2).sum() <= (imp * (W - Q0) ** 2).sum() + 1e-12
        q = Q / s
        torch.testing.assert_close(s, (imp * W * q).sum() / (imp * q * q).sum())
        assert ((q[..., None] - levels).abs().min(-1).values < 1e-9).all()
    Qc, sc = weighted_project_levels(W, levels, imp, per_column=True,
                                     mask=torch.rand(4, 20, generator=g) > 0.5)
    assert sc.shape == (4,) and torch.isfinite(Qc).all()


def test_importance_projectors_drive_admm():
    model = _mlp()
    imp = {"0": torch.rand(6, 4), "2": torch.rand(3, 6)}
    constraints = [LayerConstraint("0", row_keep=2, levels=3), LayerConstraint("2", levels=2)]
    prune = importance_projectors(model, constraints, imp, "prune")
    assert set(prune) == {"0"}
    admm = ADMM(model, prune, rho=1e-2)
    admm.update()
    assert (admm.Z[0].abs().sum(0) > 0).sum() <= 2
    quant = importance_projectors(model, constraints, imp, "quant")
    assert set(quant) == {"0", "2"}
    Z = quant["2"](weight_matrix(model[2]).detach())
    assert len(torch.unique(Z)) <= 3
    with pytest.raises(ValueError, match="stage"):
        importance_projectors(model, constraints, imp, "train")


def test_calibration_batches_cut_to_the_sample_count():
    x = torch.arange(10.0)[:, None]
    tensor_batches = calibration_batches(x, 7, torch.device("cpu"), batch_size=3)
    assert [len(b[0]) for b in tensor_batches] == [3, 3, 1]
    loader = [(x[:4], torch.zeros(4)), (x[4:], torch.ones(6))]
    labelled = calibration_batches(loader, 5, torch.device("cpu"))
    assert [(len(b[0]), len(b[1])) for b in labelled] == [(4, 4), (1, 1)]
    assert len(calibration_batches([x], 50, torch.device("cpu"))[0][0]) == 10
    with pytest.raises(ValueError, match="n_calib=0"):
        calibration_batches(x, 0, torch.device("cpu"), name="n_calib")
    with pytest.raises(ValueError, match="empty"):
        calibration_batches([], 4, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        fisher_diagonal(_mlp(), [torch.randn(3, 4)])
