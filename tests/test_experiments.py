"""Hydra experiments: config composition (compose API, launchers included), validation, the
compress pipeline and device study end to end on digits, a CIFAR-shaped smoke run of the paper's
VGG-16 / ResNet-18 configs, and collect."""

import io
import json
import logging
import math
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from memxbar import crossbar
from memxbar.crossbar import MappingPlan
from memxbar.experiments.collect import collect_rows
from memxbar.experiments.collect import main as collect_main
from memxbar.experiments.conf_source import CONF_DIR
from memxbar.experiments.config import load_compress_config, load_study_config
from memxbar.experiments.pipeline import run_compress
from memxbar.experiments.study import run_device_study

ROOT = Path(__file__).resolve().parents[1]
TINY_ADMM = ["admm.prune_epochs=1", "admm.prune_retrain_epochs=1", "admm.quant_epochs=1",
             "admm.quant_retrain_epochs=1", "admm.update_every=5"]
TINY = ["train.epochs=2", "eval.chips=2", "eval.test_subset=120", "eval.calibration_samples=64",
        "runtime.progress=false", "runtime.threads=1", *TINY_ADMM]
METRIC_KEYS = {
    "dense_accuracy", "compressed_accuracy", "crossbar_ideal_accuracy", "crossbar_accuracy_mean",
    "crossbar_accuracy_std", "crossbar_accuracies", "compression_ratio", "dense_weights",
    "mapped_weights", "tiles", "baseline_tiles", "area_mm2", "energy_nJ", "power_mW",
    "area_reduction_pct", "energy_reduction_pct", "power_reduction_pct", "accuracy_drop_ideal",
    "accuracy_drop_mean", "timings_s", "programming", "device", "crossbar",
}


def _compose(overrides=(), name="config", hydra=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)


# --------------------------------------------------------------------------- composition
@pytest.mark.parametrize("experiment", ["mnist_lenet5", "cifar10_vgg16", "cifar10_resnet18"])
def test_experiment_configs_compose_and_validate(experiment):
    exp = load_compress_config(_compose([f"+experiment={experiment}"]))
    assert exp.model.name == experiment.split("_")[1]
    assert exp.admm.levels == 16 and exp.runtime.device in ("auto", "cpu")
    if experiment == "mnist_lenet5":
        assert exp.dataset.name == "mnist" and exp.eval.chips == 25  # issue 14
        faults = exp.device.faults
        assert exp.device.programming.sigma == 0.1
        assert faults.sa0_rate + faults.sa1_rate == 0.005
        assert exp.device.level_count == 16
        assert exp.device.read_noise.sigma == 0.02  # issue 19: read noise per MVM
        a = exp.allocation  # issue 19: a budget, not hand-set rates
        assert a.max_drop == 1.0 and a.budget is None and a.candidates == "auto"
        assert exp.admm.constraints == [{"pattern": "*"}]


def test_default_and_study_configs_validate():
    exp = load_compress_config(_compose())
    assert (exp.dataset.name, exp.model.name, exp.device.level_count) == ("digits", "lenet5", 16)
    study = load_study_config(_compose(name="device_study"))
    assert {"prog_sigma", "read_sigma", "sa_rate", "adc_bits", "n_levels"} <= set(
        study.study.sweeps)


def test_device_preset_group_and_override():
    exp = load_compress_config(_compose(["device=rram_neurosim", "admm.levels=4",
                                         "device.read_noise={model: relative, sigma: 0.02}"]))
    assert exp.device.level_count == 4 and exp.device.read_noise.sigma == 0.02
    # admm.levels follows the device (interpolated), and an explicit value must fit it
    # (16 levels cannot live on 4-level cells)
    assert load_compress_config(_compose(["device=rram_neurosim"])).admm.levels == 4
    assert load_compress_config(_compose(["device=pcm_aihwkit"])).admm.levels is None
    assert load_compress_config(_compose(["device.n_levels=8"])).admm.levels == 8
    with pytest.raises(ValueError, match=r"admm.levels=16 is invalid; allowed: 4"):
        load_compress_config(_compose(["device=rram_neurosim", "admm.levels=16"]))
    exp = load_compress_config(_compose(["admm.levels=6"]))  # 6-level grid within 16 levels
    assert exp.admm.levels == 6


def test_slurm_launcher_composes():
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.timeout_min == 720 and "submitit" in launcher.submitit_folder


