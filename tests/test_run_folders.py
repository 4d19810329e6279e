"""Runs never lose data (issue 12): the six data-loss paths of the attack, as regression tests,
plus the run lock, stale temporary files, file permissions and the Ctrl-C resume hint."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memxbar.admm import CheckpointMismatchError
from memxbar.crossbar.io import atomic_write_text
from memxbar.experiments import pipeline
from memxbar.experiments import study_chips as study_module  # where the study calls evaluate_chips
from memxbar.experiments.conf_source import CONF_DIR
from memxbar.experiments.guard import RunLockedError, clean_stale_temporaries, run_lock
from memxbar.experiments.pipeline import run_compress
from memxbar.experiments.study import run_device_study
from tests.test_reliability import RUN, _compose

ROOT = Path(__file__).resolve().parents[1]
FIN = RUN + ["robustness.hardware_aware=false"]
"""The finished run's settings (without hardware-aware retraining the compressed model does not
depend on device, crossbar or cost settings)."""
STUDY = ["eval.chips=2", "eval.test_subset=60", "eval.calibration_samples=32",
         "runtime.progress=false", "runtime.threads=1", "study.models=[compressed]",
         "study.grids=[]", "study.layer_sensitivity=false", "~study.sweeps",
         "+study.sweeps={adc_bits: [4, 6, 8]}"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    return run_dir, run_compress(_compose(FIN), run_dir)


def _cli(run_dir: Path, *overrides: str, app: str = "compress", timeout: int = 300,
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"memxbar.experiments.{app}", *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ the six data-loss paths
def test_1_refused_resume_leaves_config_and_checkpoints_untouched(finished):
    run_dir, _ = finished
    before = _snapshot(run_dir)
    with pytest.raises(CheckpointMismatchError, match=r"dense\.pt.*train\.lr"):
        run_compress(_compose(FIN + ["resume=true", "train.lr=0.01"]), run_dir)
    assert _snapshot(run_dir) == before  # config.yaml was overwritten before the fix


def test_2_refused_rerun_leaves_hydra_records_untouched(tmp_path):
    """Hydra itself wrote .hydra/ before the task ran: a refused re-run with other overrides
    rewrote it, and experiments.collect then labelled the old metrics with them."""
    run_dir = tmp_path / "run"
    first = _cli(run_dir, *RUN, "eval.chips=1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "eval.chips=1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    before = _snapshot(run_dir)
    again = _cli(run_dir, *RUN, "eval.chips=3", "device.programming.sigma=0.2")
    assert again.returncode == 1
    assert "already holds results" in again.stderr and "Traceback" not in again.stderr
    assert _snapshot(run_dir) == before


def test_3_fresh_run_in_a_folder_without_checkpoints_keeps_its_results(finished, tmp_path):
    """The *.pt files were deleted: a fresh run overwrote metrics.json and report.md."""
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("metrics.json", "report.md", "config.yaml"):
        (run_dir / name).write_bytes((finished[0] / name).read_bytes())
    before = _snapshot(run_dir)
    with pytest.raises(ValueError, match="already holds results.*metrics.json"):
        run_compress(_compose(RUN), run_dir)
    assert _snapshot(run_dir) == before


def test_4_two_runs_in_one_folder_the_second_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir) as lock:  # a live run holds the folder
        lock.claim()
        with pytest.raises(RunLockedError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            run_compress(_compose(RUN), run_dir)
        assert [p.name for p in run_dir.iterdir()] == [".lock"]
    assert (run_dir / ".lock").is_file()  # the lock file stays (never unlinked once claimed)
    proc = subprocess.Popen(  # across processes: the kernel's flock
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from memxbar.experiments.guard import run_lock\n"
         f"with run_lock(Path({str(run_dir)!r})) as lock:\n    lock.claim(); "
         "print('locked', flush=True); "
         "time.sleep(30)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            run_compress(_compose(RUN), run_dir)
        proc.kill()  # a killed run leaves no stale lock
        proc.wait()
        with run_lock(run_dir):
            pass
    finally:
        proc.kill()


def test_5_failed_cost_stage_resumes_with_a_corrected_cost_setting(finished, tmp_path,
                                                                  monkeypatch, caplog):
    """A failure after compression keeps the checkpoints; the corrected cost (or device,
    crossbar) setting resumes from compressed.pt (not in its fingerprint) and re-runs only
    mapping, evaluation and cost."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "pretrain_state.pt", "dense.pt", "admm_state.pt",
                 "compressed.pt"):
        (run_dir / name).write_bytes((finished[0] / name).read_bytes())

    def broken(*args, **kwargs):
        raise ValueError("cost stage failed")

    monkeypatch.setattr(pipeline, "cost_stage", broken)
    with pytest.raises(ValueError, match="cost stage failed"):
        run_compress(_compose(FIN + ["resume=true"]), run_dir)
    monkeypatch.undo()
    compressed = (run_dir / "compressed.pt").read_bytes()
    with caplog.at_level("INFO"):
        metrics = run_compress(_compose(FIN + ["resume=true", "cost.clock_MHz=50",
                                               "crossbar.adc_bits=6"]), run_dir)
    assert "compression skipped" in caplog.text and "pretraining skipped" in caplog.text
    assert (run_dir / "compressed.pt").read_bytes() == compressed  # not retrained
    assert metrics["compressed_accuracy"] == finished[1]["compressed_accuracy"]
    assert metrics["crossbar"]["adc_bits"] == 6
    # with hardware-aware retraining the simulator (device, crossbar) shapes the weights, the
    # cost model does not: a corrected cost setting still resumes
    from memxbar.experiments.config import load_compress_config
    from memxbar.experiments.guard import fingerprint

    fp = fingerprint(load_compress_config(_compose(RUN)))
    assert "crossbar" in fp and "device" in fp and "cost" not in fp
    # a budgeted allocation costs layers (crossbar, cost) but reads no device: without
    # hardware-aware retraining a device change (e.g. a drift time) reuses the model
    budget = ["robustness.hardware_aware=false", "allocation={budget: 4}"]
    fp = fingerprint(load_compress_config(_compose(RUN + budget)))
    assert "crossbar" in fp and "cost" in fp and "device" not in fp and "layers" not in fp
    fp = fingerprint(load_compress_config(_compose(RUN + budget[:1])))
    assert not {"crossbar", "cost", "device", "layers"} & set(fp)


