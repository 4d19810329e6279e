"""Optimal Brain Compression: OBS group removal against least-squares refits, OBQ on the level
set inside masks, im2col order, and the sequential model-level entry point."""

import copy
import itertools

import pytest
import torch
from torch import nn

from memxbar.admm import CompressResult, LayerConstraint, pair_levels, weight_matrix
from memxbar.admm.obc import (
    ObcLayer,
    layer_inputs,
    obc_compress,
    obq_quantize,
    obs_prune,
    output_weight,
    prepare_hessian,
)

DT = torch.float64


def _problem(seed, out_n=5, in_n=9, n=60):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(in_n, n, generator=g, dtype=DT)
    X = torch.randn(in_n, in_n, generator=g, dtype=DT) @ X      # correlated inputs
    W = torch.randn(out_n, in_n, generator=g, dtype=DT)
    return W, X, 2 * X @ X.T / n


def _refit(W, X, cols):
    """argmin ||W' X - W X||^2 with W' zero outside ``cols`` (one output row)."""
    sol = torch.linalg.lstsq(X[cols].T, (W @ X).T).solution.T
    out = torch.zeros_like(W)
    out[:, cols] = sol
    return out


@pytest.mark.parametrize("seed", range(4))
def test_obs_row_removal_equals_least_squares_refit(seed):
    W, X, H = _problem(seed)
    groups = [(None, torch.tensor([i])) for i in range(W.shape[1])]
    Wc, mask, loss = obs_prune(W, H, groups, 4)
    kept = mask.any(0)
    assert kept.sum() == W.shape[1] - 4
    assert torch.equal(mask, kept.expand_as(mask))
    ref = _refit(W, X, kept.nonzero().squeeze(1))
    torch.testing.assert_close(Wc, ref, atol=1e-9, rtol=1e-9)
    assert loss == pytest.approx(((Wc - W) @ X).pow(2).sum().item() / X.shape[1], rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_obs_block_removal_equals_per_column_group_refit(seed):
    W, X, H = _problem(seed, out_n=6, in_n=10)
    groups = [(torch.arange(j * 2, min(j * 2 + 2, 6)), torch.arange(i * 3, min(i * 3 + 3, 10)))
              for i in range(4) for j in range(3)]
    Wc, mask, _ = obs_prune(W, H, groups, 5)
    blocks_kept = {(i, j) for i in range(4) for j in range(3)
                   if mask[j * 2:(j + 1) * 2, i * 3:(i + 1) * 3].any()}
    assert len(blocks_kept) == 12 - 5
    for r in range(6):
        ref = _refit(W[r:r + 1], X, mask[r].nonzero().squeeze(1))
        torch.testing.assert_close(Wc[r:r + 1], ref, atol=1e-9, rtol=1e-9)
    assert torch.equal(Wc[~mask], torch.zeros_like(Wc[~mask]))


def test_obs_greedy_step_picks_least_loss_group():
    W, X, H = _problem(7, in_n=8)
    groups = [(None, torch.tensor([2 * k, 2 * k + 1])) for k in range(4)]   # channel pairs
    _, mask, loss = obs_prune(W, H, groups, 1)
    losses = []
    for k in range(4):
        cols = torch.tensor([i for i in range(8) if i // 2 != k])
        losses.append(((_refit(W, X, cols) - W) @ X).pow(2).sum().item() / X.shape[1])
    best = min(range(4), key=losses.__getitem__)
    assert not mask[:, 2 * best:2 * best + 2].any() and mask.sum() == W.numel() - 2 * W.shape[0]
    assert loss == pytest.approx(losses[best], rel=1e-9)


def test_obs_row_weight_changes_choice_and_respects_mask():
    W, X, H = _problem(3, out_n=2, in_n=4)
    groups = [(None, torch.tensor([i])) for i in range(4)]
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[:, 1] = False
    W = W * mask
    Wc, m, _ = obs_prune(W, H, groups, 2, mask=mask)
    assert not m[:, 1].any() and (~m.any(0)).sum() == 2          # the free removal is taken
    with pytest.raises(ValueError, match="n_remove"):
        obs_prune(W, H, groups, 5)
    c = output_weight(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), 2)
    assert c[0] == pytest.approx(2.0) and c[1] == pytest.approx(1e-6)


def test_prepare_hessian_dead_inputs_and_damping():
    H = torch.diag(torch.tensor([2.0, 0.0, 4.0], dtype=DT))
    W = torch.ones(2, 3, dtype=DT)
    Hd, Wd = prepare_hessian(H, W, 0.1)
    assert torch.equal(Wd[:, 1], torch.zeros(2, dtype=DT))
    torch.testing.assert_close(torch.diagonal(Hd), torch.tensor([2.0, 1.0, 4.0], dtype=DT)
                               + 0.1 * 7 / 3)
    with pytest.raises(ValueError, match="percdamp"):
        prepare_hessian(H, W, -1.0)


def test_obq_on_levels_inside_mask_and_beats_rounding():
    wins = 0
    levels = pair_levels(3)
    for seed in range(6):
        W, X, H = _problem(seed, out_n=8, in_n=12, n=200)
        mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(seed)) > 0.3
        mask[:, 0] = False
        scale = torch.tensor(0.8, dtype=DT)
        Q = obq_quantize(W * mask, H, levels, scale, mask)
        q = Q / scale
        assert torch.equal(Q[~mask], torch.zeros_like(Q[~mask]))
        assert torch.isin((q * 2).round(), torch.tensor([-2.0, -1, 0, 1, 2], dtype=DT)).all()
        assert torch.allclose(q * 2, (q * 2).round(), atol=1e-12)
        rtn = torch.where(mask, (W / scale * 2).round().clamp(-2, 2) / 2 * scale, 0)
        target = W * mask
        wins += bool(((Q - target) @ X).pow(2).sum() <= ((rtn - target) @ X).pow(2).sum())
    assert wins >= 5


def test_obq_per_row_scale():
    W, X, H = _problem(1, out_n=3, in_n=5)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    mask = torch.ones(3, 5, dtype=torch.bool)
    Q = obq_quantize(W, H, pair_levels(2), scale, mask)
    assert torch.isin(Q / scale[:, None], torch.tensor([-1.0, 0.0, 1.0], dtype=DT)).all()


@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, dilation=2),
                                dict(padding=1, padding_mode="reflect"), dict(padding="same")])
