"""Kernel decomposition (``admm.decompose``, ``compressor=decompose``; docs/decompose.md):
exact at M = kh*kw, Eckart-Young optimal below, C*M word lines on the crossbar, settings refused
before any work, and the compressor end to end on digits with resume and the cost baseline of
the undecomposed model."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from memxbar.admm.decompose import (
    DecomposedConv2d,
    basis_decomposition,
    decomposable,
    decompose_model,
)
from memxbar.crossbar import CrossbarConfig, plan_model
from memxbar.experiments.conf_source import CONF_DIR
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.models import build_model
from memxbar.experiments.pipeline import run_compress

TINY = ["train.epochs=2", "eval.chips=2", "eval.test_subset=120", "eval.calibration_samples=64",
        "runtime.progress=false", "runtime.threads=1", "admm.prune_epochs=1",
        "admm.prune_retrain_epochs=1", "admm.quant_epochs=1", "admm.quant_retrain_epochs=1",
        "admm.update_every=5"]
DECOMPOSE = ["compressor=decompose", "decompose.finetune_epochs=1"]


def _compose(overrides=(), per_layer=None):
    """The composed config; ``per_layer`` set in the resolved data (its keys hold dots)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    if per_layer is None:
        return cfg
    data = OmegaConf.to_container(cfg, resolve=True)
    data["decompose"]["per_layer"] = per_layer
    return data


# ----------------------------------------------------------------------------- the library
@pytest.mark.parametrize("shape, kw", [
    ((5, 3, 3, 3), {"stride": 2, "padding": 1}),                        # O < k^2
    ((30, 2, 3, 2), {"padding": (2, 1), "dilation": (2, 1)}),           # O > k^2, non-square
    ((4, 3, 5, 5), {"stride": (1, 2), "padding": 3, "dilation": 2, "bias": False}),
])
def test_full_rank_decomposition_equals_the_convolution(shape, kw):
    torch.manual_seed(0)
    o, c, kh, kww = shape
    conv = nn.Conv2d(c, o, (kh, kww), **kw).double()
    x = torch.randn(3, c, 11, 12, dtype=torch.float64)
    dec = DecomposedConv2d.from_conv(conv, kh * kww)
    assert dec.basis.groups == c and dec.basis.out_channels == c * kh * kww
    assert dec.basis.bias is None and (dec.coeff.bias is None) == (conv.bias is None)
    assert dec.basis.stride == conv.stride and dec.basis.padding == conv.padding
    assert dec.basis.dilation == conv.dilation and dec.coeff.kernel_size == (1, 1)
    torch.testing.assert_close(dec(x), conv(x), rtol=1e-10, atol=1e-10)
    f32 = DecomposedConv2d.from_conv(conv.float(), kh * kww)
    torch.testing.assert_close(f32(x.float()), conv(x.float()), rtol=1e-4, atol=1e-5)


def test_truncated_basis_is_eckart_young_optimal():
    """Per input channel the residual is the sum of the discarded squared singular values of
    the [O, kh*kw] slice; no other basis of M kernels (random orthonormal ones, or the M
    best kernels chosen by brute force among the slice's own rows) does better."""
    torch.manual_seed(1)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    for m in (1, 2, 5):
        basis, coeff = basis_decomposition(w, m)
        approx = torch.einsum("ocm,cmhw->ochw", coeff, basis)
        for c in range(3):
            s = torch.linalg.svdvals(w[:, c].reshape(6, 9))
            residual = ((w[:, c] - approx[:, c]) ** 2).sum()
            torch.testing.assert_close(residual, (s[m:] ** 2).sum())
            b = basis[c].reshape(m, 9)
            torch.testing.assert_close(b @ b.T, torch.eye(m, dtype=torch.float64))
            slice_ = w[:, c].reshape(6, 9)
            for _ in range(20):  # any other rank-m basis: least squares coefficients
                q, _ = torch.linalg.qr(torch.randn(9, m, dtype=torch.float64))
                other = ((slice_ - slice_ @ q @ q.T) ** 2).sum()
                assert other >= residual - 1e-12
            rows = torch.combinations(torch.arange(6), m) if m <= 6 else []
            for idx in rows:  # brute force over bases made of the slice's own kernels
                q, _ = torch.linalg.qr(slice_[idx].T)
                assert ((slice_ - slice_ @ q @ q.T) ** 2).sum() >= residual - 1e-12


