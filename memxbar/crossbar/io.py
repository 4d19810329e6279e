"""Atomic file writes: a reader never sees a partial file, and a crash leaves the old one.
Files get the permissions of an ordinary ``open()`` (``0o666`` less the process umask), not
the ``0o600`` of a temporary file, so colleagues can read shared results."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path


def current_umask() -> int:
    """The process umask (read from /proc where it exists: setting it to read it is not
    thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TEMP_SUFFIX = ".memxbar-tmp"
"""The ending of the temporary files of :func:`atomic_write_bytes`: a run cleans up only these
(``experiments.guard.clean_stale_temporaries``), never a user's own ``.*.tmp``."""


def temporary_beside(path: Path) -> tuple[int, str]:
    """An open temporary file ``.<name>.<random>`` + :data:`TEMP_SUFFIX` in ``path``'s folder
    (created if needed) with the permissions ``open()`` would give ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, fsync it, then rename."""
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WriteError(OSError):
    """A file that could not be written; its message names the file (no ``[Errno]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_failed(path: Path, exc: BaseException) -> OSError:
    """The error for a write of ``path`` that failed (a full disk, a quota, a read-only or
    vanished folder): an ``OSError`` naming the file, the cause and the free space left; the
    previous file at ``path``, if any, is untouched."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    code = getattr(exc, "errno", None) or errno.EIO
    return WriteError(code, f"could not write {path} ({type(exc).__name__}: {exc}); {free} on its "
                   "file system; the previous file, if any, is kept: free space or choose "
                   "another folder", str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text counterpart of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


class Once(argparse.Action):
    """Store an option's value, refusing the option given twice (argparse keeps the last one
    silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        if before is not None:
            parser.error(f"{option_string} given twice ({before}, {values}); allowed: once")
        setattr(namespace, self.dest, values)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (for one-line CLI errors)."""
    return " ".join(str(exc).split())


def check_out_folder(out: Path, file_allowed: str = "a folder") -> None:
    """A side CLI's ``--out``: a folder, or a path where one can be made, that this user can
    write (``file_allowed``: what to say when it is a file)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; allowed: {file_allowed}")
    ancestor = next(p for p in (out, *out.parents) if p.exists())
    if not ancestor.is_dir():
        raise ValueError(f"--out {out}: {ancestor} is a file; allowed: a folder path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {ancestor} is not writable; allowed: a folder you can "
                         "write")


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run a side command line (``python -m memxbar.crossbar.report``, ``experiments.collect``,
    ``experiments.replot``) in the apps' error style: a bad argument, file or folder is one
    ``Error: ...`` line naming it on stderr (exit 1); the traceback only with ``--debug`` or
    ``HYDRA_FULL_ERROR=1``."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HYDRA_FULL_ERROR") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        return main(args)
    except (ValueError, TypeError, KeyError, IndexError, OSError) as exc:
        if debug:
            raise
        text = str(exc) if not isinstance(exc, KeyError) else f"missing entry {exc}"
        print(f"Error: {text}\n(set HYDRA_FULL_ERROR=1 or pass --debug for the traceback)",
              file=sys.stderr, flush=True)
        return 1
