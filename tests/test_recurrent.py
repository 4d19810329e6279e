"""LSTM, GRU and RNN layers on crossbars (issue 25).

Oracles: PyTorch's own ``nn.LSTM``/``nn.GRU``/``nn.RNN`` on an ideal device with converters
off (outputs and final states to float rounding); for a noisy chip, the same recurrence run in
float on the weights the chip holds; for the counts, the sequence length (one product per time
step, per matrix, per direction and layer).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from memxbar import crossbar
from memxbar.crossbar.cost import CostConfig, estimate
from memxbar.crossbar.plan import measure_mvms, plan_model, recurrent_steps, unmapped_layers
from memxbar.crossbar.recurrent import CrossbarRecurrent

IDEAL = crossbar.DeviceModel.ideal()
OFF = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32, dac_bits=None, adc_bits=None)
KINDS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
TOL = 1e-5


def _convert(rnn: nn.Module, device: crossbar.DeviceModel = IDEAL,
             config: crossbar.CrossbarConfig = OFF, **kwargs) -> nn.Module:
    return crossbar.to_crossbar(nn.Sequential(rnn), device, config, **kwargs)[0]


def _deviation(ours: tuple, theirs: tuple) -> float:
    """Largest |difference| over the output and every final state."""
    def flat(result: tuple) -> list[torch.Tensor]:
        out, state = result
        out = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
        return [out, *(state if isinstance(state, tuple) else (state,))]
    a, b = flat(ours), flat(theirs)
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _state(kind: str, n: int | None, layers: int = 4, size: int = 10):
    shape = (layers, size) if n is None else (layers, n, size)
    h = torch.randn(shape)
    return (h, torch.randn(shape)) if kind == "LSTM" else h


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_ideal_crossbar_recurrence_is_pytorchs(kind: str, batch_first: bool) -> None:
    """Two bidirectional layers (dropout 0.3, eval mode): padded batches with and without an
    initial state, a PackedSequence of unsorted lengths, an unbatched sequence; every matrix is
    a crossbar layer named as in the plan and the weight views are the source's."""
    torch.manual_seed(11)
    rnn = KINDS[kind](6, 10, num_layers=2, bidirectional=True, batch_first=batch_first,
                      dropout=0.3).eval()
    xrnn = _convert(rnn)
    assert isinstance(xrnn, CrossbarRecurrent) and not xrnn.training
    names = [n for n, m in xrnn.named_modules() if isinstance(m, crossbar.CrossbarLinear)]
    assert names == ["ih_l0", "hh_l0", "ih_l0_reverse", "hh_l0_reverse",
                     "ih_l1", "hh_l1", "ih_l1_reverse", "hh_l1_reverse"]
    assert xrnn.weight_hh_l1_reverse.shape == rnn.weight_hh_l1_reverse.shape
    assert torch.allclose(xrnn.weight_ih_l1, rnn.weight_ih_l1, atol=1e-6)
    assert torch.allclose(xrnn.bias_hh_l0, rnn.bias_hh_l0)
    n, length = 3, 7
    x = torch.randn(n, length, 6) if batch_first else torch.randn(length, n, 6)
    worst = 0.0
    with torch.no_grad():
        for hx in (None, _state(kind, n)):
            worst = max(worst, _deviation(xrnn(x, hx), rnn(x, hx)))
        packed = pack_padded_sequence(x, torch.tensor([4, 7, 2]), batch_first=batch_first,
                                      enforce_sorted=False)
        hx = _state(kind, n)
        worst = max(worst, _deviation(xrnn(packed, hx), rnn(packed, hx)))
        one = x[0] if batch_first else x[:, 0]
        hx = _state(kind, None)
        worst = max(worst, _deviation(xrnn(one, hx), rnn(one, hx)))
        worst = max(worst, _deviation(xrnn(one), rnn(one)))
    assert worst < TOL, worst


