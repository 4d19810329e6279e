"""Low / typical / high cost ranges (crossbar.cost_range) and data-dependent pricing
(cost.data_dependent): checked against tables whose values are scaled by hand and against
random sampling of the factor box."""

from __future__ import annotations

import copy
import itertools
import json
import random

import pytest
import torch
import yaml
from torch import nn

from memxbar.crossbar import CrossbarConfig, plan_model
from memxbar.crossbar.cost import TABLES_DIR, CostConfig, estimate, load_table
from memxbar.crossbar.cost_range import ratio_range, total_range
from memxbar.crossbar.report import write_cost_report

XBAR = CrossbarConfig(tile_rows=32, tile_cols=32, weight_bits=4, cell_bits=2, dac_bits=4,
                      adc_bits=6)


def _plan():
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 40),
                          nn.ReLU(), nn.Linear(40, 5))
    return plan_model(model, XBAR, example_input=torch.randn(1, 2, 8, 8))


def _isaac() -> dict:
    from importlib import resources
    text = resources.files("memxbar.crossbar").joinpath(TABLES_DIR, "isaac.yaml").read_text()
    return yaml.safe_load(text)


def _scaled(data: dict, end: int) -> dict:
    """The table with every entry of a kind with a range at its low (0) / high (1) end,
    scaled entry by entry (the oracle: no range code involved)."""
    table = load_table(data)
    out = copy.deepcopy(data)
    out.pop("ranges")
    for e in out["components"]:
        r = table.ranges.get(e["kind"])
        if r is not None:
            e["energy"]["value"] *= r.energy[end]
            e["area"]["value"] *= r.area[end]
    return out


def test_total_range_equals_costing_the_scaled_tables():
    plan, data = _plan(), _isaac()
    est = estimate(plan, XBAR, CostConfig())
    for end, key in ((0, 0), (1, 1)):
        other = estimate(plan, XBAR, CostConfig(), table=_scaled(data, end))
        for who, a, b in (("compressed", est.compressed, other.compressed),
                          ("baseline", est.baseline, other.baseline)):
            assert est.ranges[who]["energy_nJ"][key] == pytest.approx(b.total_energy_nJ,
                                                                       rel=1e-9)
            assert est.ranges[who]["area_mm2"][key] == pytest.approx(b.total_area_mm2, rel=1e-9)
            assert total_range(a.energy_pJ, est_table())[key] * 1e-3 == pytest.approx(
                b.total_energy_nJ, rel=1e-9)
    lo, hi = est.ranges["compressed"]["energy_nJ"]
    assert lo < est.compressed.total_energy_nJ < hi
    lo, hi = est.ranges["energy_reduction_pct"]
    assert lo <= est.reduction["energy_reduction_pct"] <= hi


def est_table():
    return load_table("isaac")


def test_ratio_range_bounds_every_sampled_corner_and_point():
    """The enumerated extremes of design / baseline against 2,000 random points of the box
    and every corner computed directly."""
    rng = random.Random(0)
    table = est_table()
    kinds = list(table.ranges)
    design = {k: rng.uniform(0, 10) for k in kinds} | {"spare_cells": 0.0}
    base = {k: rng.uniform(5, 30) for k in kinds}
    lo, hi = ratio_range(design, base, table)
    f = {k: table.ranges[k].energy for k in kinds}
    seen = []
    for _ in range(2000):
        s = {k: rng.uniform(*f[k]) for k in kinds}
        seen.append(sum(design[k] * s[k] for k in kinds) / sum(base[k] * s[k] for k in kinds))
    assert lo <= min(seen) + 1e-12 and max(seen) <= hi + 1e-12
    corners = [sum(design[k] * f[k][e] for k, e in zip(kinds, c, strict=True))
               / sum(base[k] * f[k][e] for k, e in zip(kinds, c, strict=True))
               for c in itertools.product((0, 1), repeat=len(kinds))]
    assert lo == pytest.approx(min(corners)) and hi == pytest.approx(max(corners))


