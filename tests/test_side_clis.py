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
    ("memxbar.crossbar.report", ["--run", "{d}/nowhere"], "missing"),
    ("memxbar.crossbar.report", ["--run", "{d}/empty"], "missing"),
    ("memxbar.crossbar.report", ["--run", "{d}/run"],
     "--plan {d}/run/plan.json is not a mapping plan"),
    ("memxbar.crossbar.report", ["--plan", "{d}/text.json", "--config", "{d}/list.json", "--out",
                         "{d}/o"], "--plan {d}/text.json is not a mapping plan"),
    ("memxbar.crossbar.report", ["--plan", "{d}/nowhere.json", "--config", "{d}/list.json", "--out",
                         "{d}/o"], "--plan {d}/nowhere.json does not exist"),
    ("memxbar.crossbar.report", ["--plan"], "expected one argument"),
    ("memxbar.experiments.collect", ["{d}/nowhere"], "{d}/nowhere is not a directory"),
    ("memxbar.experiments.collect", ["{d}/empty"], "no readable metrics.json below {d}/empty"),
    ("memxbar.experiments.collect", ["{d}/text.json"], "is not a directory"),
    ("memxbar.experiments.replot", ["{d}/empty"],
     "lacks config.yaml, metrics.json, study_points.json"),
    ("memxbar.experiments.replot", ["{d}/nowhere"], "lacks config.yaml"),
    ("memxbar.experiments.replot", ["{d}/run", "--width", "wide"], "--width='wide' is invalid; "
                            "allowed: column (3.5 in), page (7.16 in) or a width in inches"),
    ("memxbar.experiments.replot", ["{d}/run", "--width", "nan"], "--width='nan' is invalid"),
    ("memxbar.experiments.replot", ["{d}/run", "--width", "0.2"], "--width='0.2' is invalid"),
    ("memxbar.experiments.replot", ["{d}/run", "--format", "svg", "jpg"],
     "--format='jpg' is invalid; allowed: pdf, svg, eps"),
    ("memxbar.experiments.replot", ["{d}/run", "--dpi", "20000"],
     "--dpi=20000 is invalid; allowed: an integer in [72, 1200]"),
    ("memxbar.experiments.replot", ["{d}/run", "--dpi", "many"], "invalid int value: 'many'"),
]


@pytest.mark.parametrize("module, args, words", CASES)
def test_a_bad_input_is_one_message_naming_it(files, module, args, words):
    out = _run(module, *[a.format(d=files) for a in args], cwd=files)
    assert out.returncode in (1, 2), out
    assert "Traceback" not in out.stderr, out.stderr
    assert words.format(d=files) in out.stderr, out.stderr


