"""Issue 22 regressions: required means required (``???`` is an error naming the key, never a
default), chip seeds are integers that name distinct chips, and ``hydra.job.name`` cannot
write the log outside the run folder."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_experiments import _compose
from torch import nn

from memxbar import crossbar
from memxbar.experiments.config import load_compress_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, key", [
    ("train.lr=???", "train.lr"),                       # trained with the default lr before
    ("runtime.cache_dir=???", "runtime.cache_dir"),     # a folder named '???' before
    ("device.g_max_uS=???", "device.g_max_uS"),
    ("admm.constraints.0.pattern=???", "admm.constraints[0].pattern"),
])
def test_a_required_value_left_unset_is_an_error_naming_the_key(override, key):
    with pytest.raises(ValueError, match=rf"{key.replace('[', '.').replace(']', '.')}='\?\?\?' "
                                         r"is invalid; allowed: a value"):
        load_compress_config(_compose([override]))


def _chip():
    model = nn.Sequential(nn.Linear(4, 3))
    return model, crossbar.CrossbarConfig(adc_bits=None, dac_bits=None)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, 1.9, "1", True, None])
def test_chip_seeds_are_integers_in_range(seed):
    model, config = _chip()
    with pytest.raises(ValueError, match="seed=.* is invalid; allowed: an integer in"):
        crossbar.to_crossbar(model, crossbar.DeviceModel(n_levels=16), config, seed=seed)
    chip = crossbar.to_crossbar(model, crossbar.DeviceModel(n_levels=16), config, seed=0)
    with pytest.raises(ValueError, match=r"program: seed=.* is invalid"):
        chip.program(seed)


def test_integer_like_seeds_are_the_same_chip():
    model, config = _chip()
    device = crossbar.DeviceModel(n_levels=16, prog_sigma=0.1)
    chips = [crossbar.to_crossbar(model, device, config, seed=s)
             for s in (7, np.int64(7), torch.tensor(7))]
    g = [next(m for _, m in crossbar.convert.crossbar_modules(c)).g_uS for c in chips]
    assert torch.equal(g[0], g[1]) and torch.equal(g[0], g[2])


def test_a_job_name_that_leaves_the_run_folder_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "memxbar.experiments.compress",
                          "hydra.job.name=../evil", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1 and "hydra.job.name='../evil' is invalid" in out.stderr
    assert not (tmp_path / "evil.log").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("app, overrides, words", [
    ("compress", ["~robustness"], "~robustness='removed' is invalid; allowed: a value: removing "
     "a key would silently give the library default; set robustness=none"),
    ("compress", ["~train.lr"], "set train.lr=<value>"),
    ("compress", ["~runtime.threads"], "~runtime.threads='removed'"),
    ("device_study", ["~study.sweeps"], "~study.sweeps='removed'"),
])
def test_a_removed_key_is_refused_not_defaulted(tmp_path, app, overrides, words):
    """Issue 22, item 4: ``~robustness`` ran with the library's robustness defaults (output
    calibration on), the opposite of what removing it suggests."""
    out = subprocess.run([sys.executable, "-m", f"memxbar.experiments.{app}", *overrides,
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 1 and words in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, words", [
    ("robustness.spare_rows=4096", "robustness.spare_rows=4096 is invalid; allowed: an integer "
                                   "in [0, 128]"),   # the documented maximum, 32x the tile
    ("robustness.spare_cols=129", "robustness.spare_cols=129 is invalid; allowed: an integer "
                                  "in [0, 128]"),
])
def test_spares_are_bounded_by_the_tile(override, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_compress_config(_compose([override]))


def test_a_preset_that_would_be_ignored_is_refused():
    with pytest.raises(ValueError, match=r"device.preset='rram_neurram' is invalid.*would be "
                                         r"ignored: choose the option device=rram_neurram"):
        load_compress_config(_compose(["+device.preset=rram_neurram"]))
    exp = load_compress_config(_compose([
        "+layers.devices={features.0: {preset: rram_neurram, n_levels: 8}}", "admm.levels=16"]))
    assert exp.layer_devices["features.0"].n_levels == 8  # a preset with its changes: acts


@pytest.mark.parametrize("value", [1e-300, 1e-9])
def test_a_wire_resistance_the_solver_cannot_take_is_refused(value):
    with pytest.raises(ValueError, match=r"array.r_row_ohm=.* is invalid; allowed: 0 \(no "
                                         r"resistance\) or a number in \[1e-06, 1e6\] ohm"):
        crossbar.CrossbarConfig(array={"model": "wire_resistance", "r_row_ohm": value})


def test_the_first_layer_kept_digital_with_calibrated_converters(tmp_path):
    """Issue 25: the calibration batch is the model's own input, checked against its first
    layer (digital here), not the first crossbar layer (6 channels)."""
    from test_experiments import TINY

    from memxbar.experiments.pipeline import run_compress

    metrics = run_compress(_compose([*TINY, "+layers.digital=[features.0]",
                                     "robustness.ablation=false"]), tmp_path)
    assert metrics["layers"]["digital"] == ["features.0"]
    assert metrics["crossbar_accuracy_mean"] > 20  # ran on chips, not refused
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten())
    x = torch.randn(8, 1, 8, 8)
    chip = crossbar.to_crossbar(conv, crossbar.DeviceModel(n_levels=16),
                                crossbar.CrossbarConfig(dac_bits=6, adc_bits=6), calibration=x,
                                digital=["0"])
    chip.program(3)  # recalibrates on the stored batch: the model's input, 1 channel
    assert chip(x).shape == (8, 2 * 4 * 4)


class _Speech(nn.Module):
    """A keyword spotter of the issue's kind: an embedding, a GRU and a linear read-out."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.up = nn.ConvTranspose1d(16, 16, 2)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens):
        h, _ = self.gru(self.embed(tokens))
        return self.head(h[:, -1])


