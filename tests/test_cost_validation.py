"""Issue 23: the cost model against published chips (crossbar.validate).

The bounds are the errors the model measured when this was written (docs/cost_model.md,
"Validation against published chips"), rounded up, not targets: a change of the model or of a
table that moves a point past its bound must update the documented table too.
"""

from __future__ import annotations

import math

import pytest

from memxbar.crossbar.cost import PLAUSIBLE, check_plausible, load_table
from memxbar.crossbar.validate import (
    NEURRAM_ANCHOR,
    NEURRAM_POINTS,
    OPS_PER_MAC,
    load_validation_table,
    macs,
    neurram_phases,
    neurram_point_cost,
    tops_per_watt,
    validation_markdown,
    validation_report,
    validation_tables,
)


@pytest.fixture(scope="module")
def rows():
    return validation_report()


def _design(rows, prefix):
    found = [r for r in rows if r["design"].startswith(prefix)]
    assert found, prefix
    return found


# ---------------------------------------------------------------------------- the errors
def test_neurram_anchor_reproduces_its_own_breakdown(rows):
    """The table is derived from this point, so only the figure's digitisation remains."""
    anchor = [r for r in _design(rows, "NeuRRAM") if r["role"] == "anchor"]
    assert len(anchor) == 1 and anchor[0]["point"].startswith(f"{NEURRAM_ANCHOR[0]}b in")
    assert abs(anchor[0]["rel_error"]) < 0.01
    for share in anchor[0]["breakdown"].values():
        assert share["model"] == pytest.approx(share["published"], abs=1e-3)


def test_neurram_predictions_within_measured_bound(rows):
    """Seven predicted points: measured -18.6 % (2b/4b) to +16.6 % (6b/8b); bound 20 %."""
    pred = [r for r in _design(rows, "NeuRRAM") if r["role"] == "prediction"]
    assert len(pred) == len(NEURRAM_POINTS) - 1 == 7
    errors = [r["rel_error"] for r in pred]
    assert max(abs(e) for e in errors) < 0.20, errors
    assert sum(abs(e) for e in errors) / len(errors) < 0.12  # measured mean |error| 10.3 %


def test_neurram_breakdown_shares_within_measured_bound(rows):
    """WL switching / neuron read-out / input pulses shares: measured at most 13.3 points apart
    (neuron at 2b/4b); bound 15 points. The published shares are about half, a third and
    15-18 %, as the issue says."""
    for r in _design(rows, "NeuRRAM"):
        shares = r["breakdown"]
        assert sum(s["published"] for s in shares.values()) == pytest.approx(1.0)
        assert sum(s["model"] for s in shares.values()) == pytest.approx(1.0)
        for cat, s in shares.items():
            assert abs(s["model"] - s["published"]) < 0.15, (r["point"], cat, s)
        assert 0.45 <= shares["read-out (neuron)"]["published"] <= 0.51
        assert 0.14 <= shares["input pulses"]["published"] <= 0.185


def test_isaac_tile_within_the_existing_check(rows):
    """The ISAAC tile check (crossbar.report.isaac_tile_comparison) is kept: power -10.8 %,
    area -0.1 %; power shares of the Table 6 rows at most 6.2 points apart (eDRAM: the model
    charges one inference's buffer traffic, ISAAC a pipelined CNN's)."""
    isaac = _design(rows, "ISAAC")
    power = next(r for r in isaac if r["metric"].startswith("power"))
    area = next(r for r in isaac if r["metric"].startswith("area"))
    assert -0.15 < power["rel_error"] < 0.0
    assert abs(area["rel_error"]) < 0.02
    assert power["published"] == pytest.approx(309.7, rel=1e-3)
    for part, s in power["breakdown"].items():
        assert abs(s["model"] - s["published"]) < 0.07, (part, s)


def test_hung_macro_measured_errors(rows):
    """Generic ISAAC components scaled to 22 nm: binary -31.6 %; 8b x 8b -86.7 %, far off
    because the model converts every weight slice and input bit separately (64 8-bit
    conversions per output) where the macro combines weight bits in analog (its weighted
    current-to-voltage stacking). The bound asserts the measured gap, not a target."""
    binary, eight = _design(rows, "Hung")
    assert binary["published"] == 194.4 and eight["published"] == 15.6
    assert -0.35 < binary["rel_error"] < -0.25
    assert -0.90 < eight["rel_error"] < -0.80


def test_every_row_is_complete(rows):
    keys = {"design", "point", "metric", "published", "model", "rel_error", "role",
            "breakdown", "source"}
    for r in rows:
        assert keys <= set(r), r
        assert r["source"].strip()
        assert math.isclose(r["rel_error"], r["model"] / r["published"] - 1, rel_tol=1e-9,
                            abs_tol=1e-12)
    assert {r["role"] for r in rows} == {"anchor", "prediction", "check"}