def test_layer_inputs_im2col_order_matches_conv(kw):
    conv = nn.Conv2d(3, 4, 3, bias=False, **kw).double()
    x = torch.randn(2, 3, 7, 7, dtype=DT)
    X = layer_inputs(conv, x)
    y = conv(x)
    ref = y.permute(1, 0, 2, 3).reshape(4, -1)
    torch.testing.assert_close(weight_matrix(conv) @ X, ref)
    lin = nn.Linear(5, 2)
    assert layer_inputs(lin, torch.randn(3, 4, 5)).shape == (5, 12)
    with pytest.raises(ValueError, match="grouped"):
        layer_inputs(nn.Conv2d(4, 4, 3, groups=2), torch.randn(1, 4, 5, 5))


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 12), nn.ReLU(), nn.Linear(12, 3))


def test_obc_compress_model_masks_levels_counts():
    model = _model()
    x = torch.randn(300, 2, 6, 6)
    constraints = [LayerConstraint("0", block=(9, 4), block_keep=1, levels=3),
                   LayerConstraint("3", row_ratio=0.5, col_keep=8, levels=4, per_column=True),
                   LayerConstraint("5", levels=2)]
    res = obc_compress(model, x, constraints, n_calib=256)
    assert isinstance(res, CompressResult)
    assert set(res.masks) == {"0", "3", "5"} and set(res.levels) == {"0", "3", "5"}
    mods = dict(model.named_modules())
    for name, mask in res.masks.items():
        W = weight_matrix(mods[name]).detach().double()
        assert torch.equal(mask, W != 0)
        s = torch.as_tensor(res.scales[name], dtype=DT)
        s = s[:, None] if s.dim() else s
        q = W / s
        near = (q[..., None] - res.levels[name]).abs().min(-1).values
        assert near.max() < 1e-5
    assert res.live_rows["0"].sum() <= 9 and res.masks["0"].any(1).all()   # one channel kept
    assert res.live_rows["3"].sum() <= 72 and res.live_cols["3"].sum() <= 8
    assert [h["layer"] for h in res.history] == ["0", "3", "5"]
    assert all(h["n_inputs"] > 0 for h in res.history)
    assert model.training


