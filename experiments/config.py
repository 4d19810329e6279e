"""Typed, validated view of the Hydra configuration (``conf/``).

``load_compress_config(cfg)`` and ``load_study_config(cfg)`` turn a composed ``DictConfig`` into
frozen dataclasses before any work starts. Every problem (an unknown key, a wrong type, a value
out of range) is one ``ValueError`` naming the full key, the value and what is allowed, e.g.
``device.prog_sigma=-0.1 is invalid; allowed: a finite number in [0.0, inf]``. The ``device``,
``crossbar`` and ``cost`` groups are validated by ``crossbar.DeviceModel``, ``CrossbarConfig`` and
``crossbar.cost.CostConfig`` themselves; the ``admm`` group by ``admm.LayerConstraint`` and
``admm.CompressConfig``. Before that, Hydra composes each group onto a typed schema generated
from the same classes (:mod:`experiments.schema`), so wrong types and unknown keys of a group
already fail at composition.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from admm import CompressConfig, LayerConstraint
from admm.importance import METHODS
from crossbar import CrossbarConfig, DeviceModel, RepairConfig, WriteVerify
from crossbar.cost import CostConfig
from crossbar.device import SHORTHANDS as DEVICE_SHORTHANDS
from experiments import schema
from experiments.datasets import DATASETS
from experiments.models import MODELS
from experiments.registry import COMPRESSORS
from experiments.schema import drop_missing
from experiments.train import OPTIMIZERS

__all__ = [
    "AdmmSettings",
    "CompressExperiment",
    "DatasetSettings",
    "EvalSettings",
    "ModelSettings",
    "RuntimeSettings",
    "StudyExperiment",
    "StudySettings",
    "TrainSettings",
    "load_compress_config",
    "load_study_config",
    "to_container",
]

TORCH_DEVICES = ("auto", "cpu", "cuda")
SWEEPABLE = ("g_min_uS", "g_max_uS", "n_levels", "t_inference_s", "prog_sigma", "read_sigma",
             "sa0_rate", "sa1_rate") + tuple(
    f.name for f in dataclasses.fields(CrossbarConfig)
    if f.name not in ("array", "spare_rows", "spare_cols", "output_calibration",
                      "noise_precision")
) + ("r_wire_ohm",)
"""Settings a device study can sweep: numeric ``DeviceModel`` fields, ``CrossbarConfig`` fields
(numbers and choices such as ``mapping``, ``dac``, ``drift_compensation``; the repair fields
through ``robustness.<field>``), the 0.1 shorthands, any ``<effect>.<field>`` of the device's
cell models (``EFFECT_KEY``), and ``robustness.<field>`` (repair and calibration steps)."""
EFFECT_KEY = re.compile(
    r"^(programming|read_noise|drift|faults|write_verify|array|robustness)\.[a-zA-Z_]\w*$")


# ---------------------------------------------------------------------------------- helpers
def device_levels(n_levels: int | None, levels_uS: typing.Sequence[float] | None
                  ) -> int | None:
    """The device's level count, for the ``admm`` group's ``levels`` (the two groups share the
    quantity, so the config interpolates it: ``${device_levels:${device.n_levels},
    ${device.levels_uS}}``): ``len(levels_uS)`` for an explicit grid, ``n_levels`` otherwise,
    ``None`` (no quantization) for a continuous device."""
    return len(levels_uS) if levels_uS else n_levels


OmegaConf.register_new_resolver("device_levels", device_levels, replace=True)


def _fail(key: str, value: object, allowed: str) -> typing.NoReturn:
    raise ValueError(f"{key}={value!r} is invalid; allowed: {allowed}")


def _type_ok(value: object, annotation: object) -> bool:
    """Whether ``value`` fits a simple annotation (int, float, str, bool, X | None, list, dict)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is list or annotation is list:
        args = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value) \
            if args else isinstance(value, list)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def _type_name(annotation: object) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def build(cls: type, data: Mapping | None, prefix: str) -> object:
    """Instantiate dataclass ``cls`` from ``data``: unknown keys and wrong types raise a
    ``ValueError`` naming ``prefix.key``; range checks run in the class's ``__post_init__``."""
    if data is not None and not isinstance(data, Mapping):
        _fail(prefix, data, f"a mapping of {prefix} settings (key: value)")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            _fail(f"{prefix}.{key}", data[key], f"a key of {prefix}: " + ", ".join(names))
    for key, value in data.items():
        if not _type_ok(value, hints[key]):
            _fail(f"{prefix}.{key}", value, f"a value of type {_type_name(hints[key])}")
    try:
        return cls(**data)
    except ValueError as exc:
        raise ValueError(f"{prefix}.{exc}") from None


