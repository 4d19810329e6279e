"""End-to-end compression on scikit-learn's digits (8x8): a tiny MLP and a tiny CNN.

Accuracy bound stated here and in docs/admm.md: after pruning + quantization the test accuracy
is at least the dense accuracy minus 0.05 (5 points).
"""

import contextlib
import copy
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from memxbar.admm import (
    CompressConfig,
    Compressor,
    LayerConstraint,
    compress,
    round_to_levels,
    select_layers,
    train_epoch,
    weight_matrix,
)
from memxbar.admm.projections import keep_count

ACCURACY_DROP_BOUND = 0.05


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    X = torch.tensor(X, dtype=torch.float32)[perm] / 16
    y = torch.tensor(y)[perm]
    return X[:1400], y[:1400], X[1400:], y[1400:]


def _loader(X, y):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=64,
                                       shuffle=True)


def _accuracy(X, y):
    def evaluate(model):
        model.eval()
        with torch.no_grad():
            return (model(X).argmax(1) == y).float().mean().item()
    return evaluate


def _mlp():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn():
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)),
                         nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


def _pretrain(model, loader, epochs):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        train_epoch(model, loader, opt)
    return model


def _check_constraints(model, constraints, result):
    modules = dict(model.named_modules())
    for name, c in constraints.items():
        W = weight_matrix(modules[name]).detach()
        out_n, in_n = W.shape
        nonzero = W != 0
        assert torch.equal(result.masks[name], nonzero)
        assert torch.equal(result.live_rows[name], nonzero.any(0))
        assert torch.equal(result.live_cols[name], nonzero.any(1))
        if c.row_ratio is not None or c.row_keep is not None:
            assert int(nonzero.any(0).sum()) <= keep_count(in_n, c.row_ratio, c.row_keep)
        if c.col_ratio is not None or c.col_keep is not None:
            assert int(nonzero.any(1).sum()) <= keep_count(out_n, c.col_ratio, c.col_keep)
        if c.block_ratio is not None or c.block_keep is not None:
            br, bc = c.block
            blocks = [nonzero[j:j + bc, i:i + br].any() for i in range(0, in_n, br)
                      for j in range(0, out_n, bc)]
            assert sum(map(bool, blocks)) <= keep_count(len(blocks), c.block_ratio, c.block_keep)
        if c.levels is not None:
            scale = result.scales[name]
            scale = scale[:, None] if isinstance(scale, torch.Tensor) else scale
            q = (W / scale).double()
            assert torch.allclose(q, round_to_levels(q, result.levels[name]), atol=1e-5)
            assert not modules[name].weight.requires_grad


@pytest.mark.parametrize("make, constraints, dense_epochs", [
    (_mlp, [LayerConstraint("0", row_ratio=0.5, col_ratio=0.25, levels=4),
            LayerConstraint("2", row_ratio=0.25, levels=4, per_column=True)], 15),
    (_cnn, [LayerConstraint("1", col_keep=6, levels=(0.0, 0.3, 1.0)),
            LayerConstraint("4", row_ratio=0.5, col_ratio=0.25, levels=4),
            LayerConstraint("8", block_ratio=0.5, block=(16, 5), levels=3, per_column=True)],
     15),
], ids=["mlp", "cnn"])
def test_pipeline_meets_constraints_and_accuracy(digits, make, constraints, dense_epochs):
    Xtr, ytr, Xte, yte = digits
    torch.manual_seed(0)
    loader = _loader(Xtr, ytr)
    model = _pretrain(make(), loader, dense_epochs)
    evaluate = _accuracy(Xte, yte)
    dense = evaluate(model)
    cfg = CompressConfig(constraints, prune_epochs=6, prune_retrain_epochs=8, quant_epochs=6,
                         quant_retrain_epochs=2, rho=0.05, rho_factor=2.0, rho_max=1.0,
                         lr=3e-3, progress=False)
    result = compress(model, loader, cfg, eval_fn=evaluate)
    compressed = evaluate(model)
    _check_constraints(model, select_layers(model, constraints), result)
    evals = [h for h in result.history if h["event"] == "eval"]
    assert compressed >= dense - ACCURACY_DROP_BOUND, evals
    assert [h["stage"] for h in evals] == ["dense", "prune", "prune_retrain", "quant",
                                           "quant_retrain"]
    assert evals[0]["metric"] == dense and evals[-1]["metric"] == compressed
    rounds = [h for h in result.history if h["event"] == "admm_round"]
    assert len(rounds) == 6 + 6
    for h in rounds:
        for layer in h["layers"].values():
            assert all(math.isfinite(layer[k]) for k in ("primal", "dual", "rho", "near"))


