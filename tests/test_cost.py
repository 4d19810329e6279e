"""Cost model: hand-computed small cases, tables and units, baseline reductions."""

from __future__ import annotations

import math

import pytest
import torch

from memxbar.crossbar.config import CrossbarConfig
from memxbar.crossbar.cost import (
    COMPONENTS,
    OPTIONAL_KINDS,
    PARTS,
    CostConfig,
    available_tables,
    check_plausible,
    dense_plan,
    estimate,
    layer_cost,
    load_table,
    model_cost,
    parse_quantity,
    parse_unit,
)
from memxbar.crossbar.plan import MappingPlan, plan_layer


def _e(v: float, u: str = "pJ", per: str = "op") -> dict:
    return {"value": v, "unit": u, "per": per}


def _a(v: float, u: str = "um2", per: str = "unit") -> dict:
    return {"value": v, "unit": u, "per": per}


#: Round numbers so the expected costs can be written by hand.
TOY = {
    "name": "toy",
    "components": [
        {"kind": "crossbar", "rows": 4, "cols": 4, "energy": _e(16), "area": _a(100),
         "latency": {"value": 10, "unit": "ns"}, "source": "test"},
        {"kind": "dac", "bits": 1, "energy": _e(1), "area": _a(1), "source": "test"},
        {"kind": "dac", "bits": 2, "energy": _e(2), "area": _a(2), "source": "test"},
        {"kind": "dac", "bits": 4, "energy": _e(8), "area": _a(8), "source": "test"},
        {"kind": "adc", "bits": 2, "energy": _e(2), "area": _a(20), "source": "test"},
        {"kind": "adc", "bits": 4, "energy": _e(4), "area": _a(40), "source": "test"},
        {"kind": "adc", "bits": 8, "energy": _e(8), "area": _a(80), "source": "test"},
        {"kind": "sample_hold", "energy": _e(500, "fJ"), "area": _a(0.5), "source": "test"},
        {"kind": "shift_add", "energy": _e(0.25), "area": _a(3), "source": "test"},
        {"kind": "input_register", "energy": _e(0.1), "area": _a(0.2), "source": "test"},
        {"kind": "output_register", "energy": _e(0.2), "area": _a(0.3), "source": "test"},
        {"kind": "buffer", "energy": _e(0.01), "area": _a(5e-5, "mm2"), "source": "test"},
    ],
}
TOY_COST = CostConfig(clock_MHz=100.0, cols_per_adc=2, output_bits=16)


def _layer(out: int, inp: int, cfg: CrossbarConfig, mvms: int | None = 1, live=None):
    mask = torch.ones(out, inp, dtype=torch.bool) if live is None else live
    return plan_layer("fc", "linear", mask, cfg, mvms_per_sample=mvms)


def _cost(layer, cfg, cost=TOY_COST):
    return layer_cost(layer, cfg, cost, load_table(TOY))


# ------------------------------------------------------------------------- hand-computed
def test_one_tile_offset_by_hand():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, mapping="offset", dac_bits=4, adc_bits=4)
    layer = _layer(3, 4, cfg, mvms=2)  # 3 outputs + 1 reference column = 4 bit lines
    c = _cost(layer, cfg)
    assert (c.tiles, c.arrays, c.dacs, c.adcs, c.input_cycles) == (1, 1, 4, 2, 1)
    assert (c.dac_drives, c.adc_conversions, c.cells_read) == (8, 6, 32)
    expected_energy = {
        "crossbar": 2 * 16 * 1.0,        # 2 MVMs x 16 cells x 1 pJ/cell
        "dac": 8 * 8.0,                  # 8 drives x 4-bit DAC
        "adc": 6 * 4.0,                  # 2 MVMs x 3 outputs x 1 slice
        "sample_hold": 6 * 0.5,
        "shift_add": 6 * 0.25,
        "input_register": 2 * 4 * 4 * 0.1,
        "output_register": 6 * 0.2,
        "buffer": 2 * (4 * 4 + 3 * 16) * 0.01,
        "spare_cells": 0.0, "calibration_register": 0.0, "multiply_add": 0.0,
    }
    expected_area = {
        "crossbar": 100.0, "dac": 4 * 8.0, "adc": 2 * 40.0, "sample_hold": 4 * 0.5,
        "shift_add": 2 * 3.0, "input_register": 4 * 4 * 0.2, "output_register": 3 * 16 * 0.3,
        "buffer": 50.0, "spare_cells": 0.0, "calibration_register": 0.0, "multiply_add": 0.0,
    }
    for k in PARTS:
        assert c.energy_pJ[k] == pytest.approx(expected_energy[k]), k
        assert c.area_um2[k] == pytest.approx(expected_area[k]), k
    # 3 conversions on 2 ADCs -> 2 clocks of 10 ns > 10 ns read; 2 MVMs
    assert c.latency_ns == pytest.approx(40.0)
    mc = model_cost(MappingPlan({"fc": layer}), cfg, TOY_COST, TOY)
    assert mc.total_energy_nJ == pytest.approx(sum(expected_energy.values()) * 1e-3)
    assert mc.power_mW == pytest.approx(sum(expected_energy.values()) / 40.0)