def _check_range(key: str, value: float | int | None, low: float, high: float = math.inf,
                 optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not low <= value <= high:
        _fail(key, value, f"a number in [{low}, {high}]"
              + (" or null" if optional else ""))


def _known(prefix: str, data: Mapping | None, cls: type, *extra: str) -> dict:
    """``data`` as a dict after checking that every key is a field of dataclass ``cls`` (or in
    ``extra``): an unknown key fails naming ``prefix.key``, its value and the allowed keys."""
    if data is not None and not isinstance(data, Mapping):
        _fail(prefix, data, f"a mapping of {prefix} settings (key: value)")
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)] + list(extra)
    for key in data:
        if key not in names:
            _fail(f"{prefix}.{key}", data[key], f"a key of {prefix}: " + ", ".join(names))
    return data


def _library(prefix: str, make, data: Mapping):
    """Run a library constructor, prefixing its ValueError with the config group."""
    try:
        return make(dict(data))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{prefix}.{exc}") from None


def to_container(cfg: DictConfig | Mapping) -> dict:
    """Resolved plain ``dict`` of a ``DictConfig`` (without the ``hydra`` node)."""
    if isinstance(cfg, DictConfig):
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    else:
        data = dict(cfg)
    data.pop("hydra", None)
    return drop_missing(data)  # keys a group schema declares but the option leaves unset


# ---------------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how to run: torch device (``auto`` = cuda when available), CPU threads
    (``None`` = torch's default), progress bars, and ``cache_dir``: a folder of dense and
    compressed models shared by runs, content-addressed by the settings each depends on
    (``None`` = no cache)."""

    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.cache_dir is not None and not str(self.cache_dir).strip():
            _fail("cache_dir", self.cache_dir, "null or a directory path")
        if self.device not in TORCH_DEVICES:
            _fail("device", self.device, "one of " + ", ".join(TORCH_DEVICES))
        _check_range("threads", self.threads, 1, 1024, optional=True)


@dataclass(frozen=True)
class ModelSettings:
    """``name`` in ``experiments.models.MODELS`` plus constructor keyword arguments."""

    name: str
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelSettings:
        data = dict(data)
        name = data.pop("name", None)
        if not isinstance(name, str) or name not in MODELS:
            _fail("model.name", name, "one of " + ", ".join(sorted(MODELS)))
        params = inspect.signature(MODELS[name][0]).parameters
        for key, value in data.items():
            if key not in params:
                _fail(f"model.{key}", value, f"a constructor argument of {name}: "
                      + ", ".join(params))
            _check_model_argument(f"model.{key}", value)
        return cls(name, data)


def _check_model_argument(key: str, value: object) -> None:
    """Model hyper-parameters: sizes are integers in [1, 100000] (lists of them for layer
    widths), rates finite numbers in [0, 1), switches booleans."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not 1 <= value <= 100_000:
            _fail(key, value, "an integer in [1, 100000] (a layer size or count)")
    elif isinstance(value, float):
        if not (math.isfinite(value) and 0 <= value < 1):
            _fail(key, value, "a number in [0, 1) (a rate, e.g. dropout)")
    elif isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                and 1 <= v <= 100_000 for v in value):
            _fail(key, value, "a non-empty list of integers in [1, 100000] (layer widths)")
    else:
        _fail(key, value, "a number, a list of integers or a boolean")


@dataclass(frozen=True)
class DatasetSettings:
    """Arguments of ``experiments.datasets.make_loaders`` (``data_dir`` relative to the
    directory the run started in)."""

    name: str = "digits"
    data_dir: str | None = None
    batch_size: int = 64
    test_batch_size: int | None = None
    subset: int | None = None
    test_subset: int | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            _fail("name", self.name, "one of " + ", ".join(DATASETS))
        if self.name == "digits" and self.data_dir is not None:
            _fail("data_dir", self.data_dir, "null: digits is embedded (scikit-learn), it reads "
                  "no files")
        if self.name != "digits" and self.data_dir is None:
            _fail("data_dir", None, f"a directory holding the {self.name} files")
        for key in ("batch_size", "test_batch_size", "subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                _fail(key, value, "an integer >= 1" + ("" if key == "batch_size" else " or null"))


@dataclass(frozen=True)
class TrainSettings:
    """Dense pretraining: ``epochs`` with a cosine schedule from ``lr``; ``checkpoint`` loads a
    dense state dict instead of training (relative to the start directory)."""

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        _check_range("epochs", self.epochs, 0, 10_000)
        if not 0 < self.lr <= 10:
            _fail("lr", self.lr, "a number in (0, 10] (larger learning rates only diverge)")
        if self.optimizer not in OPTIMIZERS:
            _fail("optimizer", self.optimizer, "one of " + ", ".join(OPTIMIZERS))
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)



