"""Projections onto crossbar-structured sparsity sets and conductance-level sets."""

import itertools
import math

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from memxbar.admm.projections import (
    keep_count,
    pair_levels,
    project_blocks,
    project_cols,
    project_levels,
    project_rows,
    round_to_levels,
    structured_mask,
    topk_mask,
)

FAST = settings(max_examples=40, deadline=None)


@st.composite
def matrices(draw, max_out=4, max_in=5):
    out_n = draw(st.integers(1, max_out))
    in_n = draw(st.integers(1, max_in))
    values = draw(st.lists(st.integers(-4, 4), min_size=out_n * in_n, max_size=out_n * in_n))
    return torch.tensor(values, dtype=torch.float64).reshape(out_n, in_n) / 2


def _dist(a, b):
    return (a - b).pow(2).sum().item()


def _brute_force(W, structures, keep):
    """Smallest distance over all masks that keep ``keep`` of the given structures."""
    best = float("inf")
    for chosen in itertools.combinations(range(len(structures)), keep):
        mask = torch.zeros_like(W, dtype=torch.bool)
        for i in chosen:
            mask |= structures[i]
        best = min(best, _dist(W, W * mask))
    return best


def _row_structures(W):
    out_n, in_n = W.shape
    return [torch.zeros(out_n, in_n, dtype=torch.bool).index_fill_(1, torch.tensor([i]), True)
            for i in range(in_n)]


def _col_structures(W):
    out_n, in_n = W.shape
    return [torch.zeros(out_n, in_n, dtype=torch.bool).index_fill_(0, torch.tensor([o]), True)
            for o in range(out_n)]


def _block_structures(W, block):
    br, bc = block
    out_n, in_n = W.shape
    blocks = []
    for i in range(0, in_n, br):
        for j in range(0, out_n, bc):
            m = torch.zeros(out_n, in_n, dtype=torch.bool)
            m[j:j + bc, i:i + br] = True
            blocks.append(m)
    return blocks


def _nonzero_rows(P):   # crossbar rows = columns of W
    return int((P != 0).any(0).sum())


def _nonzero_cols(P):   # crossbar columns = rows of W
    return int((P != 0).any(1).sum())


# ----------------------------------------------------------------------------- keep_count
def test_keep_count_ratio_and_count():
    assert keep_count(10) == 10
    assert keep_count(10, ratio=0.0) == 10
    assert keep_count(10, ratio=0.3) == 7
    assert keep_count(10, ratio=0.99) == 1        # a ratio never removes every structure
    assert keep_count(1, ratio=0.9) == 1
    assert keep_count(10, count=0) == 0           # a count can
    assert keep_count(10, count=10) == 10
    assert keep_count(0, ratio=0.5) == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, r"row_ratio=1\.0 .*\[0, 1\)"),
    ({"ratio": -0.1}, r"row_ratio=-0\.1"),
    ({"count": 11}, r"row_keep=11 .*\[0, 10\]"),
    ({"count": -1}, r"row_keep=-1"),
    ({"count": 2.5}, r"row_keep=2\.5"),
    ({"ratio": 0.5, "count": 3}, r"not both"),
])
def test_keep_count_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keep_count(10, key="row", **kwargs)


# ------------------------------------------------------------------ single structure sets
@FAST
@given(matrices(), st.data())
def test_rows_exact_in_set_idempotent(W, data):
    keep = data.draw(st.integers(0, W.shape[1]))
    P = project_rows(W, keep)
    assert _nonzero_rows(P) <= keep
    assert torch.equal(project_rows(P, keep), P)
    assert _dist(W, P) <= _brute_force(W, _row_structures(W), keep) + 1e-12


@FAST
@given(matrices(), st.data())
def test_cols_exact_in_set_idempotent(W, data):
    keep = data.draw(st.integers(0, W.shape[0]))
    P = project_cols(W, keep)
    assert _nonzero_cols(P) <= keep
    assert torch.equal(project_cols(P, keep), P)
    assert _dist(W, P) <= _brute_force(W, _col_structures(W), keep) + 1e-12


@FAST
@given(matrices(max_out=5, max_in=6), st.data())
def test_blocks_exact_in_set_idempotent(W, data):
    block = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    structures = _block_structures(W, block)
    keep = data.draw(st.integers(0, len(structures)))
    # the brute force enumerates C(n, keep) masks: 1x1 blocks of a 5x6 matrix would be 1.5e8
    assume(math.comb(len(structures), keep) <= 20_000)
    P = project_blocks(W, keep, block)
    assert sum(bool((P[s] != 0).any()) for s in structures) <= keep
    assert torch.equal(project_blocks(P, keep, block), P)
    assert _dist(W, P) <= _brute_force(W, structures, keep) + 1e-12


