"""The side command lines in the apps' error style (issue 22): every bad argument, file or
folder is one message naming it (exit 1, or argparse's 2), never a traceback; ``collect`` names
the jobs it left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "text.json").write_text("not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "empty").mkdir()
    run = d / "run"  # a run folder with a corrupt plan
    run.mkdir()
    (run / "plan.json").write_text("{}")
    (run / "metrics.json").write_text(json.dumps({"crossbar": {"tile_rows": 128}}))
    (run / "config.yaml").write_text("cost: {}\n")
    return d


CASES = [
    ("crossbar.report", ["--run", "{d}/nowhere"], "missing"),
    ("crossbar.report", ["--run", "{d}/empty"], "missing"),
    ("crossbar.report", ["--run", "{d}/run"], "--plan {d}/run/plan.json is not a mapping plan"),
    ("crossbar.report", ["--plan", "{d}/text.json", "--config", "{d}/list.json", "--out",
                         "{d}/o"], "--plan {d}/text.json is not a mapping plan"),
    ("crossbar.report", ["--plan", "{d}/nowhere.json", "--config", "{d}/list.json", "--out",
                         "{d}/o"], "--plan {d}/nowhere.json does not exist"),
    ("crossbar.report", ["--plan"], "expected one argument"),
    ("experiments.collect", ["{d}/nowhere"], "{d}/nowhere is not a directory"),
    ("experiments.collect", ["{d}/empty"], "no readable metrics.json below {d}/empty"),
    ("experiments.collect", ["{d}/text.json"], "is not a directory"),
    ("experiments.replot", ["{d}/empty"], "lacks config.yaml, metrics.json, study_points.json"),
    ("experiments.replot", ["{d}/nowhere"], "lacks config.yaml"),
]


@pytest.mark.parametrize("module, args, words", CASES)
def test_a_bad_input_is_one_message_naming_it(files, module, args, words):
    out = _run(module, *[a.format(d=files) for a in args], cwd=files)
    assert out.returncode in (1, 2), out
    assert "Traceback" not in out.stderr, out.stderr
    assert words.format(d=files) in out.stderr, out.stderr


def test_debug_shows_the_traceback(files):
    out = _run("experiments.collect", files / "nowhere", "--debug", cwd=files)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_collect_names_the_jobs_it_left_out(files, tmp_path):
    for job, done in (("0", True), ("1", False)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / "config.yaml").write_text("seed: 0\n")
        if done:
            (tmp_path / job / "metrics.json").write_text(json.dumps(
                {"crossbar_accuracy_mean": 90.0, "compression_ratio": 4.0}))
    out = _run("experiments.collect", tmp_path, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "left out: 1 job(s)" in out.stderr and ": 1" in out.stderr
    assert (tmp_path / "collected_left_out.txt").read_text() == "1\n"
    assert (tmp_path / "collected.csv").read_text().count("\n") == 2  # header + the finished job