class _AdmmGroup:
    """Methods of :class:`AdmmSettings` (whose fields are generated from
    ``admm.CompressConfig``)."""

    def __post_init__(self) -> None:
        if self.levels is not None and self.levels < 2:
            _fail("levels", self.levels, "an integer >= 2 (device levels) or null")
        # built and validated once, here; every stage receives these typed objects
        object.__setattr__(self, "_typed_constraints", tuple(self._build_constraints()))
        self.compress_config(progress=False)  # range checks of admm.CompressConfig

    def layer_constraints(self) -> tuple[LayerConstraint, ...]:
        """The constraints as ``admm.LayerConstraint`` objects (built at validation), with the
        group's ``levels`` and ``per_column`` where a constraint sets neither."""
        return self._typed_constraints

    def _build_constraints(self) -> list[LayerConstraint]:
        out = []
        for i, c in enumerate(self.constraints):
            c = dict(c)
            c.setdefault("levels", self.levels)
            c.setdefault("per_column", self.per_column)
            if isinstance(c.get("block"), list):
                c["block"] = tuple(c["block"])
            if isinstance(c.get("levels"), list):
                c["levels"] = tuple(c["levels"])
            known = {f.name for f in dataclasses.fields(LayerConstraint)}
            for key in c:
                if key not in known:
                    _fail(f"constraints[{i}].{key}", c[key], "a LayerConstraint field: "
                          + ", ".join(sorted(known)))
            try:
                out.append(LayerConstraint(**c))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"constraints[{i}].{exc}") from None
        return out

    def compress_config(self, progress: bool) -> CompressConfig:
        stage = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("constraints", "levels", "per_column")}
        return CompressConfig(constraints=list(self.layer_constraints()), progress=progress,
                              **stage)


RUN_LAYER_FIELDS = ("constraints", "progress", "collapse_floor")
"""``admm.CompressConfig`` fields the run layer sets itself (not keys of the ``admm`` group)."""

CONFIG_TYPES = {"importance": str | None}
"""Narrower config types where the library also takes objects YAML cannot hold (a dict of
importance tensors)."""


