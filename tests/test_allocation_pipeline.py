"""Budgeted allocation in the pipeline on digits: the MILP's per-layer choice drives the
compressor, appears in report.md / metrics.json and respects the budget; an infeasible budget
fails before any training."""


import json

import pytest
import torch
from test_experiments import TINY, _compose

from memxbar.admm import LayerConstraint
from memxbar.experiments.allocation import layer_candidates, layer_constraint
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.data import load_data
from memxbar.experiments.models import build_model
from memxbar.experiments.pipeline import run_compress

CANDIDATES = ("[{row_ratio: 0.25, levels: 16}, {row_ratio: 0.5, col_ratio: 0.5, levels: 16},"
              " {row_ratio: 0.75, col_ratio: 0.75, levels: 4}]")


def _alloc(budget, extra=""):
    return [*TINY, "compressor=obc", "obc.n_calib=128", "crossbar=small32_lowres",
            f"allocation={{budget: {budget}, resource: tiles, n_samples: 128, importance: fisher"
            f"{extra}, "
            f"candidates: {CANDIDATES}}}"]


def test_allocation_choice_in_report_and_within_budget(tmp_path):
    metrics = run_compress(_compose(_alloc(12)), tmp_path)
    alloc = metrics["allocation"]
    assert alloc["resource"] == "tiles" and alloc["budget"] == 12
    assert alloc["total_cost"] <= 12 and alloc["min_cost"] == 7  # outputs of the last layer kept
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
    with pytest.raises(ValueError, match=r"allocation.budget=6 is infeasible.* tiles .* is 7 "):
        run_compress(_compose(_alloc(6)), tmp_path)
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
    ("allocation={budget: 3, candidates: []}", ["allocation.candidates=[]", "non-empty"]),
    ("allocation={candidates: auto}",
     ["allocation.budget=None", "max_drop=None", "exactly one"]),
    ("allocation={budget: 0.5}", ["allocation.budget=0.5", "ratio >= 1"]),
    ("allocation={max_drop: -1}", ["allocation.max_drop=-1", "[0, 100]"]),
    ("allocation={max_drop: 1, search_range: [10, 2]}",
     ["allocation.search_range=[10, 2]", "loose < tight"]),
    ("allocation={budget: 3, candidates: every}", ["allocation.candidates='every'", "auto"]),
    ("allocation={budget: 3, resource: mm2, candidates: [{levels: 4}]}",
     ["allocation.resource='mm2'", "tiles, area_mm2, energy_nJ"]),
    ("allocation={budget: 3, candidates: [{rows: 4}]}", ["allocation.candidates[0].rows=4",
                                                         "row_ratio"]),
    ("allocation={budget: 3, candidates: [{row_ratio: 1.5}]}",
     ["allocation.candidates[0].row_ratio=1.5"]),
    ("allocation={budget: 3, importance: l1, candidates: [{levels: 4}]}",
     ["allocation.importance='l1'", "output, kl, fisher, hessian"]),
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

    from memxbar.crossbar.cost import load_table
    from memxbar.experiments.allocation import _cost

    exp = load_compress_config(_compose(_alloc(12)))
    conv = nn.Conv2d(64, 64, 3, groups=64)
    mask = torch.ones(64, 9, dtype=torch.bool)
    tiles = _cost("dw", conv, mask, exp.crossbar, exp.cost, "tiles", {"dw": 1},
                  load_table(exp.cost.table))
    assert tiles == 64


# ------------------------------------------------------------ budgets (issue 19)
def test_bisection_converges_on_the_tightest_budget_that_meets():
    """Log-scale bisection against a monotone oracle: every budget tried lies in the bracket,
    the tightest that met is within the final bracket of the true threshold."""
    from memxbar.experiments.search import bisect_budgets
    for threshold in (1.3, 7.0, 31.0, 90.0):
        tried = bisect_budgets(1.0, 100.0, lambda b, t=threshold: b <= t, steps=8)
        assert len(tried) == 8 and all(1.0 < b < 100.0 for b, _ in tried)
        assert all(ok == (b <= threshold) for b, ok in tried)
        met = max((b for b, ok in tried if ok), default=1.0)
        assert met <= threshold < met * 100.0 ** (2.0 ** -8) * 1.001  # bracket width


def _search_metrics(budget: float, chips: int, drop: float) -> dict:
    """What a run at ``budget`` reports (only the keys the search reads)."""
    return {"dense_accuracy": 99.0, "crossbar_accuracy_mean": 99.0 - drop,
            "crossbar_accuracy_std": 0.1, "crossbar_accuracy_ci95": 0.1, "chips": chips,
            "compression_ratio": budget, "tiles": 1, "area_mm2": 1.0, "energy_nJ": 1.0,
            "compressed_accuracy": 98.9, "crossbar_ideal_accuracy": 98.8}


