"""What every run shares around its stages: the torch device and threads, timed stages with log
lines, atomic JSON, the accepted run's config files, the environment record, and the Hydra task
wrapper of the apps (:func:`entry`: the run folder, clear errors, Ctrl-C and SIGTERM)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from memxbar.crossbar.io import atomic_write_text
from memxbar.experiments.config import to_container
from memxbar.experiments.guard import RunLockedError, Terminated, sigterm_as_exit
from memxbar.experiments.settings import RuntimeSettings

_log = logging.getLogger("memxbar.experiments.runtime")




def setup_runtime(runtime: RuntimeSettings, seed: int) -> torch.device:
    """Seed torch, set CPU threads and pick the torch device (``auto``: cuda if available)."""
    torch.manual_seed(seed)
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    name = runtime.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device='cuda' is invalid here; allowed: 'cpu' or 'auto' "
                         "(no CUDA device is available)")
    return torch.device(name)


def timed(timings: dict, key: str):
    """Time a stage into ``timings[key]`` and log its start and end."""
    class _Timer:
        def __enter__(self):
            _log.info("stage %s: started", key)
            self.t0 = time.perf_counter()

        def __exit__(self, exc_type, exc, tb):
            timings[key] = round(time.perf_counter() - self.t0, 3)
            if exc_type is None:
                _log.info("stage %s: done in %.1f s", key, timings[key])
            else:  # the log keeps the reason, not only its type
                reason = str(exc).strip().splitlines()[0] if exc is not None and str(
                    exc).strip() else ""
                _log.warning("stage %s: stopped after %.1f s (%s%s)", key, timings[key],
                             exc_type.__name__, f": {reason}" if reason else "")
    return _Timer()


def write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable))


def _jsonable(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def save_config(cfg: DictConfig | Mapping, run_dir: Path) -> None:
    """The resolved config as ``config.yaml`` in the run directory."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(
        to_container(cfg))))


def accept_run(cfg: DictConfig | Mapping, run_dir: Path) -> None:
    """Write what records an accepted run: ``config.yaml`` and, under Hydra, ``.hydra/``
    (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``, as Hydra writes them; the configs set
    ``hydra.output_subdir: null`` so that Hydra itself writes nothing before the run directory
    is checked)."""
    save_config(cfg, run_dir)
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    task = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False) \
        if isinstance(cfg, DictConfig) else dict(cfg)
    task.pop("hydra", None)
    files = {"config.yaml": OmegaConf.to_yaml(OmegaConf.create(task)),
             "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})),
             "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task)))}
    for name, text in files.items():
        atomic_write_text(run_dir / ".hydra" / name, text)


def environment(torch_device: torch.device) -> dict:
    """What produced a run: Python, torch and package versions, the git commit of the code
    (``None`` outside a git checkout), the torch device and thread count."""
    import importlib.metadata
    import platform
    import subprocess

    versions = {}
    for package in ("memxbar", "numpy", "hydra-core", "cvxpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
        git = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"python": platform.python_version(), "torch": torch.__version__, **versions,
            "git_commit": git, "torch_device": str(torch_device),
            "torch_threads": torch.get_num_threads()}


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s context/cause chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def bad_job_name() -> str | None:
    """What is wrong with ``hydra.job.name``, which names the log file in the run folder
    (``<name>.log``; ``../x`` would write outside it), or None: checked before any record."""
    from hydra.core.hydra_config import HydraConfig

    name = HydraConfig.get().job.name if HydraConfig.initialized() else "run"
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(name)):
        return None
    return (f"hydra.job.name={name!r} is invalid; allowed: a plain file name (letters, digits, "
            "'_', '.', '-'): it names the log file in the run folder")


def hydra_run_dir() -> Path:
    """The current Hydra job's output directory."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RunLockedError)
"""What a run raises for bad settings, inputs or files (the messages name the key or file, the
value and what is allowed): printed as one message, the traceback only with
``HYDRA_FULL_ERROR=1``. So is an ``OSError`` that names its file (a full disk or a read-only
folder while a checkpoint or result is written: ``crossbar.io.write_failed``)."""


def user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix and its message says what (no traceback)."""
    return isinstance(exc, USER_ERRORS) or (isinstance(exc, OSError)
                                            and exc.filename is not None)


SWEEP_FAILURES = "MEMXBAR_SWEEP_FAILURES"
"""Environment variable naming the file where the jobs of a sweep (``-m``) record a refused
job (:func:`run_app` sets it; joblib's workers inherit it)."""