def test_decompose_model_in_place_is_deterministic_and_checked():
    torch.manual_seed(2)
    model = build_model("lenet5", input_shape=(1, 8, 8), data_classes=10)
    assert decomposable(model) == ["features.0", "features.3"]
    x = torch.randn(4, 1, 8, 8)
    a, b = _copy(model), _copy(model)
    decompose_model(a, {"features.0": 3, "features.3": 4})
    decompose_model(b, {"features.0": 3, "features.3": 4})
    assert isinstance(a.features[3], DecomposedConv2d) and a.features[3].m == 4
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    full = _copy(model)
    decompose_model(full, {"features.0": 25, "features.3": 25})
    torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"M=26 of layer 'features.3' is invalid; allowed: an "
                                         r"integer in \[1, 25\]"):
        decompose_model(_copy(model), {"features.0": 3, "features.3": 26})
    with pytest.raises(ValueError, match="layer 'classifier.0' is invalid; allowed: a Conv2d"):
        decompose_model(_copy(model), {"classifier.0": 2})
    untouched = _copy(model)
    with pytest.raises(ValueError):  # checked before any layer is replaced
        decompose_model(untouched, {"features.0": 3, "features.3": 0})
    assert isinstance(untouched.features[0], nn.Conv2d)


def _copy(model):
    out = build_model("lenet5", input_shape=(1, 8, 8), data_classes=10)
    out.load_state_dict(model.state_dict())
    return out


def test_coefficients_drive_c_times_m_word_lines():
    """Stage 2 is a 1x1 convolution over C*M channels: C*M crossbar rows instead of C*k^2;
    stage 1 is a depthwise convolution (one group per input channel) of k^2 rows each."""
    torch.manual_seed(3)
    model = build_model("lenet5", input_shape=(1, 8, 8), data_classes=10)
    x = torch.randn(2, 1, 8, 8)
    dense = plan_model(model, CrossbarConfig(), example_input=x)
    decompose_model(model, {"features.3": 4})
    plan = plan_model(model, CrossbarConfig(), example_input=x)
    assert dense["features.3"].in_features == 6 * 25
    assert plan["features.3.coeff"].in_features == 6 * 4
    assert plan["features.3.coeff"].out_features == 16
    assert plan["features.3.basis"].groups == 6
    assert plan["features.3.basis"].in_features == 25
    assert plan["features.3.basis"].out_features == 6 * 4
    assert plan["features.3.coeff"].mvms_per_sample == dense["features.3"].mvms_per_sample


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("override, words", [
    ("decompose.basis=0", "decompose.basis=0 is invalid; allowed: an integer >= 1"),
    ("decompose.method=svd", "decompose.method='svd' is invalid; allowed: one of admm, "
                             "magnitude"),
    ("decompose.basis_levels=1", "decompose.basis_levels=1 is invalid; allowed: an integer >= 2"),
    ("decompose.finetune_epochs=-1", "decompose.finetune_epochs=-1 is invalid; allowed: an "
                                     "integer in [0, 1000]"),
    ("+decompose.rank=3", "decompose.rank=3 is invalid; allowed: a key of decompose"),
    ("decompose.layers=[]", "decompose.layers=[] is invalid; allowed: a non-empty list"),
    ("decompose.coeff_levels=5", "decompose.coeff_levels=5 is invalid; allowed: 16"),
    ({"features.3": 0}, "decompose.per_layer.features.3=0 is invalid; allowed: an integer >= 1"),
])
def test_settings_errors_name_key_value_and_allowed(override, words):
    cfg = _compose(["compressor=decompose"], per_layer=override) if isinstance(override, dict) \
        else _compose(["compressor=decompose", override])
    with pytest.raises(ValueError) as exc:
        load_compress_config(cfg)
    assert words in str(exc.value)