def test_debug_shows_the_traceback(files):
    out = _run("memxbar.experiments.collect", files / "nowhere", "--debug", cwd=files)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_collect_names_the_jobs_it_left_out(files, tmp_path):
    for job, done in (("0", True), ("1", False)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / "config.yaml").write_text("seed: 0\n")
        if done:
            (tmp_path / job / "metrics.json").write_text(json.dumps(
                {"crossbar_accuracy_mean": 90.0, "compression_ratio": 4.0}))
    out = _run("memxbar.experiments.collect", tmp_path, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "left out: 1 job(s)" in out.stderr and ": 1" in out.stderr
    assert (tmp_path / "collected_left_out.txt").read_text() == "1\n"
    assert (tmp_path / "collected.csv").read_text().count("\n") == 2  # header + the finished job


def _plan_files(d: Path) -> dict[str, Path]:
    """A valid two-layer plan and its crossbar settings, and one bad variant per hole the
    attack found in ``crossbar.report`` (issue 22, item 5)."""
    import copy

    import torch

    from memxbar.crossbar import CrossbarConfig, MappingPlan, plan_layer

    xbar = CrossbarConfig()
    plan = MappingPlan({n: plan_layer(n, "linear", torch.ones(o, i, dtype=torch.bool), xbar,
                                      mvms_per_sample=1)
                        for n, o, i in (("fc1", 40, 300), ("fc2", 10, 40))}).to_dict()
    (d / "xbar.json").write_text(json.dumps(xbar.to_dict()))
    variants = {
        "ok": lambda p: None,
        "duplicate layer": lambda p: p["layers"].append(copy.deepcopy(p["layers"][0])),
        "negative count": lambda p: p["layers"][0].update(mvms_per_sample=-5),
        "NaN count": lambda p: p["layers"][0].update(mvms_per_sample=float("nan")),
        "huge count": lambda p: p["layers"][0].update(mvms_per_sample=1e308),
        "boolean count": lambda p: p["layers"][0].update(mvms_per_sample=True),
        "no tiles": lambda p: p["layers"][0].update(tiles=[]),
        "no layers": lambda p: p.update(layers=[]),
        "huge layer": lambda p: p["layers"][0].update(in_features=100000,
                                                      out_features=100000),
        "repeated row": lambda p: p["layers"][0]["tiles"][0].update(rows=[0, 0, 1]),
        "float row": lambda p: p["layers"][0]["tiles"][0].update(rows=[0.0, 1.0]),
        "name not a string": lambda p: p["layers"][0].update(name=5),
    }
    out = {}
    for label, change in variants.items():
        p = copy.deepcopy(plan)
        change(p)
        out[label] = d / (label.replace(" ", "_") + ".json")
        out[label].write_text(json.dumps(p))
    return out


PLAN_HOLES = {
    "duplicate layer": "each layer once",
    "negative count": "mvms_per_sample=-5",
    "NaN count": "mvms_per_sample=nan",
    "huge count": "mvms_per_sample=1e+308",
    "boolean count": "mvms_per_sample=True",
    "no tiles": "at least one tile",
    "no layers": "a non-empty list of layer plans",
    "huge layer": "a matrix of at most",
    "repeated row": "each index once per tile",
    "float row": "integer indices",
    "name not a string": "a module name",
}


def test_report_refuses_plans_it_would_cost_wrongly(tmp_path, capsys):
    """Each plan the attack costed wrongly (a duplicate layer dropped, negative or non-finite
    energy, a layer with no tiles costed zero, a 1e5 x 1e5 layer killed for memory) is one
    message naming the layer and field; nothing is written. The valid plan is costed, with a
    cost.json that is strict JSON. (In-process through the CLI's own error wrapper; the
    subprocess path is covered by the cases above.)"""
    from memxbar.crossbar.io import run_cli
    from memxbar.crossbar.report import main

    plans = _plan_files(tmp_path)
    for label, words in PLAN_HOLES.items():
        code = run_cli(main, ["--plan", str(plans[label]), "--config",
                              str(tmp_path / "xbar.json"), "--out", str(tmp_path / label),
                              "--no-plots"])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err, (label, err)
        assert words in err and "--plan" in err, (label, err)
        assert not (tmp_path / label).exists(), label
    code = run_cli(main, ["--plan", str(plans["ok"]), "--config", str(tmp_path / "xbar.json"),
                          "--out", str(tmp_path / "ok"), "--no-plots"])
    assert code == 0, capsys.readouterr().err
    json.loads((tmp_path / "ok" / "cost.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"cost.json holds {c}"))


def test_report_refuses_run_together_with_plan(tmp_path):
    """``--plan`` was silently ignored when ``--run`` was given."""
    plans = _plan_files(tmp_path)
    for extra in (["--plan", plans["ok"]], ["--config", tmp_path / "xbar.json"]):
        out = _run("memxbar.crossbar.report", "--run", tmp_path, *extra, cwd=tmp_path)
        assert out.returncode == 2 and "either --run, or --plan and --config" in out.stderr


def test_the_dense_baseline_is_packed_from_the_shape_as_from_an_all_true_mask():
    """``dense_layer_plan`` (no [out, in] mask, so a large layer costs no memory) packs as
    ``plan_layer`` on an all-True mask, for linear, convolution row units and groups."""
    import torch

    from memxbar.crossbar import CrossbarConfig, plan_layer
    from memxbar.crossbar.plan import dense_layer_plan

    for xbar in (CrossbarConfig(), CrossbarConfig(tile_rows=32, tile_cols=16, mapping="offset")):
        for kind, out_f, in_f, unit, groups in (("linear", 300, 1000, 1, 1),
                                                ("conv2d", 64, 16 * 9, 9, 1),
                                                ("conv2d", 32, 4 * 25, 25, 4),
                                                ("conv1d", 12, 3 * 40, 40, 3)):
            want = plan_layer("l", kind, torch.ones(out_f, in_f, dtype=torch.bool), xbar,
                              kernel_size=unit, mvms_per_sample=7, groups=groups)
            sparse = plan_layer("l", kind, torch.rand(out_f, in_f) < 0.3, xbar,
                                kernel_size=unit, mvms_per_sample=7, groups=groups)
            assert dense_layer_plan(sparse, xbar) == want


def test_report_validate_prints_the_published_chips_and_refuses_other_options(tmp_path):
    out = _run("memxbar.crossbar.report", "--validate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "NeuRRAM" in out.stdout and "Hung et al. 2021" in out.stdout
    assert "1 MAC = 2 operations" in out.stdout
    out = _run("memxbar.crossbar.report", "--validate", "--out", tmp_path / "x", cwd=tmp_path)
    assert out.returncode == 2 and "allowed: --validate alone" in out.stderr
    assert not (tmp_path / "x").exists()


def test_collect_figures_carry_the_runs_settings_as_caption(tmp_path, monkeypatch):
    """Issue 25: the collected and Pareto figures say what was held fixed (the runs' own
    settings caption) and what was swept, like every other figure."""
    from memxbar.experiments import collect as collect_mod

    for job, adc, acc, energy in (("0", 4, 85.0, 5.0), ("1", 6, 94.0, 6.0)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(
            f"- crossbar.adc_bits={adc}\n")
        (tmp_path / job / "config.yaml").write_text("seed: 0\n")
        (tmp_path / job / "metrics.json").write_text(json.dumps(
            {"crossbar_accuracy_mean": acc, "crossbar_accuracy_ci95": 0.5,
             "compression_ratio": 4.0, "energy_nJ": energy, "area_mm2": 0.02,
             "settings_caption": "Run settings: lenet5 on digits; 4-bit ADC."}))
    drawn = []
    monkeypatch.setattr(collect_mod, "caption", lambda fig, text: drawn.append(text))
    monkeypatch.setattr(collect_mod, "plot_pareto",
                        lambda rows, labels, path, costs, note: drawn.append(note))
    collect_mod.collect(tmp_path)
    assert len(drawn) == 2, drawn  # collected_crossbar.adc_bits.png and the Pareto front
    for text in drawn:
        assert "Held fixed unless swept: lenet5 on digits; 4-bit ADC. Swept: adc_bits " \
               "(2 runs)." in text, text
    assert drawn[1].startswith("Point labels: adc_bits. ")
