"""Cost reports: files written by write_cost_report and the command line."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from memxbar.crossbar.config import CrossbarConfig
from memxbar.crossbar.cost import CostConfig, estimate
from memxbar.crossbar.plan import MappingPlan, plan_layer
from memxbar.crossbar.report import main, write_cost_report

CFG = CrossbarConfig(tile_rows=64, tile_cols=64, dac_bits=8, adc_bits=6, bit_serial=True)


def _plan() -> MappingPlan:
    conv = torch.ones(16, 3 * 9, dtype=torch.bool)
    conv[8:] = False
    fc = torch.rand(10, 200, generator=torch.Generator().manual_seed(0)) > 0.7
    fc[:, 100:] = False
    return MappingPlan({
        "conv1": plan_layer("conv1", "conv2d", conv, CFG, kernel_size=9, mvms_per_sample=196),
        "fc": plan_layer("fc", "linear", fc, CFG, mvms_per_sample=1),
    })


def test_write_cost_report_files(tmp_path):
    plan = _plan()
    written = write_cost_report(plan, CFG, tmp_path, CostConfig(), table="isaac")
    figures = {"tiles_per_layer", "energy_per_layer", "area_breakdown", "energy_breakdown",
               "area_per_layer_breakdown", "energy_per_layer_breakdown", "reduction_waterfall"}
    names = {"report.md", "cost.csv", "cost.json"} | {f"{f}.{ext}" for f in figures
                                                      for ext in ("png", "pdf")}
    assert set(written) == names
    assert {p.name for p in tmp_path.iterdir()} == names  # no temporary files left
    for name in names:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "tiles_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "tiles_per_layer.pdf").read_bytes()[:4] == b"%PDF"

    est = estimate(plan, CFG, CostConfig())
    data = json.loads((tmp_path / "cost.json").read_text())
    assert data["compressed"]["totals"]["energy_nJ"] == pytest.approx(
        est.compressed.total_energy_nJ)
    assert data["reduction"]["tiles_ratio"] == pytest.approx(est.reduction["tiles_ratio"])
    assert data["crossbar_config"] == CFG.to_dict()

    rows = list(csv.DictReader((tmp_path / "cost.csv").open()))
    assert [(r["variant"], r["layer"]) for r in rows] == [
        ("compressed", "conv1"), ("compressed", "fc"), ("compressed", "TOTAL"),
        ("baseline", "conv1"), ("baseline", "fc"), ("baseline", "TOTAL")]
    total = rows[2]
    assert int(total["tiles"]) == plan.n_tiles
    assert float(total["energy_pJ"]) == pytest.approx(est.compressed.total_energy_nJ * 1e3)

    md = (tmp_path / "report.md").read_text()
    assert "| conv1 |" in md and "| fc |" in md and "reduction" in md
    assert "![area_breakdown.png](area_breakdown.png)" in md
    # issue 23: where the reduction comes from, and what the estimate leaves out
    assert "## Where the reduction comes from" in md and "| pruning |" in md
    assert "## Not in this estimate" in md and "static (leakage) power" in md
    assert "interconnect between tiles" in md and "layers kept digital" in md


def test_report_without_baseline_or_plots(tmp_path):
    written = write_cost_report(_plan(), CFG, tmp_path, baseline=False, plots=False)
    assert set(written) == {"report.md", "cost.csv", "cost.json"}
    assert json.loads((tmp_path / "cost.json").read_text())["baseline"] is None


def test_cli(tmp_path, capsys):
    plan_path, cfg_path, cost_path = (tmp_path / n for n in ("plan.json", "xbar.json",
                                                            "cost.json"))
    _plan().save(plan_path)
    cfg_path.write_text(json.dumps(CFG.to_dict()))
    cost_path.write_text(json.dumps({"cols_per_adc": 32, "baseline_weight_bits": 8}))
    out = tmp_path / "out"
    rc = main(["--plan", str(plan_path), "--config", str(cfg_path), "--cost", str(cost_path),
               "--out", str(out), "--table", "isaac", "--clock-MHz", "1000", "--no-plots"])
    assert rc == 0
    data = json.loads((out / "cost.json").read_text())
    assert data["cost_config"]["cols_per_adc"] == 32
    assert data["cost_config"]["clock_MHz"] == 1000.0
    assert "report.md" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--plan", str(plan_path)])


def test_cli_isaac_check(capsys):
    assert main(["--isaac-check"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["paper_tile_power_mW"] == 330.0


def test_cli_run_reproduces_a_runs_cost_numbers(tmp_path):
    """``--run DIR`` reads what the run wrote (plan, crossbar settings, cost group) and gives
    the run's numbers; the library, the CLI and the Hydra group share one baseline."""
    import subprocess
    import sys

    import yaml

    from memxbar.experiments.conf_source import CONF_DIR

    hydra_cost = yaml.safe_load((CONF_DIR / "cost" / "isaac.yaml").read_text())
    library = CostConfig().to_dict()
    for key in ("baseline_weight_bits", "baseline_cell_bits", "baseline_dac_bits",
                "baseline_adc_bits"):
        assert library[key] == hydra_cost[key], key
    plan = _plan()
    run = tmp_path / "run"
    plan.save(run / "plan.json")
    xbar = CFG
    (run / "metrics.json").write_text(json.dumps({"crossbar": xbar.to_dict()}))
    (run / "config.yaml").write_text(yaml.safe_dump({"cost": {"cols_per_adc": 16}}))
    write_cost_report(plan, xbar, run / "cost", CostConfig(cols_per_adc=16), plots=False)
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                          "memxbar.crossbar.report", "--run", str(run), "--no-plots"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RuntimeWarning" not in out.stderr
    first = json.loads((run / "cost" / "cost.json").read_text())
    again = json.loads((run / "cost_rerun" / "cost.json").read_text())
    assert again["compressed"]["totals"] == first["compressed"]["totals"]
    assert again["reduction"] == first["reduction"]
    assert again["baseline"]["totals"] == first["baseline"]["totals"]
    report = (run / "cost_rerun" / "report.md").read_text()
    assert "Baseline: dense, unpruned model" in report
    assert "8-bit weights on 4-bit cells, 8-bit inputs through parallel 8-bit DACs" in report
    assert again["baseline_crossbar_config"]["dac"] == "parallel"


