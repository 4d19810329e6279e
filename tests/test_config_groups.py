"""The config groups as users meet them (issue 20): one validation path (the loader, built on
the library classes), device presets defined once (Python, registered in Hydra's ConfigStore),
no 0.1 shorthands, and Hydra's ``--help`` / ``--cfg job`` without ``???`` or internal groups."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

from memxbar.crossbar import DeviceModel
from memxbar.crossbar.device import PRESETS
from memxbar.experiments import presets
from memxbar.experiments.conf_source import CONF_DIR
from memxbar.experiments.config import load_compress_config

GROUPS = ("model", "dataset", "device", "crossbar", "admm", "cost", "robustness")


def _compose(overrides, name="config"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(name, overrides=overrides)


def test_device_presets_are_defined_once_and_compose_to_the_library_preset():
    names = presets.register()
    assert names == list(PRESETS)
    yaml_copies = {p.stem for p in (CONF_DIR / "device").glob("*.yaml")}
    assert not yaml_copies & set(PRESETS), "a preset has a YAML copy beside its Python one"
    for name in PRESETS:
        assert ConfigStore.instance().load(f"device/{name}.yaml") is not None
        exp = load_compress_config(_compose([f"device={name}", "robustness.write_verify=null"]))
        assert exp.device == DeviceModel.preset(name), name
    # one field of a preset overridden the usual way, no '+' needed
    exp = load_compress_config(_compose(["device=rram_neurram", "device.n_levels=8",
                                         "admm.levels=8"]))
    assert exp.device == DeviceModel.preset("rram_neurram").with_(n_levels=8)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_file_validates(group):
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        overrides = [f"{group}={path.stem}"]
        if group == "model" and path.stem == "mlp":
            overrides.append("admm=mlp_digits")
        if group == "admm" and path.stem == "budget":
            overrides.append("+allocation={budget: 4}")
        cfg = _compose(overrides)
        if group == "admm" and path.stem not in ("budget", "lenet5_digits", "lenet5_mnist"):
            continue  # constraints of another model: the preflight checks them against it
        if group in ("model", "dataset") and path.stem not in ("lenet5", "digits", "mlp"):
            continue  # needs its data files / its own admm constraints
        load_compress_config(cfg)


@pytest.mark.parametrize(("override", "words"), [
    ("crossbar.tile_rows=abc", "crossbar.tile_rows"),
    ("crossbar.tile_rows=1.5", "crossbar.tile_rows"),
    ("device.n_levels=many", "device.n_levels"),
    ("cost.clock_MHz=fast", "cost.clock_MHz"),
    ("dataset.batch_size=[1,2]", "dataset.batch_size"),
    ("admm.prune_epochs=abc", "admm.prune_epochs"),
    ("+crossbar.tile_row=64", "crossbar.tile_row=64 is invalid"),   # a typo
    ("+robustness.spare=1", "robustness.spare=1 is invalid"),
    ("+device.prog_sigma=0.1", "device.prog_sigma=0.1 is invalid"),  # no 0.1 shorthands
    ("+device.read_sigma=0.02", "device.read_sigma=0.02 is invalid"),
    ("crossbar.drift_compensation=-1", "crossbar.drift_compensation=-1"),  # strict booleans
    ("dataset.verify=yes", "dataset.verify='yes'"),
])
def test_wrong_types_and_unknown_keys_fail_clearly_before_any_work(override, words):
    with pytest.raises(ValueError) as info:
        load_compress_config(_compose([override]))
    assert words in str(info.value) and "allowed" in str(info.value)


def test_the_composed_config_is_what_the_user_wrote():
    cfg = _compose([])
    text = str(cfg)
    assert "???" not in text and "schema" not in text
    exp = load_compress_config(cfg)
    assert cfg.runtime.progress == "auto"  # resolved on load: bars only on a terminal
    assert dataclasses.asdict(exp.runtime)["progress"] is False  # pytest captures stderr


@pytest.mark.parametrize("app", ["compress", "device_study"])
def test_help_names_the_app_and_shows_no_missing_values(app):
    out = subprocess.run([sys.executable, "-m", f"memxbar.experiments.{app}", "--help"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.startswith(f"memxbar.experiments.{app}:") and "powered by Hydra" not in out
    assert "???" not in out and "schema" not in out
    job = subprocess.run([sys.executable, "-m", f"memxbar.experiments.{app}", "--cfg", "job"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "???" not in job and "model:" in job
    hydra_cfg = subprocess.run([sys.executable, "-m", f"memxbar.experiments.{app}", "--cfg",
                                "hydra"], capture_output=True, text=True, timeout=120,
                               check=True).stdout
    assert f"name: {app}" in hydra_cfg  # the job name: the log file is <app>.log


class _Terminal:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_progress_auto_shows_bars_only_on_a_terminal(monkeypatch, tty):
    """Issue 25: ``runtime.progress: auto`` (the default) resolves to whether standard error is
    a terminal, so a batch job's or a multirun's log holds no bars; true/false force it."""
    monkeypatch.setattr(sys, "stderr", _Terminal(tty))
    exp = load_compress_config(_compose([]))
    assert exp.runtime.progress is tty
    assert load_compress_config(_compose(["runtime.progress=true"])).runtime.progress is True
    assert load_compress_config(_compose(["runtime.progress=false"])).runtime.progress is False
    # one job of a multirun: no bars even on a terminal (the jobs would interleave them)
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(
        lambda: SimpleNamespace(mode=RunMode.MULTIRUN, overrides=SimpleNamespace(task=[]))))
    assert load_compress_config(_compose([])).runtime.progress is False


@pytest.mark.parametrize("value", ["maybe", "1", "[true]", "null"])
def test_progress_refuses_other_values(value):
    with pytest.raises(ValueError,
                       match=r"runtime\.progress=.* is invalid; allowed: true, false or auto"):
        load_compress_config(_compose([f"runtime.progress={value}"]))
