"""The run's settings as frozen dataclasses, one per config block (pure data: each checks its
own ranges in ``__post_init__``; :mod:`experiments.config` builds them from the composed
config). The ``device``, ``crossbar`` and ``cost`` groups are the library's own classes
(``crossbar.DeviceModel``, ``CrossbarConfig``, ``crossbar.cost.CostConfig``); the compressors'
blocks are in :mod:`experiments.compressors.settings`."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from memxbar.crossbar import CrossbarConfig, DeviceModel, RepairConfig, WriteVerify
from memxbar.crossbar.cost import CostConfig
from memxbar.experiments.checks import (
    build,
    check_call_args,
    check_range,
    fail,
    import_target,
    known_keys,
    library_call,
)
from memxbar.experiments.compressors.settings import (
    AdaptiveLevelsSettings,
    AdmmSettings,
    AllocationSettings,
    DecomposeSettings,
    ObcSettings,
    TernarySettings,
)
from memxbar.experiments.datasets import DATASETS
from memxbar.experiments.models import MODELS
from memxbar.experiments.train import OPTIMIZERS

TORCH_DEVICES = ("auto", "cpu", "cuda")


SWEEPABLE = ("g_min_uS", "g_max_uS", "n_levels", "t_inference_s", "prog_sigma", "read_sigma",
             "sa0_rate", "sa1_rate") + tuple(
    f.name for f in dataclasses.fields(CrossbarConfig)
    if f.name not in ("array", "spare_rows", "spare_cols", "output_calibration",
                      "noise_precision")
) + ("r_wire_ohm",)
"""Settings a device study can sweep: numeric ``DeviceModel`` fields, ``CrossbarConfig`` fields
(numbers and choices such as ``mapping``, ``dac``, ``drift_compensation``; the repair fields
through ``robustness.<field>``), the flat sweep keys ``prog_sigma``, ``read_sigma``,
``sa0_rate`` and ``sa1_rate``, any ``<effect>.<field>`` of the device's cell models
(``EFFECT_KEY``), and ``robustness.<field>`` (repair and calibration steps)."""


EFFECT_KEY = re.compile(
    r"^(programming|read_noise|drift|faults|write_verify|array|robustness)\.[a-zA-Z_]\w*$")


def _interactive() -> bool:
    """Whether progress bars help: standard error is a terminal and this is not one job of a
    Hydra multirun (parallel jobs would interleave their bars)."""
    if sys.stderr is None or not sys.stderr.isatty():
        return False
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN)


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how to run: torch device (``auto`` = cuda when available), CPU threads
    (``None`` = torch's default), progress bars (``auto``: only when standard error is a
    terminal and the run is not a multirun's job, so that logs hold no bars; resolved to true
    or false here), and ``cache_dir``: a folder of dense and compressed models shared by runs,
    content-addressed by the settings each depends on (``None`` = no cache). Progress bars
    are display only: no result depends on them."""

    device: str = "auto"
    threads: int | None = None
    progress: object = "auto"  # true, false or "auto": checked below, resolved to a bool
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.progress, bool):
            if self.progress != "auto":
                fail("progress", self.progress, "true, false or auto (bars only when standard "
                     "error is a terminal)")
            object.__setattr__(self, "progress", _interactive())
        if self.cache_dir is not None and not str(self.cache_dir).strip():
            fail("cache_dir", self.cache_dir, "null or a directory path")
        if self.device not in TORCH_DEVICES:
            fail("device", self.device, "one of " + ", ".join(TORCH_DEVICES))
        check_range("threads", self.threads, 1, 1024, optional=True)


