"""Wire resistance (IR drop): the array solve against SPICE (ngspice), closed forms, and the
crossbar layers that fold it into their weights."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from memxbar import crossbar
from memxbar.crossbar.arrays import solve_array


def _need_ngspice() -> str:
    path = shutil.which("ngspice")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ngspice is missing under CI=true: .ci/run installs it "
                        "(apt-get install -y ngspice)")
        pytest.skip("ngspice not installed; install it with: apt-get install -y ngspice")
    return path


def netlist(g_S: torch.Tensor, v: torch.Tensor, r_row: float, r_col: float, r_drv: float,
            r_sense: float) -> str:
    """The array as a SPICE deck: drivers, word-line and bit-line segments, cells, sense
    resistors and 0 V ammeters into ground; one ``print`` per column current."""
    n_rows, n_cols = g_S.shape
    lines = ["* crossbar array with wire resistance"]
    for i in range(n_rows):
        if r_drv > 0:
            lines += [f"Vin{i} in{i} 0 DC {float(v[i]):.12e}",
                      f"Rd{i} in{i} w{i}_0 {r_drv:.12e}"]
        else:
            lines.append(f"Vin{i} w{i}_0 0 DC {float(v[i]):.12e}")
        for j in range(n_cols - 1):
            lines.append(f"Rw{i}_{j} w{i}_{j} w{i}_{j + 1} {r_row:.12e}")
    for j in range(n_cols):
        for i in range(n_rows - 1):
            lines.append(f"Rb{i}_{j} b{i}_{j} b{i + 1}_{j} {r_col:.12e}")
        bottom = f"b{n_rows - 1}_{j}"
        if r_sense > 0:
            lines += [f"Rs{j} {bottom} s{j} {r_sense:.12e}", f"Vs{j} s{j} 0 DC 0"]
        else:
            lines.append(f"Vs{j} {bottom} 0 DC 0")
    for i in range(n_rows):
        for j in range(n_cols):
            lines.append(f"Rc{i}_{j} w{i}_{j} b{i}_{j} {1.0 / float(g_S[i, j]):.12e}")
    lines += [".options reltol=1e-9 abstol=1e-18 vntol=1e-12", ".control", "op"]
    lines += [f"print i(Vs{j})" for j in range(n_cols)]
    lines += [".endc", ".end"]
    return "\n".join(lines) + "\n"


def spice_currents(tmp_path: Path, deck: str, n_cols: int) -> torch.Tensor:
    path = tmp_path / "array.cir"
    path.write_text(deck)
    out = subprocess.run([_need_ngspice(), "-b", str(path)], capture_output=True, text=True,
                         timeout=300)
    values = dict(re.findall(r"i\(vs(\d+)\)\s*=\s*([-+0-9.eE]+)", out.stdout))
    assert len(values) == n_cols, out.stdout[-2000:] + out.stderr[-2000:]
    return torch.tensor([float(values[str(j)]) for j in range(n_cols)], dtype=torch.float64)


@pytest.mark.parametrize(("rows", "cols", "seed"), [(4, 4, 0), (16, 16, 1), (32, 64, 2),
                                                    (64, 32, 3)])
def test_array_solve_matches_spice(tmp_path: Path, rows: int, cols: int, seed: int) -> None:
    """Random conductances (1-100 uS), inputs (+-0.2 V) and wire resistances (0.1-10 ohm);
    drivers and sense amplifiers ideal on some arrays, resistive on others."""
    _need_ngspice()
    gen = torch.Generator().manual_seed(seed)
    g = (1 + 99 * torch.rand(rows, cols, generator=gen, dtype=torch.float64)) * 1e-6
    v = 0.2 * (2 * torch.rand(rows, generator=gen, dtype=torch.float64) - 1)
    r_row, r_col = (float(10 ** (2 * torch.rand(1, generator=gen)) / 10) for _ in range(2))
    r_drv, r_sense = (0.0, 0.0) if seed % 2 == 0 else (50.0, 20.0)
    array = crossbar.arrays.build_array({"model": "wire_resistance", "r_row_ohm": r_row,
                                         "r_col_ohm": r_col, "r_driver_ohm": r_drv,
                                         "r_sense_ohm": r_sense, "read_voltage_V": 0.2})
    ours = array.column_currents(g, (v / 0.2).unsqueeze(0))[0]  # inputs in units of full scale
    spice = spice_currents(tmp_path, netlist(g, v, r_row, r_col, r_drv, r_sense), cols)
    full_scale = float(g.sum(0).max()) * 0.2  # the largest ideal column current
    error = float((ours - spice).abs().max())
    assert error < 1e-4 * full_scale
    # far closer than the IR drop itself: the check would catch a solve that ignored wires
    drop = float((g.T @ v - spice).abs().max())
    assert error < 1e-2 * drop  # (ngspice prints 7 significant digits)


@pytest.mark.parametrize("zeros", range(16))
def test_zero_resistance_limits_match_spice(tmp_path: Path, zeros: int) -> None:
    """Every combination of zero and non-zero word-line, bit-line, driver and sense
    resistance (the solver's exact limits: merged lines, clamped end nodes)."""
    _need_ngspice()
    gen = torch.Generator().manual_seed(100 + zeros)
    rows, cols = 6, 5
    g = (1 + 99 * torch.rand(rows, cols, generator=gen, dtype=torch.float64)) * 1e-6
    v = 0.2 * (2 * torch.rand(rows, generator=gen, dtype=torch.float64) - 1)
    r = [0.0 if zeros >> k & 1 else value for k, value in enumerate((30.0, 20.0, 400.0, 300.0))]
    ours = solve_array(g, *r) @ v
    spice = spice_currents(tmp_path, netlist(g, v, *r), cols)
    assert float((ours - spice).abs().max()) < 1e-6 * float(g.sum(0).max()) * 0.2
    if zeros < 15:  # some resistance: the currents differ from the ideal array's
        assert float((g.T @ v - spice).abs().max()) > 1e-4 * float(g.sum(0).max()) * 0.2


def test_zero_resistance_is_the_ideal_array() -> None:
    g = torch.rand(7, 5, dtype=torch.float64) * 1e-4
    assert torch.equal(solve_array(g, 0.0, 0.0, 0.0, 0.0), g.T)
    # the elimination itself (not the shortcut above) tends to the ideal array: with 1 uohm
    # wires the relative change of a current is of order r G (1e-6 ohm x 1e-4 S, x cells)
    for r in ([1e-6] * 4, [1e-6, 0.0, 0.0, 0.0], [0.0, 1e-6, 0.0, 0.0], [0.0, 0.0, 0.0, 1e-6]):
        m = solve_array(g, *r)
        assert torch.allclose(m, g.T, rtol=1e-8, atol=0), r
        assert not torch.equal(m, g.T), r  # the solve ran


def test_one_row_two_columns_closed_form() -> None:
    g0, g1, r_d, r_r, r_s = 5e-5, 2e-5, 30.0, 7.0, 11.0
    r0, r1 = 1 / g0 + r_s, 1 / g1 + r_s  # cell + sense resistor of each column
    ra = r_r + r1
    par = r0 * ra / (r0 + ra)
    v_w0 = par / (r_d + par)  # per volt
    m = solve_array(torch.tensor([[g0, g1]], dtype=torch.float64), r_r, 5.0, r_d, r_s)
    assert torch.allclose(m[:, 0], torch.tensor([v_w0 / r0, v_w0 / ra], dtype=torch.float64),
                          rtol=1e-12)


def test_two_rows_one_column_closed_form() -> None:
    g0, g1, r_d, r_c, r_s = 4e-5, 6e-5, 25.0, 9.0, 13.0
    rb = 1 / g1 + r_d  # row 1's cell and its driver at 0 V, from the bottom node to ground
    par = r_s * rb / (r_s + rb)
    total = r_d + 1 / g0 + r_c + par
    i_sense = (1 / total) * rb / (r_s + rb)  # current divider at the bottom node
    m = solve_array(torch.tensor([[g0], [g1]], dtype=torch.float64), 3.0, r_c, r_d, r_s)
    assert math.isclose(float(m[0, 0]), i_sense, rel_tol=1e-12)


# --------------------------------------------------------------------------------- layers
@pytest.mark.parametrize(("mapping", "cell_bits"), [("differential", None),
                                                    ("differential", 4), ("offset", 4)])
def test_layer_weights_reproduce_the_solved_arrays(mapping: str, cell_bits: int | None) -> None:
    """Built by hand here: each tile's physical arrays (bit lines output by output, slices
    side by side, the offset reference column last), solved, and read like the hardware."""
    torch.manual_seed(0)
    lin = nn.Linear(40, 12, bias=False)
    r = 20.0
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16, mapping=mapping,
                                     cell_bits=cell_bits, weight_bits=8)
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=100.0)
    layer = crossbar.to_crossbar(lin, device, config.with_setting("r_wire_ohm", r))
    x = torch.randn(6, 40, dtype=torch.float64)
    expected = torch.zeros(6, 12, dtype=torch.float64)
    g = layer.g_uS.double()
    n_slices = g.shape[0]
    for t, tile in enumerate(layer.plan.tiles):
        rows, cols = list(tile.rows), list(tile.cols)
        currents = []
        for k in range(g.shape[1]):
            columns = [g[s, k, o, rows] for o in cols for s in range(n_slices)]
            if mapping == "offset":
                columns.append(layer.g_aux_uS.double()[t, rows])
            m = solve_array(torch.stack(columns, 1) * 1e-6, r, r, 0.0, 0.0) * 1e6
            currents.append(x[:, rows] @ m.T)  # [N, bit lines], uS x input units
        for c, o in enumerate(cols):
            for s in range(n_slices):
                col = c * n_slices + s
                if mapping == "differential":
                    v = (currents[0][:, col] - currents[1][:, col]) / 99.0
                else:
                    _, half = crossbar.conductance.reference_conductance(device)
                    v = (currents[0][:, col] - currents[0][:, -1]) / half
                expected[:, o] += v * float(layer.slice_factors[s, o, 0])
    with torch.no_grad():
        y = layer.double()(x)
    assert torch.allclose(y, expected, rtol=1e-9, atol=1e-12)


