"""The estimators of experiments.estimators against closed forms (issue 24)."""

from __future__ import annotations

import math

import pytest

from memxbar.experiments.estimators import (
    chip_yield,
    chips_for_width,
    ci95,
    clopper_pearson,
    mean_sd,
)


def _binom_tail_ge(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (3, 10), (24, 25), (980, 1000), (1, 1)])
def test_clopper_pearson_solves_its_defining_binomial_equations(k, n):
    """The exact interval: P(X >= k | p_low) = a/2 and P(X <= k | p_high) = a/2, summed
    term by term; at k = 0 and k = n the closed forms 1 - (a/2)^(1/n) and (a/2)^(1/n)."""
    low, high = clopper_pearson(k, n)
    if k == 0:
        assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    elif k == n:
        assert high == 1.0 and low == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    else:
        assert _binom_tail_ge(k, n, low) == pytest.approx(0.025, rel=1e-6)
        assert 1 - _binom_tail_ge(k + 1, n, high) == pytest.approx(0.025, rel=1e-6)
    assert low <= k / n <= high


def test_yield_counts_the_chips_that_meet_the_spec():
    accs = [98.0, 97.9, 97.0, 96.5, 98.2]
    est = chip_yield(accs, dense_accuracy=98.5, max_drop=1.0)
    assert est.min_accuracy == pytest.approx(97.5) and est.passed == 3 and est.chips == 5
    assert est.yield_pct == 60.0 and est.worst == 96.5
    low, high = clopper_pearson(3, 5)
    assert est.ci_low_pct == pytest.approx(100 * low)
    assert est.ci_high_pct == pytest.approx(100 * high)
    assert est.quantiles["q50"] == 97.9
    both = chip_yield(accs, dense_accuracy=98.5, max_drop=1.0, min_accuracy=98.0)
    assert both.passed == 2 and "and at least 98 %" in both.spec  # the stricter applies
    with pytest.raises(ValueError, match="max_drop or min_accuracy"):
        chip_yield(accs)


def test_chips_for_width_is_the_smallest_count_that_reaches_the_width():
    n = chips_for_width(0.9, 0.05)
    for m, ok in ((n, True), (n - 1, False)):
        low, high = clopper_pearson(round(0.9 * m), m)
        assert (high - low <= 0.05) is ok
    assert chips_for_width(1.0, 0.05) < chips_for_width(0.5, 0.05)


def test_mean_sd_and_ci95_use_the_sample_std():
    values = [1.0, 2.0, 4.0]
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(7 / 3)
    assert sd == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
    assert ci95(values) == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)
    assert ci95([5.0]) == 0.0 and mean_sd([5.0]) == (5.0, 0.0)
