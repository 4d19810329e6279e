"""The model cache (``runtime.cache_dir``): dense and compressed models shared by runs, as a
content-addressed store.

* **Keys from content.** An entry's name is a hash of the settings the model depends on (its
  checkpoint fingerprint) and of the content of every input file among them (the
  ``train.checkpoint`` a dense model is loaded from, the data files of ``dataset.data_dir``):
  a changed file at the same path is another entry, never the old one.
* **Verified before use.** An entry is loaded and its fingerprint compared before it is copied
  into a run folder; a corrupt, truncated or foreign entry is named in a warning, moved aside
  (``<entry>.bad-<time>``) and recomputed, and the run folder never sees it.
* **One maker at a time.** "Train or load" runs under a ``filelock`` lock (``<entry>.lock``):
  of the sweep jobs that need the same model, one makes it, the others wait and reuse it.
* **Checked before work, never fatal after.** An unusable cache directory fails in the preflight
  naming ``runtime.cache_dir``; a write that fails later (a full disk) only warns: the finished
  run keeps its own copy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from filelock import FileLock, Timeout
from hydra.utils import to_absolute_path

from memxbar.admm.pipeline import check_fingerprint
from memxbar.crossbar.io import atomic_write_bytes
from memxbar.experiments.guard import CHECKPOINT_KEYS, load_checkpoint

__all__ = ["CACHE_FORMAT", "cache_lock", "cached", "check_cache_dir", "reuse", "store"]

_log = logging.getLogger("memxbar.experiments.cache")

CACHE_FORMAT = 4
"""Bumped when the same settings make another model or the key changes (2: the training order
of ``experiments.datasets.PassSampler``; 3: input files keyed by content; 4: compressed models
keyed by the constraints they met), so older entries are not reused."""


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content (remembered per path, size and modification time)."""
    stat = os.stat(path)
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def input_files(fp: Mapping) -> dict[str, str]:
    """``{role: sha256}`` of the input files a fingerprint names: ``train.checkpoint`` and the
    files directly in ``dataset.data_dir`` (relative paths from the start directory)."""
    out = {}
    checkpoint = (fp.get("train") or {}).get("checkpoint")
    if checkpoint:
        path = Path(to_absolute_path(checkpoint))
        if path.is_file():
            out["train.checkpoint"] = file_digest(path)
    data_dir = (fp.get("dataset") or {}).get("data_dir")
    if data_dir:
        root = Path(to_absolute_path(data_dir))
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                out[f"dataset/{path.relative_to(root).as_posix()}"] = file_digest(path)
    return out


def cached(cache_dir: str | None, name: str, fp: Mapping) -> Path | None:
    """``<runtime.cache_dir>/<name>-<hash>.pt``: the entry of the model whose checkpoint
    fingerprint is ``fp``, keyed by those settings and the content of their input files;
    ``None`` without a cache."""
    if cache_dir is None:
        return None
    keyed = {"cache_format": CACHE_FORMAT, **dict(fp), "input_files": input_files(fp)}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
    return Path(to_absolute_path(cache_dir)) / f"{name}-{key[:20]}.pt"


def check_cache_dir(cache_dir: str | None) -> None:
    """Before any work: the cache directory is a directory, or can be created where it is
    named (its nearest existing ancestor a writable directory); nothing is created here."""
    if cache_dir is None:
        return
    problem = None
    if not isinstance(cache_dir, str) or not cache_dir.strip() or "\0" in cache_dir:
        problem = "not a folder name"
    else:
        try:
            root = Path(to_absolute_path(cache_dir))
            probe = root
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            if root.is_symlink() and not root.exists():
                problem = f"{root} is a link to nothing"
            elif not probe.is_dir():
                problem = f"{probe} is a file, not a directory"
            elif not os.access(probe, os.W_OK | os.X_OK):
                problem = f"{probe} is not writable"
            elif any(len(part.encode()) > 255 for part in root.parts):
                problem = "a part of the name is longer than a file system takes (255 bytes)"
        except (OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise ValueError(f"runtime.cache_dir={cache_dir!r} is invalid: {problem}; allowed: a "
                         "writable directory, or null for no cache")


@contextlib.contextmanager
def cache_lock(entry: Path | None) -> Iterator[None]:
    """Hold ``<entry>.lock`` (a ``filelock`` file lock) while a cache entry is looked up and,
    when missing, made: of the sweep jobs that need the same model (joblib, Slurm), one makes
    it and the others wait here, then reuse it. No-op without a cache (``entry`` None)."""
    if entry is None:
        yield
        return
    lock = FileLock(str(entry) + ".lock")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _log.info("waiting for another run making the same model: %s", entry)
            lock.acquire()
    except OSError as exc:
        raise ValueError(f"runtime.cache_dir={str(entry.parent)!r} is invalid: cannot lock "
                         f"{entry.name} there ({exc}); allowed: a writable directory, or null "
                         "for no cache") from None
    try:
        yield
    finally:
        lock.release()


def reuse(entry: Path | None, fp: Mapping, target: Path, what: str) -> bool:
    """Copy a verified cache ``entry`` (loadable, fingerprint ``fp``) to ``target``; True when
    it was. A bad entry is named, moved aside and left to be recomputed (False)."""
    if entry is None or not (entry.exists() or entry.is_symlink()):
        return False
    try:
        state = load_checkpoint(entry)
        if not isinstance(state, Mapping):
            raise ValueError(f"holds a {type(state).__name__}, not a checkpoint")
        missing = [k for k in ("fingerprint", *CHECKPOINT_KEYS.get(target.name, ("model",)))
                   if k not in state]
        if missing or not isinstance(state["fingerprint"], Mapping):
            raise ValueError(f"lacks {', '.join(missing) or 'a fingerprint mapping'}: not "
                             "written by this program's cache")
        check_fingerprint(entry, state["fingerprint"], fp)
    except Exception as exc:  # noqa: BLE001 - any unusable entry is set aside, never used
        aside = entry.with_name(f"{entry.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
        with contextlib.suppress(OSError):
            os.replace(entry, aside)
        _log.warning("cache entry %s is unusable (%s: %s); moved aside to %s, the %s model is "
                     "made again", entry, type(exc).__name__, exc, aside.name, what)
        return False
    atomic_write_bytes(target, entry.read_bytes())
    _log.info("%s model reused from the cache: %s", what, entry)
    return True


def store(entry: Path | None, source: Path) -> None:
    """Put a finished run's checkpoint ``source`` in the cache as ``entry``; a failure (a full
    or read-only disk) warns and leaves the run as it is."""
    if entry is None or entry.exists():
        return
    try:
        atomic_write_bytes(entry, source.read_bytes())
    except OSError as exc:
        _log.warning("the cache entry %s could not be written (%s); the run keeps its own %s",
                     entry, exc, source.name)
