"""Settings of the compressors and of the allocation: the ``admm`` group (generated from
``admm.CompressConfig``), the ``obc`` block and the ``allocation`` block. Pure data with their
range checks; the loader (:mod:`experiments.config`) builds them from the composed config."""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from memxbar.admm import CompressConfig, LayerConstraint
from memxbar.admm.importance import METHODS
from memxbar.experiments.checks import fail


class _AdmmGroup:
    """Methods of :class:`AdmmSettings` (whose fields are generated from
    ``admm.CompressConfig``)."""

    def __post_init__(self) -> None:
        if self.levels is not None and self.levels < 2:
            fail("levels", self.levels, "an integer >= 2 (device levels) or null")
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
                    fail(f"constraints[{i}].{key}", c[key], "a LayerConstraint field: "
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


def _check_epochs(key: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= 100_000:
        raise ValueError(f"{key}={value!r} is invalid; allowed: an integer in [0, 100000] or "
                         "null (the admm group's epochs)")


PENALTIES = ("wpc", "off")
"""``ternary.penalty``: Weight Penalty Clipping, or none (the ablation)."""


@dataclass(frozen=True)
class TernarySettings:
    """The ``ternary`` block (``admm.ternary``; docs/ternary.md): ``penalty`` (``wpc`` | ``off``)
    during the ``wpc_epochs`` masked retraining after the structured prune, with weight
    ``weight`` (lambda of ``lambda * sum relu(|w| - tau)^2``) and ``tau = mean|w| + tau_std *
    std|w|`` re-estimated each epoch, ``clip`` (clip ``|w|`` at ``tau`` after each epoch); then
    ``ternary_epochs`` straight-through fine-tuning with the weights on ``{-a, 0, +a}``. Epochs
    ``null``: the admm group's (``prune_retrain_epochs``; ``quant_epochs +
    quant_retrain_epochs``), so ``ternary`` trains as long as ``admm`` and ``magnitude``."""

    penalty: str = "wpc"
    weight: float = 1.0
    tau_std: float = 2.0
    clip: bool = True
    wpc_epochs: int | None = None
    ternary_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty={self.penalty!r} is invalid; allowed: one of "
                             + ", ".join(PENALTIES))
        if not (math.isfinite(self.weight) and 0 <= self.weight <= 1e6):
            raise ValueError(f"weight={self.weight!r} is invalid; allowed: a number in "
                             "[0, 1e6] (lambda of the clipping penalty)")
        if not (math.isfinite(self.tau_std) and 0 <= self.tau_std <= 10):
            raise ValueError(f"tau_std={self.tau_std!r} is invalid; allowed: a number in "
                             "[0, 10] (tau = mean|w| + tau_std * std|w|)")
        _check_epochs("wpc_epochs", self.wpc_epochs)
        _check_epochs("ternary_epochs", self.ternary_epochs)


@dataclass(frozen=True)
class AdaptiveLevelsSettings:
    """The ``adaptive_levels`` block (``admm.adaptive_levels``; docs/adaptive_levels.md): per
    layer, the device level count ``n`` from ``candidates`` (null: every count whose uniform
    grid is a subset of the device's) that maximises ``log N(q(w); w, sigma^2) - cost_weight
    * pulses(n)``, with ``sigma^2`` the Laplace variance from the empirical Fisher on
    ``n_calib`` training images (``prior_precision`` added to the precision) and
    ``pulses(n)`` the expected write-verify pulses of the layer's cells for a tolerance of
    ``tolerance_fraction`` of the grid's level spacing. ``front``: the lambdas of the
    cost-accuracy front reported next to the configured one."""

    cost_weight: float = 0.01
    candidates: list[int] | None = None
    n_calib: int = MAX_CALIBRATION
    prior_precision: float = 1.0
    tolerance_fraction: float = 0.25
    front: list[float] = field(default_factory=lambda: [0.0, 0.003, 0.01, 0.03, 0.1, 1.0])

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cost_weight) and 0 <= self.cost_weight <= 1e12):
            raise ValueError(f"cost_weight={self.cost_weight!r} is invalid; allowed: a number "
                             "in [0, 1e12] (lambda, nats per write-verify pulse)")
        if self.candidates is not None and (not self.candidates or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 2
                for n in self.candidates) or len(set(self.candidates)) != len(self.candidates)):
            raise ValueError(f"candidates={self.candidates!r} is invalid; allowed: null (the "
                             "device's level subsets) or a list of distinct integers >= 2")
        if not 1 <= self.n_calib <= MAX_CALIBRATION:
            raise ValueError(f"n_calib={self.n_calib!r} is invalid; allowed: an integer in "
                             f"[1, {MAX_CALIBRATION}]")
        if not (math.isfinite(self.prior_precision) and 0 < self.prior_precision <= 1e12):
            raise ValueError(f"prior_precision={self.prior_precision!r} is invalid; allowed: "
                             "a number in (0, 1e12]")
        if not (math.isfinite(self.tolerance_fraction) and 0 < self.tolerance_fraction <= 0.5):
            raise ValueError(f"tolerance_fraction={self.tolerance_fraction!r} is invalid; "
                             "allowed: a number in (0, 0.5] (of the level spacing)")
        if not self.front or any(not (math.isfinite(v) and v >= 0) for v in self.front):
            raise ValueError(f"front={self.front!r} is invalid; allowed: a non-empty list of "
                             "numbers >= 0 (lambdas)")


