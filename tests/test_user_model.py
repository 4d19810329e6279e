"""Your own model and data through both apps (issue 20): a module outside the package, named by
``_target_`` in the user's own config folder, runs end to end through ``experiments.compress``
and ``experiments.device_study``, and the run's saved ``config.yaml`` re-runs it in a fresh
folder with the same results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from memxbar.experiments.conf_source import CONF_DIR
from memxbar.experiments.config import load_compress_config
from tests.test_reliability import RUN

USER_MODULE = '''
"""A researcher's own model and data, outside the memxbar package."""
import math

import torch
from torch import nn
from torch.utils.data import TensorDataset


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=24):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class WrongWidth(nn.Module):
    """Builds, but its first layer takes 10 inputs whatever the data has."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(10, num_classes))

    def forward(self, x):
        return self.net(x)


class TooFewScores(TinyNet):
    """Runs, but gives one score fewer than there are classes."""

    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes - 1)


def blobs(n_train=480, n_test=160, classes=4, seed=0):
    """Gaussian blobs on a 1 x 6 x 6 grid: (train, test) as a pair and as a TensorDataset."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(classes, 1, 6, 6, generator=g)

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        return centres[y] + torch.randn(n, 1, 6, 6, generator=g), y

    return draw(n_train), TensorDataset(*draw(n_test))
