"""Table-driven bad-input test of the side command lines (issue 22, "nothing silent, nothing
lost"): ``python -m memxbar.crossbar.report``, ``python -m memxbar.experiments.collect`` and
``python -m memxbar.experiments.replot`` given the inputs a demanding user gives: missing, empty,
binary, non-JSON and wrong-type files; JSON/YAML with wrong or missing keys; values of the wrong
type, NaN, infinities, negatives and huge numbers; folders of the wrong layout (a file where a
folder goes, an empty folder, a run missing one file, a device study where a compress run goes,
a sweep with failed or interrupted jobs, unrelated JSON); bad and conflicting options; files
that disagree with each other.

Each case starts from real inputs (a tiny finished compress run and a device study made from
it, built once per module) copied into the case's folder, with one thing broken. Its outcome:

* ``clear``: exit 1 (or argparse's 2), one error message on stderr naming the offending
  argument, file or key (the case's words), no traceback, and nothing in the case's folder
  changed (a refused run never overwrites the user's files);
* ``legit``: a value that is in fact fine, listed with its reason (and, where the case says
  so, what the output must show: a sweep's failed job is left out *and named*);
* ``raw``: a traceback, an exception run_cli does not catch, or a message that names nothing;
* ``silent``: exit 0 although the input was bad.

The CLIs run in-process (``run_cli(main, argv)``, stderr captured); a few subprocess runs
confirm the no-traceback behaviour end to end. Prints the counts per CLI (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from memxbar.crossbar.io import run_cli
from memxbar.crossbar.report import main as report_main
from memxbar.experiments.collect import main as collect_main
from memxbar.experiments.replot import main as replot_main

ROOT = Path(__file__).resolve().parents[2]
MAINS = {"report": report_main, "collect": collect_main, "replot": replot_main}
MODULES = {"report": "memxbar.crossbar.report", "collect": "memxbar.experiments.collect",
           "replot": "memxbar.experiments.replot"}
ROOT_USER = os.geteuid() == 0  # root ignores file permissions: no read-only cases then


# ------------------------------------------------------------------------------ real inputs
@dataclass(frozen=True)
class Real:
    run: Path      # a finished compress run (plan.json, metrics.json, config.yaml, report.md)
    study: Path    # a finished device study made from it
    plans: dict    # label -> plan JSON (tests/test_side_clis._plan_files), "xbar" -> its config


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Real:
    from test_experiments import TINY, _compose  # tests/ is on sys.path (conftest.py there)
    from test_side_clis import _plan_files

    from memxbar.experiments.pipeline import run_compress
    from memxbar.experiments.study import run_device_study

    base = tmp_path_factory.mktemp("real")
    run_compress(_compose(TINY + ["robustness.ablation=false"]), base / "run")
    run_device_study(_compose(TINY + [f"study.source={base / 'run'}", "~study.sweeps",
                                      "+study.sweeps={adc_bits: [4, 6]}", "study.grids=[]"],
                              name="device_study"), base / "study")
    (base / "plans").mkdir()
    plans = _plan_files(base / "plans")
    plans["xbar"] = base / "plans" / "xbar.json"
    return Real(base / "run", base / "study", plans)


SKIP = shutil.ignore_patterns("*.pt", "*.png", "*.pdf", ".lock")  # outputs no CLI reads


def _run_copy(d: Path, real: Real, name: str = "run") -> Path:
    return Path(shutil.copytree(real.run, d / name, ignore=SKIP))


def _study_copy(d: Path, real: Real, name: str = "study") -> Path:
    return Path(shutil.copytree(real.study, d / name, ignore=SKIP))


def _sweep(d: Path, real: Real, jobs: int = 2) -> Path:
    """A Hydra multirun folder: ``jobs`` finished jobs of the real run, ``seed`` swept."""
    root = d / "sweep"
    for i in range(jobs):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n- hydra/launcher=basic\n")
        for name in ("metrics.json", "config.yaml"):
            shutil.copy(real.run / name, job / name)
        (job / "compress.log").write_text("done\n")
    return root


# -------------------------------------------------------------------------------- breakage
MISSING = "missing"
JSON_BAD = {"missing": MISSING, "empty": b"", "binary": bytes(range(256)) * 4,
            "not JSON": b"{not json", "truncated": "half", "a list": b"[1, 2]",
            "a string": b'"abc"', "null": b"null", "a folder": "folder"}
YAML_BAD = {"missing": MISSING, "empty": b"", "binary": bytes(range(256)) * 4,
            "bad YAML": b"a: [1, 2\n  b: {\n", "a list": b"- 1\n- 2\n", "a scalar": b"hello\n",
            "a folder": "folder"}


def _break(path: Path, how) -> None:
    """Replace ``path`` by what ``how`` says (MISSING: delete it)."""
    text = path.read_bytes() if path.is_file() else b""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if how == MISSING:
        return
    if how == "folder":
        path.mkdir()
    elif how == "half":
        path.write_bytes(text[: len(text) // 2])
    else:
        path.write_bytes(how)


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))  # NaN and Infinity as Python writes them


def _edit_yaml(path: Path, change: Callable[[dict], object]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def _set(data: dict, dotted: str, value: object) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data[key]
    data[last] = value


def _delete(data: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data[key]
    del data[last]


# ----------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    cli: str                              # report / collect / replot
    label: str
    build: Callable[[Path, Real], list]   # makes the inputs under the case folder, gives argv
    words: tuple = ()                     # what the error must name (every one of them)
    legit: str | None = None              # why the input is in fact fine (must exit 0)
    check: Callable[[Path, str, Real], str | None] | None = None  # a legit run's output


CASES: list[Case] = []


def case(cli, label, build, words=(), legit=None, check=None):
    CASES.append(Case(cli, label, build, tuple(words), legit, check))


# ---- crossbar.report ----------------------------------------------------------------
def _report_run(change=None, extra=()):
    """``--run <copy of the real run>`` after ``change(run)``."""
    def build(d, real):
        run = _run_copy(d, real)
        if change:
            change(run)
        return ["--run", run, "--no-plots", *extra]
    return build


def _report_plan(plan="ok", config="real", cost=None, extra=(), out=True):
    """``--plan <plan> --config <xbar> [--cost <cost>] --out d/out``; ``config``/``cost``:
    "real" (the plan's own crossbar settings), None (left out), a dict dumped as JSON, or a
    breakage of :func:`_break`."""
    def build(d, real):
        argv = ["--plan", real.plans[plan] if isinstance(plan, str) else plan(d, real)]
        for option, given in (("--config", config), ("--cost", cost)):
            if given is None:
                continue
            path = d / f"given_{option[2:]}.json"  # not cost.json: that is an output
            if given == "real":
                path = real.plans["xbar"]
            elif isinstance(given, dict):
                path.write_text(json.dumps(given))
            else:  # the real file (a truncated one is cut from it), broken
                path.write_text(json.dumps({"clock_MHz": 1000.0}) if option == "--cost"
                                else real.plans["xbar"].read_text())
                _break(path, given)
            argv += [option, path]
        extra_ = [str(real.plans["xbar"]) if a == "{xbar}" else a for a in extra]
        return argv + (["--out", d / "out"] if out else []) + ["--no-plots", *extra_]
    return build


def _wrote_cost(d: Path, err: str, real: Real) -> str | None:
    """A legit report run wrote a cost.json of strict JSON (no NaN or Infinity)."""
    found = list(d.rglob("cost.json"))
    if not found:
        return "no cost.json written"
    for path in found:
        bad: list[str] = []
        json.loads(path.read_text(), parse_constant=bad.append)
        if bad:
            return f"{path} holds {bad[0]}"
    return None


def _cost_has(key: str, value: object):
    """A legit report run whose cost.json records ``key`` = ``value`` (the option was used)."""
    def check(d: Path, err: str, real: Real) -> str | None:
        problem = _wrote_cost(d, err, real)
        if problem:
            return problem
        data = json.loads(next(d.rglob("cost.json")).read_text())
        for part in key.split("."):
            data = data[part]
        return None if data == value else f"cost.json has {key}={data!r}, not {value!r}"
    return check


def _every_output(d: Path, err: str, real: Real) -> str | None:
    """The full report: plots, and only files REPORT_FILES names (what --out is checked for)."""
    from memxbar.crossbar.report import REPORT_FILES

    out = d / "run" / "cost_rerun"
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not (out / "tiles_per_layer.pdf").is_file():
        return f"no plots in {names}"
    unknown = sorted(set(names) - set(REPORT_FILES))
    return _wrote_cost(d, err, real) or (f"{unknown} not in REPORT_FILES" if unknown else None)


# run folder and its three files
case("report", "--run: no such folder", lambda d, r: ["--run", d / "nowhere"], ["--run", "nowhere"])
case("report", "--run: a file", lambda d, r: ["--run", shutil.copy(r.run / "plan.json", d)],
     ["--run", "plan.json"])
case("report", "--run: an empty folder",
     lambda d, r: (d / "empty").mkdir() or ["--run", d / "empty"], ["--run", "plan.json"])
case("report", "--run: empty string", lambda d, r: ["--run", ""], ["--run"])
case("report", "--run: a device study folder",
     lambda d, r: ["--run", _study_copy(d, r), "--no-plots"], ["--run", "plan.json"])
case("report", "--run: a sweep folder", lambda d, r: ["--run", _sweep(d, r), "--no-plots"],
     ["--run", "plan.json"])
for _file in ("plan.json", "metrics.json"):
    for _kind, _how in JSON_BAD.items():
        case("report", f"--run: {_file} {_kind}",
             _report_run(lambda run, f=_file, h=_how: _break(run / f, h)), ["--run", _file])
for _kind, _how in YAML_BAD.items():
    case("report", f"--run: config.yaml {_kind}",
         _report_run(lambda run, h=_how: _break(run / "config.yaml", h)),
         ["--run", "config.yaml"])
for _key, _value, _word in (
        ("crossbar", [1, 2], "crossbar"), ("crossbar", "abc", "crossbar"),
        ("crossbar", None, "crossbar"), ("crossbar.tile_rows", "abc", "tile_rows"),
        ("crossbar.tile_rows", -1, "tile_rows"), ("crossbar.tile_rows", math.nan, "tile_rows"),
        ("crossbar.tile_rows", 1e308, "tile_rows"), ("crossbar.tile_rows", 64, "tile_rows"),
        ("crossbar.mapping", "bogus", "mapping"), ("crossbar.bogus", 1, "bogus"),
        ("crossbar.adc_bits", 1.5, "adc_bits"), ("crossbar.tile_cols", True, "tile_cols")):
    case("report", f"--run: metrics.json {_key}={_value!r}",
         _report_run(lambda run, k=_key, v=_value: _edit_json(
             run / "metrics.json", lambda m: _set(m, k, v))), ["metrics.json", _word])
case("report", "--run: metrics.json without crossbar settings",
     _report_run(lambda run: _edit_json(run / "metrics.json", lambda m: _delete(m, "crossbar"))),
     ["metrics.json", "crossbar"])
for _key, _value, _word in (
        ("cost", [1, 2], "cost"), ("cost", "isaac", "cost"),
        ("cost.clock_MHz", "abc", "clock_MHz"), ("cost.clock_MHz", -1, "clock_MHz"),
        ("cost.clock_MHz", math.nan, "clock_MHz"), ("cost.clock_MHz", 0, "clock_MHz"),
        ("cost.clock_MHz", 1e308, "clock_MHz"), ("cost.cols_per_adc", 0, "cols_per_adc"),
        ("cost.cols_per_adc", 1.5, "cols_per_adc"), ("cost.cols_per_adc", "8", "cols_per_adc"),
        ("cost.table", "isaak", "isaak"), ("cost.table", "nowhere.yaml", "nowhere.yaml"),
        ("cost.bogus", 1, "bogus"), ("cost.pipelined", "yes", "pipelined")):
    case("report", f"--run: config.yaml {_key}={_value!r}",
         _report_run(lambda run, k=_key, v=_value: _edit_yaml(
             run / "config.yaml", lambda c: _set(c, k, v))), ["config.yaml", _word])
case("report", "--run: config.yaml without a cost group",
     _report_run(lambda run: _edit_yaml(run / "config.yaml", lambda c: _delete(c, "cost"))),
     ["config.yaml", "cost"])


def _layer0(change):
    return lambda p: change(p["layers"][0])


for _label, _change, _word in (
        ("format_version 99", lambda p: p.update(format_version=99), "format_version"),
        ("layers an object", lambda p: p.update(layers={}), "layers"),
        ("a layer twice", lambda p: p["layers"].append(p["layers"][0]), "each layer once"),
        ("mvms_per_sample -1", _layer0(lambda la: la.update(mvms_per_sample=-1)),
         "mvms_per_sample"),
        ("no tiles", _layer0(lambda la: la.update(tiles=[])), "tile"),
        ("a row outside the layer", _layer0(lambda la: la["tiles"][0].update(rows=[10000])),
         "rows"),
        ("tile_rows 64 (the run's crossbar has 128)", _layer0(lambda la: la.update(tile_rows=64)),
         "tile_rows"),
        ("in_features a string", _layer0(lambda la: la.update(in_features="abc")),
         "in_features"),
        ("an unknown layer key", _layer0(lambda la: la.update(bogus=1)), "bogus")):
    case("report", f"--run: plan.json {_label}",
         _report_run(lambda run, c=_change: _edit_json(run / "plan.json", c)),
         ["plan.json", _word])

# --plan / --config / --cost files
_PLAN_HOLES = {"duplicate layer": "each layer once", "negative count": "mvms_per_sample=-5",
               "NaN count": "mvms_per_sample=nan", "huge count": "mvms_per_sample=1e+308",
               "boolean count": "mvms_per_sample=True", "no tiles": "at least one tile",
               "no layers": "a non-empty list of layer plans", "huge layer": "a matrix of at most",
               "repeated row": "each index once per tile", "float row": "integer indices",
               "name not a string": "a module name"}
for _label, _word in _PLAN_HOLES.items():
    case("report", f"--plan: {_label}", _report_plan(_label), ["--plan", _word])
for _kind, _how in JSON_BAD.items():
    case("report", f"--plan: {_kind}", _report_plan(
        lambda d, r, h=_how: (shutil.copy(r.plans["ok"], d / "plan.json"),
                              _break(d / "plan.json", h), d / "plan.json")[2]), ["--plan"])
    case("report", f"--config: {_kind}", _report_plan(config=_how), ["--config"])
    case("report", f"--cost: {_kind}", _report_plan(cost=_how), ["--cost"])
case("report", "--config: {}", _report_plan(config={}),
     legit="every CrossbarConfig field at its default: the settings the plan was made with",
     check=_wrote_cost)
case("report", "--cost: {}", _report_plan(cost={}), legit="every CostConfig field at its "
     "default (the ISAAC table, 1280 MHz, 128 bit lines per ADC)", check=_wrote_cost)
for _key, _value in (("tile_rows", "abc"), ("tile_rows", 64), ("tile_rows", math.nan),
                     ("mapping", "bogus"), ("adc_bits", -1), ("bogus", 1),
                     ("weight_bits", 1e308)):
    case("report", f"--config: {_key}={_value!r}", _report_plan(config={_key: _value}),
         ["--config", _key])
for _key, _value in (("clock_MHz", "abc"), ("clock_MHz", -1), ("cols_per_adc", 0),
                     ("table", "isaak"), ("bogus", 1), ("output_bits", math.inf)):
    case("report", f"--cost: {_key}={_value!r}", _report_plan(cost={_key: _value}),
         ["--cost", _key])
case("report", "--cost: the crossbar settings' JSON",
     _report_plan(cost=None, extra=["--cost", "{xbar}"]), ["--cost", "cost key"])
case("report", "--config: a cost JSON", _report_plan(config={"clock_MHz": 1000.0}),
     ["--config", "clock_MHz"])
case("report", "--plan without --config", _report_plan(config=None), ["--config"])
case("report", "--plan without --out", _report_plan(out=False), ["--out"])
case("report", "no arguments", lambda d, r: [], ["--plan"])
case("report", "--plan: empty string", _report_plan(lambda d, r: ""), ["--plan"])
case("report", "--out: empty string", _report_plan(out=False, extra=["--out", ""]), ["--out"])

# options
for _value in ("-1", "nan", "0", "abc", "inf", "1e7", ""):
    case("report", f"--clock-MHz {_value!r}", _report_run(extra=["--clock-MHz", _value]),
         ["--clock-MHz"])
for _value in ("0", "-1", "1.5", "abc", "5000"):
    case("report", f"--cols-per-adc {_value!r}", _report_run(extra=["--cols-per-adc", _value]),
         ["--cols-per-adc"])
case("report", "--clock-MHz 500", _report_run(extra=["--clock-MHz", "500"]),
     legit="a slower converter clock", check=_cost_has("cost_config.clock_MHz", 500.0))
case("report", "--cols-per-adc 64", _report_run(extra=["--cols-per-adc", "64"]),
     legit="more ADCs, each shared by fewer bit lines",
     check=_cost_has("cost_config.cols_per_adc", 64))
case("report", "--table isaac", _report_run(extra=["--table", "isaac"]),
     legit="the shipped table by name", check=_wrote_cost)


def _table(d: Path, text) -> Path:
    path = d / "table.yaml"
    _break(path, text.encode() if isinstance(text, str) and text != "folder" else text)
    return path


for _label, _text in (("bad YAML", "components: [1, 2\n"), ("a list", "- 1\n- 2\n"),
                      ("a scalar", "isaac\n"), ("empty", ""), ("no components", "name: x\n"),
                      ("components not objects", "components: [1, 2]\n"),
                      ("an entry without units", "components:\n- kind: adc\n  energy: 1\n"),
                      ("binary", bytes(range(256))), ("a folder", "folder")):
    case("report", f"--table: {_label}",
         lambda d, r, t=_text: ["--run", _run_copy(d, r), "--no-plots", "--table", _table(d, t)],
         ["--table", "table.yaml"])
case("report", "--table: unknown name", _report_run(extra=["--table", "isaak"]),
     ["--table", "isaak"])
case("report", "--table: no such file", _report_run(extra=["--table", "nowhere.yaml"]),
     ["--table", "nowhere.yaml"])
case("report", "--out: an existing file",
     lambda d, r: ["--run", _run_copy(d, r), "--no-plots", "--out",
                   (d / "out.txt").write_text("mine") and d / "out.txt"], ["--out", "out.txt"])
case("report", "--out: below a file",
     lambda d, r: ["--run", _run_copy(d, r), "--no-plots", "--out",
                   (d / "out.txt").write_text("mine") and d / "out.txt" / "sub"],
     ["--out", "out.txt"])
case("report", "--out: the run folder itself (its report.md)",
     lambda d, r: ["--run", _run_copy(d, r), "--no-plots", "--out", d / "run"],
     ["--out", "report.md"])
case("report", "--out: a folder of the user's own report.md",
     lambda d, r: ["--run", _run_copy(d, r), "--no-plots", "--out",
                   (d / "mine").mkdir() or (d / "mine" / "report.md").write_text("x") and
                   d / "mine"], ["--out", "report.md"])
if not ROOT_USER:
    case("report", "--out: a read-only folder",
         lambda d, r: ["--run", _run_copy(d, r), "--no-plots", "--out",
                       (d / "ro").mkdir() or os.chmod(d / "ro", 0o555) or d / "ro" / "out"],
         ["ro"])
case("report", "--out: an existing empty folder",
     lambda d, r: ["--run", _run_copy(d, r), "--no-plots", "--out",
                   (d / "new").mkdir() or d / "new"], legit="a new folder", check=_wrote_cost)
case("report", "--out: the run's own cost report folder",
     lambda d, r: ["--run", _run_copy(d, r), "--no-plots", "--out", d / "run" / "cost"],
     legit="an earlier cost report is replaced by the same report", check=_wrote_cost)
case("report", "--run, plots and the dense baseline",
     lambda d, r: ["--run", _run_copy(d, r)], legit="the valid run, every output",
     check=_every_output)
case("report", "--no-baseline", _report_run(extra=["--no-baseline"]),
     legit="the design alone", check=_cost_has("baseline", None))
case("report", "--plan, --config, --cost (valid)", _report_plan(cost={"clock_MHz": 1000.0}),
     legit="the plan-file form", check=_cost_has("cost_config.clock_MHz", 1000.0))
for _label, _extra, _word in (
        ("--run with --plan", lambda d, r: ["--plan", r.plans["ok"]], "--plan"),
        ("--run with --config", lambda d, r: ["--config", r.plans["xbar"]], "--config"),
        ("--run with --cost", lambda d, r: ["--cost", r.plans["xbar"]], "--cost"),
        ("--run given twice", lambda d, r: ["--run", _study_copy(d, r)], "--run"),
        ("--clock-MHz given twice", lambda d, r: ["--clock-MHz", "100", "--clock-MHz", "200"],
         "--clock-MHz"),
        ("an unknown option", lambda d, r: ["--bogus", "1"], "--bogus"),
        ("a stray positional", lambda d, r: ["extra"], "extra")):
    case("report", _label, lambda d, r, e=_extra: ["--run", _run_copy(d, r), "--no-plots",
                                                   *e(d, r)], [_word])
for _label, _extra, _word in (
        ("--isaac-check with --run", lambda d, r: ["--run", _run_copy(d, r)], "--run"),
        ("--isaac-check with --plan", lambda d, r: ["--plan", r.plans["ok"]], "--plan"),
        ("--isaac-check with --out", lambda d, r: ["--out", d / "out"], "--out"),
        ("--isaac-check with --clock-MHz", lambda d, r: ["--clock-MHz", "100"], "--clock-MHz"),
        ("--isaac-check with --no-baseline", lambda d, r: ["--no-baseline"], "--no-baseline"),
        ("--isaac-check --table isaak", lambda d, r: ["--table", "isaak"], "isaak"),
        ("--isaac-check --table bad YAML",
         lambda d, r: ["--table", _table(d, "components: [1, 2\n")], "table.yaml")):
    case("report", _label, lambda d, r, e=_extra: ["--isaac-check", *e(d, r)], [_word])
case("report", "--isaac-check", lambda d, r: ["--isaac-check"], legit="the published check",
     check=lambda d, err, real: None)


# ---- experiments.collect ------------------------------------------------------------
def _left_out(job: str, rows: int = 1):
    """A legit partial sweep: the finished jobs collected, ``job`` named on stderr and in
    collected_left_out.txt."""
    def check(d: Path, err: str, real: Real) -> str | None:
        listed = (d / "sweep" / "collected_left_out.txt")
        if "left out" not in err or job not in err:
            return f"the left-out job {job} is not named on stderr: {err!r}"
        if not listed.is_file() or job not in listed.read_text().split():
            return "collected_left_out.txt does not list it"
        lines = (d / "sweep" / "collected.csv").read_text().strip().splitlines()
        return None if len(lines) == 1 + rows else f"collected.csv has {len(lines) - 1} rows"
    return check


def _collect_sweep(change=None, extra=(), jobs=2):
    def build(d, real):
        root = _sweep(d, real, jobs)
        if change:
            change(root)
        return [root, *extra]
    return build


LEFT_OUT = "a failed or interrupted job of a sweep: the finished jobs are collected, this one is "\
    "named on stderr and in collected_left_out.txt"

case("collect", "no such folder", lambda d, r: [d / "nowhere"], ["nowhere"])
case("collect", "a file", lambda d, r: [shutil.copy(r.run / "plan.json", d)], ["plan.json"])
case("collect", "an empty folder", lambda d, r: (d / "e").mkdir() or [d / "e"],
     ["metrics.json"])
case("collect", "empty string", lambda d, r: [""], ["multirun_dir"])
case("collect", "a folder of unrelated JSON",
     lambda d, r: [(d / "j").mkdir() or (d / "j" / "a.json").write_text("{}") and d / "j"],
     ["metrics.json"])
case("collect", "an unrelated metrics.json",
     lambda d, r: [(d / "j").mkdir() or (d / "j" / "metrics.json").write_text(
         '{"loss": 0.1, "epoch": 3}') and d / "j"], ["metrics.json", "crossbar_accuracy_mean"])
case("collect", "one compress run folder, no --out", lambda d, r: [_run_copy(d, r)],
     ["is a single run", "--out"])  # it would write into the run's results (issue 25)
case("collect", "one compress run folder, --out elsewhere",
     lambda d, r: [_run_copy(d, r), "--out", d / "table"],
     legit="a single run: one row", check=lambda d, err, real: None if len(
         (d / "table" / "collected.csv").read_text().strip().splitlines()) == 2 else "rows")
case("collect", "one device study folder, --out elsewhere",
     lambda d, r: [_study_copy(d, r), "--out", d / "table"],
     legit="a device study: one row of kind device_study", check=lambda d, err, real: None if
     ",device_study," in (d / "table" / "collected.csv").read_text() else "no device_study row")
case("collect", "a sweep of a compress run and a device study",
     lambda d, r: (_run_copy(d, r, "x/0"), _study_copy(d, r, "x/1")) and [d / "x"],
     legit="both kinds in one multirun folder")
case("collect", "a valid sweep", _collect_sweep(), legit="the valid sweep",
     check=lambda d, err, real: None if "left out" not in err else err)
case("collect", "a nested multirun (date/time/job)",
     lambda d, r: [_sweep(d / "multirun" / "2025-01-01" / "12-00-00", r).parents[2]],
     legit="jobs found at any depth")
for _kind, _how in JSON_BAD.items():
    case("collect", f"job 1's metrics.json {_kind}",
         _collect_sweep(lambda root, h=_how: _break(root / "1" / "metrics.json", h)),
         legit=LEFT_OUT, check=_left_out("1"))
case("collect", "every job's metrics.json missing",
     _collect_sweep(lambda root: [_break(root / j / "metrics.json", MISSING) for j in "01"]),
     ["metrics.json", "sweep"])
case("collect", "a job that failed at its start (only .hydra and config.yaml)",
     _collect_sweep(lambda root: (root / "2" / ".hydra").mkdir(parents=True) or
                    (root / "2" / "config.yaml").write_text("seed: 2\n")),
     legit=LEFT_OUT, check=_left_out("2", 2))
case("collect", "an interrupted job (only its log)",
     _collect_sweep(lambda root: (root / "2").mkdir() or
                    (root / "2" / "compress.log").write_text("epoch 1\n")),
     legit=LEFT_OUT, check=_left_out("2", 2))
for _key, _value in (("crossbar_accuracy_mean", "98"), ("crossbar_accuracy_mean", math.nan),
                     ("crossbar_accuracy_mean", math.inf), ("crossbar_accuracy_mean", -5),
                     ("crossbar_accuracy_mean", 150), ("crossbar_accuracy_mean", None),
                     ("crossbar_accuracy_mean", True), ("crossbar_accuracy_mean", 51.0),
                     ("crossbar_accuracies", [50.0, math.nan]),
                     ("crossbar_accuracies", ["50", "50"]), ("crossbar_accuracies", [50.0]),
                     ("dense_accuracy", 1e308), ("compressed_accuracy", "high"),
                     ("crossbar_accuracy_std", -1), ("crossbar_accuracy_ci95", math.nan),
                     ("compression_ratio", -1), ("compression_ratio", math.nan),
                     ("compression_ratio", "abc"), ("energy_nJ", -1), ("area_mm2", math.inf),
                     ("energy_reduction_pct", 250), ("chips", 0), ("chips", "2"),
                     ("tiles", 1.5), ("crossbar_test_samples", -120),
                     ("accuracy_drop_mean", math.nan)):
    case("collect", f"job 1's metrics.json {_key}={_value!r}",
         _collect_sweep(lambda root, k=_key, v=_value: _edit_json(
             root / "1" / "metrics.json", lambda m: _set(m, k, v))),
         ["metrics.json", _key.split(".")[-1]])
case("collect", "job 1's metrics.json without crossbar_accuracy_mean",
     _collect_sweep(lambda root: _edit_json(root / "1" / "metrics.json",
                                            lambda m: _delete(m, "crossbar_accuracy_mean"))),
     ["metrics.json", "crossbar_accuracy_mean"])
case("collect", "a device study's metrics.json with study not a list",
     lambda d, r: [(lambda s: _edit_json(s / "metrics.json", lambda m: _set(m, "study", "x"))
                    or s)(_study_copy(d, r))], ["metrics.json", "study"])
case("collect", "a device study's metrics.json with dense_accuracy NaN",
     lambda d, r: [(lambda s: _edit_json(s / "metrics.json", lambda m: _set(
         m, "dense_accuracy", math.nan)) or s)(_study_copy(d, r))],
     ["metrics.json", "dense_accuracy"])
for _kind, _how in YAML_BAD.items():
    if _kind == "empty":
        continue
    case("collect", f"job 1's .hydra/overrides.yaml {_kind}",
         _collect_sweep(lambda root, h=_how: _break(root / "1" / ".hydra" / "overrides.yaml",
                                                    h)), ["overrides.yaml"])
case("collect", "job 1's .hydra/overrides.yaml empty",
     _collect_sweep(lambda root: _break(root / "1" / ".hydra" / "overrides.yaml", b"")),
     legit="a job run without overrides (the other job's seed=0 is its only label)")
case("collect", "job 1's .hydra/overrides.yaml a mapping",
     _collect_sweep(lambda root: (root / "1" / ".hydra" / "overrides.yaml").write_text(
         "seed: 1\n")), ["overrides.yaml"])
case("collect", "job 1's .hydra/overrides.yaml numbers",
     _collect_sweep(lambda root: (root / "1" / ".hydra" / "overrides.yaml").write_text(
         "- 5\n- 6\n")), ["overrides.yaml"])
case("collect", "job 1's .hydra a file",
     _collect_sweep(lambda root: _break(root / "1" / ".hydra", b"x")), [".hydra"])
case("collect", "a deletion override (~robustness)",
     _collect_sweep(lambda root: (root / "1" / ".hydra" / "overrides.yaml").write_text(
         "- seed=1\n- ~robustness\n")), legit="Hydra's deletion syntax: a key without value")
def _vary(root: Path, overrides: tuple[str, str]) -> None:
    """Jobs 0 and 1 with these override lines and different accuracies (so plots are drawn)."""
    for job, line in zip("01", overrides, strict=True):
        (root / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([line]))
    _edit_json(root / "1" / "metrics.json", lambda m: m.update(
        crossbar_accuracies=[60.0, 61.0], crossbar_accuracy_mean=60.5))


for _label, _lines, _png in (
        ("list-valued overrides", ("model.hidden=[64,32]", "model.hidden=[128]"),
         "collected_model.hidden.png"),
        ("mapping-valued overrides", ("+study.sweeps={adc_bits: [4]}",
                                      "+study.sweeps={adc_bits: [6]}"),
         "collected_study.sweeps.png")):
    case("collect", f"a sweep over {_label}",
         _collect_sweep(lambda root, lines=_lines: _vary(root, lines)),
         legit="a sweep over a list or mapping setting: labelled by the value as written",
         check=lambda d, err, real, png=_png: None if (d / "sweep" / png).is_file()
         else f"no {png}")
case("collect", "a symlink loop in the sweep",
     _collect_sweep(lambda root: (root / "1" / "loop").symlink_to(root)),
     legit="symbolic links are not followed: each job is collected once",
     check=lambda d, err, real: None if len((d / "sweep" / "collected.csv").read_text().strip()
                                      .splitlines()) == 3 else "rows")
case("collect", "--out: an existing file",
     lambda d, r: [_sweep(d, r), "--out", (d / "f").write_text("x") and d / "f"], ["--out", "f"])
case("collect", "--out: below a file",
     lambda d, r: [_sweep(d, r), "--out", (d / "f").write_text("x") and d / "f" / "sub"],
     ["--out", "f"])
if not ROOT_USER:
    case("collect", "--out: a read-only folder",
         lambda d, r: [_sweep(d, r), "--out", (d / "ro").mkdir() or os.chmod(d / "ro", 0o555)
                       or d / "ro" / "out"], ["ro"])
case("collect", "--out: a new folder", lambda d, r: [_sweep(d, r), "--out", d / "new"],
     legit="the CSV goes elsewhere", check=lambda d, err, real: None if (
         d / "new" / "collected.csv").is_file() else "no collected.csv")
case("collect", "--out given twice",
     lambda d, r: [_sweep(d, r), "--out", d / "a", "--out", d / "b"], ["--out"])
case("collect", "two folders", lambda d, r: [_sweep(d, r), d], ["unrecognized arguments"])
case("collect", "no folder", lambda d, r: [], ["multirun_dir"])
case("collect", "an unknown option", lambda d, r: [_sweep(d, r), "--bogus"], ["--bogus"])


# ---- experiments.replot -------------------------------------------------------------
def _replot(change=None):
    def build(d, real):
        study = _study_copy(d, real)
        if change:
            change(study)
        return [study]
    return build


def _metrics(change):
    return _replot(lambda s: _edit_json(s / "metrics.json", change))


def _points(change):
    return _replot(lambda s: _edit_json(s / "study_points.json", change))


def _first_point(data: dict) -> str:
    return next(iter(data["points"]))


def _redrawn(d: Path, err: str, real: Real) -> str | None:
    """study.md and the figures redrawn as the study drew them (matplotlib's PNGs are
    byte-for-byte reproducible: a chip of another point in a figure would change it)."""
    for name in ("study.md", "study_adc_bits.png", "study_adc_bits_chips.png",
                 "layer_sensitivity.png", "layer_sensitivity.pdf"):
        if not (d / "study" / name).is_file():
            return f"{name} not written"
        if name != "layer_sensitivity.pdf" and \
                (d / "study" / name).read_bytes() != (real.study / name).read_bytes():
            return f"{name} differs from the study's own"
    return None


case("replot", "no such folder", lambda d, r: [d / "nowhere"], ["nowhere"])
case("replot", "a file", lambda d, r: [shutil.copy(r.study / "metrics.json", d)],
     ["metrics.json"])
case("replot", "an empty folder", lambda d, r: (d / "e").mkdir() or [d / "e"],
     ["study_points.json"])
case("replot", "empty string", lambda d, r: [""], ["run_dir"])
case("replot", "a compress run folder", lambda d, r: [_run_copy(d, r)], ["study_points.json"])
case("replot", "a sweep folder", lambda d, r: [_sweep(d, r)], ["study_points.json"])
case("replot", "two folders", lambda d, r: [_study_copy(d, r), d], ["unrecognized arguments"])
case("replot", "the valid study", _replot(), legit="the valid study", check=_redrawn)
for _file, _bad in (("config.yaml", YAML_BAD), ("metrics.json", JSON_BAD),
                    ("study_points.json", JSON_BAD)):
    for _kind, _how in _bad.items():
        case("replot", f"{_file} {_kind}", _replot(lambda s, f=_file, h=_how: _break(s / f, h)),
             [_file])
for _key, _value, _word in (("bogus_section", 1, "bogus_section"),
                            ("eval.chips", -1, "eval.chips"),
                            ("device.programming.sigma", 0.3, "study_points.json"),
                            ("model.name", "mlp", "mlp"), ("seed", "abc", "seed")):
    case("replot", f"config.yaml {_key}={_value!r}",
         _replot(lambda s, k=_key, v=_value: _edit_yaml(s / "config.yaml",
                                                        lambda c: _set(c, k, v))),
         ["config.yaml", _word])
case("replot", "config.yaml runtime.progress=true",
     _replot(lambda s: _edit_yaml(s / "config.yaml", lambda c: _set(c, "runtime.progress",
                                                                    True))),
     legit="runtime settings do not change a study's numbers", check=_redrawn)
for _key in ("model", "chips", "crossbar_test_samples", "study", "grids", "layer_sensitivity",
             "layer_sensitivity_reference", "dense_accuracy_chip_samples",
             "compressed_accuracy", "failed"):
    case("replot", f"metrics.json without {_key}", _metrics(lambda m, k=_key: _delete(m, k)),
         ["metrics.json", _key])
for _key, _value in (("study", "abc"), ("study", {}), ("grids", "abc"), ("chips", 0),
                     ("chips", "2"), ("chips", 3), ("chips", 2.5), ("crossbar_test_samples", -1),
                     ("crossbar_test_samples", "abc"), ("crossbar_test_samples", math.nan),
                     ("crossbar_test_samples", 1000000), ("dense_accuracy", math.nan),
                     ("dense_accuracy", 200), ("dense_accuracy", "abc"),
                     ("compressed_accuracy_chip_samples", -5), ("model", "mlp"), ("model", 5),
                     ("failed", "abc"), ("failed", [5]), ("layer_sensitivity", "abc"),
                     ("layer_sensitivity_reference", [1, 2])):
    case("replot", f"metrics.json {_key}={_value!r}",
         _metrics(lambda m, k=_key, v=_value: _set(m, k, v)), ["metrics.json", _key])
for _field, _value in (("mean", "abc"), ("mean", math.nan), ("mean", 150), ("mean", -1),
                       ("std", math.inf), ("min", 0),
                       ("max", 100), ("chips", 3), ("tiles", -1), ("tiles", "six"),
                       ("setting", "bogus"), ("model", "huge"), ("value", 5)):
    case("replot", f"metrics.json study row {_field}={_value!r}",
         _metrics(lambda m, f=_field, v=_value: m["study"][0].update({f: v})),
         ["metrics.json", _field if _field not in ("setting", "value", "model") else "study"])
for _field in ("mean", "std", "ci95", "min", "max"):
    case("replot", f"metrics.json study row {_field} 0.5 off its chips",
         _metrics(lambda m, f=_field: m["study"][0].update({f: m["study"][0][f] + 0.5})),
         ["metrics.json", _field, "average"])
case("replot", "metrics.json study row twice",
     _metrics(lambda m: m["study"].append(dict(m["study"][0]))), ["metrics.json", "study"])
case("replot", "metrics.json study row not an object",
     _metrics(lambda m: m["study"].__setitem__(0, [1, 2])), ["metrics.json", "study"])
case("replot", "metrics.json study row without mean",
     _metrics(lambda m: m["study"][0].pop("mean")), ["metrics.json", "mean"])
case("replot", "metrics.json a grid row of another study",
     _metrics(lambda m: m["grids"].append({
         "x_setting": "prog_sigma", "x": 0.1, "y_setting": "adc_bits", "y": 4,
         "model": "dense", "accuracies": [70.0, 71.0], "mean": 70.5, "std": 0.5, "ci95": 6.35,
         "min": 70.0, "max": 71.0, "chips": 2})), ["metrics.json", "grid"])
for _field, _value in (("mean", 12.0), ("accuracies", [1.0, 2.0]), ("layer", "nowhere"),
                       ("accuracies", "abc")):
    case("replot", f"metrics.json layer_sensitivity row {_field}={_value!r}",
         _metrics(lambda m, f=_field, v=_value: m["layer_sensitivity"][0].update({f: v})),
         ["metrics.json", "layer_sensitivity"])
case("replot", "metrics.json layer_sensitivity row not an object",
     _metrics(lambda m: m["layer_sensitivity"].__setitem__(0, "x")),
     ["metrics.json", "layer_sensitivity"])
for _label, _value in (("a string", "abc"), ("three numbers", [50.0, 0.0, 1.0]),
                       ("NaN", [math.nan, 0.0]), ("another mean", [12.0, 0.0]),
                       ("a negative half width", [50.0, -1.0])):
    case("replot", f"metrics.json layer_sensitivity_reference {_label}",
         _metrics(lambda m, v=_value: m["layer_sensitivity_reference"].update(
             {next(iter(m["layer_sensitivity_reference"])): v})),
         ["metrics.json", "layer_sensitivity_reference"])
case("replot", "metrics.json layer_sensitivity_reference unknown label",
     _metrics(lambda m: m["layer_sensitivity_reference"].update({"mine": [50.0, 0.0]})),
     ["metrics.json", "mine"])
case("replot", "metrics.json held_fixed=5", _metrics(lambda m: _set(m, "held_fixed", 5)),
     legit="replot derives the caption again from config.yaml", check=_redrawn)
for _label, _change in (
        ("no points", lambda p: p.pop("points")), ("points a list", lambda p: _set(
            p, "points", [1, 2])),
        ("a point's accuracies strings", lambda p: p["points"].update(
            {_first_point(p): ["98.1", 97.0]})),
        ("a point NaN", lambda p: p["points"].update({_first_point(p): [math.nan, 70.0]})),
        ("a point 101", lambda p: p["points"].update({_first_point(p): [101.0, 70.0]})),
        ("a point -1", lambda p: p["points"].update({_first_point(p): [-1.0, 70.0]})),
        ("a point empty", lambda p: p["points"].update({_first_point(p): []})),
        ("a point booleans", lambda p: p["points"].update({_first_point(p): [True, False]})),
        ("a point of 3 chips", lambda p: p["points"].update({_first_point(p): [
            *p["points"][_first_point(p)], sum(p["points"][_first_point(p)]) / 2]})),
        ("a point's chips shifted", lambda p: p["points"].update({_first_point(p): [
            a + 1.0 for a in p["points"][_first_point(p)]]})),
        ("a key not JSON", lambda p: p["points"].update({"adc_bits=4": [50.0, 50.0]})),
        ("a key not a list", lambda p: p["points"].update({'{"a": 1}': [50.0, 50.0]})),
        ("a sweep row's point missing", lambda p: p["points"].pop(_first_point(p))),
        ("a layer point changed", lambda p: p["points"].update(
            {'["layers", "features.0", "compressed"]': [10.0, 12.0]})),
        ("the every-layer reference point changed", lambda p: p["points"].update(
            {'["layers", "every", "compressed"]': [10.0, 12.0]})),
        ("the fingerprint of another study", lambda p: p["fingerprint"]["device"][
            "programming"].update(sigma=0.3)),
        ("no fingerprint", lambda p: p.pop("fingerprint"))):
    case("replot", f"study_points.json {_label}", _points(_change), ["study_points.json"])
case("replot", "study_points.json with a point of an earlier attempt",
     _points(lambda p: p["points"].update({'["sweep", "adc_bits", 2, "dense"]': [10.0, 11.0]})),
     legit="a resumed study keeps the points of earlier attempts; only metrics.json's rows "
     "are drawn", check=_redrawn)


# ------------------------------------------------------------------------------ the harness
def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _call(cli: str, argv: list, capsys) -> tuple[object, str]:
    capsys.readouterr()
    try:
        rc = run_cli(MAINS[cli], [str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - an exception run_cli lets through is a finding
        rc = "raised"
        return rc, capsys.readouterr().err + traceback.format_exc()
    return rc, capsys.readouterr().err


def _outcome(c: Case, rc: object, err: str, changed: list[str], d: Path,
             real: Real) -> tuple[str, str]:
    """(outcome, what is wrong) of one case."""
    if rc == "raised" or "Traceback" in err:
        return "raw", err[-1500:]
    if rc == 0:
        if c.legit is None:
            return "silent", f"exit 0: {err[-300:]!r}"
        problem = c.check(d, err, real) if c.check else None
        return ("legit", "") if problem is None else ("silent", problem)
    if c.legit is not None:
        return "refused", f"exit {rc} for a legitimate input ({c.legit}): {err[-500:]!r}"
    if rc not in (1, 2):
        return "raw", f"exit {rc}: {err[-500:]!r}"
    if len(re.findall(r"^(Error: |.*: error: )", err, re.MULTILINE)) != 1:
        return "raw", f"not one message: {err[-800:]!r}"
    missing = [w for w in c.words if w not in err]
    if missing:
        return "raw", f"does not name {missing}: {err[-600:]!r}"
    if changed:
        return "wrote", f"a refused run changed {changed[:5]}"
    return "clear", ""


def test_every_bad_input_of_the_side_clis_is_one_message_naming_it(real, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)  # a relative or empty path never reaches the repository
    counts = {cli: Counter() for cli in MAINS}
    named = Counter()  # legit partial sweeps: a broken or unfinished job left out and named
    problems = []
    for i, c in enumerate(CASES):
        d = tmp_path / f"case{i}"
        d.mkdir()
        argv = c.build(d, real)
        before = _snapshot(d)
        rc, err = _call(c.cli, argv, capsys)
        after = _snapshot(d)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        outcome, why = _outcome(c, rc, err, changed, d, real)
        counts[c.cli][outcome] += 1
        named[c.cli] += outcome == "legit" and c.legit == LEFT_OUT
        if outcome not in ("clear", "legit"):
            problems.append(f"[{outcome}] {c.cli}: {c.label}: {why}")
        if not ROOT_USER:
            for p in d.rglob("*"):
                if p.is_dir():
                    p.chmod(0o755)
        shutil.rmtree(d)
    with capsys.disabled():
        print("\nside-CLI fuzz:")
        for cli, n in counts.items():
            print(f"  {MODULES[cli]}: {sum(n.values())} inputs: "
                  + ", ".join(f"{k} {n[k]}" for k in ("clear", "legit", "raw", "silent"))
                  + "".join(f", {k} {v}" for k, v in n.items()
                            if k not in ("clear", "legit", "raw", "silent"))
                  + (f" (legit: {named[cli]} a sweep's unreadable or unfinished job left out "
                     "and named)" if named[cli] else ""))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])
    total = sum(sum(n.values()) for n in counts.values())
    assert total >= 150 and all(n["clear"] >= 40 for n in counts.values()), counts


def test_the_cases_are_all_different():
    labels = [(c.cli, c.label) for c in CASES]
    assert len(labels) == len(set(labels)), [x for x in labels if labels.count(x) > 1]


def test_debug_shows_the_traceback_of_each_cli(real, tmp_path, monkeypatch):
    """``--debug`` (or HYDRA_FULL_ERROR=1) lets the exception through, for each CLI."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for cli in MAINS:
        with pytest.raises((ValueError, OSError)):
            run_cli(MAINS[cli], [str(tmp_path / "nowhere"), "--debug"] if cli != "report"
                    else ["--plan", str(tmp_path / "nowhere.json"), "--config",
                          str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "o"),
                          "--debug"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(FileNotFoundError):
        run_cli(collect_main, [str(tmp_path / "nowhere")])


def test_end_to_end_no_traceback(real, tmp_path):
    """The same refusals in a fresh interpreter, as a user runs them: exit 1, one message
    naming the file, no traceback; the three run at once."""
    table = _table(tmp_path, "components: [1, 2\n")
    sweep = _sweep(tmp_path, real)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_bytes(b"a: [1, 2\n  b: {\n")
    study = _study_copy(tmp_path, real)
    _edit_json(study / "study_points.json",
               lambda p: p["points"].update({"adc_bits=4": [50.0, 50.0]}))
    runs = {
        "report": (["--run", _run_copy(tmp_path, real), "--no-plots", "--table", table],
                   "table.yaml"),
        "collect": ([sweep], "overrides.yaml"),
        "replot": ([study], "study_points.json"),
    }
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    procs = {cli: subprocess.Popen([sys.executable, "-m", MODULES[cli], *map(str, argv)],
                                   cwd=tmp_path, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for cli, (argv, _) in runs.items()}
    for cli, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (cli, out, err)
        assert "Traceback" not in err, (cli, err)
        assert len(re.findall(r"^Error: ", err, re.MULTILINE)) == 1, (cli, err)
        assert runs[cli][1] in err, (cli, err)
