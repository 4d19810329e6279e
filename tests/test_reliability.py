"""Reliability (docs/reliability.md): validated configs, safe checkpoints, resumable runs after
SIGTERM, the divergence guard and corrupt inputs. Dataset file faults (truncated, wrong magic,
empty split, bad checksums) are tested in tests/test_datasets.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memxbar import crossbar
from memxbar.admm import (
    CheckpointMismatchError,
    CompressConfig,
    DivergenceError,
    LayerConstraint,
    compress,
    save_atomic,
)
from memxbar.experiments.conf_source import CONF_DIR
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.guard import Terminated, load_checkpoint, sigterm_as_exit
from memxbar.experiments.models import build_model
from memxbar.experiments.pipeline import run_compress
from memxbar.experiments.train import fit

ROOT = Path(__file__).resolve().parents[1]
# every compress run here: digits subset, short stages (6 epochs where a SIGTERM must land)
RUN = ["dataset.subset=384", "train.epochs=4", "eval.chips=1", "eval.test_subset=60",
       "eval.calibration_samples=32", "runtime.progress=false", "runtime.threads=1",
       "runtime.device=cpu", "admm.prune_epochs=6", "admm.prune_retrain_epochs=6",
       "admm.quant_epochs=1", "admm.quant_retrain_epochs=1", "admm.update_every=3"]


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# ------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("override, words", [
    # unknown keys, in every group
    ("+bogus=1", ["bogus=1", "top-level"]),
    ("+device.foo=1", ["device.foo=1", "g_max_uS"]),
    ("+crossbar.foo=1", ["crossbar.foo=1", "tile_rows"]),
    ("+cost.foo=1", ["cost.foo=1", "clock_MHz"]),
    ("+admm.foo=1", ["admm.foo=1", "prune_epochs"]),
    ("+admm.constraints.0.foo=1", ["admm.constraints[0].foo=1", "row_ratio"]),
    ("+model.foo=1", ["model.foo=1", "in_channels"]),
    ("+dataset.foo=1", ["dataset.foo=1", "batch_size"]),
    ("+eval.foo=1", ["eval.foo=1", "chips"]),
    ("+runtime.foo=1", ["runtime.foo=1", "threads"]),
    # wrong types
    # wrong types fail in the loader (experiments.config), the one validation path
    ("admm.lr=abc", ["admm.lr='abc' is invalid", "a value of type float"]),
    ("crossbar.tile_rows=1.5", ["crossbar.tile_rows=1.5", "an integer in [1, inf]"]),
    ("admm.constraints=5", ["admm.constraints=5", "list"]),
    ("resume=maybe", ["resume='maybe'", "true or false"]),
    ("train.lr=nan", ["train.lr=nan", "float"]),
    # negative rates and sigmas
    ("device.programming.sigma=-0.1", ["device.programming.sigma=-0.1", "[0.0, 3.0]"]),
    ("device.read_noise.sigma=-1", ["device.read_noise.sigma=-1", "[0.0, 1.0]"]),
    ("device.faults.sa0_rate=-0.1", ["device.faults.sa0_rate=-0.1", "[0.0, 1.0]"]),
    ("device.faults.sa1_rate=1.5", ["device.faults.sa1_rate=1.5", "[0.0, 1.0]"]),
    ("train.lr=-1", ["train.lr=-1", "(0, 10]"]),
    ("admm.rho=-1", ["admm.rho=-1", "0 < rho"]),
    ("admm.weight_decay=-1", ["admm.weight_decay=-1", "[0.0, 1.0]"]),
    ("admm.momentum=-1", ["admm.momentum=-1", "[0.0, 1.0]"]),
    # g_min >= g_max
    ("device.g_min_uS=100", ["device.g_min_uS=100", "below g_max_uS=100.0"]),
    ("device.g_max_uS=0.5", ["device.g_min_uS=1.0", "below g_max_uS=0.5"]),
    # pruned ratios outside [0, 1)
    ("admm.constraints.1.row_ratio=1.0", ["admm.constraints[1].row_ratio=1.0", "[0, 1)"]),
    ("admm.constraints.1.col_ratio=-0.1", ["admm.constraints[1].col_ratio=-0.1", "[0, 1)"]),
    # tile sizes, bits, levels
    ("crossbar.tile_rows=0", ["crossbar.tile_rows=0", "[1, inf]"]),
    ("crossbar.tile_cols=0", ["crossbar.tile_cols=0", "[1, inf]"]),
    ("+admm.constraints.1.block=[0,4]", ["admm.constraints[1].block=(0, 4)", ">= 1"]),
    ("crossbar.dac_bits=0", ["crossbar.dac_bits=0", "[1, 24]"]),
    ("crossbar.adc_bits=0", ["crossbar.adc_bits=0", "[1, 24]"]),
    ("crossbar.weight_bits=0", ["crossbar.weight_bits=0", "[1, 32]"]),
    ("admm.levels=1", ["admm.levels=1", ">= 2"]),
    ("device.n_levels=1", ["device.n_levels=1", "[2, 4096]"]),
    ("+admm.constraints.0.levels=1", ["admm.constraints[0].levels=1", ">= 2"]),
    # counts
    ("seed=-1", ["seed=-1", ">= 0"]),
    ("train.epochs=-1", ["train.epochs=-1", "[0, 10000]"]),
    ("admm.prune_epochs=-1", ["admm.prune_epochs=-1", ">= 0"]),
    ("admm.update_every=0", ["admm.update_every=0", ">= 1"]),
    ("eval.chips=0", ["eval.chips=0", "[1, 10000]"]),
    ("runtime.threads=0", ["runtime.threads=0", "[1, 1024]"]),
    ("dataset.subset=0", ["dataset.subset=0", ">= 1"]),
    # robustness group
    ("robustness.miss_rate=1.5", ["robustness.miss_rate=1.5", "[0.0, 1.0]"]),
    ("robustness.spare_rows=-1", ["robustness.spare_rows=-1", "[0, 4096]"]),
    ("robustness.placement=maybe", ["robustness.placement='maybe'", "bool"]),
    ("robustness.calibration_samples=1", ["robustness.calibration_samples=1", "[2, 100000]"]),
    ("+robustness.bogus=1", ["robustness.bogus=1", "a key of robustness"]),
    ("robustness.write_verify={tolerance_uS: -1}", ["write_verify.tolerance_uS=-1", "0.0"]),
    ("+crossbar.spare_cols=2", ["crossbar.spare_cols=2", "robustness.spare_cols"]),
])
def test_bad_config_names_key_value_and_range(override, words):
    with pytest.raises((ValueError, ConfigCompositionException)) as info:
        load_compress_config(_compose([override]))
    text = f"{info.value} {info.value.__cause__ or ''}"
    for word in words:
        assert word in text, (word, text)


@pytest.mark.parametrize("overrides, words", [
    (["admm.constraints.1.row_ratio=null", "+admm.constraints.1.row_keep=151"],
     ["admm.constraints[1].row_keep=151", "'features.3'", "150 crossbar rows", "[1, 150]"]),
    (["admm.constraints.2.col_ratio=null", "+admm.constraints.2.col_keep=121"],
     ["admm.constraints[2].col_keep=121", "'classifier.0'", "120 crossbar columns", "[1, 120]"]),
    (["+admm.constraints.0.block_keep=2", "+admm.constraints.0.block=[32,32]"],
     ["admm.constraints[0].block_keep=2", "'features.0'", "1 blocks of 32x32", "[1, 1]"]),
    (["admm.constraints.0.pattern=nope"], ["admm.constraints", "'nope'", "features.0"]),
])
def test_pruning_count_vs_layer_fails_before_training(overrides, words, tmp_path):
    with pytest.raises(ValueError) as info:
        run_compress(_compose(RUN + overrides), tmp_path)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert not any((tmp_path / n).exists() for n in ("pretrain_state.pt", "dense.pt"))


# ------------------------------------------------------------------------------ checkpoints
def test_interrupted_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_atomic({"w": torch.ones(3)}, path)

    def broken(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"w": torch.zeros(3)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("content, words", [
    ("truncated", ["unreadable", "state.pt"]),
    ("code", ["unreadable", "state.pt"]),
    ("missing", ["does not exist"]),
])
def test_unreadable_checkpoint(tmp_path, content, words):
    path = tmp_path / "state.pt"
    if content == "truncated":
        save_atomic({"w": torch.ones(100)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "code":  # weights_only=True refuses to run pickled code
        torch.save({"x": _Payload()}, path)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        load_checkpoint(path)
    for word in words:
        assert word in str(info.value)


def test_train_checkpoint_of_another_model(tmp_path):
    other = tmp_path / "mlp.pt"
    torch.save(build_model("mlp", input_shape=(1, 8, 8)).state_dict(), other)
    with pytest.raises(CheckpointMismatchError, match="another model.*net.1.weight"):
        run_compress(_compose(RUN + [f"train.checkpoint={other}"]), tmp_path / "run")


def _tiny_loader(n=32, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _tiny_config(**kw):
    return CompressConfig([LayerConstraint(pattern="0", row_ratio=0.5, levels=4)],
                          prune_epochs=2, prune_retrain_epochs=1, quant_epochs=1,
                          quant_retrain_epochs=1, progress=False, **kw)


def test_library_checkpoint_of_other_config_or_model(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "admm_state.pt"
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    compress(model, _tiny_loader(), _tiny_config(), checkpoint=ckpt,
             fingerprint={"admm": {"lr": 0.001}})
    again = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(CheckpointMismatchError, match=r"admm\.lr=0\.001 in the checkpoint, 0\.01"):
        compress(again, _tiny_loader(), _tiny_config(), checkpoint=ckpt,
                 fingerprint={"admm": {"lr": 0.01}})
    wider = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3))
    with pytest.raises(CheckpointMismatchError, match=r"another model.*0\.weight: \(5, 6\)"):
        compress(wider, _tiny_loader(), _tiny_config(), checkpoint=ckpt)


# ------------------------------------------------------------------- SIGTERM and resume
def _stage_of(path: Path) -> tuple[str, int] | None:
    """(stage, epoch) of a checkpoint, None while it does not exist yet."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if path.name == "pretrain_state.pt":
        return "pretrain", len(state["history"])
    from memxbar.admm.pipeline import STAGES
    return STAGES[state["stage"]], state["epoch"]


