"""Reliability guards of the Hydra pipeline (docs/reliability.md).

- **Run directory and resume** (:func:`check_run_dir`): a fresh run refuses a directory that
  already holds checkpoints (nothing is silently overwritten or mixed); ``resume=true`` continues
  the interrupted run in ``hydra.run.dir`` from its last checkpoint.
- **Fingerprints** (:func:`fingerprint`): the config sections a checkpoint depends on are stored
  in it; a checkpoint written with other settings fails with the differing keys
  (``admm.CheckpointMismatchError``), a checkpoint of another model with the differing weights.
- **Model vs config** (:func:`check_constraints_fit`): right after the model is built, before
  any training, every ``admm`` constraint must match a Linear/Conv2d layer and every kept count
  must fit that layer.
- **Checkpoints** (:func:`load_checkpoint`, :func:`dense_state`, :func:`restore_dense`): read
  with ``torch.load(weights_only=True)``, unreadable files fail naming the file; written
  atomically by ``admm.save_atomic``; the training RNG and the loader's shuffle state travel
  with them, so a resumed run ends exactly as an uninterrupted one.
- **SIGTERM** (:func:`sigterm_as_exit`): turned into :class:`Terminated` (a ``SystemExit``), so
  the current epoch is abandoned between two atomic writes and the last checkpoint stays intact.
- **Run folders** (:func:`open_run`): one run per folder at a time (an exclusive lock,
  :func:`run_lock`); nothing in the folder is written until the run is accepted (the folder
  holds no earlier result, or ``resume=true`` and every checkpoint there was written with the
  settings it depends on); then stale temporary files of killed writes are removed and
  ``config.yaml`` and ``.hydra/`` are written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import signal
import stat
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
import yaml
from hydra.utils import to_absolute_path
from torch import nn

from memxbar.admm import CheckpointMismatchError
from memxbar.admm.constraints import crossbar_layers, select_layers, weight_matrix
from memxbar.admm.pipeline import (
    check_fingerprint,
    config_diff,
    load_model_state,
    loader_rng_state,
    set_loader_rng_state,
)
from memxbar.crossbar.io import TEMP_SUFFIX
from memxbar.experiments.compressors.settings import RETRAINING, SEARCH_KEYS, AdmmSettings
from memxbar.experiments.compressors.structure import compressed_structure, decompose_block
from memxbar.experiments.data import data_shape
from memxbar.experiments.models import build_model
from memxbar.experiments.settings import CompressExperiment, DatasetSettings, ModelSettings

__all__ = [
    "CHECKPOINTS",
    "DENSE_KEYS",
    "Terminated",
    "RunLockedError",
    "check_constraints_fit",
    "check_dense_checkpoint",
    "check_record",
    "check_resume",
    "check_weights",
    "check_run_dir",
    "clean_stale_temporaries",
    "open_run",
    "run_lock",
    "dense_state",
    "fingerprint",
    "load_checkpoint",
    "meta_model",
    "restore_dense",
    "sigterm_as_exit",
]

CHECKPOINTS = ("pretrain_state.pt", "dense.pt", "admm_state.pt", "compressed.pt")
"""Checkpoints of a compress run, in pipeline order."""

CHECKPOINT_KEYS = {"pretrain_state.pt": ("model", "optimizer", "schedule", "history", "rng",
                                         "loader_rng"),
                   "dense.pt": ("model",),
                   "admm_state.pt": ("model", "stage", "epoch", "steps_since_update", "loss_sum",
                                     "loss_count", "masks", "scales", "history", "admm",
                                     "optimizer", "rng"),
                   "compressed.pt": ("model", "masks", "scales", "history")}
"""Entries each checkpoint holds besides its fingerprint, all that a resume reads from it
(checked before any work: a half-made checkpoint is named, not a ``KeyError`` mid-run)."""

DENSE_KEYS = ("seed", "model", "dataset", "train")
"""Config sections the dense model depends on (fingerprint of pretrain_state.pt, dense.pt)."""

UNFINGERPRINTED = ("runtime", "eval", "resume", "study", "robustness")
"""Sections that never change the compressed weights; every other section is in the fingerprint
of the compression checkpoints (admm_state.pt, compressed.pt), ``device``, ``crossbar`` and
``cost`` only when the compression reads them (:data:`HARDWARE_SECTIONS`). Of ``robustness``
only ``hardware_aware`` and the repair settings it trains with are (the rest acts after
compression)."""

HARDWARE_SECTIONS = ("device", "crossbar", "cost", "layers")
"""Read by the compression only with a budgeted ``allocation`` (it costs candidate layers:
``crossbar`` and ``cost``) or hardware-aware retraining (the simulator in the forward pass:
``device``, ``crossbar`` and ``layers``); otherwise a change of them reuses the compressed
model (resume, re-running only evaluation and cost; :func:`experiments.pipeline.cached`)."""

TRAINING_ROBUSTNESS = ("hardware_aware", "hardware_aware_effects", "compensation", "placement",
                       "miss_rate", "spare_rows", "spare_cols", "write_verify")
"""``robustness`` keys that change the compressed weights when ``hardware_aware`` is on."""


class Terminated(SystemExit):
    """SIGTERM received: the run stops between two atomic checkpoint writes (exit code 143)."""


def fingerprint(exp: CompressExperiment, keys: Iterable[str] | None = None) -> dict:
    """The resolved config sections ``keys`` (default: all but :data:`UNFINGERPRINTED`) as
    plain data, stored in checkpoints and compared on resume."""
    raw = exp.raw
    names = list(keys) if keys is not None else [k for k in raw if k not in UNFINGERPRINTED]
    hardware_aware = exp.robustness.hardware_aware and exp.compressor in RETRAINING
    if keys is None:
        reads = ({"crossbar", "cost"} if exp.allocation is not None else set()) \
            | ({"device", "crossbar", "layers"} if hardware_aware else set())
        names = [k for k in names if k not in HARDWARE_SECTIONS or k in reads]
    fp = {k: raw[k] for k in names if k in raw}
    if keys is None and hardware_aware:
        fp["robustness"] = {k: getattr(exp.robustness, k) for k in TRAINING_ROBUSTNESS}
    return fp


RESULTS = CHECKPOINTS + ("config.yaml", "metrics.json", "report.md", "plan.json", "study.json",
                         "study.csv", "study.md", "study_points.json")
"""Files of an earlier run: a fresh run refuses a folder that holds any of them."""

_log = logging.getLogger("memxbar.experiments.guard")


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a fresh run in a directory holding results of an earlier run (checkpoints,
    config, metrics or report: nothing is silently overwritten or mixed), and ``resume=true``
    in one that holds no earlier run (typically a new Hydra run directory: pass
    ``hydra.run.dir``)."""
    found = [n for n in RESULTS if (run_dir / n).exists()]
    if found and not resume:
        raise ValueError(f"resume=false, but {run_dir} already holds results of an earlier "
                         f"run ({', '.join(found)}); allowed: resume=true to continue that run, "
                         "or a new hydra.run.dir")
    if resume and not found:
        raise ValueError(f"resume=true, but {run_dir} holds no earlier run (no config.yaml or "
                         "checkpoint); allowed: hydra.run.dir=<the interrupted run's directory>")


