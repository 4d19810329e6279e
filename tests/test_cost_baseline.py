"""The one cost baseline, spare lines and output calibration in the cost model, the DAC rule."""

from __future__ import annotations

import json

import pytest
import torch

from memxbar.crossbar.config import CrossbarConfig
from memxbar.crossbar.cost import (
    CostConfig,
    baseline_config,
    baseline_cost,
    dense_plan,
    estimate,
    layer_cost,
    load_table,
    model_cost,
)
from memxbar.crossbar.plan import MappingPlan, plan_layer
from memxbar.crossbar.report import main, write_cost_report
from tests.test_cost import TOY, TOY_COST


def _masks() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    conv = torch.rand(24, 3 * 9, generator=g) > 0.5
    conv[12:] = False
    fc = torch.rand(10, 300, generator=g) > 0.8
    return {"conv1": conv, "fc": fc}


def _plan(cfg: CrossbarConfig) -> MappingPlan:
    m = _masks()
    return MappingPlan({
        "conv1": plan_layer("conv1", "conv2d", m["conv1"], cfg, kernel_size=9,
                            mvms_per_sample=100),
        "fc": plan_layer("fc", "linear", m["fc"], cfg, mvms_per_sample=1),
    })


BASE = CrossbarConfig(tile_rows=64, tile_cols=64, dac_bits=8, adc_bits=8)
DESIGNS = [
    BASE,
    BASE.with_(dac="bit_serial"),
    BASE.with_(dac="bit_serial", dac_bits=4, adc_bits=5),
    BASE.with_(dac_bits=None, adc_bits=None),
    BASE.with_(dac_bits=3, adc_bits=12),
    BASE.with_(spare_rows=4, spare_cols=2, output_calibration=True),
    BASE.with_(weight_bits=4, cell_bits=2, dac="bit_serial", dac_bits=6, adc_bits=6),
]


# --------------------------------------------------------------------------- the baseline
def test_baseline_does_not_depend_on_the_designs_converters():
    """The baseline numbers are the same whatever dac, dac_bits, adc_bits, bit-serial mode,
    weight slicing, spares or calibration the compressed design uses."""
    first = None
    for cfg in DESIGNS:
        est = estimate(_plan(cfg), cfg, CostConfig())
        totals = est.baseline.to_dict()
        first = first or totals
        assert totals == first, cfg
    # and they are the parallel 8-bit mapping of the dense model, costed directly
    ref_cfg = CrossbarConfig(tile_rows=64, tile_cols=64, weight_bits=8, cell_bits=4,
                             dac="parallel", dac_bits=8, adc_bits=8)
    ref = model_cost(dense_plan(_plan(BASE), ref_cfg), ref_cfg, CostConfig())
    assert ref.to_dict() == first
    assert all(layer.input_cycles == 1 for layer in ref.layers)


def test_baseline_config_keeps_only_tiles_and_mapping():
    design = BASE.with_(mapping="offset", dac="bit_serial", adc_bits=4, spare_rows=3,
                        spare_cols=1, output_calibration=True, adc_noise=0.01)
    base = baseline_config(design, CostConfig())
    assert (base.tile_rows, base.tile_cols, base.mapping) == (64, 64, "offset")
    assert (base.dac, base.dac_bits, base.adc_bits) == ("parallel", 8, 8)
    assert (base.weight_bits, base.cell_bits, base.weight_slices) == (8, 4, 2)
    assert (base.spare_rows, base.spare_cols, base.output_calibration) == (0, 0, False)


def test_bit_serial_design_was_costed_against_its_own_baseline_before():
    """Regression: the old baseline copied ``dac='bit_serial'``, so one design read two
    different reductions. Now both modes of the same plan share the baseline."""
    serial, parallel = BASE.with_(dac="bit_serial"), BASE
    plan = _plan(BASE)
    a, b = estimate(plan, serial), estimate(plan, parallel)
    assert a.baseline.total_energy_nJ == b.baseline.total_energy_nJ
    assert a.baseline.latency_ns == b.baseline.latency_ns
    old_style = model_cost(dense_plan(plan, serial.with_(weight_bits=8, cell_bits=4)),
                           serial.with_(weight_bits=8, cell_bits=4))
    assert old_style.total_energy_nJ != pytest.approx(a.baseline.total_energy_nJ)


def test_cli_plan_mode_states_and_shares_the_baseline(tmp_path):
    """``python -m memxbar.crossbar.report --plan`` gives the library's baseline for any converters
    and writes which baseline it used into report.md and cost.json."""
    seen = []
    for i, cfg in enumerate(DESIGNS[:3]):
        plan_path, cfg_path = tmp_path / f"p{i}.json", tmp_path / f"c{i}.json"
        out = tmp_path / str(i)
        plan = _plan(cfg)
        plan.save(plan_path)
        cfg_path.write_text(json.dumps(cfg.to_dict()))
        assert main(["--plan", str(plan_path), "--config", str(cfg_path), "--out", str(out),
                     "--no-plots"]) == 0
        data = json.loads((out / "cost.json").read_text())
        library = json.loads(json.dumps(baseline_cost(plan, cfg).to_dict()["totals"]))
        assert data["baseline"]["totals"] == library
        assert "parallel 8-bit DACs" in data["baseline_description"]
        assert "Baseline: dense, unpruned model" in (out / "report.md").read_text()
        seen.append(data["baseline"]["totals"])
    assert seen[0] == seen[1] == seen[2]


