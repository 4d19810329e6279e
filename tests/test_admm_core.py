"""Layer selection, the ADMM updates, masked retraining and checkpoint round trips."""

import math

import pytest
import torch
from torch import nn

from memxbar.admm import (
    ADMM,
    CompressConfig,
    Compressor,
    LayerConstraint,
    MaskedOptimizer,
    apply_masks,
    freeze_weights,
    live_cols,
    live_rows,
    save_atomic,
    select_layers,
    train_epoch,
    weight_matrix,
)
from memxbar.admm.projections import project_cols


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8),
                         nn.BatchNorm1d(8), nn.Linear(8, 3))


def _loader(n=48, batch=16):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch,
                                       shuffle=True)


# ------------------------------------------------------------------------------ selection
def test_select_layers_patterns():
    model = _net()
    assert list(select_layers(model, [LayerConstraint("*")])) == ["0", "3", "5"]
    chosen = select_layers(model, [LayerConstraint("re:[03]", col_ratio=0.5),
                                   LayerConstraint("5", levels=2)])
    assert chosen["0"].col_ratio == 0.5 and chosen["5"].levels == 2


def test_select_layers_errors():
    with pytest.raises(ValueError, match="pattern='conv9' matches no Linear/Conv2d"):
        select_layers(_net(), [LayerConstraint("conv9")])
    with pytest.raises(ValueError, match="matched by both"):
        select_layers(_net(), [LayerConstraint("*"), LayerConstraint("0")])
    with pytest.raises(ValueError, match="no Linear, Conv1d, Conv2d or attention projection"):
        select_layers(nn.Sequential(nn.ReLU()), [LayerConstraint("*")])


@pytest.mark.parametrize("kwargs, match", [
    ({"row_ratio": 1.5}, "row_ratio=1.5"), ({"col_keep": -2}, "col_keep=-2"),
    ({"block_ratio": 0.5, "block_keep": 1}, "not both"), ({"block": (0, 4)}, "block="),
    ({"levels": 1}, "levels=1"),
])
def test_layer_constraint_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerConstraint(**kwargs)


def test_config_validation():
    c = [LayerConstraint()]
    for kwargs, match in [({"update_every": 0}, "update_every=0"),
                          ({"update_unit": "batch"}, "update_unit='batch'"),
                          ({"prune_epochs": -1}, "prune_epochs=-1"),
                          ({"rho_factor": 0.5}, "rho_factor=0.5"),
                          ({"optimizer": "lbfgs"}, "optimizer='lbfgs'")]:
        with pytest.raises(ValueError, match=match):
            CompressConfig(c, **kwargs)


# ----------------------------------------------------------------------------------- ADMM
def test_penalty_gradient_is_the_squared_norm_gradient():
    model = _net()
    admm = ADMM(model, {"3": lambda W: project_cols(W, 4), "0": lambda W: W * (W.abs() > 0.2)},
                rho=0.7)
    with torch.no_grad():
        for u in admm.U:
            u.normal_()
    admm._refresh_offsets()
    for w in admm.weights:
        w.grad = None
    admm.add_penalty_grad()
    fused = [w.grad.clone() for w in admm.weights]
    for w in admm.weights:
        w.grad = None
    penalty = sum(0.7 / 2 * (w.reshape(w.shape[0], -1) - z + u).pow(2).sum()
                  for w, z, u in zip(admm.weights, admm.Z, admm.U, strict=True))
    penalty.backward()
    for f, w in zip(fused, admm.weights, strict=True):
        assert torch.allclose(f, w.grad, atol=1e-6)
    assert admm.penalty() == pytest.approx(penalty.item(), rel=1e-5)


def test_update_z_u_residuals_and_rho_schedule():
    model = _net()
    admm = ADMM(model, {"3": lambda W: project_cols(W, 2)}, rho=0.1, rho_factor=2.0, rho_max=0.3)
    W = weight_matrix(model[3]).detach().clone()
    assert torch.equal(admm.Z[0], project_cols(W, 2))              # Z0 = Proj(W0), U0 = 0
    with torch.no_grad():
        model[3].weight.add_(0.05)
    W1 = weight_matrix(model[3]).detach().clone()
    z_prev = admm.Z[0].clone()
    log = admm.update(task_loss=1.5)
    Z1 = project_cols(W1, 2)
    assert torch.equal(admm.Z[0], Z1)
    # U = (0 + W1 - Z1) * rho_old / rho_new, rho 0.1 -> 0.2
    assert torch.allclose(admm.U[0], (W1 - Z1) * 0.5)
    layer = log["layers"]["3"]
    assert layer["rho"] == 0.1 and admm.rho == [0.2]
    assert layer["primal"] == pytest.approx((W1 - Z1).norm().item(), rel=1e-6)
    assert layer["dual"] == pytest.approx(0.1 * (Z1 - z_prev).norm().item(), rel=1e-6)
    assert 0 <= layer["near"] <= 1 and log["task_loss"] == 1.5 and log["round"] == 1
    admm.update()
    admm.update()
    assert admm.rho == [0.3]                                       # capped at rho_max