def test_layers_that_stay_digital_are_named():
    """Issue 25: transposed convolutions and embeddings are not mapped: say so by name
    (library warning; the run's warnings and report). The GRU is mapped now (its matrices on
    crossbars, tests/test_recurrent.py): not named."""
    from memxbar.crossbar.plan import unmapped_layers
    from memxbar.experiments.pipeline import unmapped_warnings

    model = _Speech()
    named = dict(unmapped_layers(model))
    assert set(named) == {"embed", "up"}
    assert "ConvTranspose1d" in named["up"] and "table lookup" in named["embed"]
    with pytest.warns(UserWarning, match=r"stay digital.*up \(ConvTranspose1d") as record:
        chip = crossbar.to_crossbar(model, crossbar.DeviceModel(n_levels=16),
                                    crossbar.CrossbarConfig(adc_bits=None, dac_bits=None))
    assert not any("gru" in str(w.message) for w in record)
    assert {"gru.ih_l0", "gru.hh_l0"} <= set(chip.mapping_plan.layers)
    messages = unmapped_warnings(model)
    assert len(messages) == 2 and all("neither simulated on the chips nor costed" in m
                                      for m in messages)


def _chip_and_model():
    from torch import nn

    from memxbar.crossbar import CrossbarConfig, DeviceModel, to_crossbar

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(32, 8)
    cfg = CrossbarConfig(output_calibration=True, adc_bits=6, dac_bits=6)
    return model, to_crossbar(model, DeviceModel(), cfg, calibration=x), x, cfg


def test_calibrate_outputs_refuses_a_reference_that_is_not_the_software_model():
    """Issue 22, item 8: the chip as its own reference (silently fitted to itself), another
    chip, a model of other shapes, a float64 model, inputs of another dtype or width, a
    boolean batch size: each one message naming it, before any gain is changed."""
    import copy

    from torch import nn

    from memxbar.crossbar import calibrate_outputs, to_crossbar
    from memxbar.crossbar.device import DeviceModel

    model, chip, x, cfg = _chip_and_model()
    other_chip = to_crossbar(model, DeviceModel(), cfg, calibration=x, seed=1)
    wider = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3))
    gains = [m.out_gain.clone() for m in chip.modules() if hasattr(m, "out_gain")]
    for reference, inputs, kwargs, words in [
            (chip, x, {}, "reference is the chip itself"),
            (other_chip, x, {}, "is a crossbar layer (a chip, not software)"),
            (wider, x, {}, "weight of shape (7, 8), the chip's holds [6, 8]"),
            (copy.deepcopy(model).double(), x, {}, "reference of dtype torch.float64 is invalid"),
            (model, x.double(), {}, "dtype torch.float64 is invalid"),
            (model, torch.randn(32, 9), {}, "batch of shape (32, 9) does not fit the model"),
            (model, x, {"batch_size": True}, "batch_size=True is invalid"),
            ("abc", x, {}, "reference of type str is invalid")]:
        with pytest.raises((ValueError, TypeError), match=re.escape(words)):
            calibrate_outputs(chip, reference, inputs, **kwargs)
    assert all(torch.equal(a, m.out_gain) for a, m in zip(
        gains, [m for m in chip.modules() if hasattr(m, "out_gain")], strict=True))
    calibrate_outputs(chip, model, x)  # the software model itself is fine