@pytest.mark.parametrize("confirm", [2.0, 0.0])
def test_a_borderline_point_is_measured_again_on_the_runs_chips(tmp_path, confirm):
    """``allocation.search_confirm``: a point whose drop is within that many standard errors
    of the budget on ``search_chips`` chips is run again on ``eval.chips`` chips (its own
    folder) and decided on that measurement; clear points are not; 0 turns it off. The
    oracle: 16x drops 1.02 on 5 chips (0.02 above the budget, 0.45 standard errors) and 0.98
    on 25."""
    from memxbar.experiments.search import budget_search
    exp = load_compress_config(_compose([
        *TINY, "eval.chips=25", "allocation={max_drop: 1.0, search_steps: 3, search_chips: 5, "
        f"search_range: [2, 32], search_confirm: {confirm}}}"]))
    calls = []

    def run_point(config, folder):
        budget, chips = config["allocation"]["budget"], config["eval"]["chips"]
        calls.append((folder.name, budget, chips))
        drop = 0.5 if budget <= 8 else (1.02 if chips == 5 else 0.98) if budget <= 16 else 3.0
        return _search_metrics(budget, chips, drop)

    def finish(chosen, run_dir):
        (run_dir / "report.md").write_text("# run\n")
        return _search_metrics(chosen["allocation"]["budget"], chosen["eval"]["chips"], 0.0)

    search = budget_search(exp, tmp_path, (2.0, 32.0), run_point, finish, lambda raw: raw)[
        "search"]
    points = search["points"]
    assert [p["budget"] for p in points][:2] == [8.0, 16.0]
    assert "first_measurement" not in points[0] and points[0]["chips"] == 5
    if confirm:
        assert calls[:3] == [("step1_8", 8.0, 5), ("step2_16", 16.0, 5),
                             ("step2_16_confirm", 16.0, 25)]
        assert points[1]["chips"] == 25 and points[1]["meets"]
        first = points[1]["first_measurement"]
        assert first == {"chips": 5, "chip_mean": 97.98, "chip_std": 0.1,
                         "drop": pytest.approx(1.02), "meets": False}
        assert points[1]["folder"] == "search/step2_16_confirm"
        assert search["chosen_budget"] == 16.0
        assert "(25 chips; on 5: 1.02)" in (tmp_path / "report.md").read_text()
    else:
        assert len(calls) == 3 and all(chips == 5 for _, _, chips in calls)
        assert not points[1]["meets"] and search["chosen_budget"] == 8.0
    # the far points (0.5 and 3.0 drops: 11 and 45 standard errors away) are not re-measured
    assert sum(name.endswith("_confirm") for name, _, _ in calls) == (1 if confirm else 0)
    # resumed: every point, the confirmed one included, is read from search.json
    calls.clear()
    again = budget_search(exp, tmp_path, (2.0, 32.0), run_point, finish, lambda raw: raw)
    assert calls == [] and again["search"]["points"] == points
    # extended by a step: the three points are read back, only the fourth budget runs
    longer = load_compress_config(_compose([
        *TINY, "eval.chips=25", "allocation={max_drop: 1.0, search_steps: 4, search_chips: 5, "
        f"search_range: [2, 32], search_confirm: {confirm}}}"]))
    calls.clear()
    extended = budget_search(longer, tmp_path, (2.0, 32.0), run_point, finish, lambda r: r)
    assert extended["search"]["points"][:3] == points and len(calls) == 1
    assert calls[0][0].startswith("step4_")


def test_a_search_point_is_the_same_compression_whatever_the_search_settings():
    """A point's settings hold no search-only key (``SEARCH_KEYS``): the compression
    fingerprint, and so the cached model, of a budget is the same for every search that tries
    it, so that more steps, chips or another range reuse every model trained."""
    from memxbar.experiments.compressors.settings import SEARCH_KEYS
    from memxbar.experiments.guard import fingerprint
    from memxbar.experiments.search import _point_config

    def point(search):
        exp = load_compress_config(_compose([*TINY, f"allocation={{max_drop: 1.0, {search}}}"]))
        config = _point_config(exp.raw, 4.0, 3, "cache")
        assert not set(SEARCH_KEYS) & {k for k in config["allocation"] if k != "max_drop"}
        return fingerprint(load_compress_config(config))

    base = point("search_steps: 2")
    assert base["allocation"]["budget"] == 4.0
    for other in ("search_steps: 5", "search_chips: 9", "search_confirm: 0",
                  "search_range: [1.5, 9]", "max_drop: 3.0, search_steps: 2"):
        assert point(other) == base, other