def test_markdown_lists_every_point(rows):
    md = validation_markdown(rows)
    for r in rows:
        assert r["point"] in md
    assert "1 MAC = 2 operations" in md
    assert md.count("\n| ") >= len(rows)


# ------------------------------------------------------------------------ ops convention
def test_one_mac_is_two_operations():
    assert OPS_PER_MAC == 2
    assert tops_per_watt(1, 1e-12) == pytest.approx(2.0)  # 2 ops per pJ = 2 TOPS/W
    with pytest.raises(ValueError, match="energy"):
        tops_per_watt(1, 0.0)


def test_ops_convention_applied_to_neurram():
    """MACs are the logical weights (256 x 128 = 32,768 per MVM, not 65,536 cells, not times the
    input bits or phases), and the model's TOPS/W is 2 x MACs / energy."""
    anchor = next(p for p in NEURRAM_POINTS if (p.in_bits, p.out_bits) == NEURRAM_ANCHOR)
    energy, n_macs = neurram_point_cost(anchor)
    assert n_macs == 256 * 128
    two_phase = next(p for p in NEURRAM_POINTS if p.two_phase)
    assert neurram_point_cost(two_phase)[1] == n_macs  # one MVM, however many phases
    e_J = sum(energy.values()) * 1e-12
    assert tops_per_watt(n_macs, e_J) == pytest.approx(2 * 32768 / e_J / 1e12)


def test_published_breakdown_is_per_operation():
    """The digitised breakdown (fJ per operation, 1 MAC = 2 ops) adds up to the published
    TOPS/W within 1 % at every point (1000 / fJ per op = TOPS/W): the same convention."""
    for p in NEURRAM_POINTS:
        assert 1000 / sum(p.breakdown_fJ_per_op) == pytest.approx(p.tops_per_w, rel=0.01), p


def test_hung_macs_count_weights_not_slices():
    from memxbar.crossbar.validate import _dense_plan, hung_config

    for in_bits, w_bits in ((1, 1), (8, 8)):
        xbar = hung_config(in_bits, w_bits)
        assert macs(_dense_plan("m", 128, 128, xbar)) == 128 * 128


def test_two_phase_split():
    assert neurram_phases(4, 6, False) == [(3, 6)]
    assert neurram_phases(1, 3, False) == [(1, 3)]  # a 1-bit input has 1 magnitude bit
    assert neurram_phases(2, 4, False) == [(1, 4)]  # ... and so has a 2-bit signed input
    assert neurram_phases(7, 9, True) == [(3, 9), (3, 6)]
    assert neurram_phases(8, 10, True) == [(4, 10), (3, 6)]


# ------------------------------------------------------------------------------- sources
@pytest.mark.parametrize("name", validation_tables())
def test_every_validation_entry_has_a_source(name):
    """Every entry cites a figure or table, or says how it is derived; an entry set to 0 says
    so in its source (a component the paper folds into another category); every nonzero value
    lies in the plausible range of its kind (no unit-prefix slip)."""
    table = load_validation_table(name)
    assert table.components
    for c in table.components:
        assert c.source.strip(), c
        assert c.source.startswith("derived:") or "Table" in c.source or "Fig." in c.source, c
        assert "Fig." in c.source or "Table" in c.source, c  # names where its numbers come from
        if c.energy_J == 0:
            assert c.source.startswith("derived: 0"), c
    nonzero = [c for c in table.components if c.energy_J > 0 and c.area_m2 > 0]
    problems = check_plausible(type(table)(table.name, tuple(nonzero)))
    assert problems == []
    for c in table.components:
        if c.energy_J > 0:
            (lo, hi), _ = PLAUSIBLE[CARRIED_BY.get((name, c.kind), c.kind)]
            assert lo <= c.energy_J <= hi, c


CARRIED_BY = {("neurram", "input_register"): "dac"}
"""Entries that carry another kind's event: NeuRRAM's WL pulse (a word-line swing, once per
input magnitude bit per row) is charged on the model's per-input-bit event
(input_register), so its energy is checked against the range of a drive (dac), not of a
register bit."""


def test_validation_tables_are_not_general_tables():
    from memxbar.crossbar.cost import available_tables

    assert set(validation_tables()) == {"neurram", "hung2021"}
    assert not set(validation_tables()) & set(available_tables())
    with pytest.raises(ValueError, match="validation table"):
        load_validation_table("isaac")
    assert load_table("isaac").get("adc", bits=8).source  # the shipped table still loads