def test_several_tiles_differential_bit_serial_by_hand():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=2, adc_bits=8, bit_serial=True)
    layer = _layer(6, 6, cfg)  # column groups {0..3},{4,5}; rows 4 + 2 -> 4 tiles
    assert [(t.n_rows, t.n_cols) for t in layer.tiles] == [(4, 4), (2, 4), (4, 2), (2, 2)]
    c = _cost(layer, cfg, TOY_COST.with_(cols_per_adc=4))
    assert (c.tiles, c.arrays, c.word_lines, c.bit_lines) == (4, 8, 12, 24)
    # one ADC input per output (pair subtracted in analog): ceil(4/4), ceil(4/4), ceil(2/4) x 2
    assert c.adcs == 1 + 1 + 1 + 1
    assert c.input_cycles == 2 and c.dac_drives == 24 and c.adc_conversions == 24
    assert c.energy_pJ["crossbar"] == pytest.approx(2 * 72 * 1.0)
    assert c.energy_pJ["dac"] == pytest.approx(24 * 1.0)  # 1-bit DAC when bit-serial
    assert c.energy_pJ["adc"] == pytest.approx(24 * 8.0)
    assert c.energy_pJ["input_register"] == pytest.approx(24 * 0.1)
    assert c.energy_pJ["buffer"] == pytest.approx((6 * 2 + 6 * 16) * 0.01)
    assert c.area_um2["crossbar"] == pytest.approx(8 * 100.0)
    assert c.area_um2["adc"] == pytest.approx(4 * 80.0)
    assert c.area_um2["sample_hold"] == pytest.approx(24 * 0.5)
    assert c.area_um2["output_register"] == pytest.approx(12 * 16 * 0.3)
    assert c.latency_ns == pytest.approx(2 * 40.0)  # 2 input cycles x 4 conversions on 1 ADC


def test_pruning_that_frees_a_tile_lowers_area_and_energy():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=2, adc_bits=8, bit_serial=True)
    live = torch.ones(6, 6, dtype=torch.bool)
    live[4:] = False  # outputs 4 and 5 pruned: the second column group disappears
    dense, pruned = _cost(_layer(6, 6, cfg), cfg), _cost(_layer(6, 6, cfg, live=live), cfg)
    assert (dense.tiles, pruned.tiles) == (4, 2)
    assert pruned.total_area_um2 < dense.total_area_um2
    assert pruned.total_energy_pJ < dense.total_energy_pJ
    assert pruned.area_um2["crossbar"] == pytest.approx(dense.area_um2["crossbar"] / 2)


def test_adc_sharing_changes_count_area_and_latency():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=4, adc_bits=4)
    layer = _layer(4, 4, cfg)  # one differential tile: 8 bit lines, 4 signals, 4 conversions
    one = _cost(layer, cfg, TOY_COST.with_(cols_per_adc=1))
    eight = _cost(layer, cfg, TOY_COST.with_(cols_per_adc=8))
    assert (one.adcs, eight.adcs) == (4, 1)
    assert one.area_um2["adc"] == pytest.approx(4 * eight.area_um2["adc"])
    assert one.energy_pJ["adc"] == pytest.approx(eight.energy_pJ["adc"])  # same conversions
    assert one.latency_ns == pytest.approx(10.0)   # array read bound
    assert eight.latency_ns == pytest.approx(40.0)  # 4 conversions x 10 ns on one ADC