@pytest.mark.parametrize("edit,key", [
    (lambda r: r[0]["energy"]["low"].__setitem__("value", 99.0), "ranges[0].energy"),
    (lambda r: r[0]["energy"]["high"].__setitem__("value", 0.1), "ranges[0].energy"),
    (lambda r: r[0]["energy"]["low"].pop("source"), "ranges[0].energy.low.source"),
    (lambda r: r[0]["energy"]["low"].__setitem__("unit", "um2"), "ranges[0].energy.low.unit"),
    (lambda r: r[0]["energy"].pop("high"), "ranges[0].energy"),
    (lambda r: r[0].__setitem__("kind", "laser"), "ranges[0].kind"),
    (lambda r: r[0].__setitem__("anchor", {"bits": 13}), "ranges[0].anchor"),
    (lambda r: r[0].__setitem__("anchor", {"bitz": 8}), "ranges[0].anchor"),
    (lambda r: r[0].__setitem__("anchor", [8]), "ranges[0].anchor"),
    (lambda r: r[0].__setitem__("lowest", 1), "ranges[0].lowest"),
    (lambda r: r[0]["energy"]["high"].__setitem__("value", float("nan")),
     "ranges[0].energy.high.value"),
    (lambda r: r[0]["energy"]["high"].__setitem__("value", "2.7"),
     "ranges[0].energy.high.value"),
    (lambda r: r[0]["energy"].__setitem__("mid", {}), "ranges[0].energy"),
    (lambda r: r.__setitem__(0, "adc"), "ranges[0]"),
    (lambda r: r.append(copy.deepcopy(r[0])), "kind"),
    (lambda r: r[0]["energy"]["low"].__setitem__("value", -1), "ranges[0].energy.low.value"),
])
def test_bad_range_entries_are_refused_by_name(edit, key):
    data = _isaac()
    edit(data["ranges"])
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_table(data)


def test_ranges_must_be_a_list():
    data = _isaac()
    data["ranges"] = {"kind": "adc"}
    with pytest.raises(ValueError, match=r"isaac.ranges=.*a list"):
        load_table(data)


def test_data_dependent_prices_the_measured_inputs_and_activity(tmp_path):
    plan = _plan()
    names = [layer.name for layer in plan]
    measured = {n: {"zero_inputs": 0.25 * i, "activity": 0.1 + 0.2 * i}
                for i, n in enumerate(names)}
    worst = estimate(plan, XBAR, CostConfig())
    est = estimate(plan, XBAR, CostConfig(data_dependent=True), measured=measured)
    for w, m in zip(worst.compressed.layers, est.compressed.layers, strict=True):
        keep = 1 - measured[w.name]["zero_inputs"]
        assert m.energy_pJ["dac"] == pytest.approx(w.energy_pJ["dac"] * keep)
        assert m.energy_pJ["input_register"] == pytest.approx(w.energy_pJ["input_register"]
                                                              * keep)
        assert m.energy_pJ["crossbar"] == pytest.approx(
            w.energy_pJ["crossbar"] * measured[w.name]["activity"])
        assert m.energy_pJ["adc"] == w.energy_pJ["adc"]
    # one fixed baseline; the attribution gains a last step and still adds up
    assert est.baseline.total_energy_nJ == worst.baseline.total_energy_nJ
    steps = est.attribution
    assert steps[-1]["step"] == "measured activity" and steps[-1]["energy_change_pct"] < 0
    total = sum(s["energy_change_pct"] for s in steps[1:])
    assert total == pytest.approx(-est.reduction["energy_reduction_pct"])
    # the default stays the worst case even when measurements are given
    same = estimate(plan, XBAR, CostConfig(), measured=measured)
    assert same.compressed.total_energy_nJ == worst.compressed.total_energy_nJ
    with pytest.raises(ValueError, match="cost.data_dependent"):
        estimate(plan, XBAR, CostConfig(data_dependent=True))
    with pytest.raises(ValueError, match="data_dependent"):
        CostConfig(data_dependent="yes")


def test_report_shows_ranges_and_cost_json_has_them(tmp_path):
    write_cost_report(_plan(), XBAR, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Ranges (low / typical / high)" in md and "Kull et al. ISSCC 2013" in md
    data = json.loads((tmp_path / "cost.json").read_text())
    r = data["ranges"]
    assert r["compressed"]["energy_nJ"][0] < data["compressed"]["totals"]["energy_nJ"] \
        < r["compressed"]["energy_nJ"][1]
    assert set(r["kinds"]) >= {"adc", "dac", "crossbar", "buffer"} and not r["without_range"]
    assert (tmp_path / "energy_breakdown.png").stat().st_size > 0


def test_cli_refuses_data_dependent_without_measurements(tmp_path, capsys):
    from memxbar.crossbar.io import run_cli
    from memxbar.crossbar.report import main
    plan = _plan()
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    (tmp_path / "xbar.json").write_text(json.dumps(XBAR.to_dict()))
    (tmp_path / "cost.json").write_text(json.dumps({"data_dependent": True}))
    out = tmp_path / "out"
    rc = run_cli(main, ["--plan", str(tmp_path / "plan.json"), "--config",
                        str(tmp_path / "xbar.json"), "--cost", str(tmp_path / "cost.json"),
                        "--out", str(out)])
    assert rc == 1 and not out.exists()
    assert "cost.data_dependent=True is invalid" in capsys.readouterr().err
