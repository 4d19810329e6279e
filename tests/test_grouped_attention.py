"""Grouped / depthwise convolutions and multi-head attention projections on crossbars.

Oracles: PyTorch's own grouped convolution and ``nn.MultiheadAttention`` (ideal device); for a
noisy chip, the programmed ``weight`` view run through ``F.conv2d``, per-group layers
converted one by one, and the block-diagonal dense convolution mapped on the same tiles.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memxbar import crossbar
from memxbar.crossbar.cost import CostConfig, dense_plan, model_cost

IDEAL = crossbar.DeviceModel.ideal()
SMALL = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16)


def _convert(layer: nn.Module, device: crossbar.DeviceModel, config: crossbar.CrossbarConfig,
             x: torch.Tensor | None = None, **kwargs) -> nn.Module:
    return crossbar.to_crossbar(nn.Sequential(layer), device, config, calibration=x,
                                **kwargs)[0]


def _block_diagonal(conv: nn.Conv2d) -> nn.Conv2d:
    """The groups=1 convolution equal to a grouped one (zeros between the groups' blocks)."""
    g, cin, cout = conv.groups, conv.in_channels // conv.groups, conv.out_channels // conv.groups
    dense = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, bias=conv.bias is not None)
    with torch.no_grad():
        dense.weight.zero_()
        for k in range(g):
            dense.weight[k * cout:(k + 1) * cout, k * cin:(k + 1) * cin] = \
                conv.weight[k * cout:(k + 1) * cout]
        if conv.bias is not None:
            dense.bias.copy_(conv.bias)
    return dense


# ------------------------------------------------------------------------- grouped convolutions
@pytest.mark.parametrize(("cin", "cout", "groups"), [(8, 6, 2), (8, 8, 4), (8, 8, 8), (8, 16, 8)])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_grouped_conv2d_on_an_ideal_device_is_pytorchs(cin: int, cout: int, groups: int,
                                                        mapping: str) -> None:
    """groups 2 and 4, depthwise, and depthwise with channel multiplier 2; tiles of 16 rows
    split each group's rows, so several tiles per group (and units of tiles) are exercised."""
    torch.manual_seed(groups)
    conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, groups=groups)
    x = torch.randn(4, cin, 9, 9)
    xconv = _convert(conv, IDEAL, SMALL.with_(mapping=mapping), x)
    assert isinstance(xconv, crossbar.CrossbarConv2d) and xconv.groups == groups
    with torch.no_grad():
        assert torch.allclose(xconv(x), conv(x), atol=1e-5, rtol=1e-5)
    assert xconv.weight.shape == conv.weight.shape
    assert torch.allclose(xconv.weight, conv.weight, atol=1e-6)


def test_grouped_conv1d_on_an_ideal_device_is_pytorchs() -> None:
    torch.manual_seed(0)
    for conv in (nn.Conv1d(6, 12, 5, padding=2, groups=3), nn.Conv1d(6, 6, 3, groups=6)):
        x = torch.randn(3, 6, 20)
        xconv = _convert(conv, IDEAL, SMALL, x)
        assert isinstance(xconv, crossbar.CrossbarConv1d)
        assert xconv.plan.kind == "conv1d" and xconv.plan.groups == conv.groups
        with torch.no_grad():
            assert torch.allclose(xconv(x), conv(x), atol=1e-5)
        assert torch.allclose(xconv.weight, conv.weight, atol=1e-6)