@pytest.mark.parametrize("kwargs, words", [
    ({"masks": {"0": torch.ones(5, 5, dtype=torch.bool)}},
     "masks['0'] shape=(5, 5) is invalid; allowed: a tensor of shape (6, 8)"),
    ({"masks": {"0": [[1]]}}, "masks['0'] shape='list' is invalid"),
    ({"masks": {"0": torch.full((6, 8), 0.5)}}, "masks['0'] values=[0.5] is invalid"),
    ({"masks": [1]}, "masks of type list is invalid"),
    ({"scales": {"zz": 1.0}}, "scales key='zz' is invalid; allowed: names of mapped layers"),
    ({"double_model": True}, "0.weight of dtype torch.float64 is invalid"),
    ({"calibration": "double"}, "dtype torch.float64 is invalid"),
])
def test_to_crossbar_names_a_bad_mask_scale_or_dtype(kwargs, words):
    """A wrong-shaped mask or a float64 model was reported as 'calibration batch does not fit
    the model' (the mask reshape and the dtype clash ran inside the calibration's forward);
    an unknown scales key was ignored."""
    from memxbar.crossbar import DeviceModel, to_crossbar

    model, _, x, cfg = _chip_and_model()
    if kwargs.pop("double_model", False):
        model = model.double()
    if kwargs.pop("calibration", None) == "double":
        x = x.double()
    with pytest.raises(ValueError, match=re.escape(words)):
        to_crossbar(model, DeviceModel(), cfg, calibration=x, **kwargs)


def test_collapse_messages_name_the_cause_the_settings_point_to(tmp_path):
    """Issue 22, item 9: 'train.lr=1e-300' was blamed as 'too high'; a one-sample test set gave
    a silent 100 % run. Now the dense check names a learning rate too low, and a test set too
    small to measure is a warning in metrics.json naming its key (and a likely cause of any
    collapse)."""
    from test_experiments import TINY

    from memxbar.admm import DivergenceError
    from memxbar.experiments.pipeline import run_compress

    with pytest.raises(DivergenceError, match=r"train\.lr=1e-300 is too low for the weights "
                                              r"to move"):
        run_compress(_compose([*TINY, "train.lr=1e-300"]), tmp_path / "low")
    with pytest.raises(DivergenceError, match=r"train\.lr=8\.0 is too high"):
        run_compress(_compose([*TINY, "train.lr=8.0"]), tmp_path / "high")
    metrics = run_compress(_compose([*TINY, "dataset.test_subset=3",
                                     "robustness.ablation=false"]), tmp_path / "small")
    assert any("dataset.test_subset holds only 3 samples" in w and "+-" in w
               for w in metrics["warnings"]), metrics["warnings"]


def test_a_stopped_stage_logs_its_reason(caplog):
    """Issue 25: a failed stage's log line ended "stopped after 0.0 s (FileNotFoundError)"
    without the message."""
    from memxbar.experiments.runtime import timed

    with caplog.at_level("WARNING"), pytest.raises(FileNotFoundError):
        with timed({}, "data"):
            raise FileNotFoundError("dataset.data_dir='x' holds no train-images-idx3-ubyte")
    assert "stage data: stopped after" in caplog.text
    assert "(FileNotFoundError: dataset.data_dir='x' holds no train-images-idx3-ubyte)" in \
        caplog.text