def test_keep_all_and_keep_none():
    W = torch.randn(6, 9)
    assert torch.equal(project_rows(W, 9), W)
    assert torch.equal(project_cols(W, 6), W)
    assert torch.equal(project_blocks(W, 1, (128, 128)), W)      # one tile holds it all
    for P in (project_rows(W, 0), project_cols(W, 0), project_blocks(W, 0, (2, 2))):
        assert torch.count_nonzero(P) == 0


def test_ties_keep_lowest_index():
    assert topk_mask(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]), 2).tolist() == \
        [False, True, True, False, False]
    W = torch.ones(3, 4)
    assert structured_mask(W, rows_keep=2).any(0).tolist() == [True, True, False, False]
    assert structured_mask(W, cols_keep=1).any(1).tolist() == [True, False, False]
    grid = structured_mask(W, blocks_keep=1, block=(2, 2))
    assert grid.tolist() == [[True, True, False, False], [True, True, False, False],
                             [False] * 4]


def test_block_orientation_rows_are_inputs():
    # block = (crossbar rows = inputs = dim 1 of W, crossbar cols = outputs = dim 0 of W)
    W = torch.zeros(4, 6)
    W[0:2, 3:6] = 5.0
    mask = structured_mask(W, blocks_keep=1, block=(3, 2))
    assert mask.sum() == 6 and mask[0:2, 3:6].all()


# ------------------------------------------------------------------------ combinations
@FAST
@given(matrices(max_out=5, max_in=6), st.data())
def test_combination_lies_in_set_and_is_fixed_point(W, data):
    rk = data.draw(st.integers(0, W.shape[1]))
    ck = data.draw(st.integers(0, W.shape[0]))
    bk = data.draw(st.none() | st.integers(0, 4))
    kwargs = {"rows_keep": rk, "cols_keep": ck, "blocks_keep": bk, "block": (2, 2)}
    P = W * structured_mask(W, **kwargs)
    assert _nonzero_rows(P) <= rk and _nonzero_cols(P) <= ck
    if bk is not None:
        assert sum(bool((P[s] != 0).any()) for s in _block_structures(W, (2, 2))) <= bk
    assert torch.equal(W * structured_mask(P, **kwargs) * (P != 0), P)
    assert torch.equal(P * structured_mask(P, **kwargs), P)
    # block-coordinate ascent keeps at least the energy of sequential top-k (cols, rows, blocks)
    seq = project_rows(project_cols(W, ck), rk)
    if bk is not None:
        seq = project_blocks(seq, bk, (2, 2))
    assert P.pow(2).sum() >= seq.pow(2).sum() - 1e-12


# ------------------------------------------------------------------------------ levels
def test_pair_levels_uniform_and_ternary():
    assert pair_levels(2).tolist() == [-1.0, 0.0, 1.0]
    assert torch.equal(pair_levels(4), torch.arange(-3, 4, dtype=torch.float64) / 3)
    custom = pair_levels([1.0, 2.0, 5.0])       # differences 0, ±1, ±3, ±4 over 4
    assert torch.allclose(custom, torch.tensor([-1, -0.75, -0.25, 0, 0.25, 0.75, 1.0],
                                               dtype=torch.float64))
    for bad in (1, 0, [3.0], [2.0, 2.0], [0.0, float("nan")]):
        with pytest.raises(ValueError, match="levels="):
            pair_levels(bad)


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=2, max_size=6))
@example([0.0, 1.0, 1e-9])          # near-duplicate levels must not lose the maximum
@FAST
def test_pair_levels_symmetric_normalised(device_levels):
    if max(device_levels) - min(device_levels) < 1e-6:
        return
    L = pair_levels(device_levels)
    assert L.max() == 1 and L.min() == -1 and (L == 0).sum() == 1
    assert torch.allclose(L, -L.flip(0))
    assert (L.diff() > 0).all()


def _brute_force_levels(w, levels):
    """min over q in L^N of min_s ||w - s q||^2 = ||w||^2 - <w,q>^2 / <q,q>."""
    best = w.pow(2).sum().item()
    for q in itertools.product(levels.tolist(), repeat=w.numel()):
        q = torch.tensor(q, dtype=torch.float64)
        qq = q.pow(2).sum()
        if qq > 0:
            best = min(best, (w.pow(2).sum() - (w @ q) ** 2 / qq).item())
    return best


@FAST
@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=4),
       st.sampled_from([2, 3, [0.0, 0.2, 1.0]]))
def test_levels_exact_against_brute_force(values, device_levels):
    W = torch.tensor(values, dtype=torch.float64).reshape(1, -1)
    L = pair_levels(device_levels)
    Q, scale = project_levels(W, L)
    assert _dist(W, Q) <= _brute_force_levels(W.flatten(), L) + 1e-9