def test_plan_gives_each_group_its_own_tiles_and_the_hand_count() -> None:
    """Depthwise 3x3, 64 channels, 128 x 128 tiles: each group is a 9 x 1 matrix and no tile
    may hold two groups, so 64 tiles of 9 word lines and 1 output. groups=4, 32 -> 32: a group
    is [8 outputs, 8 channels x 9 = 72 rows], one tile each: 4 tiles (the dense 32 -> 32 conv,
    288 rows, needs 3 tiles of 126 + 126 + 36 rows)."""
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64),
                          nn.Conv2d(32, 32, 3, padding=1, groups=4),
                          nn.Conv2d(32, 32, 3, padding=1))
    plan = crossbar.plan_model(model, crossbar.CrossbarConfig())
    depthwise, grouped, dense = plan["0"], plan["1"], plan["2"]
    assert depthwise.groups == 64 and depthwise.n_tiles == 64
    assert {(t.rows, t.n_cols) for t in depthwise.tiles} == {(tuple(range(9)), 1)}
    assert grouped.n_tiles == 4 and dense.n_tiles == 3
    for layer in (depthwise, grouped):
        per_group = layer.out_features // layer.groups
        assert sorted(c // per_group for t in layer.tiles for c in t.cols[:1]) == \
            list(range(layer.groups))
        for t in layer.tiles:  # one group per tile
            assert len({c // per_group for c in t.cols}) == 1
    assert len(depthwise.live_rows) == 64 * 9  # distinct inputs (input buffer), not 9
    # the mapping plan JSON round-trips; a plan written before groups existed reads as 1
    assert crossbar.MappingPlan.from_dict(plan.to_dict()).layers == plan.layers
    old = dense.to_dict()
    del old["groups"]
    assert crossbar.LayerPlan.from_dict(old) == dense
    # a tile holding outputs of two groups is refused
    with pytest.raises(ValueError, match="outputs of one group"):
        crossbar.LayerPlan.from_dict({**grouped.to_dict(), "tiles": [
            {"rows": [0, 1], "cols": [7, 8]}]})
    # the cost model counts those tiles, and the dense baseline keeps the groups
    cost = model_cost(plan, crossbar.CrossbarConfig(), CostConfig(assume_mvms_per_sample=1))
    assert [c.tiles for c in cost.layers] == [64, 4, 3]
    assert dense_plan(plan, crossbar.CrossbarConfig())["0"].n_tiles == 64


def test_masks_are_decided_per_group() -> None:
    """groups=4, 8 -> 8 channels, 3x3, 9-row tiles: each group has 2 channels (18 rows) and 2
    outputs, so 2 tiles per group, 8 in all. Pruning both outputs of group 1 removes its 2
    tiles; pruning local channel 0 only in group 2 removes 1 tile there (group 0 and 3 keep
    theirs): 5 tiles, and the simulator computes the masked convolution."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    config = crossbar.CrossbarConfig(tile_rows=9, tile_cols=8)
    mask = torch.ones_like(conv.weight, dtype=torch.bool)
    mask[2:4] = False  # group 1's outputs
    mask[4:6, 0] = False  # group 2, its first channel
    x = torch.randn(2, 8, 6, 6)
    assert crossbar.plan_model(nn.Sequential(conv), config)["0"].n_tiles == 8
    xconv = _convert(conv, IDEAL, config, x, masks={"0": mask})
    plan = xconv.plan
    assert plan.n_tiles == 5
    assert [(t.rows, t.cols) for t in plan.tiles if t.cols[0] in (4, 5)] == \
        [(tuple(range(9, 18)), (4, 5))]
    with torch.no_grad():
        expected = F.conv2d(x, conv.weight * mask, conv.bias, padding=1, groups=4)
        assert torch.allclose(xconv(x), expected, atol=1e-5)


NOISY = crossbar.DeviceModel(n_levels=16, prog_sigma=0.1, sa0_rate=0.02, sa1_rate=0.02,
                             drift="rram_cmo",
                             t_inference_s=3600.0)


def test_noisy_grouped_chip_is_its_programmed_block_weights() -> None:
    """Programming variation, stuck-at faults with fault-aware placement and drift: with ideal
    converters and no read noise the layer computes ``F.conv2d(x, layer.weight, groups=G)``
    exactly, i.e. its programmed weights have the grouped block structure; the state dict of
    one chip loads into another converted copy (same outputs)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=True)
    x = torch.randn(3, 8, 7, 7)
    repair = crossbar.RepairConfig(placement=True)
    xconv = _convert(conv, NOISY, SMALL, seed=3, repair=repair)
    assert xconv.repair_stats["stuck"] > 0
    w = xconv.weight
    assert w.shape == conv.weight.shape and not torch.allclose(w, conv.weight, atol=1e-3)
    with torch.no_grad():
        y = xconv(x)
        assert torch.allclose(y, F.conv2d(x, w, conv.bias, padding=1, groups=8), atol=1e-5)
    other = _convert(conv, NOISY, SMALL, seed=4, repair=repair)
    with torch.no_grad():
        assert not torch.allclose(other(x), y, atol=1e-4)
        other.load_state_dict(xconv.state_dict())
        assert torch.allclose(other(x), y, atol=1e-6)


def test_grouped_layer_matches_per_group_layers() -> None:
    """Brute-force per-group oracle: each group converted alone as a groups=1 convolution
    (same tiles: one group's rows and outputs), on an ideal device with calibrated 5-bit ADCs
    and IR drop; concatenated, their outputs are the grouped layer's."""
    torch.manual_seed(2)
    groups = 4
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups)
    x = torch.randn(6, 8, 8, 8)
    config = SMALL.with_(adc_bits=5, array={"model": "wire_resistance", "r_row_ohm": 2.0,
                                            "r_col_ohm": 2.0})
    xconv = _convert(conv, IDEAL, config, x)
    outs = []
    for g in range(groups):
        part = nn.Conv2d(2, 3, 3, padding=1)
        with torch.no_grad():
            part.weight.copy_(conv.weight[3 * g:3 * g + 3])
            part.bias.copy_(conv.bias[3 * g:3 * g + 3])
        xg = x[:, 2 * g:2 * g + 2]
        # one per-layer weight scale for all groups, as the grouped layer has
        scale = float(conv.weight.abs().max())
        outs.append(_convert(part, IDEAL, config, xg, scales={"0": scale})(xg))
    with torch.no_grad():
        y = xconv(x)
        assert torch.allclose(y, torch.cat(outs, dim=1), atol=1e-5)
        assert not torch.allclose(y, conv(x), atol=1e-3)  # the ADCs and wires do act


@pytest.mark.parametrize("config", [
    SMALL.with_(dac_bits=6, adc_bits=6),
    SMALL.with_(mapping="offset", dac="bit_serial", dac_bits=4, adc_bits=6, cell_bits=2,
                weight_bits=4),
])
def test_grouped_layer_matches_its_block_diagonal_dense_layer(
        config: crossbar.CrossbarConfig) -> None:
    """A grouped convolution and its block-diagonal groups=1 twin, mapped with one group per
    column group (``tile_cols`` = outputs per group), hold the same tiles: DAC, calibrated
    per-tile ADCs, weight slices and bit-serial inputs give the same outputs; with read noise
    their per-output spread agrees (distribution oracle)."""
    torch.manual_seed(3)
    groups, per_group = 4, 4
    conv = nn.Conv2d(8, groups * per_group, 3, padding=1, groups=groups)
    dense = _block_diagonal(conv)
    config = config.with_(tile_cols=per_group * config.weight_slices
                          + (config.mapping == "offset"))
    x = torch.randn(5, 8, 6, 6)
    xg, xd = _convert(conv, IDEAL, config, x), _convert(dense, IDEAL, config, x)
    assert xg.plan.n_tiles == xd.plan.n_tiles
    with torch.no_grad():
        y = xg(x)
        assert torch.allclose(y, xd(x), atol=1e-5)
        assert not torch.allclose(y, conv(x), atol=1e-3)
    noisy = crossbar.DeviceModel(read_sigma=0.2)
    xg, xd = _convert(conv, noisy, config, x), _convert(dense, noisy, config, x)
    with torch.no_grad():
        yg = torch.stack([xg(x[:1])[0] for _ in range(400)])
        yd = torch.stack([xd(x[:1])[0] for _ in range(400)])
    sg, sd = yg.std(0), yd.std(0)
    assert sg.mean() > 0.01
    assert abs(float(sg.mean() / sd.mean()) - 1) < 0.05
    assert float(((sg - sd).abs() / sd).median()) < 0.15
    # tiles are independent reads; outputs of one offset tile share its reference column
    group = torch.arange(conv.out_channels) // per_group
    across = group[:, None] != group[None, :]
    within = ~across & ~torch.eye(conv.out_channels, dtype=torch.bool)
    cg, cd = torch.corrcoef(yg[:, :, 2, 2].T), torch.corrcoef(yd[:, :, 2, 2].T)
    for pairs in (across, within):
        assert abs(float(cg[pairs].mean() - cd[pairs].mean())) < 0.1


def test_depthwise_layer_runs_as_one_grouped_product() -> None:
    """A 128-channel depthwise layer: 128 tiles (one per group), computed by one grouped
    convolution (one unit of tiles), with per-tile ADC ranges from calibration."""
    torch.manual_seed(4)
    conv = nn.Conv2d(128, 128, 3, padding=1, groups=128)
    x = torch.randn(4, 128, 8, 8)
    xconv = _convert(conv, crossbar.DeviceModel(read_sigma=0.02),
                     crossbar.CrossbarConfig(dac_bits=8, adc_bits=8), x)
    assert xconv.plan.n_tiles == 128 and len(xconv._units) == 1
    assert bool((xconv.adc_range > 0).all()) and xconv.adc_range.unique().numel() > 64
    with torch.no_grad():
        y = xconv(x)
    assert y.shape == (4, 128, 8, 8) and float((y - conv(x)).abs().mean()) < 0.05


# --------------------------------------------------------------------------- multi-head attention
def _attention_pair(attention: nn.MultiheadAttention,
                    device: crossbar.DeviceModel = IDEAL) -> nn.Module:
    return crossbar.to_crossbar(nn.Sequential(attention.eval()), device,
                                crossbar.CrossbarConfig(tile_rows=32, tile_cols=32))[0]


def _same(ours: tuple, theirs: tuple) -> None:
    assert torch.allclose(ours[0], theirs[0], atol=1e-5)
    if theirs[1] is None:
        assert ours[1] is None
    else:
        assert torch.allclose(ours[1], theirs[1], atol=1e-6)


@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_on_an_ideal_device_is_pytorchs(batch_first: bool) -> None:
    """Self-attention (one in_proj call), cross-attention (key is value; and three inputs),
    boolean and float masks, 3-D masks, per-head weights, no weights, unbatched inputs."""
    torch.manual_seed(5)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    xattn = _attention_pair(attention)
    assert isinstance(xattn, crossbar.CrossbarMultiheadAttention)
    assert isinstance(xattn.in_proj, crossbar.CrossbarLinear)
    n, lq, ls = 3, 5, 7

    def seq(length: int) -> torch.Tensor:
        return torch.randn(n, length, 16) if batch_first else torch.randn(length, n, 16)

    q, kv, v = seq(lq), seq(ls), seq(ls)
    pad = torch.zeros(n, ls, dtype=torch.bool)
    pad[0, -3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(lq)
    mask3 = torch.randn(n * 4, lq, ls)
    cases = [((q, q, q), {}), ((q, q, q), {"need_weights": False}),
             ((q, q, q), {"attn_mask": causal, "is_causal": True, "need_weights": False}),
             ((q, q, q), {"attn_mask": causal.isinf()}),
             ((q, kv, kv), {"key_padding_mask": pad, "average_attn_weights": False}),
             ((q, kv, kv), {"key_padding_mask": pad, "need_weights": False}),
             ((q, kv, v), {"attn_mask": mask3}),
             ((q, kv, v), {"attn_mask": mask3, "need_weights": False})]
    with torch.no_grad():
        for args, kwargs in cases:
            _same(xattn(*args, **kwargs), attention(*args, **kwargs))
        one = (slice(None), 0) if not batch_first else (0,)
        _same(xattn(q[one], kv[one], kv[one]), attention(q[one], kv[one], kv[one]))


def test_attention_options_separate_projections_and_training_mode() -> None:
    """kdim/vdim != embed_dim (separate q/k/v projections), add_bias_kv, add_zero_attn, no
    bias; in training mode (dropout 0) the non-fused path agrees too."""
    torch.manual_seed(6)
    attention = nn.MultiheadAttention(16, 2, kdim=8, vdim=12, add_bias_kv=True,
                                      add_zero_attn=True, batch_first=True)
    xattn = _attention_pair(attention)
    assert xattn.in_proj_weight is None and xattn.k_proj_weight.shape == (16, 8)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 6, 8), torch.randn(2, 6, 12)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        _same(xattn(q, k, v, key_padding_mask=pad), attention(q, k, v, key_padding_mask=pad))
        _same(xattn(q, k, v, need_weights=False), attention(q, k, v, need_weights=False))
    plain = nn.MultiheadAttention(16, 4, bias=False).train()
    xplain = _attention_pair(plain).train()
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        _same(xplain(x, x, x), plain(x, x, x))
    assert xplain.in_proj_bias is None and xplain.out_proj.bias is None


def test_attention_projections_are_mapped_layers_in_plan_and_cost() -> None:
    """The plan names the projections ``<attention>.in_proj`` / ``.q_proj`` ... and
    ``.out_proj``; the matrix-vector products per sample are each projection's token count
    (cross-attention drives the packed in_proj once per distinct input), the cost model
    counts their tiles; ``digital=`` keeps an attention module as PyTorch's."""
    torch.manual_seed(7)
    layer = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.layer(z[:, :5], z[:, 5:])

    model = Decoder().eval()
    z = torch.randn(2, 12, 16)
    config = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32)
    xmodel = crossbar.to_crossbar(model, IDEAL, config, calibration=z)
    plan = xmodel.mapping_plan
    mvms = {name: p.mvms_per_sample for name, p in plan.layers.items()}
    assert mvms == {"layer.self_attn.in_proj": 5, "layer.self_attn.out_proj": 5,
                    "layer.multihead_attn.in_proj": 5 + 7, "layer.multihead_attn.out_proj": 5,
                    "layer.linear1": 5, "layer.linear2": 5}
    assert crossbar.plan.measure_mvms(xmodel, z) == mvms  # the simulator makes those calls
    assert plan["layer.self_attn.in_proj"].out_features == 48  # [Q K V] = 3 x 16 outputs
    # 32 x 32 tiles: each in_proj [48, 16] needs 2 (48 outputs), each out_proj [16, 16],
    # linear1 [32, 16] and linear2 [16, 32] one
    assert [plan[n].n_tiles for n in mvms] == [2, 1, 2, 1, 1, 1]
    assert model_cost(plan, config).tiles == plan.n_tiles == 8
    with torch.no_grad():
        assert torch.allclose(xmodel(z), model(z), atol=1e-5)
    digital = crossbar.to_crossbar(model, IDEAL, config, calibration=z,
                                   digital=["layer.multihead_attn.*"])
    assert type(digital.layer.multihead_attn) is nn.MultiheadAttention
    assert "layer.multihead_attn.in_proj" not in digital.mapping_plan.layers
    partly = crossbar.to_crossbar(model, IDEAL, config, digital=["*.out_proj"])
    assert type(partly.layer.self_attn.out_proj) is nn.Linear
    with torch.no_grad():
        assert torch.allclose(partly(z), model(z), atol=1e-5)