@dataclass(frozen=True)
class ModelSettings:
    """``name`` in ``experiments.models.MODELS`` plus constructor keyword arguments; or your
    own model: ``target``, the dotted path of its constructor (the group's ``_target_`` key,
    as Hydra's ``instantiate`` reads it), with ``kwargs`` its arguments (``name``: a label for
    reports, default the constructor's name)."""

    name: str
    kwargs: dict = field(default_factory=dict)
    target: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelSettings:
        data = dict(data)
        if "_target_" in data:
            target = data.pop("_target_")
            builder = import_target("model._target_", target)
            name = data.pop("name", None) or target.rpartition(".")[2]
            if not isinstance(name, str):
                fail("model.name", name, "a label (string) for the reports")
            check_call_args("model", target, builder, data)
            return cls(name, data, target)
        name = data.pop("name", None)
        if not isinstance(name, str) or name not in MODELS:
            fail("model.name", name, "one of " + ", ".join(sorted(MODELS)))
        params = inspect.signature(MODELS[name][0]).parameters
        for key, value in data.items():
            if key not in params:
                fail(f"model.{key}", value, f"a constructor argument of {name}: "
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
            fail(key, value, "an integer in [1, 100000] (a layer size or count)")
    elif isinstance(value, float):
        if not (math.isfinite(value) and 0 <= value < 1):
            fail(key, value, "a number in [0, 1) (a rate, e.g. dropout)")
    elif isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                and 1 <= v <= 100_000 for v in value):
            fail(key, value, "a non-empty list of integers in [1, 100000] (layer widths)")
    else:
        fail(key, value, "a number, a list of integers or a boolean")


LOADER_KEYS = ("batch_size", "test_batch_size", "subset", "test_subset")
"""The ``dataset`` keys the loaders read; with ``_target_`` every other key (but ``name``) is an
argument of the user's data set constructor."""


@dataclass(frozen=True)
class DatasetSettings:
    """Arguments of ``experiments.datasets.make_loaders`` (``data_dir`` relative to the
    directory the run started in); or your own data: ``target``, the dotted path of a function
    (the group's ``_target_`` key) that returns ``(train, test)``, each a ``TensorDataset``, an
    ``(inputs, labels)`` pair of tensors or a map-style dataset of ``(input, label)`` items,
    called with ``args`` (``experiments.data.user_splits``)."""

    name: str = "digits"
    data_dir: str | None = None
    batch_size: int = 64
    test_batch_size: int | None = None
    subset: int | None = None
    test_subset: int | None = None
    verify: bool = True
    target: str | None = None
    args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target is None and self.name not in DATASETS:
            fail("name", self.name, "one of " + ", ".join(DATASETS)
                 + " (or give dataset._target_: your own data)")
        if self.target is None and self.name == "digits" and self.data_dir is not None:
            fail("data_dir", self.data_dir, "null: digits is embedded (scikit-learn), it reads "
                 "no files")
        if self.target is None and self.name != "digits" and self.data_dir is None:
            fail("data_dir", None, f"a directory holding the {self.name} files")
        for key in LOADER_KEYS:
            value = getattr(self, key)
            if value is not None and value < 1:
                fail(key, value, "an integer >= 1" + ("" if key == "batch_size" else " or null"))

    @classmethod
    def from_dict(cls, data: Mapping | None) -> DatasetSettings:
        """The ``dataset`` group: the built-in data sets' keys, or ``_target_`` and its
        arguments beside the loader keys."""
        if not isinstance(data, Mapping) or "_target_" not in data:
            return build(cls, data, "dataset")
        data = dict(data)
        target = data.pop("_target_")
        factory = import_target("dataset._target_", target)
        loader = {k: data.pop(k) for k in LOADER_KEYS if k in data}
        name = data.pop("name", None) or target.rpartition(".")[2]
        check_call_args("dataset", target, factory, data)
        return build(cls, {**loader, "name": name, "target": target, "args": data}, "dataset")


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
        check_range("epochs", self.epochs, 0, 10_000)
        if not 0 < self.lr <= 10:
            fail("lr", self.lr, "a number in (0, 10] (larger learning rates only diverge)")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", self.optimizer, "one of " + ", ".join(OPTIMIZERS))
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)


