"""Typed, validated view of the Hydra configuration (``memxbar/conf/``).

``load_compress_config(cfg)`` and ``load_study_config(cfg)`` turn a composed ``DictConfig`` into
frozen dataclasses before any work starts. Every problem (an unknown key, a wrong type, a value
out of range) is one ``ValueError`` naming the full key, the value and what is allowed, e.g.
``device.programming.sigma=-0.1 is invalid; allowed: a finite number in [0.0, 3.0]``. The
``device``, ``crossbar`` and ``cost`` groups are validated by ``crossbar.DeviceModel``,
``CrossbarConfig`` and ``crossbar.cost.CostConfig`` themselves; the ``admm`` group by
``admm.LayerConstraint`` and
``admm.CompressConfig``. This is the one validation path: the apps, the library API
(``load_compress_config(dict)``) and ``experiments.replot`` all go through it, before any work
or any file is written.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from memxbar.crossbar import CrossbarConfig, DeviceModel
from memxbar.crossbar.cost import CostConfig
from memxbar.experiments import presets
from memxbar.experiments.checks import build, fail, known_keys, library_call, type_ok
from memxbar.experiments.compressors.registry import COMPRESSORS
from memxbar.experiments.settings import (
    ROBUSTNESS_KEYS,
    AdaptiveLevelsSettings,
    AdmmSettings,
    AllocationSettings,
    CompressExperiment,
    DatasetSettings,
    DecomposeSettings,
    EvalSettings,
    LayerSettings,
    ModelSettings,
    ObcSettings,
    RobustnessSettings,
    RuntimeSettings,
    StudyExperiment,
    StudySettings,
    TernarySettings,
    TrainSettings,
    device_from_dict,
)

__all__ = ["load_compress_config", "load_study_config", "to_container"]


def device_levels(n_levels: int | None, levels_uS: typing.Sequence[float] | None
                  ) -> int | None:
    """The device's level count, for the ``admm`` group's ``levels`` (the two groups share the
    quantity, so the config interpolates it: ``${device_levels:${device.n_levels},
    ${device.levels_uS}}``): ``len(levels_uS)`` for an explicit grid, ``n_levels`` otherwise,
    ``None`` (no quantization) for a continuous device."""
    return len(levels_uS) if levels_uS else n_levels


OmegaConf.register_new_resolver("device_levels", device_levels, replace=True)


def to_container(cfg: DictConfig | Mapping) -> dict:
    """Resolved plain ``dict`` of a ``DictConfig`` (without the ``hydra`` node)."""
    if isinstance(cfg, DictConfig):
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    else:
        data = dict(cfg)
    data.pop("hydra", None)
    _check_required(data, "")
    _check_deletions(data)
    return data


def _check_deletions(data: Mapping) -> None:
    """A Hydra deletion (``~robustness``, ``~train.lr``) that leaves the key absent would let
    the loader fill in the library default, so a user who meant "no robustness measures" or
    "no learning rate" would silently get them: refused naming the key and what to set
    instead. A deletion followed by a new value (``~study.sweeps +study.sweeps={...}``) is
    fine."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    for override in HydraConfig.get().overrides.task:
        if not override.startswith("~"):
            continue
        key = override[1:].split("=", 1)[0]
        node: object = data
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, Mapping) else _ABSENT
        if node is _ABSENT:
            instead = {"robustness": "robustness=none (no spares, calibration, write-verify "
                                     "or hardware-aware retraining)",
                       "allocation": "allocation=null"}.get(key, f"{key}=<value> (the "
                                                               "option files list the defaults)")
            fail(override, "removed", f"a value: removing a key would silently give the "
                 f"library default; set {instead}")


_ABSENT = object()


def _check_required(data: object, prefix: str) -> None:
    """OmegaConf's ``???`` (a value required) anywhere is an error naming the key, never a
    default."""
    items = data.items() if isinstance(data, Mapping) else enumerate(data) \
        if isinstance(data, list) else ()
    for key, value in items:
        name = f"{prefix}{key}" if isinstance(key, str) else f"{prefix.rstrip('.')}[{key}]"
        if isinstance(value, str) and value == "???":
            fail(name, value, "a value: '???' marks a required value that was never given")
        _check_required(value, name + ".")


_TOP = ("seed", "runtime", "model", "dataset", "train", "admm", "device", "crossbar", "cost",
        "eval")


_OPTIONAL = ("compressor", "obc", "ternary", "adaptive_levels", "allocation", "resume",
             "robustness", "layers", "decompose")
"""Top-level keys with defaults: ``compressor`` (``compressors.registry.COMPRESSORS``), the
``obc``, ``ternary``, ``adaptive_levels`` and ``decompose`` blocks
(``experiments.compressors.settings``), ``allocation`` (null or
``experiments.compressors.settings.AllocationSettings``), ``resume`` (continue the run directory's
last checkpoint, ``experiments.guard.check_run_dir``), ``robustness``
(:class:`RobustnessSettings`: its device and crossbar settings are applied to ``device`` and
``crossbar``)."""