class Interrupted(Exception):
    pass


class FailingLoader:
    """Iterates ``loader`` and raises on the ``fail_at``-th epoch (0-based)."""

    def __init__(self, loader, fail_at):
        self.loader, self.fail_at, self.epochs = loader, fail_at, 0

    def __iter__(self):
        if self.epochs == self.fail_at:
            raise Interrupted
        self.epochs += 1
        return iter(self.loader)


@pytest.mark.parametrize("fail_at, importance, schedule", [
    (3, None, "constant"), (7, None, "constant"), (7, "fisher", "constant"), (5, None, "cosine")])
def test_resume_matches_uninterrupted_run(digits, tmp_path, fail_at, importance, schedule):
    """fail_at 3 / 5 / 7: inside prune-ADMM / prune_retrain / quant-ADMM. The Fisher importance
    is computed once and resumed from the checkpoint, not recomputed."""
    Xtr, ytr = digits[0][:512], digits[1][:512]
    loader = _loader(Xtr, ytr)
    torch.manual_seed(3)
    start = _mlp()
    cfg = CompressConfig([LayerConstraint("0", col_ratio=0.5, levels=3),
                          LayerConstraint("2", row_ratio=0.5, levels=3)],
                         prune_epochs=4, prune_retrain_epochs=2, quant_epochs=3,
                         quant_retrain_epochs=1, rho=1e-2, rho_factor=1.5,
                         importance=importance, importance_samples=128, lr_schedule=schedule,
                         progress=False)

    reference = copy.deepcopy(start)
    torch.manual_seed(4)
    ref = compress(reference, loader, cfg)

    ckpt = tmp_path / "admm.pt"
    interrupted = copy.deepcopy(start)
    torch.manual_seed(4)
    with pytest.raises(Interrupted):
        compress(interrupted, FailingLoader(loader, fail_at), cfg, checkpoint=ckpt)
    torch.manual_seed(123)                        # the checkpoint restores the RNG
    resumed = copy.deepcopy(start)
    res = compress(resumed, loader, cfg, checkpoint=ckpt)

    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert ref.scales == res.scales
    assert [h["round"] for h in ref.history] == [h["round"] for h in res.history]


# ------------------------------------------------------------------------ importance
def test_fisher_importance_constraints_hold_exactly(digits):
    Xtr, ytr = digits[0][:512], digits[1][:512]
    loader = _loader(Xtr, ytr)
    torch.manual_seed(5)
    model = _pretrain(_mlp(), loader, 3)
    constraints = [LayerConstraint("0", row_ratio=0.5, col_ratio=0.25, levels=4),
                   LayerConstraint("2", block_ratio=0.5, block=(16, 5), levels=3,
                                   per_column=True)]
    cfg = CompressConfig(constraints, prune_epochs=2, prune_retrain_epochs=1, quant_epochs=2,
                         quant_retrain_epochs=1, rho=0.05, rho_factor=2.0, lr=3e-3,
                         importance="fisher", importance_samples=256, progress=False)
    compressor = Compressor(model, cfg)
    result = compressor.run(loader)
    _check_constraints(model, select_layers(model, constraints), result)
    assert set(compressor.importance) == {"0", "2"}
    assert compressor.importance["0"].shape == (64, 64)
    assert set(compressor.state_dict()["importance"]) == {"0", "2"}


def _three_input_model():
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():   # crossbar rows (inputs) 0, 1, 2 have norms 2.8, 2.1, 0.14
        model[0].weight.copy_(torch.tensor([[2.0, 1.5, 0.1], [2.0, -1.5, 0.1]]))
    return model


@pytest.mark.parametrize("importance, kept", [
    (None, [True, False, False]),
    ({"0": torch.tensor([[1.0, 1.0, 1e4], [1.0, 1.0, 1e4]])}, [False, False, True]),
], ids=["euclidean", "importance"])
def test_importance_keeps_the_important_row(importance, kept):
    torch.manual_seed(0)
    loader = [(torch.randn(16, 3), torch.randint(0, 2, (16,)))]
    model = _three_input_model()
    constraints = [LayerConstraint("0", row_keep=1, levels=3)]
    cfg = CompressConfig(constraints, prune_epochs=2, prune_retrain_epochs=1, quant_epochs=2,
                         quant_retrain_epochs=1, rho=0.05, lr=1e-3, importance=importance,
                         progress=False)
    result = compress(model, loader, cfg)
    assert result.live_rows["0"].tolist() == kept
    _check_constraints(model, select_layers(model, constraints), result)