@dataclass(frozen=True)
class EvalSettings:
    """Device-aware evaluation: ``chips`` programmed chips (Monte Carlo, seeds ``seed + i``),
    ``calibration_samples`` training images for the DAC/ADC ranges, an optional ``test_subset``
    for the crossbar runs (the simulator is slower than PyTorch), and the specification a chip
    must meet for the yield (``spec_max_drop`` points below the dense model and/or
    ``spec_min_accuracy`` %; both null: no yield). ``chip_test``: ``full`` (every chip on every
    test image) or ``stratified`` (each chip on the ``risky_fraction`` of the images the model
    is least sure of and a ``safe_fraction`` sample of the rest: an unbiased estimate, chips
    near the specification measured on every image; ``experiments.chip_test``); ``workers``:
    processes the chips are spread over (the results do not depend on it)."""

    chips: int = 5
    calibration_samples: int = 256
    test_subset: int | None = None
    spec_max_drop: float | None = 1.0
    spec_min_accuracy: float | None = None
    chip_test: str = "full"
    risky_fraction: float = 0.1
    safe_fraction: float = 0.1
    workers: int = 1

    def __post_init__(self) -> None:
        check_range("chips", self.chips, 1, 10_000)
        check_range("calibration_samples", self.calibration_samples, 1, 100_000)
        check_range("test_subset", self.test_subset, 1, 10**9, optional=True)
        check_range("spec_max_drop", self.spec_max_drop, 0.0, 100.0, optional=True)
        check_range("spec_min_accuracy", self.spec_min_accuracy, 0.0, 100.0, optional=True)
        if self.chip_test not in CHIP_TESTS:
            fail("chip_test", self.chip_test, "one of " + ", ".join(CHIP_TESTS))
        for key in ("risky_fraction", "safe_fraction"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                fail(key, value, "a number in (0, 1]")
        check_range("workers", self.workers, 1, 256)

    @property
    def sampling(self) -> tuple[float, float] | None:
        """``(risky_fraction, safe_fraction)`` for a stratified chip test, else None."""
        return (self.risky_fraction, self.safe_fraction) if self.chip_test == "stratified" \
            else None

    def spec_floor(self, dense_accuracy: float) -> float | None:
        """The accuracy (%) a chip must reach to meet the specification (None: none)."""
        floors = [f for f in (None if self.spec_max_drop is None
                              else dense_accuracy - self.spec_max_drop,
                              self.spec_min_accuracy) if f is not None]
        return max(floors) if floors else None


CHIP_TESTS = ("full", "stratified")
"""How each chip's test accuracy is measured (``eval.chip_test``)."""


VERIFY_RANKINGS = ("fisher", "random")
"""How selective write-verify picks its weights (``robustness.verify_ranking``)."""

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
    mapping of :class:`crossbar.WriteVerify` fields turns it on), selective write-verify
    (``verify_fraction`` of the live weights verified, chosen by ``verify_ranking``:
    ``fisher``, the Fisher-weighted programming variance on ``verify_samples`` training
    images, or ``random``; ``experiments.selective_verify``), and an ``ablation`` of the
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
    verify_fraction: float = 1.0
    verify_ranking: str = "fisher"
    verify_samples: int = 256
    ablation: bool = True
    ablation_chips: int = 5

    def __post_init__(self) -> None:
        check_range("verify_fraction", self.verify_fraction, 0.0, 1.0)
        if self.verify_ranking not in VERIFY_RANKINGS:
            fail("verify_ranking", self.verify_ranking, "one of " + ", ".join(VERIFY_RANKINGS))
        check_range("verify_samples", self.verify_samples, 1, 100_000)
        for key in ("placement", "output_calibration", "hardware_aware", "ablation"):
            if not isinstance(getattr(self, key), bool):
                fail(key, getattr(self, key), "true or false")
        if self.compensation is not None and not isinstance(self.compensation, bool):
            fail("compensation", self.compensation, "true, false or null (auto)")
        check_range("miss_rate", self.miss_rate, 0.0, 1.0)
        check_range("spare_rows", self.spare_rows, 0, 4096)
        check_range("spare_cols", self.spare_cols, 0, 4096)
        check_range("calibration_samples", self.calibration_samples, 2, 100_000)
        check_range("ablation_chips", self.ablation_chips, 1, 10_000)
        if self.hardware_aware_effects not in HARDWARE_AWARE_EFFECTS:
            fail("hardware_aware_effects", self.hardware_aware_effects,
                  "one of " + ", ".join(HARDWARE_AWARE_EFFECTS))
        if self.write_verify is not None:
            if not isinstance(self.write_verify, Mapping):
                fail("write_verify", self.write_verify,
                      "null or a mapping of tolerance_uS, max_pulses, pulse_sigma")
            library_call("write_verify", lambda d: WriteVerify(**d), known_keys(
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
    group mapping (fields or ``preset: <name>``) for the layers it matches; other
    layers use the ``device`` group. Patterns are checked against the model before any work."""

    digital: list = field(default_factory=list)
    devices: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.digital):
            if not isinstance(pattern, str) or not pattern:
                fail(f"digital[{i}]", pattern, "a layer name pattern (fnmatch or re:...)")
        for pattern, data in self.devices.items():
            if not isinstance(data, Mapping):
                fail(f"devices.{pattern}", data, "a device mapping (fields or preset: name)")

    def device_models(self, robustness: RobustnessSettings) -> dict[str, DeviceModel]:
        """``devices`` as ``DeviceModel``s (the robustness group's write-verify applied)."""
        out = {}
        for pattern, data in self.devices.items():
            out[pattern] = robustness.programmed(library_call(
                f"layers.devices.{pattern}", device_from_dict, known_keys(
                    f"layers.devices.{pattern}", data, DeviceModel, "preset")))
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
    time on a non-ideal device and the others on its ideal version: the base device made
    harsher until every layer on it costs ``sensitivity_drop`` points (null: the base device
    as it is). ``lifetime``: a lifetime
    study (:class:`LifetimeSettings`; ``experiments.lifetime``); with it ``sweeps`` may be
    null."""

    sweeps: dict | None = field(default_factory=dict)
    source: str | None = None
    models: list[str] = field(default_factory=lambda: ["dense", "compressed"])
    grids: list = field(default_factory=list)
    layer_sensitivity: bool = False
    sensitivity_drop: float | None = 5.0
    lifetime: dict | None = None

    def __post_init__(self) -> None:
        if not self.sweeps and self.lifetime is None and not self.grids \
                and not self.layer_sensitivity:
            fail("sweeps", self.sweeps, "a mapping setting -> list of values (null or empty "
                 "only with study.lifetime, study.grids or study.layer_sensitivity set)")
        check_range("sensitivity_drop", self.sensitivity_drop, 0.0, 100.0, optional=True)
        if self.sweeps is None:  # study.sweeps=null: none (a lifetime study alone)
            object.__setattr__(self, "sweeps", {})
        self.lifetime_settings  # noqa: B018 - validated now, before any work
        for key, values in self.sweeps.items():
            _check_axis(f"sweeps.{key}", key, values)
        if not self.models:
            fail("models", self.models, "a non-empty list of 'dense' and/or 'compressed'")
        for m in self.models:
            if m not in ("dense", "compressed"):
                fail("models", self.models, "a list of 'dense' and/or 'compressed'")
        if len(set(self.models)) < len(self.models):
            fail("models", self.models, "each of 'dense' and 'compressed' at most once (a "
                 "model twice would be evaluated and plotted twice)")
        for i, grid in enumerate(self.grids):
            if not isinstance(grid, dict) or len(grid) != 2:
                fail(f"grids[{i}]", grid, "a mapping of exactly two settings to their values, "
                      "e.g. {prog_sigma: [0.0, 0.1], adc_bits: [4, 8]}")
            for key, values in grid.items():
                _check_axis(f"grids[{i}].{key}", key, values)


    @property
    def lifetime_settings(self) -> LifetimeSettings | None:
        """``lifetime`` as :class:`LifetimeSettings` (None: no lifetime study)."""
        return None if self.lifetime is None else build(LifetimeSettings, self.lifetime,
                                                        "lifetime")


POLICIES = ("none", "drift_compensation", "recalibrate", "reprogram")
"""Maintenance policies of a lifetime study (``experiments.lifetime``)."""

YEAR_S = 365 * 86400.0


@dataclass(frozen=True)
class LifetimeSettings:
    """A lifetime study (``study.lifetime``): the chips tested at ``times_s`` after programming
    (ascending, within the ``service_life_s``), under each maintenance policy of
    ``policies``; ``recalibrate_every_s``: the ``recalibrate`` policy's period."""

    times_s: list = field(default_factory=lambda: [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6,
                                                   1e7, YEAR_S])
    policies: list = field(default_factory=lambda: list(POLICIES))
    recalibrate_every_s: float = 86400.0
    service_life_s: float = YEAR_S

    def __post_init__(self) -> None:
        check_range("service_life_s", self.service_life_s, 1e-9, 1e12)
        check_range("recalibrate_every_s", self.recalibrate_every_s, 1e-9, 1e12)
        times = self.times_s
        if not isinstance(times, list) or not times or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                and 0 < t <= self.service_life_s for t in times):
            fail("times_s", times, f"a non-empty list of times in (0, service_life_s = "
                 f"{self.service_life_s:g}] seconds")
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            fail("times_s", times, "times in ascending order, each once")
        if not isinstance(self.policies, list) or not self.policies or any(
                p not in POLICIES for p in self.policies) \
                or len(set(self.policies)) < len(self.policies):
            fail("policies", self.policies, "a non-empty list of distinct policies among "
                 + ", ".join(POLICIES))


def _check_axis(name: str, key: object, values: object) -> None:
    """A study axis: a sweepable setting and a non-empty list of values."""
    if key not in SWEEPABLE + ("sa_rate",) and not EFFECT_KEY.match(str(key)):
        fail(name, values, "a key among " + ", ".join(SWEEPABLE + ("sa_rate",))
              + " or <effect>.<field> (e.g. programming.scale, drift.scale, "
              "write_verify.tolerance_uS, array.r_sense_ohm, robustness.placement)")
    if not isinstance(values, list) or not values:
        fail(name, values, "a non-empty list of values")
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        fail(name, values, f"a list of distinct values ({twice[0]!r} is there twice: its point "
             "would be evaluated and plotted twice)")


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
    ternary: TernarySettings = field(default_factory=TernarySettings)
    adaptive_levels: AdaptiveLevelsSettings = field(default_factory=AdaptiveLevelsSettings)
    allocation: AllocationSettings | None = None
    resume: bool = False
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    layers: LayerSettings = field(default_factory=LayerSettings)
    layer_devices: dict = field(default_factory=dict)
    decompose: DecomposeSettings = field(default_factory=DecomposeSettings)

    def __post_init__(self) -> None:
        """Weights are quantized onto levels the device can hold: an integer level count in
        the ``admm`` group must be the device's, or (uniform device levels) a count whose grid
        is a subset of the device's, ``(n_device - 1) % (n - 1) == 0``; an analog device
        accepts any."""
        n_device = self.device.level_count
        uniform = self.device.levels_uS is None
        if self.compressor == "adaptive_levels" and self.adaptive_levels.candidates is None \
                and (n_device is None or not uniform):
            fail("adaptive_levels.candidates", None, "a list of level counts: the device has "
                 "no uniform grid of levels whose subsets could be the candidates")
        if n_device is None or self.crossbar.cell_bits is not None:
            return
        counts = [("admm.levels", self.admm.levels)] + [
            (f"admm.constraints[{i}].levels", c.get("levels"))
            for i, c in enumerate(self.admm.constraints)]
        if self.compressor == "decompose":
            counts += [(f"decompose.{k}", getattr(self.decompose, k))
                       for k in ("basis_levels", "coeff_levels")]
        if self.compressor == "adaptive_levels":
            counts += [(f"adaptive_levels.candidates[{i}]", n)
                       for i, n in enumerate(self.adaptive_levels.candidates or ())]
        for key, n in counts:
            if not isinstance(n, int) or n == n_device:
                continue
            if not (uniform and 2 <= n < n_device and (n_device - 1) % (n - 1) == 0):
                subsets = [k for k in range(2, n_device) if (n_device - 1) % (k - 1) == 0]
                fail(key, n, f"{n_device} (the device's level count)"
                      + (f" or a subset of its grid: {subsets}" if uniform and subsets else "")
                      + ", or null for no quantization")


@dataclass(frozen=True)
class StudyExperiment(CompressExperiment):
    """A device study: the compress settings plus the sweep."""

    study: StudySettings | None = None


def device_from_dict(data: Mapping) -> DeviceModel:
    """A device group: DeviceModel fields, optionally on top of
    ``preset: <name>``. A partial mapping for a cell model of the preset (``programming:
    {scale: 2}``) changes those fields of the preset's model."""
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is None:
        return DeviceModel.from_dict(data)
    base = DeviceModel.preset(preset).to_dict()
    if set(base) <= set(data):  # every field given too: the preset would change nothing
        fail("preset", preset, f"a preset with only the fields it changes; here every field "
             f"is set as well (another device option), so it would be ignored: choose the "
             f"option device={preset} instead")
    unknown = sorted(set(data) - set(base))
    if unknown:
        fail(f"key {unknown[0]}", data[unknown[0]], "one of preset, " + ", ".join(base))
    if data.get("n_levels") is not None:
        base["levels_uS"] = None
    for key, value in data.items():
        if isinstance(value, Mapping) and "model" not in value and isinstance(base.get(key),
                                                                               Mapping):
            value = {**base[key], **value}
        base[key] = value
    return DeviceModel.from_dict(base)