def check_resume(run_dir: Path, exp: CompressExperiment, model: nn.Module | None = None
                 ) -> None:
    """``resume=true``: every checkpoint in ``run_dir`` was written with the settings it
    depends on (dense: :data:`DENSE_KEYS`; compression: :func:`fingerprint`), holds every
    entry a resume reads (:data:`CHECKPOINT_KEYS`) and, given the run's ``model`` (on the meta
    device), finite weights of that model (:func:`check_weights`); and the folder's
    ``config.yaml`` was written with the same settings (:func:`check_record`). Checked before
    anything is written; a mismatch names the file and the differing keys. A dense checkpoint
    loaded from ``train.checkpoint`` is not this run's, so only the compression ones are
    compared then."""
    expected = {"dense.pt": fingerprint(exp, DENSE_KEYS),
                "pretrain_state.pt": fingerprint(exp, DENSE_KEYS),
                "compressed.pt": fingerprint(exp), "admm_state.pt": fingerprint(exp)}
    if exp.train.checkpoint:  # dense.pt holds train.checkpoint's weights, not this run's
        del expected["dense.pt"], expected["pretrain_state.pt"]
    search = exp.allocation is not None and exp.allocation.max_drop is not None
    compressed = None if model is None else compressed_structure(
        model, decompose_block(exp.compressor, exp.decompose), exp.layers.digital)
    for name, fp in expected.items():
        path = run_dir / name
        if not path.exists():
            continue
        state = load_checkpoint(path)
        if search and name in ("compressed.pt", "admm_state.pt") and isinstance(state, Mapping):
            # an accuracy-budget search holds the compression of the budget it chose
            fp, state = searched(fp), {**state, "fingerprint": searched(state.get("fingerprint"))}
        missing = [k for k in ("fingerprint", *CHECKPOINT_KEYS[name])
                   if not isinstance(state, Mapping) or k not in state]
        if missing:
            what = f"a {type(state).__name__}" if not isinstance(state, Mapping) \
                else f"no {', '.join(missing)}"
            raise CheckpointMismatchError(f"{path}: holds {what}, not a {name} written by this "
                                          "pipeline; allowed: the run's own checkpoint (or "
                                          "move the file away and resume from the one before)")
        check_fingerprint(path, state.get("fingerprint"), fp)
        if model is not None:
            check_weights(path, state["model"], compressed if name in ("compressed.pt",
                                                                       "admm_state.pt") else model)
    check_record(run_dir, exp.raw, fingerprint(exp))