def test_importance_config_errors():
    constraints = [LayerConstraint("0", row_keep=1)]
    with pytest.raises(ValueError, match="importance='magic'"):
        CompressConfig(constraints, importance="magic")
    with pytest.raises(ValueError, match="importance_samples=0"):
        CompressConfig(constraints, importance="fisher", importance_samples=0)
    with pytest.raises(ValueError, match=r"layers \['9'\]"):
        Compressor(_three_input_model(), CompressConfig(constraints,
                                                        importance={"9": torch.ones(2, 3)}))
    with pytest.raises(ValueError, match="entries"):
        Compressor(_three_input_model(), CompressConfig(constraints,
                                                        importance={"0": torch.ones(5)}))
    with pytest.raises(ValueError, match=">= 0"):
        Compressor(_three_input_model(), CompressConfig(constraints,
                                                        importance={"0": -torch.ones(2, 3)}))


# ------------------------------------------------------------------------ lr schedule
def test_cosine_lr_schedule_per_stage(digits):
    Xtr, ytr = digits[0][:256], digits[1][:256]
    cfg = CompressConfig([LayerConstraint("0", col_ratio=0.5, levels=3)], prune_epochs=4,
                         prune_retrain_epochs=2, quant_epochs=1, quant_retrain_epochs=3,
                         lr=0.01, lr_schedule="cosine", progress=False,
                         perturb_stages=("prune", "prune_retrain", "quant", "quant_retrain"))
    seen = []

    def probe(model):
        optimizer = getattr(compressor.optimizer, "optimizer", compressor.optimizer)
        seen.append(optimizer.param_groups[0]["lr"])
        return contextlib.nullcontext()

    compressor = Compressor(_mlp(), cfg, perturbation=probe)
    compressor.run(_loader(Xtr, ytr))
    cosine = [0.01 * (1 + math.cos(math.pi * e / n)) / 2 for n in (2, 3) for e in range(n)]
    assert seen == pytest.approx([0.01] * 4 + cosine[:2] + [0.01] + cosine[2:])
    assert CompressConfig(cfg.constraints, lr=0.01).epoch_lr("prune_retrain", 3, 4) == 0.01
    with pytest.raises(ValueError, match=r"lr_schedule='step' invalid: one of \['constant'"):
        CompressConfig(cfg.constraints, lr_schedule="step")


def test_a_retraining_stage_that_ends_at_chance_stops_the_run(digits, tmp_path):
    """collapse_floor: a retraining stage is meant to restore accuracy; one that ends at or
    below the floor raises DivergenceError with the causes, before the next stage; the
    checkpoint of the last finished epoch is kept. Without the floor the run goes on."""
    from memxbar.admm import DivergenceError

    Xtr, ytr = digits[0][:256], digits[1][:256]
    Xte, yte = digits[2], digits[3]
    # keep 1 of 64 hidden units and 2 levels: the model cannot be more than near chance
    constraints = [LayerConstraint("0", col_keep=1, levels=2)]
    kw = dict(prune_epochs=1, prune_retrain_epochs=1, quant_epochs=1, quant_retrain_epochs=1,
              lr=0.01, progress=False)
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5):
        train_epoch(model, _loader(Xtr, ytr), opt)
    dense = _accuracy(Xte, yte)(model)
    assert dense > 0.8
    with pytest.raises(DivergenceError, match=r"collapsed: .* after the prune_retrain stage "
                                              r"\(dense .*loosen the pruning ratios"):
        compress(model, _loader(Xtr, ytr),
                 CompressConfig(constraints, collapse_floor=0.45, **kw),
                 eval_fn=_accuracy(Xte, yte), checkpoint=tmp_path / "admm.pt")
    assert (tmp_path / "admm.pt").exists()
    result = compress(_mlp(), _loader(Xtr, ytr), CompressConfig(constraints, **kw),
                      eval_fn=_accuracy(Xte, yte))  # no floor: runs to the end
    assert [h["stage"] for h in result.history if h["event"] == "eval"][-1] == "quant_retrain"