RESOURCES = ("compression", "tiles", "area_mm2", "energy_nJ")
"""Units a budget can be given in: ``compression`` is a structured compression ratio (dense
weights / weights on live crossbar rows x columns, >= 1; larger is tighter), the others a
total the design must stay under (smaller is tighter)."""


SETTING_KEYS = ("row_ratio", "row_keep", "col_ratio", "col_keep", "block_ratio", "block_keep",
                "levels", "pattern")
"""Fields a candidate may set; the pruning ones replace all pruning fields of the layer's
constraint; ``pattern`` (as in ``admm.LayerConstraint``, default all constrained layers)
limits the layers the candidate is offered to."""


PRUNE_KEYS = SETTING_KEYS[:-2]


METHODS_OF_ALLOCATION = ("auto", "milp", "greedy")
"""How the per-layer settings are chosen (``allocation.method``): ``milp``, the knapsack over
one-shot distortions (``admm.allocate``); ``greedy``, NetAdapt-style steps scored by short
fine-tuning (``experiments.greedy``); ``auto``: ``greedy`` on the ``candidates: auto`` ladder,
``milp`` on a list of candidates (which the greedy steps cannot walk)."""

MEASURED = ("output", "kl")
"""Distortions measured on the model (``experiments.allocation.OutputDistortion``)."""

DISTORTIONS = (*MEASURED, *METHODS)
"""How the allocation measures a candidate's distortion (``allocation.importance``):
``output`` compresses the layer (with OBS compensation) and measures the relative change of
the model's outputs, ``kl`` the divergence of its predictions; ``fisher`` / ``hessian``
estimate the loss increase from the weight change (``experiments.allocation``)."""


AUTO_KEEP = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03)
"""Fractions of a layer's rows and of its columns that ``candidates: auto`` offers (every
pair; at least one row and column; the final layer keeps all its outputs unless its
constraint sets ``prune_outputs``). A geometric ladder, about 1.4x apart: the search decides,
from the user's model and data, where on it each layer sits."""


SEARCH_KEYS = ("max_drop", "search_steps", "search_chips", "search_confirm", "search_range")
"""``allocation`` keys of an accuracy-budget search only: they choose which budgets are tried
and how each is judged, never the compressed model at a given budget. A point of the search is
a run at one budget without them (``experiments.search``), so that a search extended by more
steps or other chip counts reuses every model it trained."""


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
      units, default from the candidates: no compression to the cheapest choice). A point
      whose drop lies within ``search_confirm`` standard errors of the chip mean
      (``std / sqrt(search_chips)``) of ``max_drop`` is measured again on ``eval.chips`` chips
      and decided on that (0: never).

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
    search_confirm: float = 2.0
    search_range: list[float] | None = None
    method: str = "auto"
    finetune_steps: int = 50
    greedy_step: float = 0.75
    greedy_beam: int = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS_OF_ALLOCATION:
            raise ValueError(f"method={self.method!r} is invalid; allowed: one of "
                             + ", ".join(METHODS_OF_ALLOCATION))
        if self.method == "greedy" and self.candidates != "auto":
            raise ValueError(f"method='greedy' is invalid with candidates={self.candidates!r}; "
                             "allowed: candidates: auto (the greedy search steps down its "
                             "ladder) or method: milp")
        if not 1 <= self.finetune_steps <= 100_000:
            raise ValueError(f"finetune_steps={self.finetune_steps!r} is invalid; allowed: an "
                             "integer in [1, 100000]")
        if not (math.isfinite(self.greedy_step) and 0.05 <= self.greedy_step <= 0.99):
            raise ValueError(f"greedy_step={self.greedy_step!r} is invalid; allowed: a number "
                             "in [0.05, 0.99] (each iteration's resource target, as a fraction "
                             "of the last)")
        if isinstance(self.greedy_beam, bool) or not 1 <= self.greedy_beam <= 16:
            raise ValueError(f"greedy_beam={self.greedy_beam!r} is invalid; allowed: an integer "
                             "in [1, 16] (the allocations each greedy iteration carries on)")
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
        if not (math.isfinite(self.search_confirm) and 0 <= self.search_confirm <= 10):
            raise ValueError(f"search_confirm={self.search_confirm!r} is invalid; allowed: a "
                             "number in [0, 10] (standard errors of the chip mean; 0: never "
                             "re-measure a point)")
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
                LayerConstraint(**plain_setting(c))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"candidates[{i}].{exc}") from None

    @property
    def chosen_method(self) -> str:
        """``method`` with ``auto`` resolved (:data:`METHODS_OF_ALLOCATION`)."""
        if self.method != "auto":
            return self.method
        return "greedy" if self.candidates == "auto" else "milp"

    @property
    def tighter(self) -> int:
        """+1 where a larger budget is tighter (compression ratio), -1 otherwise."""
        return 1 if self.resource == "compression" else -1

    def fixed(self, budget: float) -> AllocationSettings:
        """These settings with a resource ``budget`` (no search): one point of the search."""
        return dataclasses.replace(self, budget=float(budget), max_drop=None)