# -------------------------------------------------------------------------- spare lines
def test_spare_lines_add_devices_and_area_by_hand():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=4, adc_bits=4)  # differential
    layer = plan_layer("fc", "linear", torch.ones(6, 6, dtype=torch.bool), cfg,
                       mvms_per_sample=1)  # 4 tiles of 2 arrays of 4x4
    tab = load_table(TOY)
    plain = layer_cost(layer, cfg, TOY_COST, tab)
    spared = layer_cost(layer, cfg.with_(spare_rows=1, spare_cols=1), TOY_COST, tab)
    # per tile: (4 + 1) word lines x (2 arrays x 4 + 1 group x 2 cells x 1 slice) bit lines
    # = 50 cells, less the 32 of the plain tile = 18 spare cells; cell area 100 / 16 um2
    assert spared.spare_devices == 4 * 18 and plain.spare_devices == 0
    assert spared.area_um2["spare_cells"] == pytest.approx(4 * 18 * 100 / 16)
    assert spared.total_area_um2 - plain.total_area_um2 == pytest.approx(4 * 18 * 100 / 16)
    assert spared.energy_pJ == {**plain.energy_pJ, "spare_cells": 0.0}  # not driven or read
    assert spared.latency_ns == plain.latency_ns

    off = CrossbarConfig(tile_rows=4, tile_cols=4, mapping="offset", weight_bits=4, cell_bits=2,
                         dac_bits=4, adc_bits=4)
    layer = plan_layer("fc", "linear", torch.ones(1, 4, dtype=torch.bool), off,
                       mvms_per_sample=1)
    c = layer_cost(layer, off.with_(spare_rows=2, spare_cols=1), TOY_COST, tab)
    # offset, 2 slices: (4 + 2) x (4 + 1 group x 1 cell x 2 slices) - 16 = 20
    assert c.spare_devices == 20
    assert c.area_um2["spare_cells"] == pytest.approx(20 * 100 / 16)


# --------------------------------------------------------------------- output calibration
CAL_TOY = {**TOY, "components": [
    *TOY["components"],
    {"kind": "calibration_register", "energy": {"value": 0.01, "unit": "pJ"},
     "area": {"value": 0.3, "unit": "um2"}, "source": "test"},
    {"kind": "multiply_add", "energy": {"value": 1.0, "unit": "pJ"},
     "area": {"value": 50.0, "unit": "um2"}, "source": "test"},
]}


@pytest.mark.parametrize("dac", ["parallel", "bit_serial"])
def test_output_calibration_costs_by_hand(dac):
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, mapping="offset", dac_bits=4, adc_bits=4,
                         dac=dac)
    layer = plan_layer("fc", "linear", torch.ones(3, 4, dtype=torch.bool), cfg,
                       mvms_per_sample=2)  # one tile: 3 outputs, 2 ADCs (cols_per_adc 2)
    tab = load_table(CAL_TOY)
    plain = layer_cost(layer, cfg, TOY_COST, tab)
    cal = layer_cost(layer, cfg.with_(output_calibration=True), TOY_COST, tab)
    assert cal.calibration_register_bits == 2 * 16 * 3   # gain + offset, 16 bits, 3 outputs
    assert cal.calibration_ops == 2 * 3                  # once per output per MVM, any cycles
    assert cal.area_um2["calibration_register"] == pytest.approx(96 * 0.3)
    assert cal.area_um2["multiply_add"] == pytest.approx(2 * 50.0)  # one unit per ADC
    assert cal.energy_pJ["calibration_register"] == pytest.approx(2 * 96 * 0.01)
    assert cal.energy_pJ["multiply_add"] == pytest.approx(6 * 1.0)
    assert cal.total_energy_pJ - plain.total_energy_pJ == pytest.approx(1.92 + 6.0)
    assert cal.total_area_um2 - plain.total_area_um2 == pytest.approx(28.8 + 100.0)
    wide = layer_cost(layer, cfg.with_(output_calibration=True), TOY_COST.with_(
        calibration_bits=8), tab)
    assert wide.calibration_register_bits == 2 * 8 * 3


def test_output_calibration_is_per_layer_output_not_per_tile():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, mapping="offset", dac_bits=4, adc_bits=4,
                         output_calibration=True)
    # 10 inputs over 4-row tiles: every one of the 3 outputs meets 3 tiles, one gain/offset
    layer = plan_layer("fc", "linear", torch.ones(3, 10, dtype=torch.bool), cfg,
                       mvms_per_sample=2)
    assert layer.n_tiles == 3
    cal = layer_cost(layer, cfg, TOY_COST, load_table(CAL_TOY))
    assert cal.calibration_register_bits == 2 * 16 * 3
    assert cal.calibration_ops == 2 * 3