'''

USER_CONF = {
    "model/tiny.yaml": "_target_: user_zoo.TinyNet\nhidden: 24\n",
    "dataset/blobs.yaml": "_target_: user_zoo.blobs\nn_train: 480\nclasses: 4\n"
                          "batch_size: 32\n",
    "admm/tiny.yaml": textwrap.dedent("""\
        defaults:
          - lenet5_digits
          - _self_
        constraints:
          - {pattern: net.1, row_ratio: 0.5, col_ratio: 0.5}
          - {pattern: net.3, row_ratio: 0.5}
        prune_epochs: 2
        prune_retrain_epochs: 2
        quant_epochs: 1
        quant_retrain_epochs: 1
        """),
}
FAST = ["model=tiny", "dataset=blobs", "admm=tiny", "train.epochs=3", "eval.chips=2",
        "eval.calibration_samples=32", "runtime.progress=false", "runtime.device=cpu",
        "robustness.ablation=false", "robustness.hardware_aware=false"]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "user_zoo.py").write_text(USER_MODULE)
    for name, text in USER_CONF.items():
        (root / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "conf" / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    return root, env


def _app(app, args, env, cwd):
    out = subprocess.run([sys.executable, "-m", f"memxbar.experiments.{app}", *args], env=env,
                         cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_a_user_model_and_data_run_through_both_apps_and_rerun_from_the_saved_config(user):
    root, env = user
    conf = ["--config-dir", str(root / "conf")]
    run = root / "run"
    _app("compress", [*conf, *FAST, f"hydra.run.dir={run}"], env, root)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "TinyNet" and metrics["dataset"] == "blobs"
    assert metrics["dense_accuracy"] > 50 and len(metrics["crossbar_accuracies"]) == 2
    assert metrics["compression_ratio"] > 1.5  # the user's admm constraints pruned it
    saved = (run / "config.yaml").read_text()
    assert "_target_: user_zoo.TinyNet" in saved and "_target_: user_zoo.blobs" in saved

    again = root / "again"  # the saved config alone rebuilds the same run elsewhere
    _app("compress", ["--config-path", str(run), "--config-name", "config",
                      f"hydra.run.dir={again}"], env, root)
    rerun = json.loads((again / "metrics.json").read_text())
    for key in ("dense_accuracy", "compressed_accuracy", "crossbar_accuracies",
                "compression_ratio", "energy_nJ", "area_mm2"):
        assert rerun[key] == metrics[key], key

    study = root / "study"
    _app("device_study", [*conf, *FAST, f"study.source={run}", "~study.sweeps",
                          "+study.sweeps={adc_bits: [4, 8]}",
                          "study.grids=[]", f"hydra.run.dir={study}"], env, root)
    result = json.loads((study / "metrics.json").read_text())
    assert result["model"] == "TinyNet"
    assert [r["value"] for r in result["study"] if r["model"] == "compressed"] == [4, 8]


def _compose(overrides, conf_dir):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"hydra.searchpath=[file://{conf_dir}]", *overrides])


@pytest.mark.parametrize("override, words", [
    ("model._target_=user_zoo.NoSuchNet", "model._target_='user_zoo.NoSuchNet' is invalid; "
                                          "allowed: an attribute of module 'user_zoo'"),
    ("model._target_=nowhere_pkg.Net", "import of 'nowhere_pkg' failed"),
    ("model._target_=TinyNet", "an importable dotted path"),
    ("+model.depth=3", "model.depth=3 is invalid; allowed: a parameter of user_zoo.TinyNet: "
                       "input_shape, num_classes, hidden"),
    ("+dataset.noise=0.1", "dataset.noise=0.1 is invalid; allowed: a parameter of "
                           "user_zoo.blobs: n_train, n_test, classes, seed"),
    ("dataset._target_=user_zoo.TinyNet", "dataset.n_train=480 is invalid; allowed: a "
                                          "parameter of user_zoo.TinyNet"),
    ("dataset.n_train=-5", None),  # the user's function raises: refused in the preflight
])
def test_bad_user_targets_fail_clearly_before_any_work(user, monkeypatch, override, words):
    root, _ = user
    monkeypatch.syspath_prepend(str(root))
    cfg = _compose(["model=tiny", "dataset=blobs", "admm=tiny", override], root / "conf")
    if words is None:
        from memxbar.experiments.stages import preflight

        with pytest.raises(ValueError, match=r"dataset._target_='user_zoo.blobs' failed with "
                                             r"arguments \{'n_train': -5, 'classes': 4\}: "):
            preflight(load_compress_config(cfg))
        return
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        load_compress_config(cfg)


@pytest.mark.parametrize("target, words", [
    ("user_zoo.WrongWidth", "model: WrongWidth does not take blobs inputs of shape "
                            "(N, 1, 6, 6): a and b must have same reduction dim"),
    ("user_zoo.TooFewScores", "gives outputs of shape (2, 3) for blobs; allowed: (N, 4)"),
])
def test_a_model_that_does_not_take_the_data_is_refused_before_any_work(user, monkeypatch,
                                                                        target, words):
    """A dry forward pass on the ``meta`` device (no memory, no compute) in the preflight: a
    model that builds but cannot take the data failed only once training started."""
    from memxbar.experiments.stages import preflight

    root, _ = user
    monkeypatch.syspath_prepend(str(root))
    cfg = _compose(["model=tiny", "dataset=blobs", "admm=tiny", f"model._target_={target}",
                    "~model.hidden", "admm.constraints=[{pattern: net.1, row_ratio: 0.5}]"],
                   root / "conf")
    with pytest.raises(ValueError, match=re.escape(words)):
        preflight(load_compress_config(cfg))


def test_user_data_shapes_and_labels_are_checked(user, monkeypatch):
    from memxbar.experiments.data import user_splits

    root, _ = user
    monkeypatch.syspath_prepend(str(root))
    train, test = user_splits("user_zoo.blobs", {"n_train": 40, "n_test": 8})
    assert train.tensors[0].shape == (40, 1, 6, 6) and test.tensors[1].dtype == torch.int64
    module = root / "bad_data.py"
    module.write_text("import torch\n"
                      "def floats():\n    return (torch.ones(4, 3), torch.rand(4)), "
                      "(torch.ones(2, 3), torch.zeros(2, dtype=torch.long))\n"
                      "def nan():\n    x = torch.ones(4, 3); x[0, 0] = float('nan')\n"
                      "    return (x, torch.zeros(4, dtype=torch.long)),"
                      " (x, torch.zeros(4, dtype=torch.long))\n"
                      "def one():\n    return torch.ones(3)\n")
    for name, words in (("floats", "labels of dtype torch.float32"),
                        ("nan", "non-finite values"), ("one", "returning \\(train, test\\)")):
        with pytest.raises(ValueError, match=words):
            user_splits(f"bad_data.{name}", {})


def test_two_sweep_jobs_started_at_once_train_once(tmp_path):
    """Parallel sweep jobs on a fresh ``runtime.cache_dir``: the file lock around "train or
    load" lets one job pretrain and compress while the other waits and reuses both models."""
    fast = [*RUN, "robustness.ablation=false", "robustness.hardware_aware=false",
            f"runtime.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    jobs = [subprocess.Popen([sys.executable, "-m", "memxbar.experiments.compress", *fast,
                              f"crossbar.adc_bits={bits}",
                              f"hydra.run.dir={tmp_path / str(bits)}"], env=env,
                             cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for bits in (6, 8)]
    logs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], logs
    trained = [log for log in logs if "pretrain epoch" in log]
    reused = [log for log in logs if "dense model reused from the cache" in log]
    assert len(trained) == 1 and len(reused) == 1, logs
    assert "compressed model reused from the cache" in reused[0]
    assert "compressed model reused from the cache" not in trained[0]
    assert len(list((tmp_path / "cache").glob("dense-*.pt"))) == 1
    assert len(list((tmp_path / "cache").glob("compressed-*.pt"))) == 1