def _config_type(hint: object) -> object:
    """A library annotation as the config validation checks it: ``Sequence[X]`` -> ``list[X]``,
    ``Mapping`` -> ``dict``, recursively through unions."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        out = _config_type(args[0])
        for a in args[1:]:
            out = out | _config_type(a)
        return out
    if origin in (list, tuple, collections.abc.Sequence):
        return list[_config_type(args[0])] if args else list
    if origin in (dict, collections.abc.Mapping):
        return dict
    return hint


def _admm_fields() -> list[tuple]:
    """The ``admm`` group's fields: ``constraints`` (dicts of ``admm.LayerConstraint``
    fields), the group-wide ``levels`` and ``per_column`` that a constraint without its own
    inherits, then every ``admm.CompressConfig`` field the user sets, with its type and
    default, read from the library class (so the two cannot drift apart)."""
    hints = typing.get_type_hints(CompressConfig)
    out: list[tuple] = [("constraints", list[dict]),
                        ("levels", int | None, field(default=16)),
                        ("per_column", bool, field(default=False))]
    for f in dataclasses.fields(CompressConfig):
        if f.name in RUN_LAYER_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, (list, tuple)):
            spec = field(default_factory=lambda d=tuple(default): list(d))
        else:
            spec = field(default=default)
        out.append((f.name, CONFIG_TYPES.get(f.name, _config_type(hints[f.name])), spec))
    return out


AdmmSettings = dataclasses.make_dataclass(
    "AdmmSettings", _admm_fields(), bases=(_AdmmGroup,), frozen=True,
    namespace={"__module__": __name__, "__doc__": """The ``admm`` group: per-layer
    ``constraints`` (``admm.LayerConstraint`` fields; a constraint without ``levels`` or
    ``per_column`` gets the group's) and the ``admm.CompressConfig`` stage settings (epochs,
    rho schedule, optimizer, ...), whose fields, types and defaults are generated from
    ``CompressConfig`` itself."""})


@dataclass(frozen=True)
class EvalSettings:
    """Device-aware evaluation: ``chips`` programmed chips (Monte Carlo, seeds ``seed + i``),
    ``calibration_samples`` training images for the DAC/ADC ranges, an optional ``test_subset``
    for the crossbar runs (the simulator is slower than PyTorch)."""

    chips: int = 5
    calibration_samples: int = 256
    test_subset: int | None = None

    def __post_init__(self) -> None:
        _check_range("chips", self.chips, 1, 10_000)
        _check_range("calibration_samples", self.calibration_samples, 1, 100_000)
        _check_range("test_subset", self.test_subset, 1, 10**9, optional=True)


HARDWARE_AWARE_EFFECTS = ("chip", "converters")
"""What the retraining forward simulates (``robustness.hardware_aware_effects``)."""


@dataclass(frozen=True)
class RobustnessSettings:
    """Keeping the compressed model's accuracy on imperfect chips (``robustness`` group; see
    docs/robustness.md): repair at programming (``compensation``: null = on when the device has
    stuck-at faults; ``placement``; ``miss_rate`` of the test read; ``spare_rows`` /
    ``spare_cols`` per tile), per-chip ``output_calibration`` on ``calibration_samples``
    training images, ``hardware_aware`` retraining (the simulator in the forward pass during
    the stages ``admm.perturb_stages``; ``hardware_aware_effects``: ``converters`` (default),
    the device's conductance grid and the DAC/ADC with ranges calibrated on each batch on an
    otherwise ideal device, or ``chip``, a newly programmed chip with every device effect and
    the converters), ``write_verify`` (null: the device's own setting; a
    mapping of :class:`crossbar.WriteVerify` fields turns it on), and an ``ablation`` of the
    chip accuracy without each step on ``ablation_chips`` chips."""

    compensation: bool | None = None
    placement: bool = True
    miss_rate: float = 0.0
    spare_rows: int = 0
    spare_cols: int = 0
    output_calibration: bool = True
    calibration_samples: int = 512
    hardware_aware: bool = True
    hardware_aware_effects: str = "converters"
    write_verify: dict | None = None
    ablation: bool = True
    ablation_chips: int = 5

    def __post_init__(self) -> None:
        for key in ("placement", "output_calibration", "hardware_aware", "ablation"):
            if not isinstance(getattr(self, key), bool):
                _fail(key, getattr(self, key), "true or false")
        if self.compensation is not None and not isinstance(self.compensation, bool):
            _fail("compensation", self.compensation, "true, false or null (auto)")
        _check_range("miss_rate", self.miss_rate, 0.0, 1.0)
        _check_range("spare_rows", self.spare_rows, 0, 4096)
        _check_range("spare_cols", self.spare_cols, 0, 4096)
        _check_range("calibration_samples", self.calibration_samples, 2, 100_000)
        _check_range("ablation_chips", self.ablation_chips, 1, 10_000)
        if self.hardware_aware_effects not in HARDWARE_AWARE_EFFECTS:
            _fail("hardware_aware_effects", self.hardware_aware_effects,
                  "one of " + ", ".join(HARDWARE_AWARE_EFFECTS))
        if self.write_verify is not None:
            if not isinstance(self.write_verify, Mapping):
                _fail("write_verify", self.write_verify,
                      "null or a mapping of tolerance_uS, max_pulses, pulse_sigma")
            _library("write_verify", lambda d: WriteVerify(**d), _known(
                "write_verify", self.write_verify, WriteVerify))

    def repair(self) -> RepairConfig:
        """The library's repair settings."""
        return RepairConfig(compensation=self.compensation, placement=self.placement,
                            miss_rate=self.miss_rate)

    def programmed(self, device: DeviceModel) -> DeviceModel:
        """``device`` with this group's write-verify, when it sets one."""
        if self.write_verify is None:
            return device
        return device.with_(write_verify=WriteVerify(**self.write_verify))

    def apply(self, device: DeviceModel, xbar: CrossbarConfig
              ) -> tuple[DeviceModel, CrossbarConfig]:
        """The device (write-verify) and crossbar (spares, output calibration) these settings
        make."""
        return self.programmed(device), xbar.with_(
            spare_rows=self.spare_rows, spare_cols=self.spare_cols,
            output_calibration=self.output_calibration)


@dataclass(frozen=True)
class LayerSettings:
    """Per-layer mapping (``layers`` section): ``digital`` layer patterns (fnmatch or ``re:``)
    kept digital (not planned, simulated or costed), ``devices``: layer pattern -> a device
    group mapping (fields, shorthands or ``preset: <name>``) for the layers it matches; other
    layers use the ``device`` group. Patterns are checked against the model before any work."""

    digital: list = field(default_factory=list)
    devices: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.digital):
            if not isinstance(pattern, str) or not pattern:
                _fail(f"digital[{i}]", pattern, "a layer name pattern (fnmatch or re:...)")
        for pattern, data in self.devices.items():
            if not isinstance(data, Mapping):
                _fail(f"devices.{pattern}", data, "a device mapping (fields or preset: name)")

    def device_models(self, robustness: RobustnessSettings) -> dict[str, DeviceModel]:
        """``devices`` as ``DeviceModel``s (the robustness group's write-verify applied)."""
        out = {}
        for pattern, data in self.devices.items():
            out[pattern] = robustness.programmed(_library(
                f"layers.devices.{pattern}", _device, _known(
                    f"layers.devices.{pattern}", data, DeviceModel, "preset",
                    *DEVICE_SHORTHANDS)))
        return out