def test_calibration_entries_are_needed_only_when_used():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=4, adc_bits=4)
    layer = plan_layer("fc", "linear", torch.ones(2, 4, dtype=torch.bool), cfg,
                       mvms_per_sample=1)
    layer_cost(layer, cfg, TOY_COST, load_table(TOY))  # TOY has no calibration entries
    with pytest.raises(ValueError, match="calibration_register"):
        layer_cost(layer, cfg.with_(output_calibration=True), TOY_COST, load_table(TOY))


def test_report_shows_spares_and_calibration(tmp_path):
    cfg = BASE.with_(spare_rows=2, spare_cols=1, output_calibration=True)
    write_cost_report(_plan(cfg), cfg, tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "spare word lines / output column groups per tile 2 / 1" in md
    assert "output calibration on" in md
    for part in ("| spare_cells |", "| calibration_register |", "| multiply_add |"):
        assert part in md
    data = json.loads((tmp_path / "cost.json").read_text())
    totals = data["compressed"]["totals"]
    assert totals["spare_devices"] > 0 and totals["calibration_ops"] > 0
    assert totals["area_um2_by_component"]["spare_cells"] > 0
    assert totals["energy_pJ_by_component"]["multiply_add"] > 0


# ------------------------------------------------------------------------------ DAC rule
def test_isaac_dac_is_a_drive_plus_a_bounded_capacitive_core():
    """E_dac(b) = E_dac(1) + E_adc(b) for b >= 2 (docs/cost_model.md); area 2^(b-1) x A(1)."""
    isaac = load_table("isaac")
    one = isaac.get("dac", bits=1)
    for b in range(2, 9):
        dac, adc = isaac.get("dac", bits=b), isaac.get("adc", bits=b)
        assert dac.energy_J == pytest.approx(one.energy_J + adc.energy_J, rel=1e-5), b
        assert dac.area_m2 == pytest.approx(one.area_m2 * 2 ** (b - 1), rel=1e-5), b
    # an 8-bit drive costs less than 8 one-bit drives (the bit-serial stream it replaces)
    assert isaac.get("dac", bits=8).energy_J < 8 * one.energy_J
    assert isaac.get("dac", bits=8).energy_J == pytest.approx(1.953125e-12, rel=1e-5)


# ---------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("cfg", DESIGNS)
def test_the_reduction_is_attributed_step_by_step_and_adds_up(cfg):
    """Issue 23: "reduction vs dense" lumped weight precision, pruning, converter bits and the
    spares/calibration overheads. The attribution reaches the design from the baseline one
    change at a time: its first step is the baseline's cost, its last the design's, and the
    steps' changes add up to the total reduction."""
    from memxbar.crossbar.cost import ATTRIBUTION_STEPS, attribution

    plan = _plan(cfg)
    est = estimate(plan, cfg, CostConfig())
    steps = attribution(plan, cfg, CostConfig())
    assert [s["step"] for s in steps] == [name for name, _ in ATTRIBUTION_STEPS]
    assert steps[0]["area_mm2"] == pytest.approx(est.baseline.total_area_mm2)
    assert steps[0]["energy_nJ"] == pytest.approx(est.baseline.total_energy_nJ)
    assert steps[-1]["area_mm2"] == pytest.approx(est.compressed.total_area_mm2)
    assert steps[-1]["energy_nJ"] == pytest.approx(est.compressed.total_energy_nJ)
    for key in ("area", "energy"):
        total = sum(s[f"{key}_change_pct"] for s in steps)
        assert total == pytest.approx(-est.reduction[f"{key}_reduction_pct"], abs=1e-9)
    assert est.to_dict()["attribution"] == steps
    if not (cfg.spare_rows or cfg.spare_cols or cfg.output_calibration):
        assert steps[-1]["area_change_pct"] == 0 and steps[-1]["energy_change_pct"] == 0


def test_a_dense_design_at_baseline_precision_attributes_nothing_to_pruning():
    """A dense, unpruned design with the baseline's weights and converters changes nothing but
    what its converters and precision differ in; its pruning step is zero."""
    from memxbar.crossbar.cost import attribution, baseline_config

    cfg = baseline_config(BASE, CostConfig())
    dense = MappingPlan({"fc": plan_layer("fc", "linear", torch.ones(10, 300, dtype=torch.bool),
                                          cfg, mvms_per_sample=1)})
    steps = {s["step"]: s for s in attribution(dense, cfg, CostConfig())}
    for name in ("weight precision", "pruning", "converters", "spares and calibration"):
        assert steps[name]["area_change_pct"] == pytest.approx(0.0, abs=1e-12), name
        assert steps[name]["energy_change_pct"] == pytest.approx(0.0, abs=1e-12), name