def test_bit_slicing_multiplies_bit_lines_and_conversions():
    base = dict(tile_rows=4, tile_cols=4, dac_bits=4, adc_bits=4, cell_bits=2)
    one = CrossbarConfig(**base, weight_bits=2)   # 1 slice
    two = CrossbarConfig(**base, weight_bits=4)   # 2 slices: 2 outputs per tile
    c1, c2 = _cost(_layer(2, 4, one), one), _cost(_layer(2, 4, two), two)
    assert (c1.weight_slices, c2.weight_slices) == (1, 2)
    assert (c1.bit_lines, c2.bit_lines) == (4, 8)
    assert c2.adc_conversions == 2 * c1.adc_conversions
    assert c2.energy_pJ["adc"] == pytest.approx(2 * c1.energy_pJ["adc"])
    assert c2.energy_pJ["crossbar"] == pytest.approx(2 * c1.energy_pJ["crossbar"])


def test_fewer_adc_bits_lower_adc_cost_only():
    cfg8 = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=4, adc_bits=8)
    cfg4 = cfg8.with_(adc_bits=4)
    layer = _layer(4, 4, cfg8)
    c8, c4 = _cost(layer, cfg8), _cost(layer, cfg4)
    assert c4.energy_pJ["adc"] == pytest.approx(c8.energy_pJ["adc"] / 2)
    assert c4.area_um2["adc"] == pytest.approx(c8.area_um2["adc"] / 2)
    for k in PARTS:
        if k != "adc":
            assert c4.energy_pJ[k] == pytest.approx(c8.energy_pJ[k])


def test_quantization_lowers_isaac_cost():
    """Fewer weight bits (fewer slices) and fewer ADC bits cost less with the shipped table."""
    hi = CrossbarConfig(mapping="offset", weight_bits=8, cell_bits=2, dac_bits=8, adc_bits=8,
                        bit_serial=True)
    lo = hi.with_(weight_bits=4, adc_bits=6)
    live = torch.ones(64, 256, dtype=torch.bool)
    plans = {name: MappingPlan({"fc": plan_layer("fc", "linear", live, cfg, mvms_per_sample=1)})
             for name, cfg in (("hi", hi), ("lo", lo))}
    c_hi = model_cost(plans["hi"], hi)
    c_lo = model_cost(plans["lo"], lo)
    assert c_lo.energy_pJ["adc"] < c_hi.energy_pJ["adc"] / 2
    assert c_lo.total_energy_nJ < c_hi.total_energy_nJ
    assert c_lo.total_area_mm2 < c_hi.total_area_mm2


# ---------------------------------------------------------------------- plan and config
def test_missing_mvms_is_an_error_or_an_assumption():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=4, adc_bits=4)
    layer = _layer(4, 4, cfg, mvms=None)
    with pytest.raises(ValueError, match="mvms_per_sample"):
        _cost(layer, cfg)
    with pytest.warns(UserWarning, match="assuming 3"):
        c = _cost(layer, cfg, TOY_COST.with_(assume_mvms_per_sample=3))
    assert c.mvms_per_sample == 3


def test_plan_config_mismatch_is_rejected():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4)
    with pytest.raises(ValueError, match="plan .tile_rows, tile_cols, mapping, weight_slices."):
        _cost(_layer(4, 4, cfg), cfg.with_(mapping="offset"))


@pytest.mark.parametrize("key,value", [("clock_MHz", 0.0), ("cols_per_adc", 0),
                                       ("default_adc_bits", 40), ("pipelined", "yes"),
                                       ("baseline_cell_bits", 99),
                                       ("assume_mvms_per_sample", 0)])
def test_cost_config_validation_names_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        CostConfig(**{key: value})


def test_cost_config_round_trip_and_unknown_key():
    c = CostConfig(clock_MHz=500.0, pipelined=True)
    assert CostConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="cost key"):
        CostConfig.from_dict({"clock": 1})


def test_missing_table_entry_lists_available():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=3)
    with pytest.raises(ValueError, match="toy.*dac"):
        _cost(_layer(4, 4, cfg), cfg)


