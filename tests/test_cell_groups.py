"""The mapping owns the physical cells (issue 21): a style declares its cell groups, and the
device chain (faults, programming, write-verify, drift, read noise, counts) runs over them
group by group, each from its own streams, with no branch of its own for any style."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memxbar import crossbar
from memxbar.crossbar import physical, streams
from memxbar.crossbar.mappings.base import MAPPINGS, register
from memxbar.crossbar.mappings.offset import Offset
from memxbar.crossbar.programming import crossbar_modules


def _device(**kw) -> crossbar.DeviceModel:
    return crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=100.0, prog_sigma=0.05, n_levels=16,
                                sa0_rate=0.02, sa1_rate=0.01, read_sigma=0.02,
                                drift="rram_cmo", t_inference_s=3600.0, **kw)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 6))


@pytest.fixture
def shifted_style():
    """An offset style whose reference column draws from streams of another name."""

    class Shifted(Offset):
        name = "offset_shifted_streams"
        aux_prefix = "shifted_"

    register(Shifted)
    yield Shifted.name
    MAPPINGS._models.pop(Shifted.name)
    MAPPINGS._instances.pop(Shifted.name, None)
    streams._CELL_PREFIXES.discard(Shifted.aux_prefix)


def test_styles_declare_their_cell_groups() -> None:
    diff = crossbar.mappings.mapping_style("differential").cell_groups()
    offset = crossbar.mappings.mapping_style("offset").cell_groups()
    assert [g.name for g in diff] == ["weights"]
    assert [(g.name, g.buffer, g.prefix, g.per_tile) for g in offset] == [
        ("weights", "g_uS", "", False), ("reference", "g_aux_uS", "reference_", True)]


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_every_group_is_counted_as_the_plan_charges(mapping: str) -> None:
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16, mapping=mapping)
    chip = crossbar.to_crossbar(_model(), _device(write_verify={}), config, seed=1)
    stats = crossbar.programming_stats(chip)
    for name, layer in crossbar_modules(chip):
        cells = physical.cell_groups(layer)
        assert sum(int(c.live.sum()) for c in cells) == layer.n_devices == layer.plan.n_devices
        assert set(layer.records) == {c.group.name for c in cells}  # write-verify per group
        for c in cells:  # nothing programmed off a tile
            assert bool((c.g[~c.live] == 0).all()) and bool((c.g[c.live] > 0).all()), name
    assert stats["cells"] == sum(layer.n_devices for _, layer in crossbar_modules(chip))


def test_each_group_draws_from_its_own_streams(shifted_style: str) -> None:
    """A style that renames its reference streams changes its reference cells only: the weight
    cells (faults, programming, write-verify, drift) are the offset style's, bit for bit, and
    the chain needs no code of its own for the new style. (Compensation is off: it re-targets
    weight cells for stuck reference cells, on purpose.)"""
    dev = _device(write_verify={})
    chips = {}
    for mapping in ("offset", shifted_style):
        config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16, mapping=mapping)
        chip = crossbar.to_crossbar(_model(), dev, config, seed=5,
                                    repair=crossbar.RepairConfig(compensation=False))
        chips[mapping] = dict(crossbar_modules(chip))
    for name, layer in chips["offset"].items():
        other = chips[shifted_style][name]
        live = physical.tile_row_mask(layer)
        assert layer.repair_stats["stuck"] > 0  # faults drawn in both groups
        assert torch.equal(layer.g_uS, other.g_uS)
        assert torch.equal(layer.pulses, other.pulses)
        assert not torch.equal(layer.g_aux_uS[live], other.g_aux_uS[live])
        drifted = physical.state_at_time(layer)
        drifted_other = physical.state_at_time(other)
        assert torch.equal(drifted["weights"], drifted_other["weights"])
        assert not torch.equal(drifted["reference"][live], drifted_other["reference"][live])
        # both reference groups are equally programmed: same target, same spread
        target = layer.style.reference_uS(dev)
        for g in (layer.g_aux_uS[live], other.g_aux_uS[live]):
            assert abs(float(g.median()) - target) < 0.1 * target


@pytest.mark.parametrize("prefix", ["Ref_", "ref", "_ref_", "ref-x_", "1ref_", "ref ", 3])
def test_a_style_with_a_bad_stream_prefix_is_refused_when_it_registers(prefix) -> None:
    class Bad(Offset):
        name = "offset_bad_prefix"
        aux_prefix = prefix

    with pytest.raises(ValueError, match="prefix=.*is invalid; allowed"):
        register(Bad)
    assert "offset_bad_prefix" not in MAPPINGS.names