ROBUSTNESS_KEYS = ("spare_rows", "spare_cols", "output_calibration")
"""CrossbarConfig fields set by the robustness group (refused in the crossbar group)."""


@dataclass(frozen=True)
class StudySettings:
    """Device study: ``source`` is a finished compress run directory (dense.pt, compressed.pt,
    plan.json) or ``None`` to pretrain and compress first; ``sweeps`` maps a setting (a
    ``DeviceModel`` or ``CrossbarConfig`` field, or ``sa_rate`` = total stuck-at rate split
    evenly over SA0 and SA1) to the values tried, one setting at a time from the base config.
    ``grids``: 2-D sweeps, each a mapping of exactly two settings to their values (the first
    on the x axis, the second on y), every combination evaluated (a heat map each).
    ``layer_sensitivity``: also evaluate the compressed model with only one mapped layer at a
    time on the base device and the others on its ideal version."""

    sweeps: dict
    source: str | None = None
    models: list[str] = field(default_factory=lambda: ["dense", "compressed"])
    grids: list = field(default_factory=list)
    layer_sensitivity: bool = False

    def __post_init__(self) -> None:
        if not self.sweeps:
            _fail("sweeps", self.sweeps, "a mapping setting -> list of values")
        for key, values in self.sweeps.items():
            _check_axis(f"sweeps.{key}", key, values)
        if not self.models:
            _fail("models", self.models, "a non-empty list of 'dense' and/or 'compressed'")
        for m in self.models:
            if m not in ("dense", "compressed"):
                _fail("models", self.models, "a list of 'dense' and/or 'compressed'")
        for i, grid in enumerate(self.grids):
            if not isinstance(grid, dict) or len(grid) != 2:
                _fail(f"grids[{i}]", grid, "a mapping of exactly two settings to their values, "
                      "e.g. {prog_sigma: [0.0, 0.1], adc_bits: [4, 8]}")
            for key, values in grid.items():
                _check_axis(f"grids[{i}].{key}", key, values)


def _check_axis(name: str, key: object, values: object) -> None:
    """A study axis: a sweepable setting and a non-empty list of values."""
    if key not in SWEEPABLE + ("sa_rate",) and not EFFECT_KEY.match(str(key)):
        _fail(name, values, "a key among " + ", ".join(SWEEPABLE + ("sa_rate",))
              + " or <effect>.<field> (e.g. programming.scale, drift.scale, "
              "write_verify.tolerance_uS, array.r_sense_ohm, robustness.placement)")
    if not isinstance(values, list) or not values:
        _fail(name, values, "a non-empty list of values")


# ------------------------------------------------------------ compressors and allocation

MAX_CALIBRATION = 1024
"""Most calibration images the post-training path may use (OBC's setting)."""


@dataclass(frozen=True)
class ObcSettings:
    """The ``obc`` block: ``n_calib`` training images (seeded draw, at most
    :data:`MAX_CALIBRATION`) for the layer Hessians ``H = 2 X X^T / n`` and the importance,
    ``percdamp`` (damping ``percdamp * mean(diag H)`` added to ``H``), ``importance``
    (``None`` | ``"fisher"`` | ``"hessian"``: weights the bit-line / OBS group choice and the
    level scale by the diagonal Fisher or Hessian of the loss)."""

    n_calib: int = MAX_CALIBRATION
    percdamp: float = 0.01
    importance: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.n_calib <= MAX_CALIBRATION:
            raise ValueError(f"n_calib={self.n_calib!r} is invalid; allowed: an integer in "
                             f"[1, {MAX_CALIBRATION}]")
        if not 0 <= self.percdamp <= 1:
            raise ValueError(f"percdamp={self.percdamp!r} is invalid; allowed: a number in "
                             "[0, 1]")
        if self.importance is not None and self.importance not in METHODS:
            raise ValueError(f"importance={self.importance!r} is invalid; allowed: null or one "
                             "of " + ", ".join(METHODS))


RESOURCES = ("compression", "tiles", "area_mm2", "energy_nJ")
"""Units a budget can be given in: ``compression`` is a structured compression ratio (dense
weights / weights on live crossbar rows x columns, >= 1; larger is tighter), the others a
total the design must stay under (smaller is tighter)."""