def test_obc_compress_feeds_calibration_through_compressed_layers():
    x = torch.randn(200, 2, 6, 6)
    c0 = LayerConstraint("0", row_keep=9, levels=3)
    c3 = LayerConstraint("3", row_ratio=0.25, levels=3)
    full = _model()
    obc_compress(full, x, [c0, c3], n_calib=200)
    manual = _model()
    obc_compress(manual, x, [c0], n_calib=200)
    layer = ObcLayer(manual[3])
    with torch.no_grad():
        layer.add_batch(manual[:3](x))
    layer.compress(c3)
    torch.testing.assert_close(full[3].weight, manual[3].weight)
    assert not torch.equal(full[3].weight, _model()[3].weight)


def test_obc_compress_loader_importance_and_errors():
    model = _model()
    x = torch.randn(64, 2, 6, 6)
    loader = [(x[:32], torch.zeros(32)), (x[32:], torch.zeros(32))]
    imp = {"3": torch.rand(12, 144)}
    res = obc_compress(copy.deepcopy(model), loader, [LayerConstraint("3", col_keep=6,
                                                                      levels=3)],
                       n_calib=48, importance=imp)
    assert res.history[0]["n_inputs"] == 48 and res.live_cols["3"].sum() <= 6
    with pytest.raises(ValueError, match="entries"):
        obc_compress(copy.deepcopy(model), x, [LayerConstraint("3", levels=3)],
                     importance={"3": torch.rand(5)})
    with pytest.raises(ValueError, match="n_calib"):
        obc_compress(copy.deepcopy(model), x, [LayerConstraint("3", levels=3)], n_calib=0)
    with pytest.raises(ValueError, match="matches no"):
        obc_compress(copy.deepcopy(model), x, [LayerConstraint("nope", levels=3)])


def test_obc_dead_inputs_are_zeroed_without_nan():
    model = nn.Sequential(nn.Linear(6, 4))
    x = torch.randn(50, 6)
    x[:, 2] = 0
    res = obc_compress(model, x, [LayerConstraint("0", row_keep=3, levels=3)])
    W = model[0].weight
    assert torch.isfinite(W).all() and not res.masks["0"][:, 2].any()


def test_obc_importance_selects_important_outputs():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(5, 4))
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[3.0] * 5, [2.0] * 5, [1.0] * 5, [0.5] * 5]))
    x = torch.randn(100, 5)
    keep2 = [LayerConstraint("0", col_keep=2, prune_outputs=True)]  # outputs pruned on purpose
    plain = obc_compress(copy.deepcopy(lin), x, keep2)
    assert plain.live_cols["0"].tolist() == [True, True, False, False]
    imp = {"0": torch.tensor([[0.0] * 5, [0.0] * 5, [1.0] * 5, [1.0] * 5])}
    weighted = obc_compress(copy.deepcopy(lin), x, keep2, importance=imp)
    assert weighted.live_cols["0"].tolist() == [False, False, True, True]


def test_obs_channel_groups_brute_force_two_removed():
    W, X, H = _problem(11, out_n=3, in_n=8)
    groups = [(None, torch.tensor([2 * k, 2 * k + 1])) for k in range(4)]
    _, mask, loss = obs_prune(W, H, groups, 2)
    best = min(((_refit(W, X, torch.tensor([i for i in range(8) if i // 2 not in pair]))
                 - W) @ X).pow(2).sum().item() / X.shape[1]
               for pair in itertools.combinations(range(4), 2))
    assert loss >= best - 1e-9                 # greedy is feasible, never below the optimum
    assert loss <= 1.5 * best + 1e-9           # and close to it on this seeded instance