def _compressor(value: object) -> str:
    if not isinstance(value, str) or value not in COMPRESSORS:
        fail("compressor", value, "one of " + ", ".join(COMPRESSORS))
    return value


def _resume(value: object) -> bool:
    if not isinstance(value, bool):
        fail("resume", value, "true or false")
    return value


def _load(cfg: DictConfig | Mapping, extra: tuple[str, ...]) -> dict:
    data = to_container(cfg)
    for key in data:
        if key not in _TOP + _OPTIONAL + extra:
            fail(key, data[key], "a top-level key among " + ", ".join(_TOP + _OPTIONAL + extra))
    for key in _TOP:
        if key not in data:
            fail(key, None, f"a '{key}' entry (config group or key) in the composed config")
    seed = data["seed"]
    if not type_ok(seed, int) or seed < 0:
        fail("seed", seed, "an integer >= 0")
    for key in ROBUSTNESS_KEYS:
        if key in (data["crossbar"] or {}):
            fail(f"crossbar.{key}", data["crossbar"][key],
                  f"not set in the crossbar group; use robustness.{key}")
    robustness = build(RobustnessSettings, data.get("robustness"), "robustness")
    layers = build(LayerSettings, data.get("layers"), "layers")
    plain_device = library_call("device", device_from_dict, known_keys(
        "device", data["device"], DeviceModel, "preset"))
    plain_xbar = library_call("crossbar", CrossbarConfig.from_dict, known_keys(
        "crossbar", data["crossbar"], CrossbarConfig, "bit_serial"))
    try:  # the robustness group's spares, calibration and write-verify on the chip
        device, xbar = robustness.apply(plain_device, plain_xbar)
    except ValueError as exc:
        raise ValueError(f"robustness.{exc} (with crossbar.tile_rows={plain_xbar.tile_rows}, "
                         f"tile_cols={plain_xbar.tile_cols})") from None
    return dict(
        seed=seed,
        runtime=build(RuntimeSettings, data["runtime"], "runtime"),
        model=ModelSettings.from_dict(data["model"] or {}),
        dataset=DatasetSettings.from_dict(data["dataset"]),
        train=build(TrainSettings, data["train"], "train"),
        admm=build(AdmmSettings, data["admm"], "admm"),
        device=device,
        crossbar=xbar,
        cost=library_call("cost", CostConfig.from_dict,
                          known_keys("cost", data["cost"], CostConfig)),
        eval=build(EvalSettings, data["eval"], "eval"),
        raw=data,
        compressor=_compressor(data.get("compressor", "admm")),
        obc=build(ObcSettings, data.get("obc"), "obc"),
        ternary=build(TernarySettings, data.get("ternary"), "ternary"),
        adaptive_levels=build(AdaptiveLevelsSettings, data.get("adaptive_levels"),
                              "adaptive_levels"),
        allocation=None if data.get("allocation") is None
        else build(AllocationSettings, data["allocation"], "allocation"),
        resume=_resume(data.get("resume", False)),
        robustness=robustness,
        layers=layers,
        layer_devices=layers.device_models(robustness),
        decompose=build(DecomposeSettings, data.get("decompose"), "decompose"),
    )


def check_cost_covers(xbar: CrossbarConfig, cost: CostConfig) -> None:
    """Cross-group rule: the cost table prices the design and its dense baseline (tile size,
    converter bits, ...). Checked on a one-layer probe plan before any work, so a setting the
    table does not cover fails now, not in the cost stage after training."""
    import torch

    from memxbar.crossbar import MappingPlan
    from memxbar.crossbar.cost import estimate
    from memxbar.crossbar.plan import plan_layer

    probe = MappingPlan({"probe": plan_layer("probe", "linear", torch.ones(4, 4, dtype=torch.bool),
                                             xbar, mvms_per_sample=1)})
    try:
        estimate(probe, xbar, cost.with_(data_dependent=False))  # prices every part
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise ValueError(f"crossbar/cost: the cost table {cost.table!r} cannot price this design: "
                         f"{exc}") from None


def load_compress_config(cfg: DictConfig | Mapping) -> CompressExperiment:
    """Validate a composed ``memxbar/conf/config.yaml`` (see module docstring)."""
    fields = _load(cfg, ())
    check_cost_covers(fields["crossbar"], fields["cost"])
    return CompressExperiment(**fields)


def load_study_config(cfg: DictConfig | Mapping) -> StudyExperiment:
    """Validate a composed ``memxbar/conf/device_study.yaml``."""
    fields = _load(cfg, ("study",))
    check_cost_covers(fields["crossbar"], fields["cost"])
    return StudyExperiment(**fields, study=build(StudySettings, fields["raw"].get("study"),
                                                 "study"))


presets.register()  # device=<preset> options in Hydra's ConfigStore, before any composition