SETTING_KEYS = ("row_ratio", "row_keep", "col_ratio", "col_keep", "block_ratio", "block_keep",
                "levels", "pattern")
"""Fields a candidate may set; the pruning ones replace all pruning fields of the layer's
constraint; ``pattern`` (as in ``admm.LayerConstraint``, default all constrained layers)
limits the layers the candidate is offered to."""

_PRUNE_KEYS = SETTING_KEYS[:-2]

DISTORTIONS = ("output", *METHODS)
"""How the allocation measures a candidate's distortion (``allocation.importance``):
``output`` compresses the layer (with OBS compensation) and measures the relative change of
the model's outputs; ``fisher`` / ``hessian`` estimate the loss increase from the weight
change (``experiments.allocation``)."""

AUTO_KEEP = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03)
"""Fractions of a layer's rows and of its columns that ``candidates: auto`` offers (every
pair; at least one row and column; the final layer keeps all its outputs unless its
constraint sets ``prune_outputs``). A geometric ladder, about 1.4x apart: the search decides,
from the user's model and data, where on it each layer sits."""


@dataclass(frozen=True)
class AllocationSettings:
    """The ``allocation`` block: the pipeline chooses each constrained layer's kept rows and
    columns (and levels, where a candidate gives them) from a budget.

    * a resource budget: ``budget`` in ``resource`` units (a compression ratio, a tile count, an
      area in mm^2 or an energy per inference in nJ);
    * or an accuracy budget: ``max_drop``, the largest allowed drop (points) of the mean chip
      accuracy from dense on the configured device and converters; the pipeline searches the
      resource budget by bisection on a log scale (``search_steps`` compressions, each
      evaluated on ``search_chips`` chips; ``search_range`` ``[loose, tight]`` in resource
      units, default from the candidates: no compression to the cheapest choice).

    ``candidates``: ``auto`` (the :data:`AUTO_KEEP` ladder of kept rows x columns for every
    layer) or a list of settings offered to every constrained layer. ``importance``: how each
    candidate's distortion is measured, from ``n_samples`` seeded training images
    (:data:`DISTORTIONS`: ``output``, the measured change of the model's outputs; ``fisher`` |
    ``hessian``, a weight-space estimate; null: the plain weight error)."""

    budget: float | None = None
    candidates: list[dict] | str = "auto"
    resource: str = "compression"
    importance: str | None = "output"
    n_samples: int = 1024
    max_drop: float | None = None
    search_steps: int = 6
    search_chips: int = 5
    search_range: list[float] | None = None

    def __post_init__(self) -> None:
        if (self.budget is None) == (self.max_drop is None):
            raise ValueError(f"budget={self.budget!r} is invalid with max_drop={self.max_drop!r}; "
                             "allowed: exactly one of them (a resource budget, or the largest "
                             "allowed accuracy drop in points, which searches the budget)")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget={self.budget!r} is invalid; allowed: a number > 0")
        if self.resource not in RESOURCES:
            raise ValueError(f"resource={self.resource!r} is invalid; allowed: one of "
                             + ", ".join(RESOURCES))
        if self.resource == "compression" and self.budget is not None and self.budget < 1:
            raise ValueError(f"budget={self.budget!r} is invalid for resource=compression; "
                             "allowed: a compression ratio >= 1")
        if self.max_drop is not None and not (math.isfinite(self.max_drop)
                                               and 0 <= self.max_drop <= 100):
            raise ValueError(f"max_drop={self.max_drop!r} is invalid; allowed: accuracy points "
                             "in [0, 100]")
        if not 1 <= self.search_steps <= 30:
            raise ValueError(f"search_steps={self.search_steps!r} is invalid; allowed: an "
                             "integer in [1, 30]")
        if not 1 <= self.search_chips <= 1000:
            raise ValueError(f"search_chips={self.search_chips!r} is invalid; allowed: an "
                             "integer in [1, 1000]")
        if self.search_range is not None:
            r = self.search_range
            if len(r) != 2 or not all(math.isfinite(v) and v > 0 for v in r) or r[0] == r[1] \
                    or (self.resource == "compression") != (r[0] < r[1]):
                order = "loose < tight (ratios)" if self.resource == "compression" \
                    else "loose > tight"
                raise ValueError(f"search_range={r!r} is invalid; allowed: null or [loose, "
                                 f"tight], two numbers > 0 in {self.resource} units with "
                                 f"{order}")
        if self.importance is not None and self.importance not in DISTORTIONS:
            raise ValueError(f"importance={self.importance!r} is invalid; allowed: null or "
                             "one of " + ", ".join(DISTORTIONS))
        if not 1 <= self.n_samples <= 100_000:
            raise ValueError(f"n_samples={self.n_samples!r} is invalid; allowed: an integer "
                             "in [1, 100000]")
        if isinstance(self.candidates, str):
            if self.candidates != "auto":
                raise ValueError(f"candidates={self.candidates!r} is invalid; allowed: auto or "
                                 "a non-empty list of settings such as {row_ratio: 0.5}")
            return
        if not self.candidates:
            raise ValueError(f"candidates={self.candidates!r} is invalid; allowed: auto or a "
                             "non-empty list of settings such as {row_ratio: 0.5, levels: 16}")
        for i, c in enumerate(self.candidates):
            if not isinstance(c, dict):
                raise ValueError(f"candidates[{i}]={c!r} is invalid; allowed: a mapping of "
                                 "keys " + ", ".join(SETTING_KEYS))
            for key in c:
                if key not in SETTING_KEYS:
                    raise ValueError(f"candidates[{i}].{key}={c[key]!r} is invalid; allowed: "
                                     "keys " + ", ".join(SETTING_KEYS))
            try:
                LayerConstraint(**_plain(c))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"candidates[{i}].{exc}") from None

    @property
    def tighter(self) -> int:
        """+1 where a larger budget is tighter (compression ratio), -1 otherwise."""
        return 1 if self.resource == "compression" else -1

    def fixed(self, budget: float) -> AllocationSettings:
        """These settings with a resource ``budget`` (no search): one point of the search."""
        return dataclasses.replace(self, budget=float(budget), max_drop=None)


