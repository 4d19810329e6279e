"""compressor=obc through the pipeline on digits: post-training OBC instead of ADMM, the same
artifacts (masks respected, weights on the conductance levels), config validation."""

import json

import pytest
import torch
from test_experiments import METRIC_KEYS, TINY, _compose

from memxbar.admm import pair_levels
from memxbar.crossbar import MappingPlan
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.pipeline import run_compress

OBC = [*TINY, "train.epochs=8", "compressor=obc", "obc.n_calib=256"]


@pytest.fixture(scope="module")
def obc_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("obc")
    return run_dir, run_compress(_compose(OBC), run_dir)


def test_obc_outputs(obc_run):
    run_dir, metrics = obc_run
    assert METRIC_KEYS <= set(metrics) and metrics["compressor"] == "obc"
    assert "obc" in metrics["timings_s"] and "admm" not in metrics["timings_s"]
    assert json.loads((run_dir / "metrics.json").read_text())["compressor"] == "obc"
    assert not (run_dir / "admm_state.pt").exists()  # no ADMM training, no retraining
    for name in ("dense.pt", "compressed.pt", "plan.json", "report.md", "cost/cost.json"):
        assert (run_dir / name).is_file(), name
    report = (run_dir / "report.md").read_text()
    assert f"compressor: obc ({metrics['timings_s']['obc']:.1f} s)" in report
    assert metrics["compression_ratio"] > 1 and 0 <= metrics["compressed_accuracy"] <= 100
    # a collapse is said loudly (metrics, report, log), not left at exit 0 in silence
    collapsed = metrics["compressed_accuracy"] <= 15.0
    assert bool(metrics["warnings"]) == (collapsed or metrics["dense_accuracy"]
                                         - metrics["compressed_accuracy"] > 20)
    if metrics["warnings"]:
        assert "> **Warning:**" in report


def test_collapse_warnings_name_the_cause(caplog):
    from memxbar.experiments.stages import collapse_warnings

    with caplog.at_level("WARNING", logger="memxbar.experiments.stages"):
        out = collapse_warnings(95.6, 10.3, 10, "obc")
    assert len(out) == 1 and "collapsed" in out[0] and "compressor=admm" in out[0]
    assert "the admm group's constraints (which compressor='obc' meets)" in out[0]
    assert "use compressor=admm" not in collapse_warnings(95.6, 10.3, 10, "admm")[0]
    assert "collapsed" in caplog.text
    assert collapse_warnings(95.6, 70.0, 10, "admm")[0].startswith("compression cost 25.60")
    assert collapse_warnings(95.6, 93.0, 10, "admm") == []


def test_obc_checkpoint_masks_and_levels(obc_run):
    run_dir, metrics = obc_run
    state = torch.load(run_dir / "compressed.pt", weights_only=True)
    assert state["compressor"] == "obc"
    assert [h["layer"] for h in state["history"] if h["event"] == "obc_layer"] == [
        "features.0", "features.3", "classifier.0", "classifier.2", "classifier.4"]
    plan = MappingPlan.load(run_dir / "plan.json")
    exp = load_compress_config(_compose(OBC))
    keep = {c["pattern"]: c for c in exp.admm.constraints}
    for name, mask in state["masks"].items():
        W = state["model"][f"{name}.weight"].reshape(mask.shape[0], -1)
        assert torch.all(W[~mask] == 0), name
        q = W[mask] / state["scales"][name]
        levels = pair_levels(exp.admm.levels)
        gap = (q[:, None] - levels[None]).abs().min(1).values
        assert gap.max() < 1e-4, name
        rows, cols = mask.any(0).sum().item(), mask.any(1).sum().item()
        assert (plan[name].live_rows, plan[name].live_cols) == (
            tuple(mask.any(0).nonzero().flatten().tolist()),
            tuple(mask.any(1).nonzero().flatten().tolist()))
        c = keep[name]
        if c.get("row_ratio"):
            assert rows <= mask.shape[1] - int(c["row_ratio"] * mask.shape[1])
        if c.get("col_ratio"):
            assert cols <= mask.shape[0] - int(c["col_ratio"] * mask.shape[0])


def test_obc_resumes(obc_run):
    run_dir, metrics = obc_run
    again = run_compress(_compose([*OBC, "resume=true"]), run_dir)  # checkpoints reused
    for key in ("dense_accuracy", "compressed_accuracy", "compression_ratio", "tiles"):
        assert again[key] == metrics[key]


def test_obc_with_fisher_importance(tmp_path):
    metrics = run_compress(_compose([*OBC, "train.epochs=2", "obc.n_calib=64",
                                     "obc.importance=fisher"]), tmp_path)
    assert metrics["compressor"] == "obc" and metrics["compression_ratio"] > 1
    assert "importance: fisher" in (tmp_path / "config.yaml").read_text()


def test_admm_group_importance_reaches_compress_config():
    exp = load_compress_config(_compose(["admm.importance=hessian",
                                         "admm.importance_samples=64"]))
    config = exp.admm.compress_config(progress=False)
    assert (config.importance, config.importance_samples) == ("hessian", 64)
    assert load_compress_config(_compose()).compressor == "admm"


@pytest.mark.parametrize("override, words", [
    ("compressor=gptq", ["compressor='gptq'", "admm, magnitude, obc"]),
    ("obc.n_calib=2048", ["obc.n_calib=2048", "[1, 1024]"]),
    ("obc.percdamp=-1", ["obc.percdamp=-1", "[0, 1]"]),
    ("obc.importance=l2", ["obc.importance='l2'", "fisher"]),
    ("admm.importance=l2", ["importance='l2'", "fisher"]),
    ("+obc.bogus=1", ["obc.bogus=1", "n_calib"]),
])
def test_obc_validation(override, words):
    with pytest.raises(ValueError) as info:
        load_compress_config(_compose([override]))
    for word in words:
        assert word in str(info.value)


def test_obc_refuses_checkpoint_of_another_compressor(obc_run):
    run_dir, _ = obc_run
    with pytest.raises(ValueError, match="compressor='obc' in the checkpoint, 'admm' now"):
        run_compress(_compose([*OBC, "resume=true", "compressor=admm"]), run_dir)


def test_compressors_are_one_registry():
    """``compressor=<name>`` picks an adapter from experiments.registry (the config validation
    reads the same names); both return an admm.CompressResult."""
    import typing

    from memxbar.admm import CompressResult
    from memxbar.experiments.compressors.admm import compress_stage
    from memxbar.experiments.compressors.base import CompressInputs
    from memxbar.experiments.compressors.magnitude import magnitude_stage
    from memxbar.experiments.compressors.obc import obc_stage
    from memxbar.experiments.compressors.registry import COMPRESSORS, get_compressor
    assert get_compressor("admm") is compress_stage and get_compressor("obc") is obc_stage
    assert get_compressor("magnitude") is magnitude_stage
    for name in COMPRESSORS:  # one contract: (model, loaders, CompressInputs) -> CompressResult
        hints = typing.get_type_hints(get_compressor(name))
        assert hints["return"] is CompressResult and hints["inputs"] is CompressInputs
        assert list(hints) == ["model", "loaders", "inputs", "return"]
    with pytest.raises(ValueError, match="compressor='sparsegpt' is invalid; allowed: one of "
                                         "admm, magnitude, obc"):
        get_compressor("sparsegpt")
    for bad in ("sparsegpt", [1]):
        with pytest.raises(ValueError, match="compressor="):
            load_compress_config(_compose([f"compressor={bad}"]))