def test_local_launcher_composes():
    cfg = _compose(["hydra/launcher=local", "hydra.launcher.n_jobs=4"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith("joblib_launcher.JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 4


@pytest.mark.parametrize("override, words", [
    ("device.programming.sigma=-0.1", ["device.programming.sigma=-0.1", "[0.0, 3.0]"]),
    ("crossbar.adc_bits=40", ["crossbar.adc_bits=40", "[1, 24]"]),
    ("+train.foo=1", ["train.foo=1", "epochs"]),
    ("train.epochs=many", ["train.epochs='many'", "int"]),
    ("eval.chips=0", ["eval.chips=0", "[1, 10000]"]),
    ("admm.lr=-1", ["admm.lr=-1", "(0, 10]"]),
    ("runtime.device=tpu", ["runtime.device='tpu'", "cuda"]),
    ("dataset.batch_size=0", ["dataset.batch_size=0", ">= 1"]),
    ("+cost.foo=2", ["cost", "foo"]),
    ("+bogus=1", ["bogus=1", "top-level"]),
    ("model.name=alexnet", ["model.name='alexnet'", "lenet5"]),
])
def test_validation_names_key_value_and_range(override, words):
    with pytest.raises(ValueError) as info:
        load_compress_config(_compose([override]))
    for word in words:
        assert word in str(info.value)


def test_study_validation():
    with pytest.raises(ValueError, match="study.sweeps.bogus"):
        load_study_config(_compose(["+study.sweeps.bogus=[1]"], name="device_study"))


def test_entry_point_prints_config():
    out = subprocess.run([sys.executable, "-m", "memxbar.experiments.compress", "--cfg", "job",
                          "+experiment=mnist_lenet5"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "name: mnist" in out and "max_drop: 1.0" in out and "pattern: '*'" in out


# ------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def digits_logged(tmp_path_factory):
    """The tiny compress run on digits, made once for the tests that read it: its folder, its
    metrics and its log (INFO and up, the messages as caplog holds them)."""
    run_dir = tmp_path_factory.mktemp("compress")
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        metrics = run_compress(_compose(TINY), run_dir)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return run_dir, metrics, log.getvalue()


@pytest.fixture(scope="module")
def digits_run(digits_logged):
    run_dir, metrics, _ = digits_logged
    return run_dir, metrics


def test_progress_bars_do_not_change_results(digits_run, tmp_path):
    """``runtime.progress`` is display only: bars on give the same metrics as bars off (the
    fixture), so the interactive path is the tested one too (issue 19)."""
    _, metrics = digits_run
    shown = run_compress(_compose(TINY + ["runtime.progress=true"]), tmp_path)
    for key in ("dense_accuracy", "compressed_accuracy", "crossbar_ideal_accuracy",
                "crossbar_accuracies", "compression_ratio", "tiles", "energy_nJ"):
        assert shown[key] == metrics[key], key


def test_runs_log_stages_epochs_and_a_summary(digits_logged):
    _, _, text = digits_logged
    for needle in ("stage pretrain: started", "stage pretrain: done in", "pretrain epoch 2/2",
                   "prune epoch 1/", "stage cost: done", "result: dense"):
        assert needle in text, needle


def test_compress_outputs(digits_run):
    run_dir, metrics = digits_run
    assert METRIC_KEYS <= set(metrics)
    assert metrics["programming"]["pulses_per_cell"] == 1.0  # single-shot programming
    total = metrics["programming_total"]  # every chip of the run
    assert total["pulses"] == pytest.approx(metrics["programming"]["pulses"] * metrics["chips"])
    assert metrics["chip_test"]["mode"] == "full" and metrics["chip_test"]["workers"] == 1
    assert metrics["device"]["programming"]["model"] == "lognormal"
    report = (run_dir / "report.md").read_text()
    assert f"all {metrics['chips']} chips of this run" in report
    assert "## Programming a chip" in report and "programming: lognormal(sigma=" in report
    env = metrics["environment"]
    assert env["torch"] == torch.__version__ and env["torch_device"] == "cpu"
    assert env["memxbar"] and env["python"].count(".") == 2
    assert metrics["crossbar"]["tile_rows"] == 128 and metrics["crossbar"]["mapping"]
    assert "| tile_rows | 128 |" in report and f"- torch: {torch.__version__}" in report
    assert json.loads((run_dir / "metrics.json").read_text()).keys() == metrics.keys()
    caption = metrics["settings_caption"]  # under the run's figures
    assert caption.startswith("Run settings: lenet5 on digits") and "2 programmed chips," in caption
    for name in ("report.md", "chip_accuracy.png", "stage_accuracy.png", "config.yaml",
                 "cost/report.md", "cost/cost.json", "cost/tiles_per_layer.png"):
        assert (run_dir / name).is_file(), name
    plan = MappingPlan.load(run_dir / "plan.json")
    assert metrics["compression_ratio"] == pytest.approx(plan.dense_weights / plan.mapped_weights)
    assert metrics["compression_ratio"] > 1 and metrics["tiles"] == plan.n_tiles
    assert len(metrics["crossbar_accuracies"]) == 2 and metrics["crossbar_test_samples"] == 120
    assert 0 <= metrics["crossbar_accuracy_mean"] <= 100
    for name in ("dense.pt", "compressed.pt", "admm_state.pt"):
        torch.load(run_dir / name, weights_only=True)
    compressed = torch.load(run_dir / "compressed.pt", weights_only=True)
    assert set(compressed["masks"]) <= {p.name for p in plan}
    report = (run_dir / "report.md").read_text()
    assert "compression" in report.lower() and "chip_accuracy.png" in report
    assert "Array model: ideal (no wire resistance)." in report
    y = metrics["yield"]  # issue 24: chips within the default spec (1 point below dense)
    floor = metrics["dense_accuracy"] - 1.0
    assert y["min_accuracy"] == pytest.approx(floor) and y["chips"] == 2
    assert y["passed"] == sum(a >= floor for a in metrics["crossbar_accuracies"])
    assert y["ci_low_pct"] <= y["yield_pct"] <= y["ci_high_pct"] and "## Yield" in report
    steps = metrics["cost_attribution"]  # issue 23: where the reduction comes from
    assert [s["step"] for s in steps][:3] == ["baseline", "weight precision", "pruning"]
    assert sum(s["area_change_pct"] for s in steps) == pytest.approx(
        -metrics["area_reduction_pct"], abs=1e-6)
    assert "| pruning | the design's pruned plan" in report
    r = metrics["cost_ranges"]  # issue 23: low / typical / high from other sources
    lo, hi = r["energy_reduction_pct"]
    assert lo < metrics["energy_reduction_pct"] < hi and "| energy (nJ) |" in report
    assert f"{lo:.1f}-{hi:.1f}%" in report
    cost = json.loads((run_dir / "cost" / "cost.json").read_text())
    act = cost["array_activity"]  # V^2 G t measured on the first chip
    assert set(act) == {p.name for p in plan} and all(0 < a["activity"] < 1 for a in act.values())
    assert "array activity" in (run_dir / "cost" / "report.md").read_text()


def test_data_dependent_cost_on_a_finished_run(digits_run, tmp_path, caplog):
    """``cost.data_dependent=true`` on a finished run: the design is priced with its
    measured zero inputs and array activity, the baseline is unchanged, and the attribution
    ends with the measured step."""
    run_dir, metrics = digits_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with caplog.at_level("INFO"):
        again = run_compress(_compose(TINY + ["resume=true", "cost.data_dependent=true"]), copy)
    assert "compression skipped" in caplog.text
    assert again["baseline_energy_nJ"] == metrics["baseline_energy_nJ"]
    assert again["energy_nJ"] < metrics["energy_nJ"]
    steps = again["cost_attribution"]
    assert steps[-1]["step"] == "measured activity"
    assert sum(s["energy_change_pct"] for s in steps) == pytest.approx(
        -again["energy_reduction_pct"], abs=1e-6)
    assert "the estimate skips the zero inputs" in (copy / "cost" / "report.md").read_text()


def test_wires_option_reevaluates_a_finished_run(tmp_path, caplog):
    """``crossbar=wires`` on a finished run (resume): only evaluation and cost run again, on
    chips with wire resistance, and the report names the array model. (Hardware-aware
    retraining off: with it on, the compressed model depends on the crossbar and resuming
    with another one is refused.)"""
    copy = tmp_path / "run"
    plain = TINY + ["robustness.hardware_aware=false"]
    metrics = run_compress(_compose(plain), copy)
    with caplog.at_level("INFO"):
        again = run_compress(_compose(plain + ["resume=true", "crossbar=wires"]), copy)
    assert "compression skipped" in caplog.text
    assert again["compressed_accuracy"] == metrics["compressed_accuracy"]
    assert again["crossbar"]["array"] == {"model": "wire_resistance", "r_row_ohm": 1.9,
                                          "r_col_ohm": 5.6, "r_driver_ohm": 0.0,
                                          "r_sense_ohm": 0.0, "read_voltage_V": 0.2,
                                          "placement": "near"}
    report = (copy / "report.md").read_text()
    assert "Array model: model=wire_resistance, r_row_ohm=1.9, r_col_ohm=5.6" in report


def test_compress_resumes_from_artifacts(digits_run):
    run_dir, metrics = digits_run
    again = run_compress(_compose(TINY + ["resume=true"]), run_dir)  # checkpoints reused
    for key in ("dense_accuracy", "compressed_accuracy", "compression_ratio",
                "crossbar_accuracies"):
        assert again[key] == metrics[key]


def test_device_study_from_compress_run(digits_run, tmp_path):
    run_dir, _ = digits_run
    cfg = _compose(TINY + [f"study.source={run_dir}", "~study.sweeps",
                           "+study.sweeps={prog_sigma: [0.0, 0.2], adc_bits: [4, null]}"],
                   name="device_study")
    metrics = run_device_study(cfg, tmp_path)
    rows = metrics["study"]
    assert {(r["setting"], r["model"]) for r in rows} == {
        (s, m) for s in ("prog_sigma", "adc_bits") for m in ("dense", "compressed")}
    assert all(r["chips"] == 2 for r in rows)
    for r in rows:  # 95 % CI of the mean of 2 chips: t(0.975, 1) * stdev / sqrt(2), with
        # "std" the sample stdev over chips (n - 1), the one the CI uses
        assert r["ci95"] == pytest.approx(12.7062 / math.sqrt(2) * r["std"], rel=1e-4)
    for name in ("study.csv", "study.json", "study.md", "study_prog_sigma.png",
                 "study_prog_sigma.pdf", "study_adc_bits.png", "study_adc_bits_chips.png",
                 "study_adc_bits_chips.pdf", "grid_prog_sigma_adc_bits.png",
                 "grid_prog_sigma_adc_bits.pdf", "layer_sensitivity.png", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert len((tmp_path / "study.csv").read_text().strip().splitlines()) == 1 + 8 * 2
    # the default grid: 4 x 3 points per model, each over the chips
    grid = metrics["grids"]
    assert len(grid) == 4 * 3 * 2 and all(len(g["accuracies"]) == 2 for g in grid)
    ideal = [g for g in grid if g["x"] == 0.0 and g["y"] == 8 and g["model"] == "compressed"]
    worst = [g for g in grid if g["x"] == 0.2 and g["y"] == 4 and g["model"] == "compressed"]
    assert ideal[0]["mean"] > worst[0]["mean"]
    # per-layer sensitivity: every mapped layer once, with the all/none references
    layers = [r["layer"] for r in metrics["layer_sensitivity"]]
    assert layers == list(MappingPlan.load(run_dir / "plan.json").layers)
    ref = metrics["layer_sensitivity_reference"]
    assert set(ref) == {"every layer non-ideal (compressed)", "ideal devices (compressed)"}
    # ranked on a device harsh enough: the mildest factor tried whose drop reaches the target
    sev = metrics["layer_sensitivity_severity"]
    reached = [t for t in sev["tried"] if t["drop"] >= sev["target_drop"]]
    assert sev["target_drop"] == 5.0 and sev["factor"] == min(
        (t["factor"] for t in reached), default=sev["tried"][-1]["factor"])
    every = ref["every layer non-ideal (compressed)"][0]
    assert [t for t in sev["tried"] if t["factor"] == sev["factor"]][0]["mean"] == every
    assert "Held fixed unless swept" in metrics["held_fixed"]
    assert "2 programmed chips per point" in metrics["held_fixed"]
    md = (tmp_path / "study.md").read_text()
    assert "Per-layer sensitivity" in md and "grid_prog_sigma_adc_bits.png" in md
    # issue 24: the yield of every swept point against the spec, and its figure per setting
    yields = metrics["study_yield"]
    assert len(yields) == len(metrics["study"]) and "at most 1 point below dense" in \
        metrics["yield_spec"]
    for y, r in zip(yields, metrics["study"], strict=True):
        assert (y["setting"], y["value"], y["model"]) == (r["setting"], r["value"], r["model"])
        assert y["chips"] == 2 and y["ci_low_pct"] <= y["yield_pct"] <= y["ci_high_pct"]
    assert (tmp_path / "study_prog_sigma_yield.png").is_file()
    assert "study_adc_bits_yield.png" in md
    # the figures and study.md are redrawn from the files alone, the same
    from memxbar.experiments.replot import main as replot_main

    for name in ("study.md", "grid_prog_sigma_adc_bits.png", "layer_sensitivity.png"):
        (tmp_path / name).unlink()
    assert replot_main([str(tmp_path)]) == 0
    assert (tmp_path / "study.md").read_text() == md
    assert (tmp_path / "grid_prog_sigma_adc_bits.png").is_file()
    assert (tmp_path / "layer_sensitivity.pdf").is_file()
    # for a paper (issue 25): column width, SVG beside the PDF, the caption in a text file
    from PIL import Image

    wide = Image.open(tmp_path / "layer_sensitivity.png").size[0]
    assert replot_main([str(tmp_path), "--width", "column", "--format", "pdf", "svg",
                        "--dpi", "300", "--no-caption"]) == 0
    assert Image.open(tmp_path / "layer_sensitivity.png").size[0] < 0.8 * wide
    assert (tmp_path / "layer_sensitivity.svg").read_text().lstrip().startswith("<?xml")
    assert b"/Type3" not in (tmp_path / "layer_sensitivity.pdf").read_bytes()
    assert (tmp_path / "layer_sensitivity.caption.txt").read_text().startswith(
        "Held fixed unless swept")
    # files that do not belong together, or accuracies that are not numbers: refused (issue 22)
    saved = (tmp_path / "study_points.json").read_text()
    points = json.loads(saved)
    key = next(iter(points["points"]))
    for bad, words in ((["98.1", 97.0], "allowed: a non-empty list of accuracies"),
                       ([v + 1.0 for v in points["points"][key]], "average")):
        (tmp_path / "study_points.json").write_text(json.dumps(
            {**points, "points": {**points["points"], key: bad}}))
        with pytest.raises(ValueError, match=words):
            replot_main([str(tmp_path)])
    (tmp_path / "study_points.json").write_text(saved)


@pytest.mark.parametrize("override, words", [
    ("train.epochs=3", "was made with train="),
    ("compressor=magnitude", "was made with compressor='admm', this study has "
                             "compressor='magnitude'"),
    ("model.name=mlp", "was made with model="),
])
def test_a_study_source_made_with_other_settings_is_refused(digits_run, tmp_path, override,
                                                            words):
    """Issue 22: ``study.source`` is checked against the study's own model, data, pretraining
    and compressor before any work (the device may differ: that is what a study varies)."""
    run_dir, _ = digits_run
    base = TINY + [f"study.source={run_dir}", "study.models=[compressed]", "study.grids=[]",
                   "~study.sweeps", "+study.sweeps={adc_bits: [6]}"]
    extra = ["admm=mlp_digits"] if override.startswith("model") else []
    with pytest.raises(ValueError, match=re.escape(words)):
        run_device_study(_compose(base + [override, *extra], name="device_study"),
                         tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_device_study_sweeps_drift_time_and_cell_model_fields(digits_run, tmp_path):
    """t_inference_s (log x-axis) and an <effect>.<field> key sweep a drifting device; the
    same compressed model is evaluated at every point."""
    from memxbar.experiments.plots import log_axis

    run_dir, _ = digits_run
    base = TINY + [f"study.source={run_dir}", "device=pcm_aihwkit", "~study.sweeps",
                   "+study.sweeps={t_inference_s: [0, 3600, 1000000], drift.scale: [0.0, 2.0]}",
                   "study.models=[compressed]", "study.layer_sensitivity=false"]
    # the default grid sweeps the lognormal prog_sigma: refused before any work, saying how
    # to drop it
    with pytest.raises(ValueError, match=r"study.grids point.*prog_sigma.*study.grids=\[\]"):
        run_device_study(_compose(base, name="device_study"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    cfg = _compose(base + ["study.grids=[{t_inference_s: [0, 1000000], "
                           "drift_compensation: [false, true]}]"], name="device_study")
    metrics = run_device_study(cfg, tmp_path)
    rows = metrics["study"]
    grid = {(g["x"], g["y"]): g["mean"] for g in metrics["grids"]}
    assert set(grid) == {(t, c) for t in (0, 1000000) for c in (False, True)}
    # global drift compensation wins back most of what PCM drift costs after 11 days
    assert grid[(1000000, True)] > grid[(1000000, False)]
    assert (tmp_path / "grid_t_inference_s_drift_compensation.pdf").is_file()
    by_time = {r["value"]: r["mean"] for r in rows if r["setting"] == "t_inference_s"}
    assert set(by_time) == {0, 3600, 1000000}
    assert by_time[1000000] < by_time[0]  # a month and a half of PCM drift costs accuracy
    assert (tmp_path / "study_t_inference_s.png").is_file()
    assert (tmp_path / "study_drift.scale.png").is_file()
    assert log_axis("t_inference_s", [0, 3600]) and not log_axis("adc_bits", [4, 8])
    with pytest.raises(ValueError, match="study.sweeps.drift.speed"):
        run_device_study(_compose(TINY + [f"study.source={run_dir}", "device=pcm_aihwkit",
                                          "~study.sweeps", "+study.sweeps={drift.speed: [1]}",
                                          "study.grids=[]"],
                                  name="device_study"), tmp_path / "bad")


def test_device_group_takes_cell_models_and_new_periphery_keys():
    exp = load_compress_config(_compose([
        "device=rram_cmo", "device.t_inference_s=86400", "device.programming.scale=2.0",
        "device.write_verify={tolerance_uS: 0.5, max_pulses: 10}",
        "crossbar.drift_compensation=true", "crossbar.adc_noise=0.01", "admm.levels=null"]))
    assert exp.device.t_inference_s == 86400 and exp.device.programming.scale == 2.0
    assert exp.device.programming.coeffs_uS[0] > 0  # the preset's fit is kept
    assert exp.device.write_verify.max_pulses == 10 and exp.crossbar.drift_compensation
    with pytest.raises(ValueError, match="device.drift.model='linear'"):
        load_compress_config(_compose(["device.drift={model: linear}"]))


@pytest.mark.parametrize("name", sorted({p.stem for p in (CONF_DIR / "device").glob("*.yaml")}
                                         | set(crossbar.PRESETS)))
def test_every_device_field_overrides_without_plus(name):
    """Each device option (a file, or a preset registered from Python) lists every DeviceModel
    field, so a plain ``device.<field>=...`` works for every device choice; a preset's option
    equals its preset."""
    cfg = _compose([f"device={name}", "admm.levels=null"])
    assert set(crossbar.device.FIELDS) <= set(cfg.device)
    base = load_compress_config(cfg).device
    if name in crossbar.PRESETS:
        assert base == crossbar.DeviceModel.preset(name)
    exp = load_compress_config(_compose([f"device={name}", "admm.levels=null",
                                         "device.g_max_uS=300", "device.t_inference_s=60"]))
    assert exp.device.g_max_uS == 300 and exp.device.t_inference_s == 60
    if base.programming is not None and base.programming.name in ("lognormal", "gaussian"):
        sigma = load_compress_config(_compose([f"device={name}", "admm.levels=null",
                                               "device.programming.sigma=0.07"])).device
        assert sigma.programming.sigma == 0.07
    with pytest.raises(ValueError, match="device.prog_sigma=0.07 is invalid"):  # no shorthands
        load_compress_config(_compose([f"device={name}", "admm.levels=null",
                                       "+device.prog_sigma=0.07"]))


def test_wire_resistance_from_hydra_and_as_a_study_axis():
    from memxbar.experiments.config import load_study_config
    from memxbar.experiments.study import study_settings

    exp = load_compress_config(_compose(
        ["crossbar.array={model: wire_resistance, r_row_ohm: 2.0, r_col_ohm: 3.0}"]))
    assert exp.crossbar.array.r_row_ohm == 2.0 and exp.crossbar.array.r_col_ohm == 3.0
    with pytest.raises(ValueError, match="crossbar.array.r_row_ohm=-2"):
        load_compress_config(_compose(["crossbar.array={model: wire_resistance, "
                                       "r_row_ohm: -2.0}"]))
    study = load_study_config(_compose(["~study.sweeps",
                                        "+study.sweeps={r_wire_ohm: [0.0, 1.0, 10.0]}"],
                                       name="device_study"))
    _, xbar, _ = study_settings(study.device, study.crossbar, study.robustness, "r_wire_ohm",
                                10.0)
    assert xbar.array.r_row_ohm == xbar.array.r_col_ohm == 10.0
    assert xbar.array.r_driver_ohm == 0.0
    _, xbar, _ = study_settings(study.device, xbar, study.robustness, "array.r_sense_ohm", 50.0)
    assert xbar.array.r_sense_ohm == 50.0 and xbar.array.r_row_ohm == 10.0


def test_time_sweep_on_a_device_without_drift_is_warned(tmp_path, caplog):
    cfg = _compose(TINY + ["~study.sweeps", "+study.sweeps={t_inference_s: [0.0, 3600.0], "
                           "r_wire_ohm: [-3.0]}"], name="device_study")
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="r_wire_ohm"):
        run_device_study(cfg, tmp_path / "study")
    assert "sweeps t_inference_s on a device with no drift model" in caplog.text
    caplog.clear()
    cfg = _compose(TINY + ["device=pcm_aihwkit", "admm.levels=null", "~study.sweeps",
                           "+study.sweeps={t_inference_s: [0.0, 3600.0], r_wire_ohm: [-3.0]}"],
                   name="device_study")
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="r_wire_ohm"):
        run_device_study(cfg, tmp_path / "study")
    assert "no drift model" not in caplog.text


def test_bad_sweep_values_fail_before_any_work(tmp_path):
    """A sweep point that cannot be built fails before training, and writes nothing."""
    run_dir = tmp_path / "study"
    cfg = _compose(TINY + ["~study.sweeps", "+study.sweeps={r_wire_ohm: [1.0, -3.0]}"],
                   name="device_study")
    with pytest.raises(ValueError, match=r"study.sweeps.r_wire_ohm.*r_row_ohm=-3.0"):
        run_device_study(cfg, run_dir)
    assert not run_dir.exists()


# ---------------------------------------------------------------------------- CIFAR smoke
def _fake_cifar(root: Path, n: int = 8) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.parametrize("experiment", ["cifar10_vgg16", "cifar10_resnet18"])
def test_cifar_configs_smoke(experiment, tmp_path):
    _fake_cifar(tmp_path / "data")
    overrides = [f"+experiment={experiment}", f"dataset.data_dir={tmp_path / 'data'}",
                 "dataset.verify=false", "dataset.subset=8", "dataset.batch_size=4",
                 "dataset.test_batch_size=4", "dataset.test_subset=4", "train.epochs=1",
                 "train.lr=0.01", "eval.chips=1", "eval.test_subset=4",
                 "eval.calibration_samples=4", "runtime.device=cpu", "runtime.threads=1",
                 "runtime.progress=false", *TINY_ADMM, "admm.update_every=1",
                 # exact level projection of the 14.7M / 11.2M conv weights takes minutes on
                 # CPU: quantize only the first and last layer here (the digits run covers all)
                 "admm.levels=null", "+admm.constraints.0.levels=16",
                 "+admm.constraints.2.levels=16", "robustness.ablation=false"]
    metrics = run_compress(_compose(overrides), tmp_path / "run")
    assert METRIC_KEYS <= set(metrics) and metrics["compression_ratio"] > 5
    assert (tmp_path / "run" / "report.md").is_file()


# ------------------------------------------------------------------------------- collect
def _fake_run(root: Path, num: int, sigma: float, acc: float, **extra) -> None:
    run = root / str(num)
    (run / ".hydra").mkdir(parents=True)
    overrides = [f"device.programming.sigma={sigma}", "hydra/launcher=local"]
    if "adc_bits" in extra:
        overrides.append(f"crossbar.adc_bits={extra.pop('adc_bits')}")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "metrics.json").write_text(json.dumps({
        "crossbar_accuracy_mean": acc, "crossbar_accuracy_std": 0.5,
        "crossbar_accuracy_ci95": 0.3, "compression_ratio": 30.0,
        "crossbar_accuracies": [acc], "timings_s": {"admm": 1.0}, **extra}))


def test_collect_two_runs(tmp_path, capsys):
    _fake_run(tmp_path, 0, 0.0, 98.0)
    _fake_run(tmp_path, 1, 0.1, 96.5)
    assert collect_main([str(tmp_path)]) == 0
    assert "collected.csv" in capsys.readouterr().out
    rows = collect_rows(tmp_path)
    assert [r["override.device.programming.sigma"] for r in rows] == [0.0, 0.1]
    assert rows[1]["crossbar_accuracy_mean"] == 96.5 and rows[0]["timings_s.admm"] == 1.0
    assert "crossbar_accuracies" not in rows[0]
    text = (tmp_path / "collected.csv").read_text().splitlines()
    assert len(text) == 3 and "override.device.programming.sigma" in text[0]
    assert (tmp_path / "collected_device.programming.sigma.png").is_file()


def test_collect_plots_only_metrics_that_vary(tmp_path, monkeypatch):
    """compression_ratio is 30 in both runs: not plotted; accuracy varies: plotted, with a
    labelled axis."""
    import matplotlib.pyplot as plt

    from memxbar.experiments import collect as collect_module

    _fake_run(tmp_path, 0, 0.0, 98.0)
    _fake_run(tmp_path, 1, 0.1, 96.5)
    figures = []
    monkeypatch.setattr(collect_module, "write_png", lambda path, fig: figures.append(fig))
    collect_module.plot_rows(collect_rows(tmp_path), tmp_path)
    assert len(figures) == 1
    axes = figures[0].axes
    assert [ax.get_ylabel() for ax in axes] == ["accuracy on chips (%, mean, 95 % CI)"]
    assert axes[0].get_xlabel() == "programming variation (lognormal sigma of G)"
    plt.close(figures[0])


def test_collect_draws_the_pareto_front_of_design_points(tmp_path, monkeypatch):
    from memxbar.experiments import collect as collect_module
    from memxbar.experiments import plots
    from memxbar.experiments.plots import pareto_front

    # (energy, accuracy): B beats A on both, D is dominated by C
    points = {"A": (5.0, 95.0), "B": (4.0, 96.0), "C": (8.0, 98.0), "D": (9.0, 97.0),
              "E": (2.0, 90.0)}
    for i, (energy, acc) in enumerate(points.values()):
        _fake_run(tmp_path, i, 0.05, acc, adc_bits=4 + i, energy_nJ=energy, area_mm2=1.0 + i)
    rows = collect_rows(tmp_path)
    pts = [(r["energy_nJ"], r["crossbar_accuracy_mean"]) for r in rows]
    front = pareto_front(pts)
    brute = [i for i, (e, a) in enumerate(pts)  # no other point at most as costly and better
             if not any(e2 <= e and a2 >= a and (e2, a2) != (e, a) for e2, a2 in pts)]
    assert sorted(front) == sorted(brute) == [1, 2, 4]
    figures = []
    for module in (collect_module, plots):
        monkeypatch.setattr(module, "write_png",
                            lambda path, fig: figures.append((path.name, fig)))
    collect_module.plot_rows(rows, tmp_path)
    assert "collected_pareto.png" in [name for name, _ in figures]
    fig = dict(figures)["collected_pareto.png"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["energy per inference (nJ)",
                                                    "chip area (mm2)"]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "5" in texts  # each point labelled by what varies (values; keys in the caption)
    assert any("Point labels: adc_bits" in t.get_text() for t in fig.texts)
    monkeypatch.undo()
    collect_module.collect(tmp_path)
    assert (tmp_path / "collected_pareto.pdf").is_file()


def test_collect_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no readable metrics.json"):
        collect_rows(tmp_path)


# ---------------------------------------------------------------------- model cache (issue 13)
def test_device_only_change_reuses_the_cached_models(tmp_path, caplog):
    cache = tmp_path / "cache"
    base = TINY + [f"runtime.cache_dir={cache}", "robustness.hardware_aware=false",
                   "robustness.ablation=false"]
    first = run_compress(_compose(base), tmp_path / "a")
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.pt")) == ["compressed", "dense"]
    caplog.clear()
    with caplog.at_level("INFO"):
        second = run_compress(_compose(base + ["device.programming.sigma=0.2",
                                               "crossbar.adc_bits=6"]), tmp_path / "b")
    text = caplog.text
    assert "dense model reused from the cache" in text
    assert "compressed model reused from the cache" in text
    assert second["compressed_accuracy"] == first["compressed_accuracy"]
    assert second["device"]["programming"] != first["device"]["programming"]
    assert "pretrain" not in " ".join(r.message for r in caplog.records
                                      if "epoch" in r.message)  # nothing trained again
    # hardware-aware retraining reads the device: a device change recompresses
    caplog.clear()
    with caplog.at_level("INFO"):
        run_compress(_compose(TINY + [f"runtime.cache_dir={cache}", "robustness.ablation=false",
                                      "device.programming.sigma=0.3"]), tmp_path / "c")
    assert "dense model reused" in caplog.text
    assert "compressed model reused" not in caplog.text
    assert len(list(cache.glob("compressed-*.pt"))) == 2


# ------------------------------------------------------------ per-layer mapping (issue 13)
def test_layers_section_keeps_layers_digital_and_sets_per_layer_devices(tmp_path):
    overrides = TINY + ["robustness.ablation=false", "+layers.digital=[classifier.4]",
                        "+layers.devices={features.0: {programming: {model: lognormal, "
                        "sigma: 0.0}, faults: null}}"]
    metrics = run_compress(_compose(overrides), tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    names = json.dumps(plan)
    assert "classifier.4" not in names and "features.0" in names
    assert metrics["mapped_weights"] < metrics["dense_weights"]
    assert metrics["layers"]["digital"] == ["classifier.4"]
    assert metrics["layers"]["devices"]["features.0"]["programming"]["sigma"] == 0.0
    assert metrics["device"]["programming"] is not None
    assert "kept digital" in (tmp_path / "run" / "report.md").read_text()
    for figure in ("tile_map", "conductances", "admm_residuals", "chip_accuracy"):
        assert (tmp_path / "run" / f"{figure}.png").stat().st_size > 1000
        assert (tmp_path / "run" / f"{figure}.pdf").stat().st_size > 1000
    # a pattern that matches no layer fails before any work
    with pytest.raises(ValueError, match="layers.*classifier.9"):
        run_compress(_compose(TINY + ["+layers.digital=[classifier.9]"]), tmp_path / "bad")
    assert not (tmp_path / "bad" / "dense.pt").exists()
    with pytest.raises(ValueError, match="layers.devices.features.0.bogus"):
        run_compress(_compose(TINY + ["+layers.devices={features.0: {bogus: 1}}"]),
                     tmp_path / "bad2")