def test_6_device_study_keeps_finished_points_when_one_fails(finished, tmp_path, monkeypatch):
    src, _ = finished
    run_dir = tmp_path / "study"
    real = study_module.evaluate_chips

    def flaky(model, plan, design, **kwargs):
        if design.crossbar.adc_bits == 6:
            raise RuntimeError("simulated failure at adc_bits=6")
        return real(model, plan, design, **kwargs)

    monkeypatch.setattr(study_module, "evaluate_chips", flaky)
    overrides = FIN + STUDY + [f"study.source={src}"]
    with pytest.raises(ValueError, match=r"1 study point\(s\) failed: sweep adc_bits 6 "
                                         r"compressed: RuntimeError.*resume=true"):
        run_device_study(_compose_study(overrides), run_dir)
    study = json.loads((run_dir / "study.json").read_text())
    assert [r["value"] for r in study["sweeps"]] == [4, 8]  # the finished points are kept
    assert study["failed"][0]["point"] == "sweep adc_bits 6 compressed"
    assert "Failed points" in (run_dir / "study.md").read_text()
    calls = []
    monkeypatch.setattr(study_module, "evaluate_chips",
                        lambda *a, **k: calls.append(a[2].crossbar.adc_bits) or real(*a, **k))
    metrics = run_device_study(_compose_study(overrides + ["resume=true"]), run_dir)
    assert calls == [6]  # only the missing point is computed
    assert [r["value"] for r in metrics["study"]] == [4, 6, 8] and not metrics["failed"]
    assert metrics["reused_points"] == 2


def _compose_study(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="device_study", overrides=list(overrides))


# ------------------------------------------------------------------------ the rest of it
def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    old = tmp_path / ".dense.pt.abc123.memxbar-tmp"
    new = tmp_path / ".metrics.json.def456.memxbar-tmp"
    kept = tmp_path / "dense.pt"
    users = tmp_path / ".my_notes.tmp"  # the user's own temporary: not ours to delete
    for p in (old, new, kept, users):
        p.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    os.utime(users, (past, past))
    assert clean_stale_temporaries(tmp_path, older_than_s=3600) == [old]
    assert new.exists() and kept.exists()
    assert clean_stale_temporaries(tmp_path) == [new] and kept.exists() and users.exists()


def test_the_lock_follows_no_link_and_stays(tmp_path):
    from memxbar.experiments.guard import run_lock

    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(outside)
    with pytest.raises(ValueError, match=r"\.lock cannot be opened .*symlink is refused"):
        with run_lock(run_dir):
            pass
    assert outside.read_text() == "keep me"
    (run_dir / ".lock").unlink()
    os.link(outside, run_dir / ".lock")  # a hard link to a file outside
    with pytest.raises(ValueError, match="not a plain file of its own"):
        with run_lock(run_dir):
            pass
    assert outside.read_text() == "keep me"
    (run_dir / ".lock").unlink()
    with run_lock(run_dir):
        inode = (run_dir / ".lock").stat().st_ino
    assert (run_dir / ".lock").stat().st_ino == inode  # never unlinked: one lock file