def test_options_projection_no_bias_relu_and_training_mode() -> None:
    """An LSTM with proj_size (the ``hr`` matrices on crossbars too), layers without bias, a
    ReLU RNN; training mode with dropout 0 agrees, dropout > 0 acts between layers only in
    training; a wrong state or input size is refused with PyTorch's message."""
    torch.manual_seed(12)
    x = torch.randn(5, 2, 6)
    lstm = nn.LSTM(6, 10, num_layers=2, proj_size=4, bidirectional=True).eval()
    xlstm = _convert(lstm)
    assert isinstance(xlstm.hr_l1_reverse, crossbar.CrossbarLinear)
    assert xlstm.hr_l0.weight.shape == (4, 10) and xlstm.hh_l0.weight.shape == (40, 4)
    hx = (torch.randn(4, 2, 4), torch.randn(4, 2, 10))
    for module in (nn.GRU(6, 8, num_layers=2, bias=False).train(),
                   nn.RNN(6, 8, nonlinearity="relu").eval()):
        xmodule = _convert(module)
        assert xmodule.training == module.training
        with torch.no_grad():
            assert _deviation(xmodule(x), module(x)) < TOL
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch: "LSTM with projections is not supported
        assert _deviation(xlstm(x, hx), lstm(x, hx)) < TOL  # with oneDNN" (its own kernel)
    drop = _convert(nn.GRU(6, 8, num_layers=2, dropout=0.5).eval())
    with torch.no_grad():
        assert torch.equal(drop(x)[0], drop(x)[0])  # eval: no dropout
        drop.train()
        assert not torch.equal(drop(x)[0], drop(x)[0])
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(4, 2, 4\)"):
        xlstm(x, (torch.randn(4, 2, 10), torch.randn(4, 2, 10)))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        xlstm(torch.randn(5, 2, 7))


def _float_gru(xrnn: CrossbarRecurrent) -> nn.Module:
    """The float ``nn.GRU`` holding the weights the chip of ``xrnn`` (a GRU) holds now."""
    rnn = nn.GRU(xrnn.input_size, xrnn.hidden_size, num_layers=xrnn.num_layers,
                       bidirectional=xrnn.bidirectional, batch_first=xrnn.batch_first)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            param.copy_(getattr(xrnn, name))
    return rnn.eval()


