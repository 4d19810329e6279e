"""Knowledge distillation from the dense model during compression (admm.distill)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memxbar.admm import CompressConfig, Compressor, LayerConstraint, compress, distillation_loss
from memxbar.admm.pipeline import CheckpointMismatchError
from tests.test_admm_perturbation import toy_data, toy_loader
from tests.test_admm_pipeline import FailingLoader, Interrupted

EPOCHS = {"prune_epochs": 2, "prune_retrain_epochs": 2, "quant_epochs": 2,
          "quant_retrain_epochs": 1}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))


def _config(**kw):
    return CompressConfig([LayerConstraint("0", col_ratio=0.5, levels=3),
                           LayerConstraint("3", row_ratio=0.5, levels=3)],
                          rho=1e-2, progress=False, **(EPOCHS | kw))


def test_distillation_loss_is_scaled_kl_divergence():
    torch.manual_seed(0)
    s, t, T = torch.randn(5, 7), torch.randn(5, 7), 3.0
    p = F.softmax(t / T, 1)
    expected = T * T * (p * (p.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    assert torch.allclose(distillation_loss(s, t, T), expected, atol=1e-6)
    assert distillation_loss(t, t, T).abs() < 1e-6
    student = s.clone().requires_grad_(True)
    distillation_loss(student, t, T).backward()
    # d/ds of T^2 KL = T (softmax(s/T) - softmax(t/T)) / batch
    assert torch.allclose(student.grad, T * (F.softmax(s / T, 1) - p) / 5, atol=1e-6)


@pytest.mark.parametrize("key, value, allowed", [
    ("distill_weight", -0.1, r"\[0.0, 1.0\]"), ("distill_weight", 1.5, r"\[0.0, 1.0\]"),
    ("distill_weight", True, r"\[0.0, 1.0\]"), ("distill_temperature", 0.0, r"\(0, 100\]"),
    ("distill_temperature", -2.0, r"\(0, 100\]"),
    ("distill_temperature", float("inf"), r"\(0, 100\]"),
])
def test_invalid_distillation_settings_are_rejected(key, value, allowed):
    with pytest.raises(ValueError, match=rf"{key}={value!r} out of range: .*{allowed}"):
        _config(**{key: value})


def test_teacher_is_a_frozen_copy_of_the_dense_model():
    X, y = toy_data()
    model = _model()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    compressor = Compressor(model, _config(distill_weight=0.5))
    compressor.run(toy_loader(X, y))
    teacher = compressor.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, dense[k])
    assert not torch.equal(model[0].weight, dense["0.weight"])


def test_distillation_changes_training_and_alpha_zero_is_plain_training():
    X, y = toy_data()
    plain, zero, distilled = _model(), _model(), _model()
    for model, cfg in ((plain, _config()), (zero, _config(distill_weight=0.0)),
                       (distilled, _config(distill_weight=0.7, distill_temperature=2.0))):
        torch.manual_seed(5)
        compress(model, toy_loader(X, y), cfg)
    assert torch.equal(plain[3].bias, zero[3].bias)
    assert not torch.equal(plain[3].bias, distilled[3].bias)


def test_caller_teacher_is_copied_and_used():
    X, y = toy_data()
    given = _model(seed=9)
    before = {k: v.clone() for k, v in given.state_dict().items()}
    compressor = Compressor(_model(), _config(distill_weight=1.0), teacher=given)
    compressor.run(toy_loader(X, y))
    for k, v in compressor.teacher.state_dict().items():
        assert torch.equal(v, before[k]) and torch.equal(given.state_dict()[k], before[k])
    assert compressor.teacher is not given
    with pytest.raises(ValueError, match="teacher is given but distill_weight=0"):
        Compressor(_model(), _config(), teacher=given)


@pytest.mark.parametrize("fail_at", [1, 3, 5])   # prune-ADMM / prune_retrain / quant-ADMM
def test_resume_with_distillation_matches_uninterrupted_run(tmp_path, fail_at):
    """The resumed run starts from an unrelated model: the teacher comes from the checkpoint."""
    X, y = toy_data()
    cfg = _config(distill_weight=0.6, distill_temperature=3.0)
    reference, interrupted, unrelated = _model(), _model(), _model(seed=77)
    torch.manual_seed(4)
    ref = compress(reference, toy_loader(X, y), cfg)

    ckpt = tmp_path / "admm.pt"
    torch.manual_seed(4)
    with pytest.raises(Interrupted):
        compress(interrupted, FailingLoader(toy_loader(X, y), fail_at), cfg, checkpoint=ckpt)
    torch.manual_seed(123)                        # the checkpoint restores the RNG
    res = compress(unrelated, toy_loader(X, y), cfg, checkpoint=ckpt)
    for a, b in zip(reference.state_dict().values(), unrelated.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert ref.scales == res.scales


def test_checkpoint_without_teacher_is_refused_with_distillation(tmp_path):
    X, y = toy_data()
    ckpt = tmp_path / "admm.pt"
    with contextlib.suppress(Interrupted):
        compress(_model(), FailingLoader(toy_loader(X, y), 1), _config(), checkpoint=ckpt)
    with pytest.raises(CheckpointMismatchError, match="no distillation teacher.*distill_weight"):
        compress(_model(), toy_loader(X, y), _config(distill_weight=0.5), checkpoint=ckpt)
