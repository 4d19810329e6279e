"""The compression pipeline: prune-ADMM -> hard prune -> masked retrain -> quant-ADMM ->
hard quantize -> retrain of the non-weight parameters (Yuan et al., ISLPED 2019).

Two additions make the result survive the chip and recover accuracy:

* a forward *perturbation* (``compress(..., perturbation=p)``), a callable
  ``p(model) -> context manager`` that perturbs the training forward passes while active (protocol
  in :mod:`admm.perturbation`), entered for every training epoch of the stages in
  ``CompressConfig.perturb_stages`` and never during evaluation or checkpointing; ``train_noise``
  is the built-in one (:func:`admm.noise.weight_noise`);
* knowledge distillation from the dense model (``distill_weight``, ``distill_temperature``;
  :mod:`admm.distill`) in every training stage.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from memxbar.admm.admm import ADMM
from memxbar.admm.constraints import LayerConstraint, crossbar_layers, select_layers, weight_matrix
from memxbar.admm.distill import Distillation, frozen_copy
from memxbar.admm.importance import (
    METHODS,
    LossFn,
    compute_importance,
    importance_matrix,
    importance_projectors,
)
from memxbar.admm.masked import MaskedOptimizer, apply_masks, freeze_weights, live_cols, live_rows
from memxbar.admm.noise import weight_noise
from memxbar.admm.perturbation import Perturbation
from memxbar.admm.projections import pair_levels, project_levels

_log = logging.getLogger("admm")
STAGES = ("prune", "prune_retrain", "quant", "quant_retrain", "done")
LR_SCHEDULES = ("constant", "cosine")
TRAINING_STAGES = STAGES[:-1]
NOISE_STAGES = ("prune_retrain", "quant", "quant_retrain")
"""The stages ``train_noise`` perturbs: every stage after the hard prune."""


@dataclass
class CompressConfig:
    """Pipeline settings. Epoch counts are per stage; ADMM rounds (Z/U updates) run every
    ``update_every`` epochs or steps (``update_unit``), and always once at the end of an ADMM
    stage if the last round boundary was missed.

    ``importance`` makes every projection (prune and quant ADMM, hard prune, hard quantization)
    importance-weighted, ``||x||_imp^2 = sum imp_i x_i^2`` (Gao et al., ICML 2019; see
    :mod:`admm.importance`): ``None`` (Euclidean), a dict ``{layer name: importance}`` (matrix
    view or weight shape, ``>= 0``), or a method ``"fisher"`` / ``"hessian"`` computed once by
    :func:`admm.importance.compute_importance` on the first ``importance_samples`` samples of the
    training loader, on the dense model, before the first stage.

    ``train_noise`` (relative sigma, >= 0) injects weight noise ``w * (1 + sigma * N)`` into the
    compressed layers during every stage after the hard prune (:mod:`admm.noise`), so the
    retrained model tolerates the programming variation of the cells it will be mapped to.

    ``perturb_stages`` (names from :data:`TRAINING_STAGES`) are the stages in which the caller's
    ``perturbation`` (:mod:`admm.perturbation`) is active: by default the masked retraining after
    the hard prune and the retraining after the hard quantization.

    ``lr_schedule``: ``constant`` (``lr`` throughout) or ``cosine``: in each retraining stage
    (``prune_retrain``, ``quant_retrain``) of ``E`` epochs, epoch ``e`` (from 0) trains at
    ``lr * (1 + cos(pi * e / E)) / 2`` (Loshchilov and Hutter, "SGDR", ICLR 2017, one cycle per
    stage). The ADMM stages keep ``lr``: annealing there slows ``W`` as ``rho`` grows, leaves a
    larger primal residual ``||W - Z||`` and a worse hard prune (LeNet-5/MNIST: 96.97 % after
    the hard prune with a cosine prune-ADMM stage against 98.25 % without, all else equal).

    ``distill_weight`` (``alpha`` in ``[0, 1]``) and ``distill_temperature`` (``T > 0``) add
    knowledge distillation from the dense model to every training stage when ``alpha > 0``:
    ``(1 - alpha) * loss + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al.,
    2015; :mod:`admm.distill`).

    ``collapse_floor``: a metric (of ``eval_fn``) at or below which the model has collapsed,
    e.g. 1.5x chance accuracy. A retraining stage (``prune_retrain``, ``quant_retrain``) is
    meant to restore the accuracy its hard projection cost; one that ends at or below the
    floor, from a dense model above it, raises :class:`DivergenceError` with the likely causes
    instead of running the remaining stages (``None``: no such check).
    """

    constraints: Sequence[LayerConstraint]
    prune_epochs: int = 10
    prune_retrain_epochs: int = 5
    quant_epochs: int = 5
    quant_retrain_epochs: int = 2
    update_every: int = 1
    update_unit: str = "epoch"
    rho: float = 1e-3
    rho_factor: float = 1.3
    rho_max: float = 1.0
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0
    importance: str | Mapping[str, Tensor] | None = None
    importance_samples: int = 512
    train_noise: float = 0.0
    perturb_stages: Sequence[str] = ("prune_retrain", "quant_retrain")
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    progress: bool = True
    collapse_floor: float | None = None

    def __post_init__(self) -> None:
        if not self.constraints:
            raise ValueError("constraints is empty: give at least one LayerConstraint")
        for key in ("prune_epochs", "prune_retrain_epochs", "quant_epochs",
                    "quant_retrain_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}={value!r} out of range: must be an integer >= 0")
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) \
                or self.update_every < 1:
            raise ValueError(f"update_every={self.update_every!r} out of range: integer >= 1")
        if self.update_unit not in ("epoch", "step"):
            raise ValueError(f"update_unit={self.update_unit!r} invalid: 'epoch' or 'step'")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer={self.optimizer!r} invalid: 'adam' or 'sgd'")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} invalid: one of "
                             f"{list(LR_SCHEDULES)}")
        if not _is_number(self.train_noise) or not 0 <= self.train_noise <= 1:
            raise ValueError(f"train_noise={self.train_noise!r} out of range: a number in "
                             "[0.0, 1.0] (relative weight noise)")
        if isinstance(self.perturb_stages, str) \
                or not isinstance(self.perturb_stages, Sequence) \
                or any(s not in TRAINING_STAGES for s in self.perturb_stages):
            raise ValueError(f"perturb_stages={self.perturb_stages!r} invalid: a list of stage "
                             f"names from {list(TRAINING_STAGES)}")
        self.perturb_stages = tuple(dict.fromkeys(self.perturb_stages))
        if not _is_number(self.distill_weight) or not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight={self.distill_weight!r} out of range: a number in "
                             "[0.0, 1.0]")
        if not _is_number(self.distill_temperature) \
                or not 0 < self.distill_temperature <= 100:
            raise ValueError(f"distill_temperature={self.distill_temperature!r} out of range: "
                             "a number in (0, 100]")
        if not _is_number(self.momentum) or not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum={self.momentum!r} out of range: a number in [0.0, 1.0]")
        if not _is_number(self.weight_decay) or not 0 <= self.weight_decay <= 1:
            raise ValueError(f"weight_decay={self.weight_decay!r} out of range: "
                             "a number in [0.0, 1.0]")
        if not _is_number(self.lr) or not 0 < self.lr <= 10:
            raise ValueError(f"lr={self.lr!r} out of range: a number in (0, 10] (larger "
                             "learning rates only diverge)")
        if not (self.importance is None or isinstance(self.importance, Mapping)
                or (isinstance(self.importance, str) and self.importance in METHODS)):
            raise ValueError(f"importance={self.importance!r} invalid: None, a dict "
                             f"{{layer: tensor}} or one of {list(METHODS)}")
        if self.collapse_floor is not None and not _is_number(self.collapse_floor):
            raise ValueError(f"collapse_floor={self.collapse_floor!r} is invalid; allowed: a "
                             "number or None")
        if isinstance(self.importance_samples, bool) \
                or not isinstance(self.importance_samples, int) or self.importance_samples < 1:
            raise ValueError(f"importance_samples={self.importance_samples!r} out of range: "
                             "integer >= 1")
        if not all(_is_number(v) for v in (self.rho, self.rho_factor, self.rho_max)) \
                or not (0 < self.rho <= self.rho_max <= 1e6 and 1 <= self.rho_factor <= 100):
            raise ValueError(f"rho={self.rho!r}, rho_factor={self.rho_factor!r}, "
                             f"rho_max={self.rho_max!r}: need 0 < rho <= rho_max <= 1e6 and "
                             "rho_factor in [1, 100]")

    def epoch_lr(self, stage: str, epoch: int, epochs: int) -> float:
        """Learning rate of epoch ``epoch`` (from 0) of ``stage``, of ``epochs`` epochs."""
        if self.lr_schedule == "constant" or stage not in ("prune_retrain", "quant_retrain"):
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class CompressResult:
    """Plain data for masked mapping (matrix view ``(out, in*kh*kw)`` per compressed layer).

    ``masks``: surviving (nonzero) weights; ``live_rows`` / ``live_cols``: crossbar rows (inputs)
    and columns (outputs) with any surviving weight; ``scales``: ``W = scale * level`` (a float, or
    a per-column tensor of shape ``(out,)``); ``levels``: the normalised pair level set;
    ``history``: one dict per ADMM round or evaluation.
    """

    masks: dict[str, Tensor]
    live_rows: dict[str, Tensor]
    live_cols: dict[str, Tensor]
    scales: dict[str, float | Tensor]
    levels: dict[str, Tensor]
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_layers(cls, modules: Mapping[str, nn.Module], scales: Mapping[str, Tensor],
                    levels: Mapping[str, Tensor], history: Sequence[dict]) -> CompressResult:
        """The result of compressed ``modules``: masks = nonzero weights of each matrix view,
        their live rows/columns, scales (0-d -> float), levels and history, all on the CPU."""
        masks = {n: (weight_matrix(m).detach() != 0).cpu() for n, m in modules.items()}
        return cls(
            masks=masks,
            live_rows={n: live_rows(m) for n, m in masks.items()},
            live_cols={n: live_cols(m) for n, m in masks.items()},
            scales={n: s.item() if s.dim() == 0 else s.detach().cpu() for n, s in scales.items()},
            levels={n: lv.clone().cpu() for n, lv in levels.items()},
            history=list(history),
        )


class DivergenceError(ValueError):
    """A NaN or Inf in the training loss or in the weights. Raised before the optimizer step
    (loss) or before the epoch's checkpoint is written (weights), so the last checkpoint on disk
    is the last good state."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that belongs to another model (state dict keys or shapes differ) or to
    another configuration (its stored fingerprint differs from the current one)."""


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters that hold a NaN or Inf."""
    return [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


@torch.no_grad()
def first_nonfinite_output(model: nn.Module, x: Tensor) -> str | None:
    """Name of the first module, in forward order, whose output on ``x`` holds a NaN or Inf
    (``None`` if every output is finite)."""
    found: list[str] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            if not found and isinstance(output, Tensor) and not bool(torch.isfinite(output).all()):
                found.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def check_finite_loss(model: nn.Module, loss: float, x: Tensor, where: str) -> None:
    """Raise :class:`DivergenceError` if ``loss`` is NaN/Inf, naming ``where`` (the step) and
    the layer: the first parameter holding a NaN/Inf, else the first module whose output on the
    batch ``x`` does."""
    if math.isfinite(loss):
        return
    bad = nonfinite_parameters(model)
    if bad:
        cause = f"parameter {bad[0]!r} holds NaN/Inf"
    else:
        layer = first_nonfinite_output(model, x)
        cause = (f"the first NaN/Inf output comes from layer {layer!r}" if layer else
                 "every parameter and layer output is finite (the loss function or the "
                 "targets produced it)")
    raise DivergenceError(f"training diverged: loss={loss} at {where}; {cause}")


def check_finite_weights(model: nn.Module, where: str) -> None:
    """Raise :class:`DivergenceError` naming the first parameter that holds a NaN/Inf."""
    bad = nonfinite_parameters(model)
    if bad:
        raise DivergenceError(f"training diverged: parameter {bad[0]!r} holds NaN/Inf at "
                              f"{where} ({len(bad)} parameter(s) affected)")


def load_model_state(model: nn.Module, state: Mapping[str, Tensor], source: object) -> None:
    """``model.load_state_dict(state)`` with one clear :class:`CheckpointMismatchError` naming
    the missing, unexpected and mis-shaped keys when ``state`` belongs to another model."""
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{source}: holds a {type(state).__name__}, not a state "
                                      f"dict of {type(model).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
              for k, v in own.items()
              if isinstance(state.get(k), Tensor) and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:3]}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape mismatch", shapes)) if items]
        raise CheckpointMismatchError(f"{source}: holds the weights of another model, not this "
                                      f"{type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)


def _flatten(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, Mapping):
        out: dict[str, object] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def config_diff(saved: Mapping, current: Mapping, where: str = "in the checkpoint"
                ) -> list[str]:
    """``key=<saved> <where>, <current> now`` for every dotted key whose value differs between
    two nested settings mappings (a key missing on one side reads ``<unset>``)."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}={a.get(k, '<unset>')!r} {where}, {b.get(k, '<unset>')!r} now"
            for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]


def check_fingerprint(source: object, saved: Mapping | None, current: Mapping | None) -> None:
    """Raise :class:`CheckpointMismatchError` if a checkpoint's stored config fingerprint
    ``saved`` differs from ``current``, naming the differing keys (nothing to compare when
    either is ``None``)."""
    if saved is None or current is None:
        return
    diff = config_diff(saved, current)
    if diff:
        raise CheckpointMismatchError(
            f"{source}: written with another configuration ({'; '.join(diff[:4])}"
            f"{' ...' if len(diff) > 4 else ''}); resume with the same settings or start a new "
            "run directory")


def loader_rng_state(loader: Iterable) -> Tensor | dict | None:
    """State of a ``DataLoader``'s training order, checkpointed so a resumed run sees the same
    batch order as an uninterrupted one: the sampler's ``state_dict()`` where it has one (as
    ``experiments.datasets.PassSampler`` does), else the shuffle generator's state (``None``
    with neither)."""
    sampler = getattr(loader, "sampler", None)
    if callable(getattr(sampler, "state_dict", None)):
        return {"sampler": sampler.state_dict()}
    generator = getattr(loader, "generator", None)
    return generator.get_state() if isinstance(generator, torch.Generator) else None


def set_loader_rng_state(loader: Iterable, state: Tensor | dict | None) -> None:
    """Restore :func:`loader_rng_state` (no-op for ``None`` or a loader without either)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(state, dict) and "sampler" in state:
        if not callable(getattr(sampler, "load_state_dict", None)):
            raise CheckpointMismatchError(
                "the checkpoint holds a sampler state but the training loader's sampler "
                f"({type(sampler).__name__}) has no load_state_dict; resume with the same loader")
        sampler.load_state_dict(state["sampler"])
        return
    generator = getattr(loader, "generator", None)
    if state is not None and isinstance(generator, torch.Generator):
        generator.set_state(state.cpu())