def test_a_noisy_chip_differs_and_program_reprograms() -> None:
    """Programming variation: the output moves away from the float GRU and equals the float
    recurrence on the weights the chip holds (the gates are digital, only the products are
    on crossbars); ``program(seed)`` draws another chip, the same seed the same chip; read
    noise with calibrated 8-bit converters makes two passes differ, and ``program``
    recalibrates on the stored batch."""
    torch.manual_seed(13)
    gru = nn.GRU(6, 10, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(4, 6, 6)
    device = crossbar.DeviceModel(prog_sigma=0.1)
    chip = crossbar.to_crossbar(nn.Sequential(gru), device, OFF, seed=1)
    xgru = chip[0]
    with torch.no_grad():
        first = xgru(x)
        assert _deviation(first, gru(x)) > 1e-3
        assert _deviation(first, _float_gru(xgru)(x)) < TOL
        chip.program(2)
        second = xgru(x)
        assert _deviation(second, first) > 1e-3
        assert _deviation(second, _float_gru(xgru)(x)) < TOL
        chip.program(1)
        assert _deviation(xgru(x), first) < 1e-6
    twin = crossbar.to_crossbar(nn.Sequential(gru), device, OFF, seed=5)
    twin.load_state_dict(chip.state_dict())
    with torch.no_grad():
        assert _deviation(twin[0](x), first) < 1e-6
    noisy = crossbar.to_crossbar(nn.Sequential(gru), crossbar.DeviceModel(read_sigma=0.1),
                                 OFF.with_(dac_bits=8, adc_bits=8), calibration=x, seed=1)
    ranges = noisy[0].hh_l1.adc_range.clone()
    assert bool(noisy[0].hh_l1.calibrated) and float(noisy[0].hh_l1.dac_range) > 0
    with torch.no_grad():
        a, b = noisy(x)[0], noisy(x)[0]
        assert not torch.equal(a, b) and float((a - gru(x)[0]).abs().max()) < 0.5
    noisy.program(3)
    assert bool(noisy[0].hh_l1.calibrated) and ranges.shape == noisy[0].hh_l1.adc_range.shape


def test_the_plan_names_the_matrices_and_the_cost_counts_one_product_per_step() -> None:
    """Each matrix is a plan layer ``<rnn>.ih_l{k}[_reverse]``/``hh_l{k}...`` of its own
    shape; ``mvms_per_sample`` is the sequence length for every one (measured on the float
    model, equal to the converted model's calls); the cost model counts their tiles;
    ``digital=`` keeps some matrices, or the whole module, digital."""
    torch.manual_seed(14)
    length = 9
    model = nn.Sequential(nn.LSTM(6, 10, num_layers=2, bidirectional=True, batch_first=True))
    x = torch.randn(3, length, 6)
    plan = plan_model(model, OFF, example_input=x)
    expected = [f"0.{m}_l{k}{d}" for k in range(2) for d in ("", "_reverse")
                for m in ("ih", "hh")]
    assert list(plan.layers) == expected
    assert {n: p.mvms_per_sample for n, p in plan.layers.items()} == dict.fromkeys(expected,
                                                                                   length)
    assert (plan["0.ih_l0"].out_features, plan["0.ih_l0"].in_features) == (40, 6)
    assert (plan["0.ih_l1"].out_features, plan["0.ih_l1"].in_features) == (40, 20)
    assert (plan["0.hh_l1_reverse"].out_features, plan["0.hh_l1_reverse"].in_features) == (40, 10)
    xmodel = crossbar.to_crossbar(model, IDEAL, OFF, calibration=x)
    assert xmodel.mapping_plan.layers.keys() == plan.layers.keys()
    assert measure_mvms(xmodel, x) == dict.fromkeys(expected, length)  # the simulator's calls
    cost = estimate(plan, OFF, CostConfig())
    layers = {c.name: c for c in cost.compressed.layers}
    assert list(layers) == expected
    assert all(c.mvms_per_sample == length for c in layers.values())
    assert cost.compressed.tiles == plan.n_tiles
    assert all(c.tiles == plan[n].n_tiles and c.tiles >= 1 for n, c in layers.items())
    packed = pack_padded_sequence(x, torch.tensor([9, 5, 2]), batch_first=True)
    assert recurrent_steps(packed) == 9 + 5 + 2 and recurrent_steps(x) == 3 * length
    partly = crossbar.to_crossbar(model, IDEAL, OFF, digital=["0.hh_*"])
    assert type(partly[0].hh_l0) is nn.Linear and isinstance(partly[0].ih_l0,
                                                              crossbar.CrossbarLinear)
    assert all(".hh_" not in n for n in partly.mapping_plan.layers)
    with torch.no_grad():
        assert _deviation(partly[0](x), model[0](x)) < TOL
    digital = crossbar.to_crossbar(nn.Sequential(nn.GRU(6, 4), nn.Linear(4, 2)), IDEAL, OFF,
                                   digital=["0.*"])
    assert type(digital[0]) is nn.GRU and list(digital.mapping_plan.layers) == ["1"]


class _KeywordSpotter(nn.Module):
    """Embedding -> GRU -> Linear on the last step (the model of the issue)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.gru.flatten_parameters()
        h, _ = self.gru(self.embed(tokens))
        return self.head(h[:, -1])


def test_a_gru_keyword_spotter_converts_end_to_end_and_is_costed() -> None:
    """The GRU, the spotter's largest layer, is on crossbars: no warning but for the
    embedding (a lookup), its matrices in the plan and the cost with one product per token,
    PyTorch's logits on an ideal device, other logits on a noisy one."""
    torch.manual_seed(15)
    model = _KeywordSpotter().eval()
    tokens = torch.randint(0, 20, (5, 12))
    assert [n for n, _ in unmapped_layers(model)] == ["embed"]
    plan = plan_model(model, OFF, example_input=tokens)
    assert {n: p.mvms_per_sample for n, p in plan.layers.items()} == {
        "gru.ih_l0": 12, "gru.hh_l0": 12, "head": 1}
    assert plan["gru.hh_l0"].in_features * plan["gru.hh_l0"].out_features == 16 * 48
    with pytest.warns(UserWarning, match=r"stay digital[^;]*embed \(Embedding") as record:
        xmodel = crossbar.to_crossbar(model, IDEAL, OFF, plan=plan)
    assert not any("gru" in str(w.message) for w in record)
    assert isinstance(xmodel.gru, CrossbarRecurrent)
    with torch.no_grad():
        assert float((xmodel(tokens) - model(tokens)).abs().max()) < TOL
    cost = estimate(xmodel.mapping_plan, OFF, CostConfig())
    layers = {c.name: c for c in cost.compressed.layers}
    assert set(layers) == {"gru.ih_l0", "gru.hh_l0", "head"}
    assert layers["gru.hh_l0"].mvms_per_sample == 12
    assert layers["gru.hh_l0"].total_energy_pJ > layers["head"].total_energy_pJ
    with pytest.warns(UserWarning, match="embed"):
        noisy = crossbar.to_crossbar(model, crossbar.DeviceModel(prog_sigma=0.2), OFF,
                                     plan=plan, seed=3)
    with torch.no_grad():
        assert float((noisy(tokens) - model(tokens)).abs().max()) > 1e-3