def test_compression_budget_is_reached_by_admm(tmp_path):
    """A compression-ratio budget with ``candidates: auto``: the MILP's per-layer kept rows and
    columns are exactly the ones ADMM ends on, and the mapped model meets the ratio."""
    cfg = [*TINY, "robustness.hardware_aware=false", "robustness.ablation=false",
           "admm.prune_epochs=2", "admm.prune_retrain_epochs=2",
           "allocation={budget: 4, n_samples: 128}"]
    metrics = run_compress(_compose(cfg), tmp_path)
    alloc = metrics["allocation"]
    assert alloc["resource"] == "weights" and alloc["ratio"] == 4
    assert metrics["compression_ratio"] >= 4
    masks = torch.load(tmp_path / "compressed.pt", weights_only=True)["masks"]
    pruned = 0
    for name, row in alloc["layers"].items():
        setting, mask = row["setting"], masks[name]
        assert int(mask.any(0).sum()) == setting.get("row_keep", mask.shape[1]), name
        assert int(mask.any(1).sum()) == setting.get("col_keep", mask.shape[0]), name
        pruned += bool(setting)
    assert pruned >= 2  # the budget needs several layers pruned
    assert "col_keep" not in alloc["layers"]["classifier.4"]["setting"]  # outputs kept
    report = (tmp_path / "report.md").read_text()
    assert "(a 4x compression ratio)" in report


def test_auto_candidates_cover_the_ladder_and_keep_outputs():
    from memxbar.experiments.allocation import auto_candidates
    inner = auto_candidates((120, 400), final=False)
    assert {} in inner and len(inner) == 100  # 10 row x 10 column fractions, one unpruned
    assert {"row_keep": 12, "col_keep": 4} in inner  # 3 % of each, rounded
    last = auto_candidates((10, 84), final=True)
    assert all("col_keep" not in c for c in last) and len(last) == 10
    tiny = auto_candidates((2, 3), final=False)  # at least one row and column, no repeats
    assert len(tiny) == len({tuple(sorted(c.items())) for c in tiny}) == 6


def test_accuracy_budget_search_stops_within_its_budget(tmp_path, caplog):
    """``allocation.max_drop``: bisection over the compression ratio, one run folder per
    point, one dense model for all, the chosen point re-evaluated in the run folder from the
    cached compressed model; report, figure and metrics list every point."""
    cfg = [*TINY, "robustness.hardware_aware=false", "eval.chips=3",
           "admm.prune_epochs=2", "admm.prune_retrain_epochs=2",
           "allocation={max_drop: 25, search_steps: 2, search_chips: 2, n_samples: 128, "
           "search_range: [1.5, 6]}"]
    with caplog.at_level("INFO"):
        metrics = run_compress(_compose(cfg), tmp_path)
    search = metrics["search"]
    points = search["points"]
    assert [p["step"] for p in points] == [1, 2] and points[0]["budget"] == 3.0
    assert points[1]["budget"] == (4.243 if points[0]["meets"] else 2.121)
    met = [p for p in points if p["meets"]]
    assert met and search["chosen_budget"] == max(p["budget"] for p in met)
    assert all(p["drop"] <= 25 for p in met) and all(p["chips"] == 2 for p in points)
    chosen = next(p for p in points if p["budget"] == search["chosen_budget"])
    assert metrics["compression_ratio"] == chosen["compression_ratio"] >= chosen["budget"]
    assert metrics["chips"] == 3 and metrics["compressed_accuracy"] == chosen[
        "compressed_accuracy"]  # the point's model, evaluated on the run's chips
    assert len(list((tmp_path / "search" / "cache").glob("dense-*.pt"))) == 1
    assert "compressed model reused from the cache" in caplog.text
    for p in points:
        assert (tmp_path / p["folder"] / "report.md").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "## Budget search" in report and "**(chosen)**" in report
    assert (tmp_path / "budget_search.png").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["search"] == search
    # resumed: every point reused, nothing trained again
    caplog.clear()
    with caplog.at_level("INFO"):
        again = run_compress(_compose([*cfg, "resume=true"]), tmp_path)
    assert caplog.text.count("reused from") >= 2 and "pretrain epoch" not in caplog.text
    assert again["search"]["points"] == points