def test_admm_state_round_trip():
    model = _net()
    admm = ADMM(model, {"3": lambda W: project_cols(W, 2)}, rho=0.1, rho_factor=2.0)
    admm.update()
    other = ADMM(model, {"3": lambda W: project_cols(W, 2)})
    other.load_state_dict(admm.state_dict())
    assert torch.equal(other.Z[0], admm.Z[0]) and torch.equal(other.U[0], admm.U[0])
    assert other.rho == admm.rho and other.rounds == 1


# ------------------------------------------------------------------------ masked training
@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-3),
])
def test_masked_optimizer_keeps_zeros_and_clears_state(make):
    model = _net()
    loader = _loader()
    opt = make(model.parameters())
    train_epoch(model, loader, opt)                  # state for every entry
    mask = torch.rand(weight_matrix(model[3]).shape) > 0.5
    masks = {"3": mask}
    apply_masks(model, masks)
    masked = MaskedOptimizer(opt, model, masks)
    for value in opt.state[model[3].weight].values():
        if value.shape == model[3].weight.shape:
            assert torch.count_nonzero(value[~mask]) == 0
    for _ in range(2):
        train_epoch(model, loader, masked)
    W = weight_matrix(model[3])
    assert torch.count_nonzero(W[~mask]) == 0 and torch.count_nonzero(W[mask]) > 0


def test_live_rows_cols_and_freeze():
    mask = torch.tensor([[True, False, False], [False, False, False]])
    assert live_rows(mask).tolist() == [True, False, False]
    assert live_cols(mask).tolist() == [True, False]
    model = _net()
    freeze_weights(model, {"5": torch.zeros(3, 8)})
    assert not model[5].weight.requires_grad and torch.count_nonzero(model[5].weight) == 0


# ------------------------------------------------------------------------- pipeline state
def test_short_schedule_still_runs_an_admm_round():
    model = _net()
    cfg = CompressConfig([LayerConstraint("3", col_keep=2)], prune_epochs=1, update_every=5,
                         prune_retrain_epochs=0, quant_epochs=0, quant_retrain_epochs=0,
                         progress=False)
    result = Compressor(model, cfg).run(_loader())
    rounds = [h for h in result.history if h["event"] == "admm_round"]
    assert len(rounds) == 1 and rounds[0]["stage"] == "prune"
    assert result.live_cols["3"].sum() <= 2


def test_step_rounds_and_zero_epoch_stages():
    model = _net()
    cfg = CompressConfig([LayerConstraint("0", row_keep=4, levels=2)], prune_epochs=1,
                         update_every=2, update_unit="step", prune_retrain_epochs=0,
                         quant_epochs=0, quant_retrain_epochs=0, progress=False)
    result = Compressor(model, cfg).run(_loader(n=48, batch=16))   # 3 steps -> rounds at 2, 3
    assert [h["round"] for h in result.history if h["stage"] == "prune"] == [1, 2]
    assert result.live_rows["0"].sum() <= 4
    W = weight_matrix(model[0]) / result.scales["0"]
    assert set(W.round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(W, W.round(), atol=1e-5)


def test_save_atomic_and_weights_only_load(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    save_atomic({"a": torch.ones(2), "b": [1, "x", math.pi]}, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["a"], torch.ones(2)) and loaded["b"] == [1, "x", math.pi]
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_prune_only_layer_stays_pruned_through_every_stage():
    model = _net()
    cfg = CompressConfig([LayerConstraint("3", col_keep=3), LayerConstraint("5", levels=3)],
                         prune_epochs=1, prune_retrain_epochs=1, quant_epochs=1,
                         quant_retrain_epochs=2, lr=0.05, progress=False)
    result = Compressor(model, cfg).run(_loader())
    assert result.live_cols["3"].sum() <= 3 and "3" not in result.scales
    assert model[3].weight.requires_grad and not model[5].weight.requires_grad
    assert set(result.scales) == {"5"} and isinstance(result.scales["5"], float)


def test_output_columns_of_the_final_layer_are_not_pruned_unless_asked():
    """Pruning the final layer's columns kills model outputs (classes): refused, naming the
    pattern and the way to ask for it; rows and quantization remain allowed."""
    import pytest
    from torch import nn

    from memxbar.admm import LayerConstraint, select_layers

    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    with pytest.raises(ValueError, match=r"pattern='\*' with col_ratio=0.25 .* final layer '2'"
                                         r".*prune_outputs=True"):
        select_layers(model, [LayerConstraint(pattern="*", col_ratio=0.25)])
    with pytest.raises(ValueError, match=r"col_keep=3 .* final layer '2'"):
        select_layers(model, [LayerConstraint(pattern="2", col_keep=3)])
    assert set(select_layers(model, [LayerConstraint(pattern="0", col_ratio=0.5),
                                     LayerConstraint(pattern="2", row_ratio=0.5)])) == {"0", "2"}
    chosen = select_layers(model, [LayerConstraint(pattern="*", col_ratio=0.25,
                                                   prune_outputs=True)])
    assert chosen["2"].prune_outputs


def test_one_training_loop_whose_loss_is_the_mean_over_samples():
    """admm and the run layer train with the same loop (issue 12: they averaged the loss
    differently); its loss is the mean over samples, a short last batch weighted by its size."""
    from memxbar import experiments
    from memxbar.admm import pipeline

    assert experiments.train.train_epoch is pipeline.train_epoch
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(x), y))  # mean over 4 samples
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    got = pipeline.train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.0))
    assert got == pytest.approx(expected, rel=1e-6)