def train_epoch(model: nn.Module, loader: Iterable, optimizer,
                loss_fn: LossFn | None = F.cross_entropy, admm: ADMM | None = None,
                on_step: Callable[[float], None] | None = None,
                distill: Distillation | None = None, progress: bool = False) -> float:
    """One pass over ``loader``: the one training loop of the project (ADMM stages,
    retraining, and the run layer's dense pretraining). With ``admm`` the penalty gradient is
    added after backward; with ``distill`` the loss is
    :meth:`admm.distill.Distillation.loss` of ``loss_fn`` (default cross-entropy).
    ``on_step(loss)`` runs after each optimizer step. Returns the mean training loss over the
    samples seen (each batch weighted by its size, so a short last batch does not count as a
    full one).

    Raises :class:`DivergenceError` (before that batch's optimizer step) on a NaN/Inf loss."""
    loss_fn = loss_fn or F.cross_entropy
    device = next(model.parameters(), torch.empty(0)).device
    model.train()
    total, count = 0.0, 0
    batches = tqdm(loader, desc="train", leave=False) if progress else loader
    for batch, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        if distill is not None:
            loss = distill.loss(x, out, loss)
        value = loss.item()
        check_finite_loss(model, value, x, f"batch {batch} of the epoch")
        loss.backward()
        if admm is not None:
            admm.add_penalty_grad()
        optimizer.step()
        total, count = total + value * len(y), count + len(y)
        if on_step is not None:
            on_step(value)
    if count == 0:
        raise ValueError("train_epoch: the training loader yielded no batches (empty dataset)")
    return total / count