def test_magnitude_baseline_trains_as_long_on_the_same_allocation(tmp_path, caplog):
    """``compressor=magnitude``: the same allocation as ADMM's at the budget, no ADMM epochs
    (hard structured magnitude projection at once), their epochs spent on fine-tuning."""
    cfg = [*TINY, "compressor=magnitude", "robustness.hardware_aware=false",
           "robustness.ablation=false", "admm.prune_epochs=2", "admm.prune_retrain_epochs=2",
           "allocation={budget: 4, n_samples: 128}"]
    with caplog.at_level("INFO"):
        metrics = run_compress(_compose(cfg), tmp_path)
    text = caplog.text
    assert "prune epoch" not in text and "quant epoch" not in text
    assert "prune_retrain epoch 4/4" in text and "quant_retrain epoch 2/2" in text
    assert metrics["compressor"] == "magnitude" and metrics["compression_ratio"] >= 4
    masks = torch.load(tmp_path / "compressed.pt", weights_only=True)["masks"]
    for name, row in metrics["allocation"]["layers"].items():
        assert int(masks[name].any(0).sum()) == row["setting"].get("row_keep",
                                                                   masks[name].shape[1])


def test_output_distortion_is_the_measured_output_change_after_obs_repair():
    """``importance: output``: the layer is compressed with OBS compensation on its inputs
    (``admm.obc.ObcLayer``), the others dense, and the distortion is the relative squared
    change of the model's outputs; zero for no compression; the model is left as it was."""
    from memxbar.admm.obc import ObcLayer
    from memxbar.experiments.allocation import OutputDistortion
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).eval()
    x = torch.randn(300, 16)
    before = [p.clone() for p in model.parameters()]
    measure = OutputDistortion(model, x, batch=128)
    hidden = model[2]
    assert measure(hidden, LayerConstraint()) == pytest.approx(0.0, abs=1e-12)
    c = LayerConstraint(row_keep=8, levels=4)
    got = measure(hidden, c)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.no_grad():
        reference = model(x)
        obc = ObcLayer(hidden)
        obc.add_batch(torch.relu(model[0](x)))
        obc.compress(c)
        direct = float((model(x) - reference).pow(2).sum() / reference.pow(2).sum())
    assert got == pytest.approx(direct, rel=1e-5) and got > 1e-4


def test_feeding_links_follow_the_chain_and_stop_at_shifts_and_adds():
    """LeNet-5: each layer's input rows are fed by the previous layer's outputs (25 taps or 25
    positions per channel, one feature per neuron); a BatchNorm shift or a residual add in
    between breaks the link (a pruned output is then not a dead input)."""
    from memxbar.experiments.allocation import feeding_links
    model = build_model("lenet5", input_shape=(1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    links = {"features.3": ("features.0", 25), "classifier.0": ("features.3", 25),
             "classifier.2": ("classifier.0", 1), "classifier.4": ("classifier.2", 1)}
    assert feeding_links(model, x) == links
    with torch.no_grad():  # a dead first neuron (never passes its ReLU) does not hide a link
        model.classifier[0].bias[0] = -1e4
        model.features[0].bias[0] = -1e4
    assert feeding_links(model, x) == links

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
            self.norm, self.c = torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4)

        def forward(self, v):
            h = torch.relu(self.a(v))
            h = h + torch.relu(self.b(h))  # residual: b's output is not b2's only input
            return self.c(self.norm(h))  # BatchNorm shifts a zero output

    net = Residual()
    with torch.no_grad():
        net.norm.running_mean.fill_(0.5)
    assert feeding_links(net, torch.randn(16, 8)) == {"b": ("a", 1)}


def test_pruned_outputs_are_measured_after_the_next_layer_is_refit():
    """A candidate that prunes a layer's outputs is measured with the layer they feed refit by
    least squares (channel-pruning reconstruction): where that is the output layer, the refit
    minimises exactly the measured change, so it is never worse than no refit."""
    from memxbar.experiments.allocation import OutputDistortion
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(),
                                torch.nn.Linear(24, 6)).eval()
    x = torch.randn(400, 12)
    plain = OutputDistortion(model, x, percdamp=0.0)
    refit = OutputDistortion(model, x, percdamp=0.0, successors={"0": "2"})
    before = [p.clone() for p in model.parameters()]
    for keep in (20, 12, 6):
        c = LayerConstraint(col_keep=keep)
        a, b = plain(model[0], c), refit(model[0], c)
        assert 0 < b < a, keep
    assert refit(model[0], LayerConstraint(row_keep=6)) == plain(model[0],
                                                                 LayerConstraint(row_keep=6))
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
