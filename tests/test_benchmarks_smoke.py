"""Every script in benchmarks/ runs end to end in its smoke mode (issue 25): ``python
benchmarks/<name>.py --smoke <folder>`` from the repository root exits 0, writes its outputs
into the folder given, and writes nothing into the repository. Nothing else runs the
benchmarks, so without this a library change can break one unnoticed. The runs are single-
threaded processes, started together two at a time (the file takes about half its CPU time)."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> the files its smoke run writes into the folder given (print-only scripts: none)
OUTPUTS = {
    "admm_overhead": ["admm_overhead.json"],
    "calibration_percentile": ["run/metrics.json", "run/plan.json", "run/compressed.pt"],
    "chip_scale": ["chip_scale.json", "run/metrics.json"],  # see AFTER
    "column_accumulate": [],
    "compressor_comparison": ["compressor_comparison.md", "compressor_comparison.png",
                              "compressor_comparison.pdf"],  # see AFTER
    "compressor_curves": ["curves.json", "curves.md", "curves.png", "admm_4x/metrics.json"],
    "converter_sweep": ["run/converter_sweep.json", "run/converter_sweep.png",
                        "run/converter_sweep.pdf"],  # see AFTER
    "greedy_paths": ["greedy_paths.json", "greedy_paths.md", "run/dense.pt"],
    "grouped_attention_timing": [],
    "irdrop": ["irdrop.json", "irdrop_accuracy.png"],
    "mc_chips": ["mc_chips.json"],
    "obc_ablation": [],
    "peer_check": [],
    "programming": ["programming.json"],
    "reproduce_mnist": ["run/metrics.json", "run/report.md"],
    "robustness_timing": [],
    "selective_verify": ["selective_verify.json", "run/metrics.json"],  # see AFTER
    "sim_overhead": ["sim_overhead.json"],
}
# folders of the repository a benchmark wrote into before it had a smoke mode (its defaults)
WATCHED = ("benchmarks", "docs", "results", "outputs", "multirun")
# the smoke runs that take longest (whole pipeline runs) start first
SLOW = ("compressor_curves", "reproduce_mnist", "calibration_percentile", "converter_sweep",
        "irdrop", "obc_ablation")
WORKERS = 2  # the CI machine's cores
# script -> the script whose folder it gets, after that one finished: converter_sweep then
# sweeps the tiny compress run that calibration_percentile's smoke made there (both scripts
# make it with calibration_percentile.smoke_run when DIR holds none; one pipeline run, ~12 s of
# CPU with its figures, instead of two); chip_scale and selective_verify re-evaluate it
AFTER = {"converter_sweep": "calibration_percentile", "chip_scale": "calibration_percentile",
         "compressor_comparison": "calibration_percentile",
         "selective_verify": "calibration_percentile"}


# what the test session itself makes at the top of the repository while the smoke runs go on
# (pytest-xdist runs other tests beside them): Hypothesis's database of the project's constants
# and examples (made at the first @given test of a fresh checkout), pytest's cache
SESSION = {".hypothesis", ".pytest_cache"}


def _repository_files() -> set[str]:
    """The top level of the repository (but SESSION) and every file under WATCHED, ignored
    ones included (results/ and outputs/ are ignored by git, so git status alone would not see
    them)."""
    files = {p.name for p in ROOT.iterdir()} - SESSION
    for folder in WATCHED:
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" not in path.parts:
                files.add(str(path.relative_to(ROOT)))
    return files


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", *WATCHED], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def _smoke(name: str, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``python benchmarks/<name>.py --smoke <out>`` from the repository root, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--smoke", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The smoke runs of the selected scripts, started together, WORKERS at a time (each uses
    one thread), longest first: their folders, name -> future of {name: (process, seconds)}
    (a script and those AFTER it share one job), and the repository's files and git status
    before them. Under pytest-xdist all of this file's tests run on one worker (a file with a
    module-scoped fixture: tests/conftest.py), which starts the runs once."""
    here = Path(__file__).resolve()
    names = {item.callspec.params["name"] for item in request.session.items
             if Path(item.path).resolve() == here and hasattr(item, "callspec")}
    order = sorted(names, key=lambda n: (SLOW.index(n) if n in SLOW else len(SLOW), n))
    base = tmp_path_factory.mktemp("benchmarks_smoke")
    folders = {n: base / AFTER.get(n, n) for n in names}
    before = _repository_files(), _git_status()

    def chain(names: list[str]) -> dict:
        return {n: _smoke(n, folders[n]) for n in names}

    pool = ThreadPoolExecutor(WORKERS)
    try:
        futures = {}
        for n in order:
            if AFTER.get(n) in names:
                continue  # runs in the job of the script it follows
            group = [n, *(m for m in order if AFTER.get(m) == n)]
            futures.update(dict.fromkeys(group, pool.submit(chain, group)))
        yield folders, futures, before
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_every_benchmark_has_a_smoke_test():
    assert sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")) == sorted(OUTPUTS)


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_benchmark_smoke(name, smoke_runs):
    folders, futures, (files, status) = smoke_runs
    proc, took = futures[name].result()[name]
    out = folders[name]
    assert proc.returncode == 0, f"{name} --smoke failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{name} --smoke printed nothing"
    missing = [f for f in OUTPUTS[name] if not (out / f).is_file()]
    assert not missing, f"{name} --smoke did not write {missing} into {out}"
    # runs go two at a time: a file here may come from the other one running (its name tells)
    changed = sorted(_repository_files() ^ files)
    assert not changed, f"a smoke run (this: {name}) wrote into the repository: {changed}"
    assert _git_status() == status, f"a smoke run (this: {name}) changed the repository"
    print(f"{name} --smoke: {took:.1f} s")
    if name == "peer_check" and importlib.util.find_spec("aihwkit_lightning") is None:
        # the peer (the dev extra) is absent outside CI: our side ran, and the script says so
        assert os.environ.get("CI") != "true", "CI installs the dev extra: aihwkit-lightning"
        assert "peer side is SKIPPED" in proc.stdout and "nothing is compared" in proc.stdout
    elif name == "peer_check":  # compared with the independent simulator: every case agrees
        assert "OK: all cases agree within tolerance" in proc.stdout, proc.stdout
    if name == "sim_overhead":  # the floor's parts were timed (--floor runs in smoke mode)
        floor = json.loads((out / "sim_overhead.json").read_text())["floor"]
        assert floor["products_s"] > 0 and floor["plain_products_s"] > 0
        assert floor["variance_s"] > 0 and floor["draws_s"] > 0  # smoke has read noise
        assert floor["floor_ratio"] > 0