def plain_setting(setting: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in setting.items()}


SETTINGS_BLOCK: dict[str, str] = {"admm": "admm", "magnitude": "admm", "obc": "obc",
                                  "decompose": "decompose",
                                  "ternary": "ternary", "adaptive_levels": "adaptive_levels"}
"""The config block each compressor reads as ``CompressInputs.settings`` (a field of
:class:`experiments.settings.CompressExperiment`)."""

RETRAINING = ("admm", "magnitude", "decompose")
"""Compressors that retrain (so hardware-aware retraining changes their model)."""


DECOMPOSE_METHODS = ("admm", "magnitude")
"""How ``compressor=decompose`` prunes and quantizes the coefficient convolutions: the ``admm``
or the ``magnitude`` compressor's stages (``decompose.method``)."""


@dataclass(frozen=True)
class DecomposeSettings:
    """The ``decompose`` block (``compressor=decompose``, docs/decompose.md): every mapped
    ``Conv2d`` (groups 1, kernel larger than 1 x 1) matching a ``layers`` pattern becomes ``M``
    basis kernels per input channel (``basis``; ``per_layer``: layer name -> its own ``M``;
    each in ``[1, kh*kw]``, checked on the model) and a ``1 x 1`` coefficient convolution.

    Hybrid precision by reuse: ``basis_levels`` are the levels of the basis convolutions' cell
    pair (null: float in training, the device's grid on the chip), ``coeff_levels`` those of
    the coefficient convolutions (null: the layer's ``admm`` constraint levels); both must be
    levels the device holds (checked with the device). ``finetune_epochs``: dense
    fine-tuning of the decomposed model before ``method`` (``admm`` | ``magnitude``, with the
    ``admm`` group's epochs) prunes and quantizes."""

    basis: int = 4
    per_layer: dict = field(default_factory=dict)
    layers: list = field(default_factory=lambda: ["*"])
    basis_levels: int | None = None
    coeff_levels: int | None = None
    finetune_epochs: int = 2
    method: str = "admm"

    def __post_init__(self) -> None:
        if self.basis < 1:
            fail("basis", self.basis, "an integer >= 1 (and at most kh*kw of each layer)")
        for name, m in self.per_layer.items():
            if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                fail(f"per_layer.{name}", m, "an integer >= 1 (and at most the layer's kh*kw)")
        if not self.layers or any(not isinstance(p, str) or not p for p in self.layers):
            fail("layers", self.layers, "a non-empty list of layer name patterns (fnmatch or "
                 "re:...)")
        for key in ("basis_levels", "coeff_levels"):
            n = getattr(self, key)
            if n is not None and n < 2:
                fail(key, n, "an integer >= 2 (levels of the cell pair) or null")
        if not 0 <= self.finetune_epochs <= 1000:
            fail("finetune_epochs", self.finetune_epochs, "an integer in [0, 1000]")
        if self.method not in DECOMPOSE_METHODS:
            fail("method", self.method, "one of " + ", ".join(DECOMPOSE_METHODS))