def _kill_during(run_dir: Path, checkpoint: str, stage: str, resume: bool) -> None:
    """Start a compress run, SIGTERM it once ``checkpoint`` shows >= 1 finished epoch of
    ``stage``, and check that it stopped cleanly inside that stage."""
    cmd = [sys.executable, "-m", "memxbar.experiments.compress", *RUN, f"hydra.run.dir={run_dir}",
           f"resume={str(resume).lower()}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # a generous deadline: under pytest-xdist the run shares the cores with other tests'
    path, deadline = run_dir / checkpoint, time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen = _stage_of(path)
            if seen is not None and seen[0] == stage and seen[1] >= 1:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM" in err and "resume=true" in err
    assert not (run_dir / "metrics.json").exists()
    assert _stage_of(path)[0] == stage  # stopped inside the target stage, checkpoint readable


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    return run_dir, run_compress(_compose(RUN), run_dir)


def test_sigterm_and_resume_match_uninterrupted_run(reference_run, tmp_path):
    ref_dir, ref = reference_run
    run_dir = tmp_path / "run"
    _kill_during(run_dir, "pretrain_state.pt", "pretrain", resume=False)
    _kill_during(run_dir, "admm_state.pt", "prune", resume=True)           # during ADMM
    _kill_during(run_dir, "admm_state.pt", "prune_retrain", resume=True)   # during retraining
    metrics = run_compress(_compose(RUN + ["resume=true"]), run_dir)
    for key in ("dense_accuracy", "compressed_accuracy", "crossbar_ideal_accuracy",
                "crossbar_accuracies", "compression_ratio", "tiles"):
        assert metrics[key] == ref[key], key
    assert json.loads((run_dir / "metrics.json").read_text())["crossbar_accuracies"] == \
        ref["crossbar_accuracies"]
    ours, theirs = (torch.load(d / "compressed.pt", weights_only=True) for d in (run_dir, ref_dir))
    assert ours["masks"].keys() == theirs["masks"].keys()
    for name in ours["masks"]:
        assert torch.equal(ours["masks"][name], theirs["masks"][name]), name
    for key, value in ours["model"].items():
        assert torch.equal(value, theirs["model"][key]), key


def test_resume_rules_and_changed_config(reference_run, tmp_path):
    ref_dir, _ = reference_run
    with pytest.raises(ValueError, match="resume=false, but .* already holds results"):
        run_compress(_compose(RUN), ref_dir)
    with pytest.raises(ValueError, match="resume=true, but .* holds no earlier run"):
        run_compress(_compose(RUN + ["resume=true"]), tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"dense\.pt.*train\.lr=0\.003"):
        run_compress(_compose(RUN + ["resume=true", "train.lr=0.01"]), ref_dir)
    with pytest.raises(CheckpointMismatchError,
                       match=r"compressed\.pt.*admm\.prune_epochs=6 in the checkpoint, 7 now"):
        run_compress(_compose(RUN + ["resume=true", "admm.prune_epochs=7"]), ref_dir)


def test_sigterm_becomes_exit_143(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, \
            sigterm_as_exit(tmp_path, "memxbar.experiments.compress"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_checkpoint_write_finishes_the_write_then_exits_143(tmp_path,
                                                                          monkeypatch):
    """Regression (CI): SIGTERM inside torch.save broke its zip writer, whose clean-up raised a
    RuntimeError that hid the Terminated (exit 1, not 143). The write now completes first."""
    path = tmp_path / "state.pt"
    real_save = torch.save

    def save_with_signal(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-write
        time.sleep(0.2)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_with_signal)
    with pytest.raises(Terminated) as info, \
            sigterm_as_exit(tmp_path, "memxbar.experiments.compress"):
        save_atomic({"w": torch.arange(4.0)}, path)
    assert info.value.code == 143
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4.0))  # the write completed
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_failure_that_hides_a_sigterm_exits_as_terminated():
    from memxbar.experiments.runtime import _cause

    try:
        try:
            raise Terminated(143)
        except Terminated:
            raise RuntimeError("unexpected pos 204992 vs 204884")  # noqa: B904
    except RuntimeError as exc:
        assert isinstance(_cause(exc, Terminated), Terminated)
        assert _cause(exc, KeyError) is None


# ------------------------------------------------------------------------ divergence guard
class _NanAfter(nn.Module):
    """Identity until ``step`` forward passes in training mode, NaN from then on."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        return x * float("nan") if self.calls >= self.step else x


def test_nan_loss_in_admm_names_stage_step_layer(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), _NanAfter(step=6), nn.Linear(5, 3))
    ckpt = tmp_path / "admm_state.pt"
    with pytest.raises(DivergenceError) as info:   # 4 batches per epoch: step 6 = epoch 2, batch 1
        compress(model, _tiny_loader(), _tiny_config(), checkpoint=ckpt)
    msg = str(info.value)
    for word in ("prune stage, epoch 2", "batch 1", "loss=nan", "layer '1'", "kept"):
        assert word in msg, (word, msg)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_weights_at_epoch_end_keep_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    steps = [0]

    def poison(grad):  # the last step of epoch 2 writes NaN weights; its loss was finite
        steps[0] += 1
        return grad * float("nan") if steps[0] == 8 else grad

    model[2].weight.register_hook(poison)
    ckpt = tmp_path / "admm_state.pt"
    with pytest.raises(DivergenceError, match=r"parameter '2\.weight' holds NaN/Inf at the end "
                                              r"of prune stage, epoch 2.*kept"):
        compress(model, _tiny_loader(), _tiny_config(), checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_nan_in_pretraining(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), _NanAfter(step=7), nn.Linear(5, 3))
    ckpt = tmp_path / "pretrain_state.pt"
    with pytest.raises(DivergenceError, match=r"pretraining epoch 2: .*batch 2 of the epoch.*"
                                              r"layer '1'.*kept"):
        fit(model, (_tiny_loader(), _tiny_loader()), 3, 1e-2, progress=False, checkpoint=ckpt)
    assert len(torch.load(ckpt, weights_only=True)["history"]) == 1


# --------------------------------------------------------------------------- corrupt inputs
@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return build_model("lenet5", input_shape=(1, 8, 8))


@pytest.mark.parametrize("batch, words", [
    (torch.randn(4, 1, 28, 28), ["(4, 1, 28, 28)", "(N, 1, H, W)", "'features.0'"]),
    (torch.randn(4, 3, 8, 8), ["(4, 3, 8, 8)", "(N, 1, H, W)", "1 input channels"]),
    (torch.randn(4, 64), ["(4, 64)", "(N, 1, H, W)"]),
    (torch.zeros(0, 1, 8, 8), ["(0, 1, 8, 8)", "non-empty"]),
    (torch.ones(4, 1, 8, 8, dtype=torch.long), ["torch.int64", "torch.float32 tensor"]),
])
def test_calibration_batch_of_wrong_shape(lenet, batch, words):
    device, config = crossbar.DeviceModel(), crossbar.CrossbarConfig()
    with pytest.raises(ValueError) as info:
        crossbar.to_crossbar(lenet, device, config, calibration=batch)
    xmodel = crossbar.to_crossbar(lenet, device, config, calibration=torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError) as again:
        xmodel.calibrate(batch)
    for word in words:
        assert word in str(info.value) and word in str(again.value), word


def test_model_without_crossbar_layer():
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(ValueError, match="no Linear, Conv1d, Conv2d or attention projection"):
        crossbar.to_crossbar(model, crossbar.DeviceModel(), crossbar.CrossbarConfig())
    with pytest.raises(ValueError, match="no Linear, Conv1d, Conv2d or attention projection"):
        crossbar.plan_model(model, crossbar.CrossbarConfig())
    with pytest.raises(ValueError, match="no Linear, Conv1d, Conv2d or attention projection"):
        compress(model, _tiny_loader(), _tiny_config())


def test_empty_training_loader():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="no batches"):
        compress(model, empty, _tiny_config())
    with pytest.raises(ValueError, match="no batches"):
        fit(model, (empty, _tiny_loader()), 1, 1e-3, progress=False)


def test_dense_model_at_chance_stops_before_compression(tmp_path):
    """Pretraining that leaves the model at chance (here: no epochs) stops the run with the
    likely causes instead of compressing noise; dense.pt is kept."""
    with pytest.raises(DivergenceError, match=r"dense model is at chance after pretraining.*"
                                              r"train\.epochs=0 is too few"):
        run_compress(_compose(RUN + ["train.epochs=0"]), tmp_path)
    assert (tmp_path / "dense.pt").exists() and not (tmp_path / "admm_state.pt").exists()