@FAST
@given(matrices(max_out=4, max_in=6), st.sampled_from([2, 3, 5]), st.booleans())
def test_levels_in_set_and_idempotent(W, n_levels, per_column):
    L = pair_levels(n_levels)
    Q, scale = project_levels(W, L, per_column=per_column)
    assert scale.shape == ((W.shape[0],) if per_column else ())
    s = scale[:, None] if per_column else scale
    assert (s > 0).all()
    assert torch.allclose(round_to_levels(Q / s, L), Q / s, atol=1e-9)
    Q2, _ = project_levels(Q, L, per_column=per_column)
    assert torch.allclose(Q2, Q, atol=1e-9)


def test_per_column_not_worse_than_per_layer():
    W = torch.randn(8, 20) * torch.logspace(-2, 0, 8)[:, None]
    L = pair_levels(3)
    assert _dist(W, project_levels(W, L, per_column=True)[0]) \
        <= _dist(W, project_levels(W, L)[0]) + 1e-6


def test_ternary_matches_closed_form():
    W = torch.tensor([[0.1, -2.0, 1.9, 0.05]])
    Q, scale = project_levels(W, pair_levels(2))
    assert torch.allclose(Q, torch.tensor([[0.0, -1.95, 1.95, 0.0]]))
    assert scale.item() == pytest.approx(1.95)


def test_levels_respect_mask_and_zero_input():
    W = torch.randn(5, 7)
    mask = torch.rand(5, 7) > 0.5
    L = pair_levels(4)
    Q, _ = project_levels(W, L, mask=mask)
    assert torch.count_nonzero(Q[~mask]) == 0
    brute_masked = project_levels(W * mask, L)[0]
    assert torch.allclose(Q, brute_masked)
    Z, scale = project_levels(torch.zeros(3, 4), L, per_column=True)
    assert torch.count_nonzero(Z) == 0 and torch.equal(scale, torch.ones(3))


# -------------------------------------------------------------- importance-weighted projections
def _brute_force_weighted_levels(w, imp, levels):
    """min over q in L^N of min_s sum imp (w - s q)^2 = sum imp w^2 - <w,q>_imp^2 / <q,q>_imp."""
    base = (imp * w * w).sum().item()
    best = base
    for q in itertools.product(levels.tolist(), repeat=w.numel()):
        q = torch.tensor(q, dtype=torch.float64)
        qq = (imp * q * q).sum()
        if qq > 0:
            best = min(best, (base - (imp * w * q).sum() ** 2 / qq).item())
    return best


@FAST
@given(st.lists(st.tuples(st.floats(-3, 3, allow_nan=False), st.sampled_from([0.0, 0.01, 1, 50])),
                min_size=1, max_size=4),
       st.sampled_from([2, 3, [0.0, 0.2, 1.0]]))
@example([(1.0, 1.0), (0.4, 50.0), (-0.05, 0.0)], 3)
def test_weighted_levels_exact_against_brute_force(pairs, device_levels):
    W = torch.tensor([p[0] for p in pairs], dtype=torch.float64).reshape(1, -1)
    imp = torch.tensor([p[1] for p in pairs], dtype=torch.float64).reshape(1, -1)
    L = pair_levels(device_levels)
    Q, scale = project_levels(W, L, weights=imp)
    assert scale > 0
    assert torch.allclose(round_to_levels(Q / scale, L), Q / scale, atol=1e-9)
    err = (imp * (W - Q) ** 2).sum().item()
    assert err <= _brute_force_weighted_levels(W.flatten(), imp.flatten(), L) + 1e-9


def test_weighted_levels_beat_the_local_alternation():
    """The alternation "round / weighted closed form" started at the unweighted optimum stops at
    a local fixed point here; the sweep finds the global weighted optimum."""
    L = pair_levels(3)                                  # {0, ±1/2, ±1}
    W = torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64)
    imp = torch.tensor([[100.0, 100.0, 1.0]], dtype=torch.float64)
    _, s = project_levels(W, L)
    for _ in range(50):
        q = round_to_levels(W / s, L)
        s = (imp * W * q).sum() / (imp * q * q).sum()
    local = (imp * (W - s * round_to_levels(W / s, L)) ** 2).sum().item()
    Q, _ = project_levels(W, L, weights=imp)
    glob = (imp * (W - Q) ** 2).sum().item()
    assert glob == pytest.approx(_brute_force_weighted_levels(W.flatten(), imp.flatten(), L))
    assert glob < local / 10                           # 0.062 against 3.125