@pytest.mark.parametrize("override, words", [
    ("decompose.basis=26", "decompose.basis=26 is invalid; allowed: an integer in [1, 25] "
                           "(kh*kw of layer 'features.0')"),
    ({"features.3": 30}, "decompose.per_layer.features.3=30 is invalid; allowed: an integer "
                         "in [1, 25]"),
    ({"classifier.0": 2}, "decompose.per_layer.classifier.0=2 is invalid; allowed: names of "
                          "decomposed layers"),
    ("decompose.layers=[classifier.*]", "decompose.layers=['classifier.*'] is invalid"),
    ("+allocation={budget: 10}", "allocation={'budget': 10} is invalid; allowed: null with "
                                 "compressor=decompose"),
    ("admm.constraints=[{pattern: features.3, row_keep: 50}]",
     "row_keep=50 is invalid; allowed: a ratio"),
])
def test_model_checks_refuse_before_any_work(tmp_path, override, words):
    run_dir = tmp_path / "run"
    cfg = _compose(TINY + DECOMPOSE, per_layer=override) if isinstance(override, dict) \
        else _compose(TINY + DECOMPOSE + [override])
    with pytest.raises(ValueError) as exc:
        run_compress(cfg, run_dir)
    assert words in str(exc.value)
    assert not run_dir.exists()


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("decompose")
    decomposed = run_compress(_compose(TINY + DECOMPOSE), root / "decompose")
    admm = run_compress(_compose(TINY), root / "admm")
    return root, decomposed, admm


def test_decompose_runs_end_to_end(runs):
    root, m, _ = runs
    assert m["compressor"] == "decompose"
    state = torch.load(root / "decompose" / "compressed.pt", weights_only=True)
    assert {"features.0.coeff", "features.3.coeff", "features.0.basis",
            "features.3.basis"} <= set(state["masks"])
    assert "features.3" not in state["masks"]
    coeff = state["masks"]["features.3.coeff"]
    assert coeff.shape == (16, 6 * 4) and not coeff.all()  # pruned: row 0.5, col 0.25
    basis = state["masks"]["features.3.basis"]  # dense: only weights quantized to 0 are dead
    assert basis.any(dim=1).all() and basis.any(dim=0).all()
    assert state["scales"]["features.3.basis"] is not None  # quantized (basis_levels = 16)
    events = [h for h in state["history"] if h.get("event") == "eval"]
    assert [h["stage"] for h in events][:3] == ["dense", "decomposed", "finetune"]
    layers = {p["name"]: p for p in json.loads((root / "decompose" / "plan.json").read_text())[
        "layers"]}
    assert layers["features.3.coeff"]["in_features"] == 24
    assert (root / "decompose" / "report.md").is_file()
    assert m["crossbar_ideal_accuracy"] > 100 / 10 * 1.5


def test_cost_baseline_is_the_undecomposed_model(runs):
    """The reductions of a decompose run are against the same dense baseline as an admm run
    of the same model (not against the dense decomposed model)."""
    _, dec, admm = runs
    for key in ("baseline_tiles", "baseline_area_mm2", "baseline_energy_nJ",
                "baseline_power_mW", "dense_weights"):
        assert dec[key] == admm[key], key
    assert dec["dense_accuracy"] == admm["dense_accuracy"]


def test_resume_of_a_finished_decompose_run_gives_identical_metrics(runs):
    root, m, _ = runs
    again = run_compress(_compose(TINY + DECOMPOSE + ["resume=true"]), root / "decompose")
    for key in ("compressed_accuracy", "crossbar_ideal_accuracy", "crossbar_accuracies",
                "tiles", "area_mm2", "energy_nJ", "compression_ratio", "baseline_energy_nJ"):
        assert again[key] == m[key], key