def record_sweep_failure(line: str, kind: str = "FAIL") -> bool:
    """Append a job's one line to the sweep's record file: a failed job's error (``FAIL``),
    or the sweep folder of a finished one (``DONE``); False when there is no file (the job
    then raises, and Hydra reports it after the sweep, as on a cluster)."""
    path = os.environ.get(SWEEP_FAILURES)
    if not path:
        return False
    try:
        with open(path, "a") as f:  # one short write per job: appends do not interleave
            f.write(f"{kind}\t" + line.replace("\n", " ") + "\n")
    except OSError:
        return False
    return True


def bad_output_dir(value: str) -> str | None:
    """What stops Hydra from making the output folder ``value`` (checked before Hydra tries, as
    its own error is a traceback), or None."""
    path = Path(value).expanduser()
    if any(len(part.encode()) > 255 for part in path.parts):
        return "a part of the name is longer than a file system takes (255 bytes)"
    if path.is_symlink() and not path.exists():
        return f"{path} is a link to nothing"
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, not a folder"
    return None


def run_app(main: Callable[[], object]) -> None:
    """Run a Hydra app's ``main``; after a sweep whose jobs were refused, print one line per
    refused job (each already printed its error when it ran) and exit 1, with no traceback:
    the other jobs ran and kept their results."""
    import tempfile

    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            problem = bad_output_dir(value)
            if problem:
                print(f"Error: {key}={value!r} is invalid: {problem}; allowed: a new or existing "
                      "folder", file=sys.stderr, flush=True)
                raise SystemExit(1)
    fd, path = tempfile.mkstemp(prefix="memxbar-sweep-", suffix=".txt")
    os.close(fd)
    os.environ[SWEEP_FAILURES] = path
    try:
        main()
        lines = [line.split("\t", 1) for line in Path(path).read_text().splitlines()]
    finally:
        os.environ.pop(SWEEP_FAILURES, None)
        Path(path).unlink(missing_ok=True)
    failed = [text for kind, text in lines if kind == "FAIL"]
    sweeps = list(dict.fromkeys(text for kind, text in lines if kind == "DONE"))
    for sweep in sweeps:
        print(f"collect the sweep's results (a table and the Pareto plots): python -m "
              f"memxbar.experiments.collect {sweep}", flush=True)
    if failed:
        print(f"Error: {len(failed)} job(s) of the sweep failed (the others finished):\n  "
              + "\n  ".join(failed), file=sys.stderr, flush=True)
        raise SystemExit(1)


def entry(run: Callable[[DictConfig, Path], dict], report: str) -> Callable[[DictConfig], dict]:
    """Wrap ``run`` as a Hydra task function that prints where its report is; SIGTERM and
    Ctrl-C print how to resume (exit 143 / 130); a bad setting or file is one error message
    (exit 1)."""
    command = "experiments." + run.__name__.removeprefix("run_")

    def task(cfg: DictConfig) -> dict:
        run_dir = hydra_run_dir()
        print(f"run dir: {run_dir}", flush=True)
        bad = bad_job_name()
        if bad:
            with contextlib.suppress(OSError):  # refused before any work: no empty folder
                run_dir.rmdir()
            print(f"Error: {bad}", file=sys.stderr, flush=True)
            raise SystemExit(1)
        with sigterm_as_exit(run_dir, command), logging_redirect_tqdm():
            try:
                metrics = run(cfg, run_dir)
            except KeyboardInterrupt:
                print(f"Interrupted (Ctrl-C): the last checkpoint in {run_dir} is kept. Resume "
                      f"with: python -m {command} resume=true hydra.run.dir={run_dir} <same "
                      "overrides>", file=sys.stderr, flush=True)
                raise SystemExit(130) from None
            except Exception as exc:
                # a library clean-up that fails after SIGTERM hides the Terminated it unwound
                # from; exit as terminated (143, resume hint printed) rather than as a failure
                terminated = _cause(exc, Terminated)
                if terminated is not None:
                    raise terminated from exc
                with contextlib.suppress(OSError):  # refused before any work: no empty folder
                    run_dir.rmdir()  # (Hydra creates it); only succeeds when empty
                if user_error(exc) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                    print(f"Error: {exc}\n(the run in {run_dir} stopped; set HYDRA_FULL_ERROR=1 "
                          "for the traceback)", file=sys.stderr, flush=True)
                    if not _multirun():
                        raise SystemExit(1) from None
                    if record_sweep_failure(f"{run_dir}: {exc}"):
                        return {}  # the sweep goes on; run_app exits 1 after the last job
                raise
        print(f"report: {run_dir / report}")
        if _multirun():
            from hydra.core.hydra_config import HydraConfig

            record_sweep_failure(str(HydraConfig.get().sweep.dir), kind="DONE")
        return metrics
    return task