def test_a_run_cleans_the_temporaries_a_killed_write_left(finished, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "pretrain_state.pt", "dense.pt", "admm_state.pt",
                 "compressed.pt"):
        (run_dir / name).write_bytes((finished[0] / name).read_bytes())
    (run_dir / ".compressed.pt.xyz.memxbar-tmp").write_bytes(b"half a checkpoint")
    run_compress(_compose(FIN + ["resume=true"]), run_dir)
    assert not list(run_dir.glob(".*.memxbar-tmp"))


def test_files_follow_the_umask(tmp_path):
    from memxbar.admm import save_atomic

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_atomic({"w": torch.zeros(1)}, tmp_path / "b.pt")
        os.umask(0o077)
        atomic_write_text(tmp_path / "c.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # was 0o600
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c.txt").stat().st_mode) == 0o600


def test_ctrl_c_prints_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    # a shell's background job (`make test &`) starts with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN: give the run the default handling a terminal's Ctrl-C meets
    proc = subprocess.Popen([sys.executable, "-m", "memxbar.experiments.compress", *RUN,
                             "train.epochs=200", f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "pretrain_state.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Interrupted (Ctrl-C)" in err and f"resume=true hydra.run.dir={run_dir}" in err
    assert "Traceback" not in err
    assert torch.load(run_dir / "pretrain_state.pt", weights_only=True)  # readable


def test_config_errors_are_one_message_without_a_traceback(tmp_path):
    bad = _cli(tmp_path / "run", "admm.rho=-1", timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: admm.rho=-1") and "Traceback" not in bad.stderr
    assert "HYDRA_FULL_ERROR=1" in bad.stderr
    assert not (tmp_path / "run").exists()  # nothing left behind
    full = subprocess.run([sys.executable, "-m", "memxbar.experiments.compress", "admm.rho=-1",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr


def test_a_sweep_goes_on_past_a_failing_job(tmp_path):
    """A job refused for a bad value prints its one-line error; the sweep runs its other jobs
    (their results are kept) and exits 1 at the end, naming the failed job once more and with
    no Hydra traceback (issue 22, item 10: the clear error was followed by Hydra's traceback);
    the same with the joblib launcher, whose jobs run in other processes."""
    out = subprocess.run([sys.executable, "-m", "memxbar.experiments.compress", "-m",
                          "crossbar.adc_bits=24,6", *RUN, "robustness.ablation=false",
                          f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert "Error: crossbar/cost" in out.stderr
    assert not (tmp_path / "0").exists()  # refused before any work: no folder
    assert (tmp_path / "1" / "metrics.json").is_file()  # the next job ran to the end
    assert "Traceback" not in out.stderr and "Error executing job" not in out.stderr
    assert f"Error: 1 job(s) of the sweep failed (the others finished):\n  {tmp_path / '0'}: " \
        "crossbar/cost" in out.stderr
    assert f"python -m memxbar.experiments.collect {tmp_path}" in out.stdout  # the next step, named
    out = subprocess.run([sys.executable, "-m", "memxbar.experiments.compress", "-m",
                          "hydra/launcher=local", "crossbar.adc_bits=24,25",
                          f"hydra.sweep.dir={tmp_path / 'joblib'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "Error: 2 job(s) of the sweep failed" in out.stderr


@pytest.mark.parametrize("name", ["pretrain_state.pt", "dense.pt", "admm_state.pt",
                                  "compressed.pt"])
@pytest.mark.parametrize("content", ["garbage", "foreign", "empty"])
def test_corrupt_or_foreign_checkpoints_name_the_file_before_any_work(finished, tmp_path, name,
                                                                       content):
    """Each checkpoint a resume reads: truncated/garbage bytes, an empty file, or a torch file
    of something else (no fingerprint) fail naming the file, before anything is written."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for n in ("config.yaml", "pretrain_state.pt", "dense.pt", "admm_state.pt",
              "compressed.pt"):
        (run_dir / n).write_bytes((finished[0] / n).read_bytes())
    if content == "garbage":
        (run_dir / name).write_bytes(b"\x80\x04not a checkpoint" * 10)
    elif content == "empty":
        (run_dir / name).write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, run_dir / name)
    before = _snapshot(run_dir)
    with pytest.raises(ValueError, match=str(run_dir / name).replace(".", r"\.")):
        run_compress(_compose(FIN + ["resume=true"]), run_dir)
    assert _snapshot(run_dir) == before


# ------------------------------------------------------------------------ a disk that fills
def _file_size_limit(limit: int):
    """A file-size limit (``RLIMIT_FSIZE``) for a child process: a write past ``limit`` bytes
    fails with ``EFBIG`` as a full disk fails with ``ENOSPC`` (SIGXFSZ ignored), with no
    mount or root needed."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_that_fills_during_a_checkpoint_is_one_message_naming_the_file(tmp_path):
    """Issue 22, item 6: torch reports a full disk as a raw ``RuntimeError: [enforce fail at
    inline_container.cc]`` naming no file. Now: one line naming the checkpoint and the free
    space, exit 1, no traceback, no temporary file left, and the folder resumes."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "memxbar.experiments.compress", *RUN,
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=_file_size_limit(30_000))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "enforce fail" in proc.stderr
    assert f"could not write checkpoint {run_dir / 'pretrain_state.pt'}" in proc.stderr
    assert "MB free on its file system" in proc.stderr
    assert not list(run_dir.glob(".*tmp")) and not (run_dir / "pretrain_state.pt").exists()


def test_a_failed_result_write_names_the_file_and_keeps_the_old_one(tmp_path):
    """The library's atomic writes (results) and checkpoint saves fail naming the file; the
    previous content stays; both use the temporary ending the run cleans up."""
    from memxbar.admm.pipeline import TEMP_SUFFIX as ADMM_SUFFIX
    from memxbar.crossbar.io import TEMP_SUFFIX

    assert ADMM_SUFFIX == TEMP_SUFFIX
    target = tmp_path / "metrics.json"
    target.write_text("old")
    code = ("import sys; from memxbar.crossbar.io import atomic_write_text; "
            "from memxbar.admm.pipeline import save_atomic; import torch\n"
            "for f in (lambda: atomic_write_text(sys.argv[1], 'x' * 100000), "
            "lambda: save_atomic({'w': torch.zeros(100000)}, sys.argv[2])):\n"
            "    try: f()\n"
            "    except OSError as e: print(type(e).__name__, e.filename, '|', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, target, tmp_path / "ck.pt"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_file_size_limit(20_000))
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"WriteError {target} | could not write {target}"), proc
    assert lines[1].startswith(f"CheckpointWriteError {tmp_path / 'ck.pt'} | could not write "
                               "checkpoint"), proc
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json"]


def test_a_lifetime_study_alone_writes_its_report_and_replots(finished, tmp_path):
    """``study.sweeps=null`` + ``study.lifetime``: the lifetime of the source's chips on a
    drifting device, every policy, over 2 worker processes with the stratified chip test;
    lifetime.json, the figure and study.md's section; replot redraws them and refuses a
    lifetime.json that does not hold metrics.json's chips."""
    from memxbar.experiments.replot import replot_study
    from memxbar.experiments.study import run_device_study

    src, _ = finished
    run_dir = tmp_path / "life"
    overrides = FIN + [o for o in STUDY if "sweeps" not in o] + [
        f"study.source={src}", "device=pcm_aihwkit", "study.sweeps=null",
        "study.lifetime={times_s: [1, 1000, 1e6], recalibrate_every_s: 3600}",
        "eval.chip_test=stratified", "eval.workers=2"]
    metrics = run_device_study(_compose_study(overrides), run_dir)
    life = metrics["lifetime"]["compressed"]
    assert list(life["policies"]) == ["none", "drift_compensation", "recalibrate",
                                      "reprogram"]
    assert life["policies"]["recalibrate"]["maintenance_per_chip"]["recalibrations"] == 8760
    assert all(len(d["series"]) == 3 for d in life["policies"].values())
    md = (run_dir / "study.md").read_text()
    assert "## Lifetime" in md and "| recalibrate |" in md and "One setting at a time" not in md
    assert (run_dir / "lifetime_compressed.png").is_file()
    full = json.loads((run_dir / "lifetime.json").read_text())
    assert len(full["compressed"]["policies"]["none"]["chips"]) == 2
    assert replot_study(run_dir) == ["lifetime_compressed.png"]
    full["compressed"]["policies"]["none"]["chips"][0]["accuracies"][0] -= 7.0
    (run_dir / "lifetime.json").write_text(json.dumps(full))
    with pytest.raises(ValueError, match="does not hold the chips of metrics.json's lifetime"):
        replot_study(run_dir)