def check_record(run_dir: Path, raw: Mapping, sections: Iterable[str]) -> None:
    """``resume=true``: the folder's ``config.yaml`` (the settings its run started with)
    agrees with this run's resolved config ``raw`` on every section the results depend on
    (``sections``: those of :func:`fingerprint`; of ``robustness`` the keys the compression
    reads), so a folder holding another run's results (its checkpoints gone) is not
    overwritten with this one's; an unreadable record is refused too."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is unreadable ({first}); allowed: the config.yaml the run "
                         "wrote (move the file away to resume from the checkpoints alone)"
                         ) from None
    if not isinstance(saved, Mapping):
        raise ValueError(f"{path} holds a {type(saved).__name__}, not a config; allowed: the "
                         "config.yaml the run wrote")
    names = list(sections)
    ours, theirs = ({k: d.get(k, "<unset>") for k in names} for d in (raw, saved))
    if "robustness" in names:  # only the keys the compression reads
        for fp, d in ((ours, raw), (theirs, saved)):
            rob = d.get("robustness") if isinstance(d.get("robustness"), Mapping) else {}
            fp["robustness"] = {k: rob.get(k) for k in TRAINING_ROBUSTNESS}
    diff = config_diff(theirs, ours, "there")
    if diff:
        raise CheckpointMismatchError(
            f"{path}: the run in this folder was started with other settings "
            f"({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); allowed: resume with "
            "its settings, or a new hydra.run.dir for these")


def meta_model(model: ModelSettings, dataset: DatasetSettings) -> nn.Module:
    """The run's model on the meta device (names and shapes: no memory, no compute), for
    checking the checkpoints a run reads before any work."""
    shape, classes = data_shape(dataset)
    with torch.device("meta"):
        return build_model(model.name, input_shape=shape, target=model.target,
                           data_classes=classes, **model.kwargs)


def check_weights(source: object, weights: object, model: nn.Module) -> None:
    """A checkpoint's ``weights`` (``source`` names it) are a state dict of ``model`` (the
    same names and shapes; floating point where the model's are) holding finite values;
    else one :class:`CheckpointMismatchError`. ``model`` may live on the meta device."""
    if not isinstance(weights, Mapping):
        raise CheckpointMismatchError(f"{source}: holds a {type(weights).__name__}, not a state "
                                      f"dict of {type(model).__name__}; allowed: the model's "
                                      "weights (a state dict, or a mapping with 'model')")
    own = model.state_dict()
    odd = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k}: {tuple(weights[k].shape)} in the checkpoint, {tuple(v.shape)} in the "
              "model" for k, v in own.items()
              if isinstance(weights.get(k), torch.Tensor) and weights[k].shape != v.shape]
    if odd or missing or unexpected or shapes:
        parts = [f"{label} {items[:3]}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape mismatch", shapes), ("not tensors", odd)) if items]
        raise CheckpointMismatchError(f"{source}: holds the weights of another model, not this "
                                      f"{type(model).__name__}: " + "; ".join(parts))
    for k, v in own.items():
        if v.is_floating_point() and not weights[k].is_floating_point():
            raise CheckpointMismatchError(f"{source}: {k} holds {weights[k].dtype} values, the "
                                          f"model's are {v.dtype}; allowed: floating-point "
                                          "weights (as torch.save wrote the model's)")
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointMismatchError(f"{source}: {bad[0]} holds NaN/Inf ({len(bad)} tensor(s) "
                                      "affected: a diverged or corrupt model); allowed: finite "
                                      "weights")


def check_dense_checkpoint(given: str, model: nn.Module) -> None:
    """``train.checkpoint`` (``given``, relative to the start directory) before any work:
    readable, and finite weights of ``model`` (a state dict or ``{"model": ...}``)."""
    path = Path(to_absolute_path(given))
    try:
        state = load_checkpoint(path)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"train.checkpoint={given!r}: {exc}") from None
    weights = state["model"] if isinstance(state, Mapping) and "model" in state else state
    check_weights(f"train.checkpoint={given!r} ({path})", weights, model)


def searched(fp: Mapping | None) -> Mapping | None:
    """A compression fingerprint without the ``allocation`` keys an accuracy-budget search
    sets or drops per point (``budget`` and :data:`SEARCH_KEYS`): what a search run's own
    checkpoints (its chosen point's) share with its settings."""
    if not isinstance(fp, Mapping) or not isinstance(fp.get("allocation"), Mapping):
        return fp
    return {**fp, "allocation": {k: v for k, v in fp["allocation"].items()
                                 if k != "budget" and k not in SEARCH_KEYS}}


def clean_stale_temporaries(folder: Path, older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporary files this program's atomic writes name
    (``.<name>.<random>`` + ``crossbar.io.TEMP_SUFFIX``) that a write killed by SIGKILL or a
    power cut leaves behind, no other file; only those older than ``older_than_s`` (a folder
    shared by live runs, e.g. the model cache, keeps the ones being written)."""
    removed = []
    now = time.time()
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        try:
            if now - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # finished or removed meanwhile
            continue
    if removed:
        _log.info("removed %d stale temporary file(s) of interrupted writes in %s",
                  len(removed), folder)
    return removed


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[RunLock]:
    """Hold ``run_dir/.lock`` (an exclusive ``flock``, released by the kernel when the process
    dies, so a killed run never leaves a stale lock) for the block; a second run in the same
    folder fails at once naming the process that holds it. The lock file is opened without
    following a symlink and must be a regular file of one link (nothing outside the folder is
    written through it); after locking, the path must still name the locked file (else it was
    replaced or removed meanwhile, and the lock is taken again), so no two runs ever hold the
    folder. The holder's pid is written by :meth:`RunLock.claim` (once the run is accepted), and
    :meth:`RunLock.release_unclaimed` removes a lock file this run created but never claimed (a
    refused run leaves the folder as it was)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    for _ in range(100):
        existed = path.exists() or path.is_symlink()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise ValueError(f"{path} cannot be opened as the run folder's lock "
                             f"({exc.strerror}); allowed: a regular file or none (a symlink is "
                             "refused)") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise ValueError(f"{path} is not a plain file of its own (a hard link or a special "
                             "file); allowed: a regular file or none")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{run_dir} is in use by another run (pid {holder}); allowed: "
                                 "wait for it to finish, or a new hydra.run.dir") from None
        try:
            now = os.stat(path, follow_symlinks=False)
            same = (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file that was removed or replaced meanwhile: again
    else:
        raise RunLockedError(f"{run_dir}: the lock file keeps changing; allowed: one run per "
                             "folder")
    lock = RunLock(fd, path, created=not existed)
    try:
        yield lock
    finally:
        os.close(fd)  # the flock goes with it


class RunLock:
    """The held lock of a run folder (:func:`run_lock`)."""

    def __init__(self, fd: int, path: Path, created: bool) -> None:
        self.fd, self.path, self.created, self.claimed = fd, path, created, False

    def claim(self) -> None:
        """Write this process's pid into the lock file (named to a second run)."""
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        self.claimed = True

    def release_unclaimed(self) -> None:
        """Remove the lock file if this run created it and never claimed the folder (safe: a
        run that locks a removed file notices and locks again)."""
        if self.created and not self.claimed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@contextlib.contextmanager
def open_run(run_dir: Path, exp: CompressExperiment, accept) -> Iterator[None]:
    """Check the dense checkpoint the run loads (``train.checkpoint``:
    :func:`check_dense_checkpoint`), lock ``run_dir``, check it (:func:`check_run_dir`, and
    :func:`check_resume` for ``resume=true``) before anything in it is written, then remove
    stale temporaries and call ``accept()`` (which writes config.yaml and .hydra/). A refused
    run leaves the folder as it was."""
    model = meta_model(exp.model, exp.dataset)
    if exp.train.checkpoint:
        check_dense_checkpoint(exp.train.checkpoint, model)
    accepted = False
    try:
        with run_lock(run_dir) as lock:
            try:
                check_run_dir(run_dir, exp.resume)
                if exp.resume:
                    check_resume(run_dir, exp, model)
                clean_stale_temporaries(run_dir)
                accept()
                lock.claim()
            except BaseException:
                lock.release_unclaimed()
                raise
            accepted = True
            yield
    except BaseException:
        if not accepted:  # refused: leave no empty folder behind (Hydra creates it)
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only succeeds when empty
        raise


def check_constraints_fit(model: nn.Module, admm: AdmmSettings) -> None:
    """Before any training: the model has Linear/Conv2d layers, every constraint pattern
    matches one, and every ``*_keep`` count fits its layer (rows: inputs ``in*kh*kw``; cols:
    outputs; blocks: tiles of ``block``). Fails naming the constraint key, the layer, the count
    and the layer's size."""
    crossbar_layers(model)
    constraints = admm.layer_constraints()
    try:
        chosen = select_layers(model, constraints)
    except ValueError as exc:
        raise ValueError(f"admm.constraints: {exc}") from None
    modules = dict(model.named_modules())
    for name, c in chosen.items():
        i = constraints.index(c)
        out_n, in_n = weight_matrix(modules[name]).shape
        br, bc = c.block
        sizes = {"row": (in_n, f"{in_n} crossbar rows (inputs)"),
                 "col": (out_n, f"{out_n} crossbar columns (outputs)"),
                 "block": (-(-in_n // br) * -(-out_n // bc), f"{-(-in_n // br) * -(-out_n // bc)}"
                           f" blocks of {br}x{bc}")}
        for key, (n, what) in sizes.items():
            count = getattr(c, f"{key}_keep")
            if count is not None and (count > n or count < 1):  # 0: the layer is cut off
                raise ValueError(
                    f"admm.constraints[{i}].{key}_keep={count} is invalid for layer {name!r} "
                    f"(matrix view {out_n}x{in_n}: {what}); allowed: an integer in [1, {n}] "
                    "(0 would remove the whole layer)")


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """``torch.load(path, weights_only=True)``; a missing, truncated or foreign file fails with
    one ``ValueError`` naming it (``FileNotFoundError`` for a missing one)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory; allowed: a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {path} is unreadable (truncated, corrupt or not written "
                         f"by torch.save of tensors and plain data): {first}") from None


def dense_state(model: nn.Module, loader: Iterable, fp: Mapping) -> dict:
    """Content of ``dense.pt``: weights, fingerprint, and the RNG and loader shuffle state at
    the end of pretraining (so a resumed run continues with the same batches)."""
    return {"model": model.state_dict(), "fingerprint": dict(fp), "rng": torch.get_rng_state(),
            "loader_rng": loader_rng_state(loader)}


def restore_dense(model: nn.Module, loader: Iterable, state: Mapping, source: object,
                  fp: Mapping | None) -> None:
    """Load a dense checkpoint: ``dense.pt`` of this run (``fp`` given: fingerprint compared,
    RNG and loader state restored) or ``train.checkpoint`` (``fp=None``: a plain state dict or
    ``{"model": ...}``, only checked to fit the model)."""
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{source}: holds a {type(state).__name__}, not a state "
                                      "dict")
    weights = state["model"] if "model" in state else state
    if fp is not None:
        check_fingerprint(source, state.get("fingerprint"), fp)
    load_model_state(model, weights, source)
    if fp is not None and "rng" in state:
        torch.set_rng_state(state["rng"])
        set_loader_rng_state(loader, state.get("loader_rng"))


@contextlib.contextmanager
def sigterm_as_exit(run_dir: Path, command: str) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (exit code 143) after printing how
    to resume; outside the main thread (e.g. some launchers) the handler is left alone."""
    def handler(signum: int, frame: object) -> None:
        print(f"SIGTERM: stopping; the last checkpoint in {run_dir} is kept. Resume with: "
              f"python -m {command} resume=true hydra.run.dir={run_dir} <same overrides>",
              file=sys.stderr, flush=True)
        raise Terminated(128 + signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