def _plain(setting: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in setting.items()}


# ------------------------------------------------------------------------------ experiments
@dataclass(frozen=True)
class CompressExperiment:
    """Everything ``experiments.compress`` needs, validated."""

    seed: int
    runtime: RuntimeSettings
    model: ModelSettings
    dataset: DatasetSettings
    train: TrainSettings
    admm: AdmmSettings
    device: DeviceModel
    crossbar: CrossbarConfig
    cost: CostConfig
    eval: EvalSettings
    raw: dict = field(repr=False, default_factory=dict)
    compressor: str = "admm"
    obc: ObcSettings = field(default_factory=ObcSettings)
    allocation: AllocationSettings | None = None
    resume: bool = False
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    layers: LayerSettings = field(default_factory=LayerSettings)
    layer_devices: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Weights are quantized onto levels the device can hold: an integer level count in
        the ``admm`` group must be the device's, or (uniform device levels) a count whose grid
        is a subset of the device's, ``(n_device - 1) % (n - 1) == 0``; an analog device
        accepts any."""
        n_device = self.device.level_count
        if n_device is None or self.crossbar.cell_bits is not None:
            return
        uniform = self.device.levels_uS is None
        counts = [("admm.levels", self.admm.levels)] + [
            (f"admm.constraints[{i}].levels", c.get("levels"))
            for i, c in enumerate(self.admm.constraints)]
        for key, n in counts:
            if not isinstance(n, int) or n == n_device:
                continue
            if not (uniform and 2 <= n < n_device and (n_device - 1) % (n - 1) == 0):
                subsets = [k for k in range(2, n_device) if (n_device - 1) % (k - 1) == 0]
                _fail(key, n, f"{n_device} (the device's level count)"
                      + (f" or a subset of its grid: {subsets}" if uniform and subsets else "")
                      + ", or null for no quantization")


@dataclass(frozen=True)
class StudyExperiment(CompressExperiment):
    """A device study: the compress settings plus the sweep."""

    study: StudySettings | None = None


_TOP = ("seed", "runtime", "model", "dataset", "train", "admm", "device", "crossbar", "cost",
        "eval")


_OPTIONAL = ("compressor", "obc", "allocation", "resume", "robustness", "layers")
"""Top-level keys with defaults: ``compressor`` (admm | obc), the ``obc`` block
(``experiments.posttraining.ObcSettings``), ``allocation`` (null or
``experiments.allocation.AllocationSettings``), ``resume`` (continue the run directory's
last checkpoint, ``experiments.guard.check_run_dir``), ``robustness``
(:class:`RobustnessSettings`: its device and crossbar settings are applied to ``device`` and
``crossbar``)."""


def _compressor(value: object) -> str:
    if not isinstance(value, str) or value not in COMPRESSORS:
        _fail("compressor", value, "one of " + ", ".join(COMPRESSORS))
    return value


def _resume(value: object) -> bool:
    if not isinstance(value, bool):
        _fail("resume", value, "true or false")
    return value


def _device(data: Mapping) -> DeviceModel:
    """A device group: DeviceModel fields (or 0.1 shorthands), optionally on top of
    ``preset: <name>``. A partial mapping for a cell model of the preset (``programming:
    {scale: 2}``) changes those fields of the preset's model."""
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is None:
        return DeviceModel.from_dict(data)
    base = DeviceModel.preset(preset).to_dict()
    allowed = set(base) | set(DEVICE_SHORTHANDS)
    unknown = sorted(set(data) - allowed)
    if unknown:
        _fail(f"key {unknown[0]}", data[unknown[0]], "one of preset, " + ", ".join(
            list(base) + list(DEVICE_SHORTHANDS)))
    if data.get("n_levels") is not None:
        base["levels_uS"] = None
    for key, value in data.items():
        if isinstance(value, Mapping) and "model" not in value and isinstance(base.get(key),
                                                                               Mapping):
            value = {**base[key], **value}
        base[key] = value
    return DeviceModel.from_dict(base)


