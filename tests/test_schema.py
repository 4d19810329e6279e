"""Typed group schemas registered with Hydra (experiments/schema.py, issue 12): generated from
the classes that validate each group, so they cannot drift from them; every option file of
every group composes onto its schema; wrong types and unknown keys fail at composition."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from crossbar import CrossbarConfig, DeviceModel
from crossbar.cost import CostConfig
from crossbar.device import SHORTHANDS
from experiments.config import (
    AdmmSettings,
    DatasetSettings,
    RobustnessSettings,
    load_compress_config,
    to_container,
)
from experiments.models import MODELS
from experiments.pipeline import CONF_DIR
from experiments.schema import group_schemas, omegaconf_type, register

GROUPS = ("model", "dataset", "device", "crossbar", "admm", "cost", "robustness")


def _compose(overrides, name="config"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(name, overrides=overrides)


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_schemas_are_the_validating_classes_fields():
    schemas = register()
    assert set(schemas) == set(GROUPS)
    expected = {
        "crossbar": _names(CrossbarConfig) + ["bit_serial"],
        "device": _names(DeviceModel) + ["preset", *SHORTHANDS],
        "cost": _names(CostConfig),
        "admm": _names(AdmmSettings),
        "dataset": _names(DatasetSettings),
        "robustness": _names(RobustnessSettings),
    }
    for group, names in expected.items():
        assert _names(schemas[group]) == names, group
    model_args = {"name"} | {p for builder, *_ in MODELS.values()
                             for p in inspect.signature(builder).parameters}
    assert set(_names(schemas["model"])) == model_args
    for group in GROUPS:  # stored in Hydra's ConfigStore, where conf/config.yaml finds them
        assert ConfigStore.instance().load(f"schema/{group}.yaml") is not None


def test_typing_rules():
    assert omegaconf_type(int) is int and omegaconf_type(float) is float
    assert omegaconf_type(int | None) == (int | None) or str(omegaconf_type(int | None)) \
        == "typing.Optional[int]"
    assert str(omegaconf_type(list[float] | None)) == "typing.Optional[typing.List[float]]"
    assert omegaconf_type(bool) is Any  # OmegaConf would turn -1 into True
    assert omegaconf_type(dict) is Any and omegaconf_type(int | str) is Any
    crossbar = {f.name: f.type for f in dataclasses.fields(group_schemas()["crossbar"])}
    assert crossbar["tile_rows"] is int and crossbar["array"] is Any


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_file_composes_onto_its_schema(group):
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        overrides = [f"{group}={path.stem}"]
        if group == "model" and path.stem == "mlp":
            overrides.append("admm=mlp_digits")
        cfg = _compose(overrides)
        assert OmegaConf.get_type(cfg[group]).__name__.lower().startswith(group), path


@pytest.mark.parametrize(("override", "words"), [
    ("crossbar.tile_rows=abc", "crossbar.tile_rows"),
    ("crossbar.tile_rows=1.5", "crossbar.tile_rows"),
    ("device.n_levels=many", "device.n_levels"),
    ("cost.clock_MHz=fast", "cost.clock_MHz"),
    ("dataset.batch_size=[1,2]", "dataset.batch_size"),
    ("admm.prune_epochs=abc", "admm.prune_epochs"),
    ("crossbar.tile_row=64", "crossbar.tile_row"),   # a typo: not a key of the schema
    ("robustness.spare=1", "robustness.spare"),
])
def test_wrong_types_and_unknown_keys_fail_at_composition(override, words):
    with pytest.raises(ConfigCompositionException) as info:
        _compose([override])
    text = str(info.value) + str(info.value.__cause__ or "")
    assert words in text


def test_booleans_stay_strict_and_unset_keys_stay_unset(tmp_path):
    with pytest.raises(ValueError, match=r"crossbar.drift_compensation=-1 .*true or false"):
        load_compress_config(_compose(["crossbar.drift_compensation=-1"]))
    cfg = _compose([])
    assert OmegaConf.is_missing(cfg.dataset, "verify") or "verify" not in cfg.dataset
    data = to_container(cfg)
    assert "???" not in OmegaConf.to_yaml(OmegaConf.create(data))
    # the device's 0.1 shorthands exist in the schema but are unset: the preset fields rule
    assert "prog_sigma" not in data["device"] or data["device"]["prog_sigma"] is None
    load_compress_config(cfg)
