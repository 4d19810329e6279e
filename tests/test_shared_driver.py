"""Issue 21, item 5: the G+ and G- arrays of a differential pair share each word line's
driver (the cost model prices one DAC per word line). Checked against a brute-force nodal
solve of the whole two-array circuit and against ngspice; with an ideal driver it is the two
arrays solved alone (bit-identical to before)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from memxbar import crossbar
from memxbar.crossbar.arrays import build_array
from memxbar.crossbar.arrays.solve import solve_array, solve_pair
from tests.test_irdrop import spice_currents


def brute_force_pair(g_a, g_b, r_row, r_col, r_drv, r_sense, lead=0.0):
    """Every node of both arrays, the junctions and the drivers in one dense nodal system
    (float64), solved once per unit input; clamped nodes (zero resistances) are merged with
    their neighbour or fixed at their voltage. Returns ``(M_a, M_b)``."""
    rows = g_a.shape[0]
    arrays = (g_a, g_b)
    ids: dict = {}

    def node(key):
        return ids.setdefault(key, len(ids))

    def w(k, i, j):  # word-line node; a zero segment merges it with its neighbour
        if r_row == 0:
            return node(("J", i))
        if j == 0 and lead == 0:
            return node(("J", i))
        return node(("w", k, i, j))

    def b(k, i, j):
        if r_col == 0:
            return node(("bl", k, j))
        return node(("b", k, i, j))

    edges = []  # (node, node, conductance)
    for k, g in enumerate(arrays):
        n_cols = g.shape[1]
        for i in range(rows):
            if lead > 0 and r_row > 0:
                edges.append((node(("J", i)), w(k, i, 0), 1.0 / lead))
            for j in range(n_cols - 1):
                if r_row > 0:
                    edges.append((w(k, i, j), w(k, i, j + 1), 1.0 / r_row))
            for j in range(n_cols):
                edges.append((w(k, i, j), b(k, i, j), float(g[i, j])))
        for j in range(n_cols):
            for i in range(rows - 1):
                if r_col > 0:
                    edges.append((b(k, i, j), b(k, i + 1, j), 1.0 / r_col))
            if r_sense > 0:
                edges.append((b(k, rows - 1, j), node(("gnd", k, j)), 1.0 / r_sense))
    for i in range(rows):
        edges.append((node(("src", i)), node(("J", i)), 1.0 / r_drv))
    n = len(ids)
    lap = torch.zeros(n, n, dtype=torch.float64)
    for u, v, c in edges:
        if u == v:
            continue
        lap[u, u] += c
        lap[v, v] += c
        lap[u, v] -= c
        lap[v, u] -= c
    fixed = {ids[("src", i)] for i in range(rows)}
    grounds = {}
    for k, g in enumerate(arrays):
        for j in range(g.shape[1]):
            key = ("gnd", k, j) if r_sense > 0 else None
            grounds[(k, j)] = ids[key] if key else b(k, rows - 1, j)
    fixed |= set(grounds.values())
    free = [x for x in range(n) if x not in fixed]
    out = [torch.zeros(g.shape[1], rows, dtype=torch.float64) for g in arrays]
    for i in range(rows):
        volts = torch.zeros(n, dtype=torch.float64)
        volts[ids[("src", i)]] = 1.0
        fx = sorted(fixed)
        sol = torch.linalg.solve(lap[free][:, free], -lap[free][:, fx] @ volts[fx])
        volts[free] = sol
        for (k, j), gnd in grounds.items():  # current into the virtual ground
            out[k][j, i] = float(-(lap[gnd] @ volts))
    return out


@pytest.mark.parametrize("r_row,r_col,r_drv,r_sense,lead", [
    (5.0, 7.0, 100.0, 0.0, 0.0), (5.0, 7.0, 100.0, 20.0, 0.0), (0.0, 7.0, 50.0, 0.0, 0.0),
    (5.0, 0.0, 50.0, 10.0, 0.0), (5.0, 7.0, 100.0, 0.0, 30.0), (2.0, 3.0, 400.0, 5.0, 8.0),
    (0.0, 0.0, 100.0, 0.0, 0.0)])
def test_pair_matches_brute_force_nodal_solve(r_row, r_col, r_drv, r_sense, lead):
    gen = torch.Generator().manual_seed(7)
    g_a = (1 + 99 * torch.rand(5, 4, generator=gen, dtype=torch.float64)) * 1e-6
    g_b = (1 + 99 * torch.rand(5, 3, generator=gen, dtype=torch.float64)) * 1e-6
    m_a, m_b = solve_pair(g_a, g_b, r_row, r_col, r_drv, r_sense, lead)
    want_a, want_b = brute_force_pair(g_a, g_b, r_row, r_col, r_drv, r_sense, lead)
    scale = float(torch.cat([g_a, g_b], 1).sum(0).max())
    assert float((m_a - want_a).abs().max()) < 1e-9 * scale
    assert float((m_b - want_b).abs().max()) < 1e-9 * scale


def test_ideal_driver_is_each_array_alone():
    gen = torch.Generator().manual_seed(1)
    g_a, g_b = ((1 + 99 * torch.rand(6, 5, generator=gen, dtype=torch.float64)) * 1e-6
                for _ in range(2))
    for lead in (0.0, 12.0):
        m_a, m_b = solve_pair(g_a, g_b, 4.0, 6.0, 0.0, 3.0, lead)
        assert torch.equal(m_a, solve_array(g_a, 4.0, 6.0, lead, 3.0))
        assert torch.equal(m_b, solve_array(g_b, 4.0, 6.0, lead, 3.0))


def pair_netlist(g_a, g_b, v, r_row, r_col, r_drv):
    """Both arrays with one driver per word line (ideal sense amplifiers)."""
    rows = g_a.shape[0]
    lines = ["* differential pair, one driver per word line"]
    for i in range(rows):
        lines += [f"Vin{i} in{i} 0 DC {float(v[i]):.12e}", f"Rd{i} in{i} a{i}_0 {r_drv:.12e}",
                  f"Rj{i} a{i}_0 b{i}_0 1e-9"]
    for name, g in (("a", g_a), ("b", g_b)):
        rows, cols = g.shape
        for i in range(rows):
            for j in range(cols - 1):
                lines.append(f"R{name}w{i}_{j} {name}{i}_{j} {name}{i}_{j + 1} {r_row:.12e}")
            for j in range(cols):
                lines.append(f"R{name}c{i}_{j} {name}{i}_{j} {name}b{i}_{j} "
                             f"{1.0 / float(g[i, j]):.12e}")
        for j in range(cols):
            for i in range(rows - 1):
                lines.append(f"R{name}b{i}_{j} {name}b{i}_{j} {name}b{i + 1}_{j} {r_col:.12e}")
            ammeter = "Vs" if name == "a" else "Vn"  # spice_currents reads the i(vs<j>)
            lines.append(f"{ammeter}{j} {name}b{rows - 1}_{j} 0 DC 0")
    lines += [".options reltol=1e-9 abstol=1e-18 vntol=1e-12", ".control", "op"]
    lines += [f"print i(Vs{j})" for j in range(g_a.shape[1])]
    lines += [".endc", ".end"]
    return "\n".join(lines) + "\n"


def test_pair_matches_spice_and_differs_from_two_drivers(tmp_path: Path):
    """ngspice on the pair (the two first cells joined by 1 nOhm at the driver's output): the
    G+ array's column currents match the shared-driver solve, and at 100 ohm they differ from
    two separate drivers by more than the check's tolerance."""
    gen = torch.Generator().manual_seed(4)
    g_a = (1 + 99 * torch.rand(8, 6, generator=gen, dtype=torch.float64)) * 1e-6
    g_b = (1 + 99 * torch.rand(8, 6, generator=gen, dtype=torch.float64)) * 1e-6
    v = 0.2 * torch.rand(8, generator=gen, dtype=torch.float64)
    r_row, r_col, r_drv = 2.0, 3.0, 100.0
    m_a, _ = solve_pair(g_a, g_b, r_row, r_col, r_drv, 0.0)
    spice = spice_currents(tmp_path, pair_netlist(g_a, g_b, v, r_row, r_col, r_drv), 6)
    ours = m_a @ v
    assert float((ours - spice).abs().max()) < 1e-5 * float(spice.abs().max())
    alone = solve_array(g_a, r_row, r_col, r_drv, 0.0) @ v
    assert float(((alone - spice) / spice).abs().max()) > 1e-3


def test_differential_layer_shares_the_driver():
    """The layer's weights read through the pair solve: built by hand from ``solve_pair`` for
    every tile (G+ and G- as the two arrays), and different from solving them apart."""
    torch.manual_seed(0)
    lin = nn.Linear(24, 6, bias=False)
    config = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16, weight_bits=8)
    device = crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=100.0)
    spec = {"model": "wire_resistance", "r_row_ohm": 5.0, "r_col_ohm": 5.0,
            "r_driver_ohm": 100.0}
    layer = crossbar.to_crossbar(lin, device, config.with_(array=build_array(spec)))
    x = torch.randn(4, 24, dtype=torch.float64)
    g = layer.g_uS.double()
    n_slices = g.shape[0]
    expected = torch.zeros(4, 6, dtype=torch.float64)
    apart = torch.zeros(4, 6, dtype=torch.float64)
    for tile in layer.plan.tiles:
        rows, cols = list(tile.rows), list(tile.cols)
        phys = [torch.stack([g[s, k, o, rows] for o in cols for s in range(n_slices)], 1) * 1e-6
                for k in range(2)]
        pair = solve_pair(phys[0], phys[1], 5.0, 5.0, 100.0, 0.0)
        alone = [solve_array(p, 5.0, 5.0, 100.0, 0.0) for p in phys]
        for target, ms in ((expected, pair), (apart, alone)):
            cur = [x[:, rows] @ (m.T * 1e6) for m in ms]
            for (c, o), s in itertools.product(enumerate(cols), range(n_slices)):
                col = c * n_slices + s
                target[:, o] += (cur[0][:, col] - cur[1][:, col]) / 99.0 * float(
                    layer.slice_factors[s, o, 0])
    with torch.no_grad():
        y = layer.double()(x)
    assert torch.allclose(y, expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(y, apart, rtol=1e-4, atol=1e-8)