def test_transformer_encoder_runs_its_attention_on_crossbars() -> None:
    """TransformerEncoderLayer in eval mode would take PyTorch's fused path, which reads
    ``self_attn.in_proj_weight`` itself: with read noise two passes must differ (the crossbars
    ran), under no_grad and inference_mode; a TransformerEncoder given a padding mask keeps
    dense tensors (no nested-tensor fast path); weight views and state dicts work."""
    torch.manual_seed(8)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
        enable_nested_tensor=True).eval()
    x = torch.randn(4, 6, 16)
    pad = torch.zeros(4, 6, dtype=torch.bool)
    pad[1, 4:] = True
    config = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32)
    xenc = crossbar.to_crossbar(encoder, IDEAL, config, calibration=x)
    attn = xenc.layers[0].self_attn
    assert isinstance(attn.out_proj, crossbar.CrossbarLinear)
    assert torch.allclose(attn.in_proj_weight, encoder.layers[0].self_attn.in_proj_weight,
                          atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(xenc(x), encoder(x), atol=1e-5)
        keep = ~pad
        assert torch.allclose(xenc(x, src_key_padding_mask=pad)[keep],
                              encoder(x, src_key_padding_mask=pad)[keep], atol=1e-5)
    noisy = crossbar.to_crossbar(encoder, crossbar.DeviceModel(read_sigma=0.2, prog_sigma=0.1),
                                 config.with_(dac_bits=8, adc_bits=8), calibration=x, seed=1)
    with torch.inference_mode():
        assert not torch.equal(noisy(x), noisy(x))
        assert not torch.equal(noisy(x, src_key_padding_mask=pad),
                               noisy(x, src_key_padding_mask=pad))
    assert not torch.allclose(noisy.layers[0].self_attn.in_proj_weight,
                              attn.in_proj_weight, atol=1e-3)
    quiet = crossbar.DeviceModel(prog_sigma=0.1)
    a = crossbar.to_crossbar(encoder, quiet, config, calibration=x, seed=1)
    b = crossbar.to_crossbar(encoder, quiet, config, calibration=x, seed=2)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.allclose(b(x), a(x), atol=1e-6)