@contextlib.contextmanager
def signals_deferred(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Hold back Python-level handling of ``signums`` for the block, then run the handlers of
    the signals that arrived (once each, in arrival order) after it.

    A handler that raises inside ``torch.save`` leaves its zip writer half written, and the
    writer's clean-up then fails with an unrelated ``RuntimeError`` that hides the signal (seen
    in CI: SIGTERM during a checkpoint exited 1 instead of 143). Outside the main thread the
    handlers cannot be swapped and the block runs unguarded."""
    arrived: list[int] = []
    previous: dict[int, object] = {}
    try:
        for signum in signums:
            previous[signum] = signal.signal(signum, lambda n, _f: arrived.append(n))
    except ValueError:  # not the main thread
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def save_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then
    ``os.replace``: a reader never sees a partial file. SIGTERM/SIGINT arriving meanwhile are
    handled after the write (:func:`signals_deferred`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=TEMP_SUFFIX)
        umask = os.umask(0o022)  # the permissions open() would give (not mkstemp's 0o600)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            raise _write_failed(path, exc) from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


TEMP_SUFFIX = ".memxbar-tmp"
"""The ending of :func:`save_atomic`'s temporary files, the same as ``crossbar.io``'s (which
``admm`` does not import): a run cleans up only files with this ending."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written; the message names it (no ``[Errno]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _write_failed(path: Path, exc: BaseException) -> OSError:
    """An ``OSError`` naming the checkpoint that could not be written (torch reports a full
    disk as a ``RuntimeError`` from its zip writer, naming no file), its cause and the free
    space left."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return CheckpointWriteError(getattr(exc, "errno", None) or errno.EIO,
                   f"could not write checkpoint {path} ({type(exc).__name__}: {exc}); {free} on "
                   "its file system; the previous checkpoint, if any, is kept: free space and "
                   "resume", str(path))


class Compressor:
    """The pipeline as resumable state: stage, epoch, model, ADMM (W, Z, U, rho), masks, scales,
    importance, optimizer, distillation teacher, history and RNG, saved with :meth:`save` after
    every epoch.

    ``perturbation`` (:mod:`admm.perturbation`) is entered for each training epoch of the stages
    in ``config.perturb_stages``. With ``config.distill_weight > 0`` the teacher is a frozen copy
    of ``teacher`` (default: ``model`` as it is now, before compression); it is stored in every
    checkpoint and restored from it on resume."""

    def __init__(self, model: nn.Module, config: CompressConfig,
                 loss_fn: LossFn = F.cross_entropy, fingerprint: Mapping | None = None,
                 perturbation: Perturbation | None = None,
                 teacher: nn.Module | None = None) -> None:
        if teacher is not None and config.distill_weight == 0:
            raise ValueError("teacher is given but distill_weight=0: set distill_weight in "
                             "(0.0, 1.0] to distil from it")
        self.model, self.config, self.loss_fn = model, config, loss_fn
        self.perturbation = perturbation
        self.teacher = frozen_copy(model if teacher is None else teacher) \
            if config.distill_weight > 0 else None
        self.fingerprint = None if fingerprint is None else dict(fingerprint)
        self._loader: Iterable | None = None
        self._loader_rng: Tensor | None = None
        self.constraints = select_layers(model, list(config.constraints))
        self.modules = crossbar_layers(model)
        self.levels = {n: pair_levels(c.levels) for n, c in self.constraints.items()
                       if c.levels is not None}
        self.masks: dict[str, Tensor] = {}
        self.scales: dict[str, Tensor] = {}
        self.importance = self._given_importance()
        self.history: list[dict] = []
        self.stage, self.epoch, self._steps_since_update = 0, 0, 0
        self._loss_sum, self._loss_count = 0.0, 0
        self._skip_inactive()
        self._setup()
        self._noise = weight_noise(config.train_noise, list(self.constraints)) \
            if config.train_noise > 0 else None

    # ------------------------------------------------------------- importance
    def _given_importance(self) -> dict[str, Tensor]:
        """``config.importance`` as a dict in matrix view on the model's device (empty for
        ``None`` or a method, which :meth:`run` computes)."""
        given = self.config.importance
        if not isinstance(given, Mapping):
            return {}
        unknown = sorted(set(given) - set(self.modules))
        if unknown:
            raise ValueError(f"importance: layers {unknown} are not Linear/Conv2d layers; "
                             f"layers are {sorted(self.modules)}")
        device = next(self.model.parameters()).device
        return {n: importance_matrix(given, n, self.modules[n]).detach().to(device)
                for n in self.constraints if n in given}

    def _compute_importance(self, train_loader: Iterable) -> None:
        """Importance by ``config.importance`` (a method) on the dense model, then rebuild the
        stage's ADMM with the weighted projectors. Runs only before any training."""
        cfg = self.config
        device = next(self.model.parameters()).device
        imp = compute_importance(self.model, train_loader, cfg.importance, self.loss_fn,
                                 cfg.importance_samples, list(self.constraints))
        self.importance = {n: t.to(device) for n, t in imp.items()}
        self._setup()

    # ----------------------------------------------------------------- stages
    def _active(self, stage: str) -> bool:
        if stage.startswith("prune"):
            return any(c.prunes for c in self.constraints.values())
        if stage.startswith("quant"):
            return bool(self.levels)
        return True

    def _skip_inactive(self) -> None:
        while STAGES[self.stage] != "done" and not self._active(STAGES[self.stage]):
            self.stage += 1

    def _epochs(self) -> int:
        return getattr(self.config, f"{STAGES[self.stage]}_epochs")

    @contextlib.contextmanager
    def _perturbed(self) -> Iterator[None]:
        """The perturbations of the current stage (``train_noise`` in :data:`NOISE_STAGES`,
        ``perturbation`` in ``config.perturb_stages``), entered together."""
        stage = STAGES[self.stage]
        with contextlib.ExitStack() as stack:
            if self._noise is not None and stage in NOISE_STAGES:
                stack.enter_context(self._noise(self.model))
            if self.perturbation is not None and stage in self.config.perturb_stages:
                stack.enter_context(self.perturbation(self.model))
            yield

    def _set_lr(self, lr: float) -> None:
        optimizer = self.optimizer.optimizer if isinstance(self.optimizer, MaskedOptimizer) \
            else self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr

    def _distillation(self) -> Distillation | None:
        cfg = self.config
        return None if self.teacher is None else \
            Distillation(self.teacher, cfg.distill_weight, cfg.distill_temperature)

    def _setup(self) -> None:
        """Build the optimizer (and ADMM) of the current stage from the current state."""
        stage, cfg = STAGES[self.stage], self.config
        self.admm, self.optimizer = None, None
        if stage in ("prune", "quant"):
            projectors = importance_projectors(self.model, cfg.constraints, self.importance,
                                               stage, self.masks)
            self.admm = ADMM(self.model, projectors, cfg.rho, cfg.rho_factor, cfg.rho_max)
        elif stage == "quant_retrain":
            for n in self.levels:
                self.modules[n].weight.requires_grad_(False)
        if stage == "done":
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            return
        optimizer = cfg.make_optimizer(params)
        self.optimizer = MaskedOptimizer(optimizer, self.model, self.masks) if self.masks \
            else optimizer

    @torch.no_grad()
    def _finish_stage(self, eval_fn: Callable[[nn.Module], float] | None) -> None:
        stage = STAGES[self.stage]
        if self.admm is not None and self._steps_since_update > 0:
            self._admm_round()
        if stage == "prune":   # hard prune: masks from the final projection of W
            self.masks = {n: self.constraints[n].prune_mask(weight_matrix(m),
                                                            self.importance.get(n)).cpu()
                          if self.constraints[n].prunes else
                          torch.ones(weight_matrix(m).shape, dtype=torch.bool)
                          for n, m in self.modules.items() if n in self.constraints}
            apply_masks(self.model, self.masks)
        elif stage == "quant":   # hard quantization on the surviving weights
            quantized = {}
            for n, levels in self.levels.items():
                mask = self.masks.get(n)
                W = weight_matrix(self.modules[n])
                Q, scale = project_levels(W, levels, self.constraints[n].per_column, mask,
                                          self.importance.get(n))
                quantized[n], self.scales[n] = Q, scale.cpu()
            freeze_weights(self.model, quantized)
        if eval_fn is not None:
            self.history.append({"event": "eval", "stage": stage, "metric": float(eval_fn(
                self.model))})
            self._check_collapse(stage)
        self.stage, self.epoch, self._steps_since_update = self.stage + 1, 0, 0
        self._skip_inactive()
        self._setup()

    def _check_collapse(self, stage: str) -> None:
        """``config.collapse_floor``: stop when a retraining stage ends at the floor."""
        floor = self.config.collapse_floor
        evals = {h["stage"]: h["metric"] for h in self.history if h.get("event") == "eval"}
        if floor is None or stage not in ("prune_retrain", "quant_retrain") \
                or evals.get("dense", math.inf) <= floor or evals[stage] > floor:
            return
        cfg = self.config
        raise DivergenceError(
            f"the model collapsed: {evals[stage]:.2f} after the {stage} stage (dense "
            f"{evals['dense']:.2f}, collapse floor {floor:.2f}), which should have restored "
            "the accuracy the hard projection cost. Likely causes: the constraints remove more "
            "than the model can lose (loosen the pruning ratios or raise the levels), or the "
            f"learning rate (lr={cfg.lr}) is too high for retraining; stages so far: "
            + ", ".join(f"{k} {v:.2f}" for k, v in evals.items()))

    def _admm_round(self) -> None:
        loss = self._loss_sum / self._loss_count if self._loss_count else None
        log = self.admm.update(loss)
        self.history.append({"event": "admm_round", "stage": STAGES[self.stage],
                             "epoch": self.epoch, **log})
        self._steps_since_update, self._loss_sum, self._loss_count = 0, 0.0, 0

    def _on_step(self, loss: float) -> None:
        self._steps_since_update += 1
        self._loss_sum, self._loss_count = self._loss_sum + loss, self._loss_count + 1
        cfg = self.config
        if self.admm is not None and cfg.update_unit == "step" \
                and self._steps_since_update >= cfg.update_every:
            self._admm_round()

    # -------------------------------------------------------------------- run
    def run(self, train_loader: Iterable, eval_fn: Callable[[nn.Module], float] | None = None,
            checkpoint: str | os.PathLike | None = None) -> CompressResult:
        """Run (or resume) every remaining stage; save to ``checkpoint`` after each epoch.

        A NaN/Inf loss (checked every step) or weight (checked every epoch, before the save)
        raises :class:`DivergenceError` naming the stage, epoch, batch and layer; the
        checkpoint then still holds the last good epoch."""
        cfg = self.config
        self._loader = train_loader
        set_loader_rng_state(train_loader, self._loader_rng)
        if isinstance(cfg.importance, str) and not self.importance:
            self._compute_importance(train_loader)
        if eval_fn is not None and not self.history:
            self.history.append({"event": "eval", "stage": "dense",
                                 "metric": float(eval_fn(self.model))})
        while STAGES[self.stage] != "done":
            total = self._epochs() if self.optimizer is not None else 0
            bar = tqdm(range(self.epoch, total), total=total, initial=self.epoch,
                       desc=STAGES[self.stage], disable=not cfg.progress, leave=False)
            for _ in bar:
                where = f"{STAGES[self.stage]} stage, epoch {self.epoch + 1}"
                self._set_lr(cfg.epoch_lr(STAGES[self.stage], self.epoch, total))
                try:
                    with self._perturbed():
                        loss = train_epoch(self.model, train_loader, self.optimizer,
                                           self.loss_fn, self.admm, self._on_step,
                                           self._distillation())
                except DivergenceError as exc:
                    raise DivergenceError(f"{where}: {exc}{_kept(checkpoint)}") from None
                self.epoch += 1
                if self.admm is not None and cfg.update_unit == "epoch" \
                        and self.epoch % cfg.update_every == 0:
                    self._admm_round()
                try:
                    check_finite_weights(self.model, f"the end of {where}")
                except DivergenceError as exc:
                    raise DivergenceError(f"{exc}{_kept(checkpoint)}") from None
                bar.set_postfix(loss=f"{loss:.4f}")
                _log.info("%s epoch %d/%d: loss %.4f", STAGES[self.stage], self.epoch, total,
                          loss)
                if checkpoint is not None:
                    self.save(checkpoint)
            self._finish_stage(eval_fn)
            if checkpoint is not None:
                self.save(checkpoint)
        return self.result()

    def result(self) -> CompressResult:
        """Masks, live rows/columns, scales and levels of the compressed layers."""
        return CompressResult.from_layers({n: self.modules[n] for n in self.constraints},
                                          self.scales, self.levels, self.history)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to resume: tensors, numbers, strings, lists and dicts only."""
        state = {
            "stage": self.stage, "epoch": self.epoch,
            "steps_since_update": self._steps_since_update,
            "loss_sum": self._loss_sum, "loss_count": self._loss_count,
            "model": self.model.state_dict(), "masks": dict(self.masks),
            "scales": dict(self.scales), "importance": dict(self.importance),
            "history": list(self.history),
            "admm": None if self.admm is None else self.admm.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "rng": torch.get_rng_state(), "fingerprint": self.fingerprint,
            "loader_rng": loader_rng_state(self._loader) if self._loader is not None
            else self._loader_rng,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict, source: object = "checkpoint") -> None:
        """Restore :meth:`state_dict`; a state of another model or another ``fingerprint``
        raises :class:`CheckpointMismatchError` before anything changes."""
        check_fingerprint(source, state.get("fingerprint"), self.fingerprint)
        if self.teacher is not None and state.get("teacher") is None:
            raise CheckpointMismatchError(
                f"{source}: holds no distillation teacher, but distill_weight="
                f"{self.config.distill_weight!r}: resume with distill_weight=0 (the settings "
                "that wrote it) or start a new checkpoint")
        self.stage, self.epoch = int(state["stage"]), int(state["epoch"])
        self._steps_since_update = int(state["steps_since_update"])
        self._loss_sum, self._loss_count = float(state["loss_sum"]), int(state["loss_count"])
        for p in self.model.parameters():
            p.requires_grad_(True)
        load_model_state(self.model, state["model"], source)
        if self.teacher is not None:
            load_model_state(self.teacher, state["teacher"], f"{source} (teacher)")
        self.masks, self.scales = dict(state["masks"]), dict(state["scales"])
        self.importance = dict(state["importance"]) if "importance" in state \
            else self._given_importance()
        if isinstance(self.config.importance, str) and not self.importance:
            raise ValueError(f"the checkpoint holds no importance, but importance="
                             f"{self.config.importance!r}: it would be recomputed mid-run")
        self.history = list(state["history"])
        self._loader_rng = state.get("loader_rng")
        self._setup()
        if state["admm"] is not None:
            self.admm.load_state_dict(state["admm"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self, path: str | os.PathLike) -> None:
        """Atomic checkpoint (temporary file + ``os.replace``)."""
        save_atomic(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint written by :meth:`save` (``torch.load(weights_only=True)``)."""
        device = next(self.model.parameters()).device
        self.load_state_dict(torch.load(path, map_location=device, weights_only=True), path)


