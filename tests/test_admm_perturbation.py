"""Forward perturbations during compression (admm.perturbation protocol): entered exactly in the
configured stages, never during evaluation or checkpointing, effective, and resumable."""

import contextlib

import pytest
import torch
from torch import nn

from memxbar.admm import CompressConfig, Compressor, LayerConstraint, compress, weight_noise
from memxbar.admm.pipeline import NOISE_STAGES, STAGES
from tests.test_admm_pipeline import FailingLoader, Interrupted

EPOCHS = {"prune_epochs": 2, "prune_retrain_epochs": 2, "quant_epochs": 2,
          "quant_retrain_epochs": 1}


def toy_data(n: int = 192):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 12, generator=g)
    y = (X @ torch.randn(12, 4, generator=g)).argmax(1)
    return X, y


def toy_loader(X, y, batch: int = 32):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch,
                                       shuffle=True)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _config(**kw):
    return CompressConfig([LayerConstraint("0", col_ratio=0.5, levels=3),
                           LayerConstraint("2", row_ratio=0.5, levels=3)],
                          rho=1e-2, progress=False, **(EPOCHS | kw))


class _Recorder:
    """A perturbation that records the stage and the number of forward passes of each entry."""

    def __init__(self) -> None:
        self.compressor: Compressor | None = None
        self.entries: list[list] = []
        self.active = False

    def __call__(self, model: nn.Module):
        @contextlib.contextmanager
        def context():
            entry = [STAGES[self.compressor.stage], 0]
            handle = model.register_forward_hook(lambda *_: entry.__setitem__(1, entry[1] + 1))
            self.entries.append(entry)
            self.active = True
            try:
                yield
            finally:
                self.active = False
                handle.remove()
        return context()


@pytest.mark.parametrize("stages", [None, ("prune", "quant"), ("quant_retrain",), ()])
def test_perturbation_is_entered_exactly_in_the_configured_stages(tmp_path, stages):
    X, y = toy_data()
    loader = toy_loader(X, y)
    cfg = _config() if stages is None else _config(perturb_stages=stages)
    recorder = _Recorder()
    compressor = Compressor(_model(), cfg, perturbation=recorder)
    recorder.compressor = compressor
    saves = []
    original_save = compressor.save

    def save(path):
        saves.append(recorder.active)
        original_save(path)

    compressor.save = save

    def evaluate(model):
        assert not recorder.active, "perturbation active during evaluation"
        return 0.0

    compressor.run(loader, evaluate, checkpoint=tmp_path / "ckpt.pt")
    expected = [s for s in cfg.perturb_stages for _ in range(EPOCHS[f"{s}_epochs"])]
    assert [s for s, _ in recorder.entries] == expected
    assert all(count == len(loader) for _, count in recorder.entries)   # one per batch
    assert saves and not any(saves)


def test_default_perturb_stages_are_the_two_retraining_stages():
    assert _config().perturb_stages == ("prune_retrain", "quant_retrain")


def test_constant_bias_perturbation_changes_training_and_leaves_no_trace():
    X, y = toy_data()

    def shift(model):
        @contextlib.contextmanager
        def context():
            before = {k: v.clone() for k, v in model.state_dict().items()}
            handle = model[2].register_forward_hook(lambda m, i, out: out + 3.0 * torch.arange(
                4.0))
            try:
                yield
            finally:
                handle.remove()
            assert model.state_dict().keys() == before.keys()
        return context()

    plain, shifted = _model(), _model()
    torch.manual_seed(5)
    compress(plain, toy_loader(X, y), _config())
    torch.manual_seed(5)
    compress(shifted, toy_loader(X, y), _config(), perturbation=shift)
    assert not torch.equal(plain[2].bias, shifted[2].bias)
    assert not torch.equal(plain[0].bias, shifted[0].bias)
    x = X[:8]
    assert torch.equal(shifted(x), shifted(x))   # the hook is gone after compression


def _random_bias(model):
    """A perturbation drawing from torch's global generator at every forward pass."""
    return _hooked(model[2], lambda m, i, out: out + 0.5 * torch.randn_like(out))


@contextlib.contextmanager
def _hooked(module, hook):
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("fail_at", [3, 6])   # inside prune_retrain / inside quant_retrain
def test_resume_with_perturbation_matches_uninterrupted_run(tmp_path, fail_at):
    X, y = toy_data()
    cfg = _config(perturb_stages=("prune", "prune_retrain", "quant_retrain"), train_noise=0.05)
    reference = _model()
    torch.manual_seed(4)
    ref = compress(reference, toy_loader(X, y), cfg, perturbation=_random_bias)

    ckpt, interrupted, resumed = tmp_path / "admm.pt", _model(), _model()
    torch.manual_seed(4)
    with pytest.raises(Interrupted):
        compress(interrupted, FailingLoader(toy_loader(X, y), fail_at), cfg, checkpoint=ckpt,
                 perturbation=_random_bias)
    torch.manual_seed(123)                        # the checkpoint restores the RNG
    res = compress(resumed, toy_loader(X, y), cfg, checkpoint=ckpt, perturbation=_random_bias)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert ref.scales == res.scales


def test_train_noise_is_the_weight_noise_perturbation_in_the_noise_stages():
    """``train_noise=s`` is ``perturbation=weight_noise(s, <constrained layers>)`` applied in
    every stage after the hard prune: both runs are bit-identical."""
    X, y = toy_data()
    by_config, by_argument, quiet = _model(), _model(), _model()
    torch.manual_seed(6)
    compress(by_config, toy_loader(X, y), _config(train_noise=0.2))
    torch.manual_seed(6)
    compress(by_argument, toy_loader(X, y), _config(perturb_stages=NOISE_STAGES),
             perturbation=weight_noise(0.2, ["0", "2"]))
    for a, b in zip(by_config.state_dict().values(), by_argument.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(6)
    compress(quiet, toy_loader(X, y), _config())
    assert not torch.equal(quiet[2].bias, by_config[2].bias)


def test_weight_noise_selects_layers():
    model = _model()
    assert list(weight_noise(0.1)(model).modules) == ["0", "2"]
    assert list(weight_noise(0.1, ["2"])(model).modules) == ["2"]
    with pytest.raises(ValueError, match="train_noise"):
        weight_noise(-1.0)


@pytest.mark.parametrize("value", [("prune", "bogus"), "prune_retrain", ("done",), 3])
def test_invalid_perturb_stages_are_rejected(value):
    with pytest.raises(ValueError, match=r"perturb_stages=.*stage names from \['prune'"):
        _config(perturb_stages=value)


def test_perturb_stages_accepts_a_list():
    assert _config(perturb_stages=["quant", "prune"]).perturb_stages == ("quant", "prune")