def test_weights_one_equal_unweighted_and_are_checked():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 7, generator=g)
    mask = torch.rand(5, 7, generator=g) > 0.3
    L = pair_levels(4)
    for per_column in (False, True):
        Q0, s0 = project_levels(W, L, per_column, mask)
        Q1, s1 = project_levels(W, L, per_column, mask, weights=torch.ones(35))
        assert torch.equal(Q0, Q1) and torch.equal(s0, s1)
    assert torch.equal(structured_mask(W, rows_keep=3, weights=torch.ones_like(W)),
                       structured_mask(W, rows_keep=3))
    with pytest.raises(ValueError, match="entries"):
        project_levels(W, L, weights=torch.ones(5))
    with pytest.raises(ValueError, match=">= 0"):
        structured_mask(W, cols_keep=2, weights=-torch.ones_like(W))
    imp = torch.zeros_like(W)                      # no importance anywhere: any scale is optimal
    Qz, sz = project_levels(W, L, weights=imp)
    assert torch.isfinite(Qz).all() and sz > 0


def test_weighted_mask_keeps_the_important_column():
    W = torch.tensor([[3.0, 0.1], [3.0, 0.1]])
    imp = torch.tensor([[1.0, 1e4], [1.0, 1e4]])
    assert structured_mask(W, rows_keep=1).any(0).tolist() == [True, False]
    assert structured_mask(W, rows_keep=1, weights=imp).any(0).tolist() == [False, True]


def test_a_row_too_large_for_the_exact_sweep_is_scanned_near_the_optimum(monkeypatch):
    """Issue 22, item 9: ``device.n_levels=4096`` (the documented maximum) made the exact scale
    sweep hold N x 4095 breakpoints per layer (an epoch ran for minutes; a layer of millions of
    weights would not fit in memory). A row above the budget is scanned instead: on smooth
    problems its squared error is within 0.1 % of the exact optimum's; rows within the budget
    are swept exactly in chunks, giving the same scales as one sweep."""
    from memxbar.admm import projections as P

    torch.manual_seed(0)
    for n, W in ((16, torch.randn(1, 20000)), (64, torch.randn(1, 20000)),
                 (16, torch.distributions.Laplace(0.0, 1.0).sample((1, 20000)))):
        levels = P.pair_levels(n)
        monkeypatch.setattr(P, "EXACT_SCALE_BUDGET", 2**40)
        exact, _ = P.project_levels(W, levels)
        monkeypatch.setattr(P, "EXACT_SCALE_BUDGET", 2**12)
        scanned, _ = P.project_levels(W, levels)
        e_exact, e_scan = float(((W - exact) ** 2).sum()), float(((W - scanned) ** 2).sum())
        assert e_exact <= e_scan <= 1.001 * e_exact, (n, e_exact, e_scan)
    W = torch.randn(50, 40)
    monkeypatch.setattr(P, "EXACT_SCALE_BUDGET", 2**40)
    whole = P.project_levels(W, P.pair_levels(8), per_column=True)
    monkeypatch.setattr(P, "EXACT_SCALE_BUDGET", 40 * 7 * 3)  # three rows per chunk
    chunked = P.project_levels(W, P.pair_levels(8), per_column=True)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))


def test_4096_levels_project_in_well_under_a_second():
    import time

    from memxbar.admm import projections as P

    W = torch.randn(120, 400)
    start = time.perf_counter()
    Q, scale = P.project_levels(W, P.pair_levels(4096))
    assert time.perf_counter() - start < 5.0  # 60 s per projection set before
    assert float(((W - Q) ** 2).mean()) < 1e-5


def test_evenly_spaced_pair_differences_are_exact_and_linear_time():
    """The 4096-level grid's differential pairs: O(n) for evenly spaced levels (the O(n^2)
    sort took 2.3 s per layer), each difference k * step once, with the pair of lowest total
    conductance (the sort split equal differences whose float32 values differed by rounding,
    and kept a costlier pair for some of them from 60 levels up)."""
    import itertools

    from memxbar.crossbar._grid import pair_differences

    for n, lo, hi in ((3, 0.0, 1.0), (16, 1.0, 100.0), (60, 2.0, 40.0), (4096, 1.0, 100.0)):
        levels = torch.linspace(lo, hi, n)
        diffs, i, j = pair_differences(levels)
        assert diffs.numel() == 2 * n - 1 and bool((diffs[1:] > diffs[:-1]).all())
        assert torch.equal(diffs, levels[i] - levels[j])
        assert bool(((i == 0) | (j == 0)).all())  # lowest total: one cell at the lowest level
    levels = torch.tensor([1.0, 2.0, 4.5, 7.0])  # uneven: the general path, checked by brute force
    diffs, i, j = pair_differences(levels)
    best = {}
    for a, b in itertools.product(range(4), repeat=2):
        d = round(float(levels[a] - levels[b]), 6)
        if d not in best or levels[a] + levels[b] < levels[best[d][0]] + levels[best[d][1]]:
            best[d] = (a, b)
    assert [round(float(d), 6) for d in diffs] == sorted(best)
    assert [(int(a), int(b)) for a, b in zip(i, j, strict=True)] == [best[d] for d in sorted(best)]