def _kept(checkpoint: str | os.PathLike | None) -> str:
    if checkpoint is None or not Path(checkpoint).exists():
        return ""
    return f"; the last good checkpoint {checkpoint} is kept"


def compress(model: nn.Module, train_loader: Iterable, config: CompressConfig,
             eval_fn: Callable[[nn.Module], float] | None = None,
             loss_fn: LossFn = F.cross_entropy,
             checkpoint: str | os.PathLike | None = None,
             fingerprint: Mapping | None = None,
             perturbation: Perturbation | None = None,
             teacher: nn.Module | None = None) -> CompressResult:
    """Compress ``model`` in place; resume from ``checkpoint`` if that file exists.

    ``fingerprint`` (plain data, e.g. the config sections the result depends on) is stored in
    every checkpoint; resuming from one with another fingerprint, or of another model, raises
    :class:`CheckpointMismatchError`.

    ``perturbation(model)`` (:mod:`admm.perturbation`) perturbs the training forward passes of
    the stages in ``config.perturb_stages``. ``teacher`` (with ``config.distill_weight > 0``;
    default: a copy of ``model`` before compression) is the distillation teacher; a resumed run
    uses the teacher stored in the checkpoint."""
    compressor = Compressor(model, config, loss_fn, fingerprint, perturbation, teacher)
    if checkpoint is not None and Path(checkpoint).exists():
        compressor.load(checkpoint)
    return compressor.run(train_loader, eval_fn, checkpoint)


__all__ = ["LR_SCHEDULES", "NOISE_STAGES", "STAGES", "TRAINING_STAGES", "CheckpointMismatchError",
           "CompressConfig", "CompressResult", "Compressor", "DivergenceError",
           "check_finite_loss", "check_finite_weights", "check_fingerprint", "compress",
           "first_nonfinite_output", "load_model_state", "loader_rng_state",
           "nonfinite_parameters", "save_atomic", "set_loader_rng_state", "train_epoch"]