def _load(cfg: DictConfig | Mapping, extra: tuple[str, ...]) -> dict:
    data = to_container(cfg)
    for key in data:
        if key not in _TOP + _OPTIONAL + extra:
            _fail(key, data[key], "a top-level key among " + ", ".join(_TOP + _OPTIONAL + extra))
    for key in _TOP:
        if key not in data:
            _fail(key, None, f"a '{key}' entry (config group or key) in the composed config")
    seed = data["seed"]
    if not _type_ok(seed, int) or seed < 0:
        _fail("seed", seed, "an integer >= 0")
    for key in ROBUSTNESS_KEYS:
        if key in (data["crossbar"] or {}):
            _fail(f"crossbar.{key}", data["crossbar"][key],
                  f"not set in the crossbar group; use robustness.{key}")
    robustness = build(RobustnessSettings, data.get("robustness"), "robustness")
    layers = build(LayerSettings, data.get("layers"), "layers")
    device, xbar = robustness.apply(
        _library("device", _device, _known("device", data["device"], DeviceModel, "preset",
                                           *DEVICE_SHORTHANDS)),
        _library("crossbar", CrossbarConfig.from_dict,
                 _known("crossbar", data["crossbar"], CrossbarConfig, "bit_serial")))
    return dict(
        seed=seed,
        runtime=build(RuntimeSettings, data["runtime"], "runtime"),
        model=ModelSettings.from_dict(data["model"] or {}),
        dataset=build(DatasetSettings, data["dataset"], "dataset"),
        train=build(TrainSettings, data["train"], "train"),
        admm=build(AdmmSettings, data["admm"], "admm"),
        device=device,
        crossbar=xbar,
        cost=_library("cost", CostConfig.from_dict, _known("cost", data["cost"], CostConfig)),
        eval=build(EvalSettings, data["eval"], "eval"),
        raw=data,
        compressor=_compressor(data.get("compressor", "admm")),
        obc=build(ObcSettings, data.get("obc"), "obc"),
        allocation=None if data.get("allocation") is None
        else build(AllocationSettings, data["allocation"], "allocation"),
        resume=_resume(data.get("resume", False)),
        robustness=robustness,
        layers=layers,
        layer_devices=layers.device_models(robustness),
    )


def check_cost_covers(xbar: CrossbarConfig, cost: CostConfig) -> None:
    """Cross-group rule: the cost table prices the design and its dense baseline (tile size,
    converter bits, ...). Checked on a one-layer probe plan before any work, so a setting the
    table does not cover fails now, not in the cost stage after training."""
    import torch

    from crossbar import MappingPlan
    from crossbar.cost import estimate
    from crossbar.plan import plan_layer

    probe = MappingPlan({"probe": plan_layer("probe", "linear", torch.ones(4, 4, dtype=torch.bool),
                                             xbar, mvms_per_sample=1)})
    try:
        estimate(probe, xbar, cost)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise ValueError(f"crossbar/cost: the cost table {cost.table!r} cannot price this design: "
                         f"{exc}") from None


def load_compress_config(cfg: DictConfig | Mapping) -> CompressExperiment:
    """Validate a composed ``conf/config.yaml`` (see module docstring)."""
    fields = _load(cfg, ())
    check_cost_covers(fields["crossbar"], fields["cost"])
    return CompressExperiment(**fields)


def load_study_config(cfg: DictConfig | Mapping) -> StudyExperiment:
    """Validate a composed ``conf/device_study.yaml``."""
    fields = _load(cfg, ("study",))
    check_cost_covers(fields["crossbar"], fields["cost"])
    return StudyExperiment(**fields, study=build(StudySettings, fields["raw"].get("study"),
                                                 "study"))


schema.register()  # the group schemas in Hydra's ConfigStore, before any composition