def test_wire_resistance_config_sweep_key_and_errors() -> None:
    assert crossbar.CrossbarConfig(array="ideal") == crossbar.CrossbarConfig()
    assert crossbar.CrossbarConfig(array={"model": "ideal"}).with_setting(
        "r_wire_ohm", 2.0).array.r_row_ohm == 2.0
    config = crossbar.CrossbarConfig().with_setting("r_wire_ohm", 2.0)
    assert config.array.r_row_ohm == config.array.r_col_ohm == 2.0
    assert crossbar.CrossbarConfig.from_dict(config.to_dict()) == config
    assert config.with_setting("array.r_sense_ohm", 5.0).array.r_sense_ohm == 5.0
    with pytest.raises(ValueError, match=r"array.r_row_ohm=-1"):
        crossbar.CrossbarConfig(array={"model": "wire_resistance", "r_row_ohm": -1})
    with pytest.raises(ValueError, match=r"array.model='spice'"):
        crossbar.CrossbarConfig(array={"model": "spice"})
    with pytest.raises(ValueError, match=r"array.r_row_ohm=1.0.*set crossbar.array first"):
        crossbar.CrossbarConfig().with_setting("array.r_row_ohm", 1.0)


def test_conv_layer_weights_reproduce_the_solved_arrays() -> None:
    """A convolution whose kernels are split over row tiles: the matrix rows of each tile
    (channel x kernel position) are its word lines."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    r = 15.0
    config = crossbar.CrossbarConfig(tile_rows=8, tile_cols=8).with_setting("r_wire_ohm", r)
    layer = crossbar.to_crossbar(conv, crossbar.DeviceModel(), config)
    assert layer.plan.n_tiles > 2
    g = layer.g_uS.double()[0]  # [2, out, in*k]
    w_eff = torch.zeros(5, 27, dtype=torch.float64)
    for tile in layer.plan.tiles:
        rows, cols = list(tile.rows), list(tile.cols)
        m = [solve_array(g[k][cols][:, rows].T * 1e-6, r, r, 0.0, 0.0).T * 1e6 for k in (0, 1)]
        w_eff[cols[0]:cols[-1] + 1][:, rows] += ((m[0] - m[1]) / 99.0).T
    w_eff = w_eff * layer.slice_factors[0].double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = nn.functional.conv2d(x, w_eff.view(5, 3, 3, 3), padding=1)
    with torch.no_grad():
        y = layer.double()(x)
    assert torch.allclose(y, expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(y, nn.functional.conv2d(x, conv.weight.double(), padding=1),
                              rtol=1e-3)


@pytest.mark.parametrize("r", [20.0, 50.0])
def test_read_noise_through_the_wires_matches_the_network_sensitivities(r: float) -> None:
    """Issue 21, item 4: read noise was added to the cells' conductances as if there were no
    wires, overstating its std by up to 28 % at 50 ohm. The oracle: every cell's exact
    sensitivity dI/dG from finite differences of the solved network, and
    ``var(out) = sum (d out / dG)^2 var(G)`` for independent cells."""
    from memxbar.crossbar.arrays import solve_array

    torch.manual_seed(0)
    rows, cols, sigma = 16, 6, 0.05
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16).with_setting("r_wire_ohm", r)
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=100.0, read_sigma=sigma)
    layer = crossbar.to_crossbar(nn.Linear(rows, cols, bias=False), device, config).double()
    x = torch.randn(rows, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x.repeat(6000, 1))
    tile, g = layer.plan.tiles[0], layer.g_uS.double()
    scale = layer.slice_factors[0, :, 0].double()
    var = torch.zeros(cols, dtype=torch.float64)
    for k, sign in ((0, 1.0), (1, -1.0)):  # the pair's two arrays
        G = g[0, k][list(tile.cols)][:, list(tile.rows)].T.contiguous()
        base = solve_array(G * 1e-6, r, r, 0.0, 0.0) * 1e6 @ x
        for i in range(rows):
            for j in range(cols):
                if G[i, j] <= 0:
                    continue
                h = 1e-4 * float(G[i, j])
                bumped = G.clone()
                bumped[i, j] += h
                d = (solve_array(bumped * 1e-6, r, r, 0.0, 0.0) * 1e6 @ x - base) / h
                var += (sign * d / device.g_range_uS * scale) ** 2 * (sigma * G[i, j]) ** 2
    ratio = y.std(0) / var.sqrt()
    assert bool(((ratio > 0.92) & (ratio < 1.08)).all()), ratio


def test_far_placement_is_the_live_block_solved_inside_the_whole_tile(tmp_path: Path) -> None:
    """Issue 21, item 2: a partly used tile was solved as its live block alone, which is the
    block next to the drivers and sense amplifiers (the best corner). ``placement: far`` puts it
    in the opposite corner: the same as solving the whole padded tile (zero-conductance cells
    elsewhere), and as ngspice on that tile; ``near`` stays the block alone, also the padded
    tile with the block in its corner. Currents differ by up to tens of percent between them."""
    from memxbar.crossbar.arrays import build_array
    from memxbar.crossbar.arrays.solve import solve_array

    torch.manual_seed(3)
    tile_rows, tile_cols, rows, cols, r = 16, 12, 6, 5, 20.0
    g = (torch.rand(rows, cols, dtype=torch.float64) * 99 + 1) * 1e-6
    far = build_array({"model": "wire_resistance", "r_row_ohm": r, "r_col_ohm": r,
                       "r_driver_ohm": 3.0, "placement": "far"})
    near = build_array({"model": "wire_resistance", "r_row_ohm": r, "r_col_ohm": r,
                        "r_driver_ohm": 3.0})
    padded = torch.zeros(tile_rows, tile_cols, dtype=torch.float64)
    padded[:rows, tile_cols - cols:] = g   # far from the sense amps (last row) and the drivers
    whole = solve_array(padded, r, r, 3.0, 0.0)[tile_cols - cols:, :rows]
    got = far.effective_in_tile(g, tile_rows, tile_cols)
    assert torch.allclose(got, whole, rtol=1e-9, atol=1e-15)
    padded = torch.zeros(tile_rows, tile_cols, dtype=torch.float64)
    padded[tile_rows - rows:, :cols] = g
    corner = solve_array(padded, r, r, 3.0, 0.0)[:cols, tile_rows - rows:]
    assert torch.allclose(near.effective_in_tile(g, tile_rows, tile_cols), corner, rtol=1e-9,
                          atol=1e-15)
    v = torch.rand(rows, dtype=torch.float64)
    spice_g = torch.full((tile_rows, tile_cols), 1e-15, dtype=torch.float64)  # ~open cells
    spice_g[:rows, tile_cols - cols:] = g
    spice_v = torch.zeros(tile_rows, dtype=torch.float64)
    spice_v[:rows] = v
    currents = spice_currents(tmp_path, netlist(spice_g, spice_v, r, r, 3.0, 0.0), tile_cols)
    assert torch.allclose(got @ v, currents[tile_cols - cols:], rtol=1e-6, atol=1e-12)
    gap = ((near.effective_in_tile(g, tile_rows, tile_cols) @ v) / (got @ v) - 1).abs().max()
    assert float(gap) > 0.05


def test_placement_reaches_the_layers_and_is_validated() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 4, bias=False)
    x = torch.rand(3, 20)
    outs = {}
    for placement in ("near", "far"):
        config = crossbar.CrossbarConfig(tile_rows=64, tile_cols=64, array={
            "model": "wire_resistance", "r_row_ohm": 10.0, "r_col_ohm": 10.0,
            "placement": placement})
        layer = crossbar.to_crossbar(lin, crossbar.DeviceModel(g_min_uS=1.0), config)
        with torch.no_grad():
            outs[placement] = layer(x)
    assert float((outs["far"].abs() - outs["near"].abs()).mean()) < 0  # more IR drop far
    with pytest.raises(ValueError, match=r"array\.placement='corner' is invalid; allowed: one "
                                         r"of 'near', 'far'"):
        crossbar.CrossbarConfig(array={"model": "wire_resistance", "placement": "corner"})