def test_per_layer_breakdown_bars_stack_to_each_layers_energy():
    """Per layer, the stacked component bars of the compressed design add up to that layer's
    energy; the dense baseline's (hatched) bars to the baseline layer's."""
    import matplotlib.pyplot as plt

    from memxbar.crossbar.report import cost_figures

    est = estimate(_plan(), CFG, CostConfig())
    fig = cost_figures(est)["energy_per_layer_breakdown.png"]
    ax = fig.axes[0]
    for variant, hatched in ((est.compressed, False), (est.baseline, True)):
        bars = [p for p in ax.patches if bool(p.get_hatch()) == hatched]
        for i, layer in enumerate(variant.layers):
            mine = [p for p in bars if abs(p.get_x() + p.get_width() / 2
                                           - (i + (0.2 if hatched else -0.2))) < 1e-9]
            assert sum(p.get_height() for p in mine) == pytest.approx(
                layer.total_energy_pJ * 1e-3)
    plt.close("all")


def test_reduction_waterfall_adds_up_to_the_design(tmp_path):
    """Issue 23: the waterfall starts at the baseline (100 %), floats one bar per attribution
    step (its change) and ends at the design's share of the baseline, for area and energy."""
    from matplotlib.patches import Rectangle

    from memxbar.crossbar.report import waterfall_plot

    plan, xbar = _plan(), CFG
    est = estimate(plan, xbar, CostConfig())
    fig = waterfall_plot(est.attribution)
    for ax, key, total in ((fig.axes[0], "area_change_pct", "area"),
                           (fig.axes[1], "energy_change_pct", "energy")):
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        heights = [b.get_height() for b in bars]
        steps = [a[key] for a in est.attribution[1:]]
        assert heights[0] == 100.0 and heights[1:-1] == pytest.approx(steps)
        design = (est.compressed.total_area_mm2 / est.baseline.total_area_mm2 if total == "area"
                  else est.compressed.total_energy_nJ / est.baseline.total_energy_nJ)
        assert heights[-1] == pytest.approx(100 * design) == pytest.approx(100 + sum(steps))
    write_cost_report(plan, xbar, tmp_path)
    assert (tmp_path / "reduction_waterfall.png").is_file()
    assert (tmp_path / "reduction_waterfall.pdf").is_file()
