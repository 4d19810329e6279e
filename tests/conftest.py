"""Shared test set-up, and how pytest-xdist spreads the tests over worker processes."""

import functools
import os
import re
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """The tests use small tensors: one intra-op thread avoids synchronisation cost and the
    stalls that OpenMP spin-waiting causes on a busy 2-core machine, and keeps timings stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hooks: unknown without it (-p no:xdist)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may use (xdist's own count is the physical
    cores when psutil is installed: 1 on a 2-vCPU machine with hyper-threads). The
    environment variable PYTEST_XDIST_AUTO_NUM_WORKERS still sets it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@functools.cache
def _has_module_fixture(path: Path) -> bool:
    """Whether the test file at ``path`` defines a module-scoped fixture."""
    try:
        text = path.read_text()
    except OSError:
        return False
    return re.search(r"""@pytest\.fixture\(scope=["']module["']""", text) is not None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``-n`` with the default ``--dist load``: each test goes to the next free worker, but the
    tests of a file that defines a module-scoped fixture (a finished run that most of its
    tests read, the benchmarks' smoke runs) all go to one worker, so that the fixture is
    built once, not on every worker; those files go first (xdist orders the groups by their
    number of tests, single tests last). xdist's own ``--dist loadgroup`` cannot do this
    here: with pytest 9.2 it silently stops grouping (pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    root = Path(config.rootpath)

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if _has_module_fixture(root / path) else nodeid

    return SharedFixtureScheduling(config, log)