# --------------------------------------------------------------------------- baseline
def test_dense_baseline_and_reduction():
    cfg = CrossbarConfig(tile_rows=4, tile_cols=4, dac_bits=2, adc_bits=4, bit_serial=True)
    live = torch.zeros(8, 8, dtype=torch.bool)
    live[:2, :3] = True
    plan = MappingPlan({"fc": plan_layer("fc", "linear", live, cfg, mvms_per_sample=5)})
    cost = TOY_COST.with_(baseline_weight_bits=8, baseline_dac_bits=2, baseline_adc_bits=8,
                          baseline_cell_bits=None)  # the same cells as the config
    est = estimate(plan, cfg, cost, TOY)
    dense = dense_plan(plan, cfg)
    assert dense["fc"].mvms_per_sample == 5
    assert dense.n_tiles == est.baseline.tiles == 4 and est.compressed.tiles == 1
    assert est.baseline.layers[0].adc_conversions > est.compressed.layers[0].adc_conversions
    assert est.reduction["tiles_ratio"] == pytest.approx(4.0)
    assert 0 < est.reduction["energy_reduction_pct"] < 100
    assert 0 < est.reduction["area_reduction_pct"] < 100
    assert estimate(plan, cfg, cost, TOY, baseline=False).baseline is None


def test_conv_dense_plan_keeps_row_unit():
    cfg = CrossbarConfig(tile_rows=16, tile_cols=16)
    live = torch.zeros(4, 3 * 9, dtype=torch.bool)
    live[:, :9] = True
    layer = plan_layer("conv", "conv2d", live, cfg, kernel_size=9, mvms_per_sample=4)
    dense = dense_plan(MappingPlan({"conv": layer}), cfg)["conv"]
    assert dense.row_unit == 9 and dense.kind == "conv2d"
    assert [t.n_rows for t in dense.tiles] == [9, 9, 9]


# ------------------------------------------------------------------------ tables, units
def test_parse_units():
    assert parse_unit("um2") == (pytest.approx(1e-12), "area")
    assert parse_unit("mm2") == (pytest.approx(1e-6), "area")
    assert parse_unit("fJ") == (1e-15, "energy")
    assert parse_unit("mW") == (1e-3, "power")
    assert parse_unit("ns") == (1e-9, "time")
    assert parse_quantity({"value": 16, "unit": "mW"}) == (pytest.approx(0.016), "power")
    for bad in ("pj", "mm^2", "pJoule", ""):
        with pytest.raises(ValueError, match="unit"):
            parse_unit(bad)


def test_table_rejects_wrong_dimension_and_missing_source():
    entry = {"kind": "sample_hold", "energy": _e(1, "mm2"), "area": _a(1), "source": "x"}
    with pytest.raises(ValueError, match="energy.unit"):
        load_table({"name": "bad", "components": [entry]})
    entry = {"kind": "sample_hold", "energy": _e(1), "area": _a(1), "source": " "}
    with pytest.raises(ValueError, match="source"):
        load_table({"name": "bad", "components": [entry]})
    with pytest.raises(ValueError, match="table"):
        load_table("no_such_table")


@pytest.mark.parametrize("name", available_tables())
def test_shipped_tables_are_sourced_and_plausible(name):
    table = load_table(name)
    assert check_plausible(table) == []
    kinds = {c.kind for c in table.components}
    assert set(COMPONENTS) - set(OPTIONAL_KINDS) <= kinds <= set(COMPONENTS)
    for c in table.components:
        assert "Table" in c.source or c.source.startswith("derived:"), c
    for kind in ("adc", "dac"):
        rows = sorted((dict(c.selectors)["bits"], c.energy_J, c.area_m2)
                      for c in table.components if c.kind == kind)
        assert all(a[1] < b[1] and a[2] < b[2] for a, b in zip(rows, rows[1:], strict=False))


def test_plausibility_catches_a_prefix_slip():
    isaac = load_table("isaac")
    adc = isaac.get("adc", bits=8)
    assert adc.energy_J == pytest.approx(16e-3 / 8 / 1.28e9)  # 1.5625 pJ
    slipped = {"name": "slip", "components": [
        {"kind": "adc", "bits": 8, "energy": _e(adc.energy_J * 1e12, "nJ"),
         "area": _a(adc.area_m2 * 1e12), "source": "test"}]}
    assert len(check_plausible(load_table(slipped))) == 1


def test_isaac_tile_matches_paper_within_stated_gap():
    from memxbar.crossbar.report import isaac_tile_comparison

    r = isaac_tile_comparison()
    assert r["tiles"] == 96
    assert abs(r["gap_modelled_rows_area_pct"]) < 2.0
    assert -15.0 < r["gap_modelled_rows_power_pct"] < 0.0
    assert math.isclose(r["model_power_mW_dac"], 48.0, rel_tol=1e-6)  # 12 x 4 mW
    assert math.isclose(r["model_area_mm2_adc"], 0.0096 * 12, rel_tol=1e-6)
