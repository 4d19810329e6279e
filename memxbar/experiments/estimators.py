"""The estimators every report and figure uses for a Monte Carlo over chips (issue 24), in one
place, each saying what it is:

* :func:`mean_sd` -- the mean and the **sample** standard deviation (``n - 1``) over chips;
* :func:`ci95` -- the half width of the 95 % confidence interval of the mean (Student's t with
  ``n - 1`` degrees of freedom and the sample standard deviation);
* :func:`clopper_pearson` -- the exact (Clopper-Pearson) interval of a binomial proportion,
  for a yield (Clopper and Pearson, Biometrika 26, 404 (1934));
* :func:`quantiles` -- empirical quantiles (linear interpolation between order statistics,
  numpy's default, Hyndman and Fan type 7);
* :func:`chip_yield` -- the share of chips that meet a specification, with its interval, the
  worst chip and the 1 %, 5 % and 50 % quantiles;
* :func:`chips_for_width` -- how many chips a yield estimate needs for a stated interval width.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["YieldEstimate", "chip_yield", "chips_for_width", "ci95", "clopper_pearson",
           "mean_sd", "quantiles"]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for one value)."""
    if not values:
        raise ValueError("mean_sd: no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ci95(values: Sequence[float]) -> float:
    """Half width of the 95 % confidence interval of the mean (Student's t, sample standard
    deviation; 0 for one value)."""
    if len(values) < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values)
                 / math.sqrt(len(values)))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion with ``k`` successes in ``n``
    trials: ``[B(a/2; k, n-k+1), B(1-a/2; k+1, n-k)]`` with ``B`` the beta quantile and
    ``a = 1 - level`` (0 and 1 at the ends)."""
    if not (isinstance(n, int) and n >= 1 and isinstance(k, int) and 0 <= k <= n):
        raise ValueError(f"clopper_pearson: k={k!r}, n={n!r} is invalid; allowed: integers "
                         "with 0 <= k <= n and n >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError(f"clopper_pearson: level={level!r} is invalid; allowed: in (0, 1)")
    from scipy.stats import beta

    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.01, 0.05, 0.5)
              ) -> dict[str, float]:
    """Empirical quantiles (type 7: linear between order statistics), keyed ``q01``, ``q05``,
    ``q50`` ... (percent, two digits)."""
    import numpy as np

    if not values:
        raise ValueError("quantiles: no values")
    arr = np.asarray(values, dtype=float)
    return {f"q{round(q * 100):02d}": float(np.quantile(arr, q)) for q in qs}


@dataclass(frozen=True)
class YieldEstimate:
    """The chips that meet a specification: ``passed`` of ``chips``, the ``yield_pct`` and its
    Clopper-Pearson interval (``ci_low_pct``, ``ci_high_pct``, at ``level``), the ``worst``
    chip's accuracy and quantiles of the chips' accuracies, and the ``spec`` in words."""

    spec: str
    min_accuracy: float
    chips: int
    passed: int
    yield_pct: float
    ci_low_pct: float
    ci_high_pct: float
    level: float
    worst: float
    quantiles: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def chip_yield(accuracies: Sequence[float], *, dense_accuracy: float | None = None,
               max_drop: float | None = None, min_accuracy: float | None = None,
               level: float = 0.95) -> YieldEstimate:
    """Yield of chips whose accuracy (%) is at least ``min_accuracy`` and at most ``max_drop``
    points below ``dense_accuracy`` (either or both; the stricter applies)."""
    if not accuracies:
        raise ValueError("chip_yield: no chips")
    floors, words = [], []
    if max_drop is not None:
        if dense_accuracy is None:
            raise ValueError("chip_yield: max_drop needs dense_accuracy")
        floors.append(dense_accuracy - max_drop)
        unit = "point" if max_drop == 1 else "points"
        words.append(f"at most {max_drop:g} {unit} below dense ({dense_accuracy:.2f} %)")
    if min_accuracy is not None:
        floors.append(min_accuracy)
        words.append(f"at least {min_accuracy:g} %")
    if not floors:
        raise ValueError("chip_yield: give max_drop or min_accuracy")
    floor = max(floors)
    passed = sum(1 for a in accuracies if a >= floor)
    low, high = clopper_pearson(passed, len(accuracies), level)
    return YieldEstimate(
        spec=" and ".join(words) + f": chip accuracy >= {floor:.2f} %", min_accuracy=floor,
        chips=len(accuracies), passed=passed, yield_pct=100.0 * passed / len(accuracies),
        ci_low_pct=100.0 * low, ci_high_pct=100.0 * high, level=level,
        worst=min(accuracies), quantiles=quantiles(accuracies))


def chips_for_width(yield_fraction: float, width: float, level: float = 0.95,
                    limit: int = 1_000_000) -> int:
    """The fewest chips whose Clopper-Pearson interval, at the observed ``yield_fraction``,
    is at most ``width`` wide (both as fractions, e.g. 0.05 for five points)."""
    if not 0.0 <= yield_fraction <= 1.0:
        raise ValueError(f"chips_for_width: yield_fraction={yield_fraction!r} is invalid; "
                         "allowed: in [0, 1]")
    if not 0.0 < width < 1.0:
        raise ValueError(f"chips_for_width: width={width!r} is invalid; allowed: in (0, 1)")

    def wide(n: int) -> float:
        low, high = clopper_pearson(round(yield_fraction * n), n, level)
        return high - low

    low_n, high_n = 1, 2
    while wide(high_n) > width:
        low_n, high_n = high_n, high_n * 2
        if high_n > limit:
            raise ValueError(f"chips_for_width: more than {limit} chips needed")
    while low_n + 1 < high_n:  # the width falls with n (up to the rounding of k)
        mid = (low_n + high_n) // 2
        low_n, high_n = (low_n, mid) if wide(mid) <= width else (mid, high_n)
    return high_n
