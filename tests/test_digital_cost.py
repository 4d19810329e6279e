"""Layers off the crossbars (issue 23): their work counted on a real input by forward hooks,
checked against hand counts, priced from the component table, and shown in the cost report
with the modules that have no counting rule named."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from memxbar.crossbar import CrossbarConfig, plan_model
from memxbar.crossbar.cost import CostConfig, load_table
from memxbar.crossbar.digital import digital_work
from memxbar.crossbar.report import digital_summary, write_cost_report


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)       # on the crossbars
        self.bn = nn.BatchNorm2d(4)                     # 2 ops x 4 x 6 x 6
        self.act = nn.ReLU()                            # 1 op x 144
        self.pool = nn.MaxPool2d(2)                     # 1 op per input element: 144
        self.head = nn.Linear(36, 5)                    # kept digital: 5 x 36 MACs
        self.gate = nn.Sigmoid()                        # 5 table look-ups (MACs)
        self.odd = nn.Upsample(scale_factor=1)          # no rule: named

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.conv(x))))
        return self.odd(self.gate(self.head(x.flatten(1))).unsqueeze(1)).squeeze(1)


class Speech(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)                  # 7 x 6 look-ups
        self.gru = nn.GRU(6, 8, batch_first=True)       # matrices on crossbars, gates digital
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens):
        h, _ = self.gru(self.emb(tokens))
        a, _ = self.attn(h, h, h)
        return self.out(a[:, -1])


def test_work_per_sample_matches_hand_counts():
    model = Net()
    work = {w.name: w for w in digital_work(model, ["conv"], torch.randn(3, 1, 6, 6))}
    assert set(work) == {"bn", "act", "pool", "head", "gate", "odd"}
    assert work["bn"].ops == 2 * 144 and work["act"].ops == 144 and work["pool"].ops == 144
    assert work["head"].macs == 5 * 36 and work["gate"].macs == 5
    assert not work["odd"].counted and work["odd"].kind == "Upsample"
    assert model.training  # restored


def test_recurrent_gates_attention_and_embedding():
    T, H, E = 7, 8, 8
    work = {w.name: w for w in digital_work(
        Speech(), ["gru.ih_l0", "gru.hh_l0", "attn.in_proj", "attn.out_proj", "out"],
        torch.randint(0, 20, (2, T)))}
    assert work["emb"].lookups == T * 6
    assert (work["gru"].macs, work["gru"].ops) == (T * H * 3, T * H * 5)
    assert work["attn"].macs == 2 * T * T * E + 2 * T * T
    assert "attn.out_proj" not in work and "out" not in work


def test_cost_report_prices_and_lists_them(tmp_path):
    model = Net()
    xbar = CrossbarConfig(tile_rows=32, tile_cols=32)
    plan = plan_model(model, xbar, example_input=torch.randn(1, 1, 6, 6), exclude=["head"])
    work = digital_work(model, [layer.name for layer in plan], torch.randn(2, 1, 6, 6))
    write_cost_report(plan, xbar, tmp_path, plots=False, digital=work)
    data = json.loads((tmp_path / "cost.json").read_text())
    table = load_table("isaac")
    mac, op = table.get("multiply_add").energy_J, table.get("digital_op").energy_J
    rows = {r["name"]: r for r in data["digital"]["layers"]}
    assert rows["head"]["energy_nJ"] == pytest.approx(180 * mac * 1e9)
    assert rows["bn"]["energy_nJ"] == pytest.approx(288 * op * 1e9)
    assert data["digital"]["energy_nJ"] == pytest.approx(
        (185 * mac + (288 + 144 + 144) * op) * 1e9)
    md = (tmp_path / "report.md").read_text()
    assert "## Layers off the crossbars (digital)" in md and "| head | Linear | 180 |" in md
    assert "Not counted (no counting rule for their type): odd (Upsample)." in md
    assert "the area of the digital logic of the layers off the crossbars" in md


def test_a_table_without_digital_entries_counts_but_does_not_price():
    table = load_table("isaac")
    bare = type(table)(table.name, tuple(c for c in table.components
                                         if c.kind != "digital_op"))
    work = digital_work(Net(), ["conv"], torch.randn(2, 1, 6, 6))
    summary = digital_summary(work, bare, CostConfig())
    assert summary["priced"] is False and summary["energy_nJ"] is None


def test_what_drives_the_energy_names_the_largest_part_per_layer(tmp_path):
    """Issue 23, "what drives the energy": per layer the largest part (per-conversion parts
    together) with its count, the MVMs per sample and the share of opened cells in use; the
    shares add up to the total; more ADC bits make the converters the largest part."""
    from memxbar.crossbar.cost import estimate
    from memxbar.crossbar.report import PER_CONVERSION, energy_drivers

    model = Net()
    for adc_bits, largest in ((4, "DAC drives"), (12, "ADC conversions")):
        xbar = CrossbarConfig(tile_rows=32, tile_cols=32, adc_bits=adc_bits, dac_bits=8)
        plan = plan_model(model, xbar, example_input=torch.randn(1, 1, 6, 6))
        est = estimate(plan, xbar, CostConfig(), baseline=False)
        rows = energy_drivers(est)
        assert sum(r["share_pct"] for r in rows) == pytest.approx(100.0)
        conv = next(r for r in rows if r["layer"] == "conv")
        layer = next(c for c in est.compressed.layers if c.name == "conv")
        parts = {"ADC conversions": sum(layer.energy_pJ[k] for k in PER_CONVERSION),
                 "DAC drives": layer.energy_pJ["dac"] + layer.energy_pJ["input_register"]}
        assert conv["largest"] == max(parts, key=parts.get) == largest, (adc_bits, parts)
        assert conv["mvms_per_sample"] == 36 and "36 MVMs per sample" in conv["hint"]
        assert conv["cell_use_pct"] == pytest.approx(100 * layer.devices / (
            layer.arrays * 32 * 32))
    write_cost_report(plan, xbar, tmp_path, plots=False)
    assert "## What drives the energy" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "cost.json").read_text())["energy_drivers"][0]["layer"]


def test_zero_inputs_are_measured_and_what_skipping_them_saves():
    """Issue 23, data-dependent terms: the share of zero inputs of each mapped layer, measured
    on real inputs (after a ReLU, about half), and the DAC drive energy a design skipping them
    would save; the estimate itself stays the worst case."""
    from memxbar.crossbar.cost import estimate
    from memxbar.crossbar.digital import input_zero_fractions
    from memxbar.crossbar.report import energy_drivers

    torch.manual_seed(0)
    model = Net()
    x = torch.randn(8, 1, 6, 6)
    zeros = input_zero_fractions(model, ["conv", "head"], x)
    seen = {}
    hook = model.head.register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0]))
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    assert zeros["conv"] == 0.0
    assert zeros["head"] == pytest.approx(float((seen["x"] == 0).float().mean()))
    assert 0.05 < zeros["head"] < 0.95
    xbar = CrossbarConfig(tile_rows=32, tile_cols=32)
    plan = plan_model(model, xbar, example_input=x[:1])
    est = estimate(plan, xbar, CostConfig(), baseline=False)
    worst = energy_drivers(est)
    measured = {r["layer"]: r for r in energy_drivers(est, zeros)}
    head = next(c for c in est.compressed.layers if c.name == "head")
    drive_nJ = (head.energy_pJ["dac"] + head.energy_pJ["input_register"]) * 1e-3
    assert measured["head"]["skippable_drive_nJ"] == pytest.approx(zeros["head"] * drive_nJ)
    assert [r["energy_nJ"] for r in worst] == [measured[r["layer"]]["energy_nJ"] for r in worst]
    assert worst[0]["zero_inputs_pct"] is None
