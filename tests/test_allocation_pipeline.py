"""Budgeted allocation in the pipeline on digits: the MILP's per-layer choice drives the
compressor, appears in report.md / metrics.json and respects the budget; an infeasible budget
fails before any training."""


import pytest
import torch
from test_experiments import TINY, _compose

from admm import LayerConstraint
from experiments.allocation import layer_candidates, layer_constraint
from experiments.config import load_compress_config
from experiments.models import build_model
from experiments.pipeline import load_data, run_compress

CANDIDATES = ("[{row_ratio: 0.25, levels: 16}, {row_ratio: 0.5, col_ratio: 0.5, levels: 16},"
              " {row_ratio: 0.75, col_ratio: 0.75, levels: 4}]")


def _alloc(budget, extra=""):
    return [*TINY, "compressor=obc", "obc.n_calib=128", "crossbar=small32_lowres",
            f"allocation={{budget: {budget}, resource: tiles, n_samples: 128{extra}, "
            f"candidates: {CANDIDATES}}}"]


def test_allocation_choice_in_report_and_within_budget(tmp_path):
    metrics = run_compress(_compose(_alloc(12)), tmp_path)
    alloc = metrics["allocation"]
    assert alloc["resource"] == "tiles" and alloc["budget"] == 12
    assert alloc["total_cost"] <= 12 and alloc["min_cost"] == 6
    assert alloc["total_cost"] == sum(r["cost"] for r in alloc["layers"].values())
    assert metrics["tiles"] <= 12  # the compressed model's mapping fits too
    report = (tmp_path / "report.md").read_text()
    assert "## Budgeted allocation" in report and "| **total** | budget 12 |" in report
    state = torch.load(tmp_path / "compressed.pt", weights_only=True)
    for name, row in alloc["layers"].items():
        setting = ", ".join(f"{k}={v}" for k, v in row["setting"].items())
        assert f"| {name} | {setting} |" in report
        mask = state["masks"][name]
        kept_rows = mask.shape[1] - int(row["setting"]["row_ratio"] * mask.shape[1])
        assert mask.any(0).sum() <= kept_rows, name


def test_infeasible_budget_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"allocation.budget=5 is infeasible.* tiles .* is 6 "):
        run_compress(_compose(_alloc(5)), tmp_path)
    assert not (tmp_path / "dense.pt").exists()


def test_candidate_patterns_limit_layers(tmp_path):
    cands = "[{levels: 16}, {pattern: 'classifier.[02]', row_ratio: 0.75, levels: 4}]"
    cfg = [*_alloc(12)[:-1], "allocation={budget: 40, resource: energy_nJ, importance: null, "
           f"candidates: {cands}}}"]
    exp = load_compress_config(_compose(cfg))
    train, _, info = load_data(exp.dataset, exp.seed)
    model = build_model("lenet5", input_shape=info.input_shape)
    def candidates(e):
        return layer_candidates(model, e.allocation, e.admm.layer_constraints(), e.crossbar,
                                e.cost, train.dataset[0][0][None])

    out = candidates(exp)
    assert [len(v) for v in out.values()] == [1, 1, 2, 2, 1]
    assert out["classifier.0"][1].cost < out["classifier.0"][0].cost
    bad = [*_alloc(12)[:-1], "allocation={budget: 40, candidates: [{pattern: 'features.*'}]}"]
    with pytest.raises(ValueError, match="no candidate's pattern matches layer 'classifier.0'"):
        candidates(load_compress_config(_compose(bad)))


def test_candidate_replaces_pruning_fields():
    base = LayerConstraint("classifier.*", row_keep=20, col_ratio=0.5, levels=16)
    c = layer_constraint(base, "classifier.0", {"row_ratio": 0.25, "levels": 4})
    assert (c.row_keep, c.col_ratio, c.row_ratio, c.levels) == (None, None, 0.25, 4)
    assert c.pattern == r"re:classifier\.0"


@pytest.mark.parametrize("override, words", [
    ("allocation={budget: -1, candidates: [{levels: 4}]}", ["allocation.budget=-1", "> 0"]),
    ("allocation={budget: 3}", ["allocation.candidates=[]", "non-empty"]),
    ("allocation={budget: 3, resource: mm2, candidates: [{levels: 4}]}",
     ["allocation.resource='mm2'", "tiles, area_mm2, energy_nJ"]),
    ("allocation={budget: 3, candidates: [{rows: 4}]}", ["allocation.candidates[0].rows=4",
                                                         "row_ratio"]),
    ("allocation={budget: 3, candidates: [{row_ratio: 1.5}]}",
     ["allocation.candidates[0].row_ratio=1.5"]),
    ("allocation={budget: 3, importance: l1, candidates: [{levels: 4}]}",
     ["allocation.importance='l1'", "fisher"]),
])
def test_allocation_validation(override, words):
    with pytest.raises(ValueError) as info:
        load_compress_config(_compose([override]))
    for word in words:
        assert word in str(info.value)


def test_candidate_cost_of_a_grouped_convolution_counts_each_groups_tiles():
    """The allocation costs a depthwise layer as the simulator maps it: one group per tile
    (64 channels, 3x3 -> 64 tiles), not the dense packing (1 tile)."""
    from torch import nn

    from crossbar.cost import load_table
    from experiments.allocation import _cost

    exp = load_compress_config(_compose(_alloc(12)))
    conv = nn.Conv2d(64, 64, 3, groups=64)
    mask = torch.ones(64, 9, dtype=torch.bool)
    tiles = _cost("dw", conv, mask, exp.crossbar, exp.cost, "tiles", {"dw": 1},
                  load_table(exp.cost.table))
    assert tiles == 64
