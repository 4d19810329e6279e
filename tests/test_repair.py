"""Fault repair: test read, pair compensation and fault-aware placement (crossbar.repair),
checked against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from memxbar import crossbar
from memxbar.crossbar.mappings import mapping_style
from memxbar.crossbar.repair import RepairConfig, place_tile, repaired

NAN = float("nan")
# 16 levels 0, 1, ..., 15 uS: a pair holds every integer difference in [-15, 15]
DEV = crossbar.DeviceModel(g_min_uS=0.0, g_max_uS=15.0, n_levels=16)
DIFF, OFFSET = mapping_style("differential"), mapping_style("offset")


def test_pair_compensation_by_hand():
    # targets (G+, G-) and stuck values -> what the hand rule says the pair holds
    nominal = torch.tensor([[6.0, 0.0], [6.0, 0.0], [0.0, 4.0], [6.0, 0.0], [10.0, 0.0],
                            [0.0, 9.0]])
    stuck = torch.tensor([[15.0, NAN],   # G+ SA1: G- = 15 - 6 = 9 -> 15 - 9 = 6 (exact)
                          [NAN, 15.0],   # G- SA1: G+ = 15 + 6 -> clip 15 -> 0 (nearest: 0)
                          [0.0, NAN],    # G+ SA0 at 0: G- = 0 + 4 = 4 (already right)
                          [0.0, 15.0],   # both stuck: holds 0 - 15 = -15
                          [NAN, 15.0],   # G- SA1, d = 10: G+ = 25 -> 15: holds 0
                          [15.0, NAN]])  # G+ SA1, d = -9: G- = 24 -> 15: holds 0
    targets, held = repaired(DIFF, nominal, stuck, None, DEV, compensate=True)
    assert held.mul(15).tolist() == [6.0, 0.0, -4.0, -15.0, 0.0, 0.0]
    assert targets.tolist() == [[6.0, 9.0], [15.0, 0.0], [0.0, 4.0], [6.0, 0.0], [15.0, 0.0],
                                [0.0, 15.0]]
    _, raw = repaired(DIFF, nominal, stuck, None, DEV, compensate=False)
    assert raw.mul(15).tolist() == [15.0, -9.0, -4.0, -15.0, -5.0, 6.0]


def test_pair_compensation_snaps_to_levels():
    coarse = crossbar.DeviceModel(g_min_uS=0.0, g_max_uS=15.0, n_levels=4)  # 0, 5, 10, 15
    targets, held = repaired(DIFF, torch.tensor([[5.0, 0.0]]), torch.tensor([[12.0, NAN]]),
                             None, coarse, compensate=True)
    # G+ stuck at 12 (off grid): G- = 12 - 5 = 7 -> nearest level 5: holds 7 (error 2)
    assert targets.tolist() == [[5.0, 5.0]] and math.isclose(float(held) * 15, 7.0, rel_tol=1e-6)


def test_offset_reference_cell_compensation_by_hand():
    g_ref, half = crossbar.conductance.reference_conductance(DEV)  # 7 uS (level nearest 7.5)
    assert (g_ref, half) == (7.0, 8.0)
    nominal = torch.tensor([[9.0], [3.0], [14.0]])
    ref_stuck = torch.tensor([15.0, 15.0, 15.0])   # the row's reference cell is SA1
    targets, held = repaired(OFFSET, nominal, torch.full_like(nominal, NAN), ref_stuck, DEV,
                             compensate=True)
    # every cell of the row moves up by 15 - 7 = 8 uS (clipped at 15)
    assert targets.flatten().tolist() == [15.0, 11.0, 15.0]
    assert (held * half).tolist() == [0.0, -4.0, 0.0]  # targets 2, -4, 7: clipping limits 2
    _, raw = repaired(OFFSET, nominal, torch.full_like(nominal, NAN), ref_stuck, DEV,
                      compensate=False)
    assert (raw * half).tolist() == [-6.0, -12.0, -1.0]


def _layer(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _weight_error(xl) -> float:
    """Squared error of the held weights against the level-exact targets."""
    target = xl.style.weights(xl.g_nominal_uS.movedim(1, -1), None, xl.device_model) \
        * xl.slice_factors
    return float((xl.weight - target.sum(0)).square().sum())


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_compensation_in_a_programmed_layer_matches_the_hand_rule(mapping):
    torch.manual_seed(0)
    w = torch.randint(-7, 8, (40, 60)).float()
    dev = DEV.with_(faults={"model": "stuck_at", "sa0_rate": 0.05, "sa1_rate": 0.05})
    cfg = crossbar.CrossbarConfig(tile_rows=32, tile_cols=16, mapping=mapping)
    scale = 15.0 if mapping == "differential" else 8.0  # weight unit = one level step
    on = crossbar.to_crossbar(_layer(w), dev, cfg, scales={"": scale})
    off = crossbar.to_crossbar(_layer(w), dev, cfg, scales={"": scale},
                               repair=RepairConfig(compensation=False))
    assert on.repair_stats["stuck"] > 0 and on.repair_stats["compensated"] > 0
    # differential: most single faults are fixed; offset: only reference-cell faults can be
    assert _weight_error(on) < (0.5 if mapping == "differential" else 1.0) * _weight_error(off)
    if mapping == "differential":  # every pair with one stuck cell holds the hand value
        g, nominal = on.g_uS, on.g_nominal_uS
        d = nominal[0, 0] - nominal[0, 1]
        # G+ off its target and G- (strictly inside the window) on it: only G+ is stuck
        pos_stuck = (off.g_uS[0, 0] != nominal[0, 0]) & (off.g_uS[0, 1] == nominal[0, 1]) \
            & (nominal[0, 1] > 0) & (nominal[0, 1] < 15)
        expect = g[0, 0] - (g[0, 0] - d).clamp(0, 15)
        assert pos_stuck.any()
        assert torch.equal((g[0, 0] - g[0, 1])[pos_stuck], expect[pos_stuck])


def test_missed_faults_are_not_compensated():
    w = torch.randint(-7, 8, (20, 30), generator=torch.Generator().manual_seed(1)).float()
    dev = DEV.with_(faults={"model": "stuck_at", "sa1_rate": 0.1})
    cfg = crossbar.CrossbarConfig(tile_rows=32, tile_cols=32)
    all_missed = crossbar.to_crossbar(_layer(w), dev, cfg, repair=RepairConfig(miss_rate=1.0))
    none = crossbar.to_crossbar(_layer(w), dev, cfg, repair=RepairConfig(compensation=False))
    half = crossbar.to_crossbar(_layer(w), dev, cfg, repair=RepairConfig(miss_rate=0.5))
    assert all_missed.repair_stats["detected"] == 0
    assert torch.equal(all_missed.g_uS, none.g_uS)
    assert 0 < half.repair_stats["detected"] < half.repair_stats["stuck"]


def test_placement_moves_a_faulty_row_onto_a_spare_by_hand():
    # one tile, 2 outputs x 2 rows, differential, one spare word line; an SA1 G+ cell at
    # physical (output 0, row 0) under a weight of -6: moving logical row 0 onto the spare
    # (physical row 2) removes the error
    nominal = torch.tensor([[[[0.0, 6.0], [3.0, 0.0]],
                             [[2.0, 0.0], [0.0, 1.0]]]])          # [S, cols, rows, C]
    grid = torch.full((1, 2, 2, 3), NAN)                          # [S, C, P_out, P_in]
    grid[0, 0, 0, 0] = 15.0
    factors = torch.ones(1, 2)
    rows, cols, before, after = place_tile(DIFF, nominal, factors, grid, None, DEV,
                                           compensate=False, rounds=2)
    assert math.isclose(before, 1.0)  # holds 15 - 6 = 9 for -6: error 15 of range 15
    assert after == 0.0 and int(rows[0]) != 0  # row 0 left the faulty word line
    # without a spare: compensation is exact for -6 (G- = 15 + 6 clips: holds 0, error 36);
    # placing the faulty cell under the weight 2 instead (G- = 13) makes it exact
    rows, cols, before, after = place_tile(DIFF, nominal, factors, grid[..., :2], None, DEV,
                                           compensate=True, rounds=2)
    assert math.isclose(before, 36 / 225, rel_tol=1e-6) and after == 0.0


def test_placement_reduces_the_programmed_layer_error():
    w = torch.randint(-7, 8, (30, 60), generator=torch.Generator().manual_seed(2)).float()
    dev = DEV.with_(faults={"model": "stuck_at", "sa0_rate": 0.02, "sa1_rate": 0.02})
    base = crossbar.CrossbarConfig(tile_rows=32, tile_cols=16)
    plain = crossbar.to_crossbar(_layer(w), dev, base, scales={"": 15.0})
    placed = crossbar.to_crossbar(_layer(w), dev, base, scales={"": 15.0},
                                  repair=RepairConfig(placement=True))
    spares = crossbar.to_crossbar(_layer(w), dev, base.with_(spare_rows=4, spare_cols=2),
                                  scales={"": 15.0}, repair=RepairConfig(placement=True))
    e_plain, e_placed, e_spares = map(_weight_error, (plain, placed, spares))
    stats = placed.repair_stats
    # the stats are the same squared weight error
    assert math.isclose(stats["placement_error_identity"], e_plain, rel_tol=1e-5)
    assert math.isclose(stats["placement_error"], e_placed, rel_tol=1e-5)
    assert e_spares < e_placed < e_plain


# ------------------------------------------------------------------ per-chip output calibration
def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(inplace=True), nn.Linear(8, 4))  # in place!


def test_output_calibration_recovers_a_known_gain_and_offset():
    reference = _mlp(0)
    distorted = _mlp(0)
    with torch.no_grad():  # chip layer 0 = 2 * ref + 0.3, layer 2 = 0.5 * ref - 1 (per column)
        distorted[0].weight.mul_(2.0)
        distorted[0].bias.mul_(2.0).add_(0.3)
        distorted[2].weight.mul_(0.5)
        distorted[2].bias.mul_(0.5).sub_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    cfg = crossbar.CrossbarConfig(output_calibration=True)
    chip = crossbar.to_crossbar(distorted, crossbar.DeviceModel.ideal(), cfg)
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(1))
    stats = crossbar.calibrate_outputs(chip, reference, x)
    assert torch.allclose(chip[0].out_gain, torch.full((8,), 0.5), atol=1e-5)
    assert torch.allclose(chip[0].out_offset, torch.full((8,), -0.15), atol=1e-5)
    assert torch.allclose(chip[2].out_gain, torch.full((4,), 2.0), atol=1e-4)
    assert torch.allclose(chip[2].out_offset, torch.tensor([2.0, -2.0, 1.0, 0.0]), atol=1e-4)
    assert stats["0"]["rmse_after"] < 1e-4 < stats["0"]["rmse_before"]
    with torch.no_grad():
        assert torch.allclose(chip(x), reference(x), atol=1e-4)
    # stored with the chip's state
    again = crossbar.to_crossbar(distorted, crossbar.DeviceModel.ideal(), cfg)
    again.load_state_dict(chip.state_dict())
    assert torch.equal(again[2].out_gain, chip[2].out_gain)


def test_output_calibration_undoes_a_drifted_chip_and_needs_the_switch():
    reference = _mlp(3)
    # PCM a day after programming: every conductance has drifted down (a gain error per column)
    dev = crossbar.DeviceModel.preset("pcm_aihwkit").with_(read_noise=None)
    x = torch.randn(400, 12, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="output_calibration=False"):
        crossbar.calibrate_outputs(crossbar.to_crossbar(reference, dev,
                                                        crossbar.CrossbarConfig()), reference, x)
    chip = crossbar.to_crossbar(reference, dev, crossbar.CrossbarConfig(output_calibration=True),
                                seed=4)
    chip.set_inference_time(86400.0)
    with torch.no_grad():
        before = float((chip(x) - reference(x)).square().mean())
        stats = chip.calibrate_outputs(reference, x)
        after = float((chip(x) - reference(x)).square().mean())
    assert after < 0.1 * before
    assert stats["0"]["gain_min"] > 1.2 and stats["2"]["rmse_after"] < stats["2"]["rmse_before"]
