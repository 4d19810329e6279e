"""Low / typical / high cost: the range the component table's sources allow.

Published energies and areas of the same component differ 2-5x between sources (an 8-bit SAR
ADC at 32 nm: 1.56 pJ in ISAAC's table, 2.58 pJ as fabricated by Kull et al.). A table's
``ranges`` block (:class:`crossbar.cost.KindRange`) gives, per component kind, the low and
high values of other sources as factors on the typical entry. Every cost is a sum of
non-negative parts, each linear in one kind's value::

    C(s) = sum_k s_k c_k,   s_k in [low_k, high_k]  (c_k: the part at the typical value)

so the totals' range is exact with every kind at its low (high) end together, and the range
of a reduction ``1 - C(s) / B(s)`` (design and baseline priced with the same components) is
the range of a ratio of two such sums over the box: its extremes lie at corners, which are
enumerated (2^K corners, K = kinds with a range that the two costs use, at most 11).

These are bounds, not confidence intervals: the sources are different designs, not samples
of one. Equations and sources: docs/cost_model.md, "Ranges".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # crossbar.cost imports this module
    from .cost import ComponentTable, ModelCost

__all__ = ["cost_ranges", "part_kind", "ratio_range", "total_range"]


def part_kind(part: str) -> str:
    """The table kind that prices a part of the breakdown (spare cells: the crossbar's; every
    other part is priced by the kind of its name, ``crossbar.cost.PARTS``)."""
    return "crossbar" if part == "spare_cells" else part


def _factors(table: ComponentTable, quantity: str) -> dict[str, tuple[float, float]]:
    return {kind: getattr(r, quantity) for kind, r in table.ranges.items()}


def _by_kind(parts: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part, value in parts.items():
        kind = part_kind(part)
        out[kind] = out.get(kind, 0.0) + value
    return out


def total_range(parts: Mapping[str, float], table: ComponentTable, quantity: str = "energy"
                ) -> tuple[float, float]:
    """``(low, high)`` of ``sum(parts)`` (a breakdown by part, e.g.
    ``ModelCost.energy_pJ``) with every kind of ``table.ranges`` at its low / high end; parts
    of kinds without a range stay at their value."""
    f = _factors(table, quantity)
    lo = sum(v * f.get(k, (1.0, 1.0))[0] for k, v in _by_kind(parts).items())
    hi = sum(v * f.get(k, (1.0, 1.0))[1] for k, v in _by_kind(parts).items())
    return lo, hi


def ratio_range(design: Mapping[str, float], base: Mapping[str, float], table: ComponentTable,
                quantity: str = "energy") -> tuple[float, float]:
    """``(min, max)`` of ``sum(design) / sum(base)`` when each kind's value moves within its
    range, the same value in both (exact: the extremes of a ratio of two linear functions
    over a box are at its corners)."""
    f = _factors(table, quantity)
    d, b = _by_kind(design), _by_kind(base)
    free = [k for k in f if (d.get(k, 0.0) or b.get(k, 0.0)) and f[k][0] != f[k][1]]
    d_fixed = sum(v for k, v in d.items() if k not in free)
    b_fixed = sum(v for k, v in b.items() if k not in free)
    ratios = []
    for corner in itertools.product((0, 1), repeat=len(free)):
        num = d_fixed + sum(d.get(k, 0.0) * f[k][e] for k, e in zip(free, corner, strict=True))
        den = b_fixed + sum(b.get(k, 0.0) * f[k][e] for k, e in zip(free, corner, strict=True))
        if den > 0:
            ratios.append(num / den)
    return (min(ratios), max(ratios)) if ratios else (1.0, 1.0)


def cost_ranges(compressed: ModelCost, baseline: ModelCost | None, table: ComponentTable
                ) -> dict:
    """The low and high ends of the design's (and the baseline's) area, energy per inference
    and power, and of the reductions; per kind its factors and sources; the kinds the costs
    use that have no range (``without_range``: their value is taken as exact)."""
    used = {part_kind(p) for p, v in compressed.energy_pJ.items() if v} | \
        {part_kind(p) for p, v in compressed.area_um2.items() if v}
    out: dict = {"kinds": {k: {"energy_factor": list(r.energy), "area_factor": list(r.area),
                               "sources": r.sources} for k, r in table.ranges.items()},
                 "without_range": sorted(used - set(table.ranges))}
    for name, mc in (("compressed", compressed), ("baseline", baseline)):
        if mc is None:
            continue
        e_lo, e_hi = total_range(mc.energy_pJ, table, "energy")
        a_lo, a_hi = total_range(mc.area_um2, table, "area")
        rate = mc.inferences_per_s
        out[name] = {"energy_nJ": [e_lo * 1e-3, e_hi * 1e-3],
                     "area_mm2": [a_lo * 1e-6, a_hi * 1e-6],
                     "power_mW": [e_lo * 1e-12 * rate * 1e3, e_hi * 1e-12 * rate * 1e3]}
    if baseline is not None:
        for key, parts, quantity in (("energy", "energy_pJ", "energy"),
                                     ("area", "area_um2", "area")):
            r_lo, r_hi = ratio_range(getattr(compressed, parts), getattr(baseline, parts),
                                     table, quantity)
            out[f"{key}_reduction_pct"] = [100.0 * (1.0 - r_hi), 100.0 * (1.0 - r_lo)]
            out[f"{key}_of_baseline_pct"] = [100.0 * r_lo, 100.0 * r_hi]
        # power = energy x rate: the rates are fixed, so its ratio moves with energy's
        out["power_reduction_pct"] = [
            100.0 * (1.0 - (100.0 - out["energy_reduction_pct"][0]) / 100.0
                     * compressed.inferences_per_s / baseline.inferences_per_s)
            if baseline.inferences_per_s else 0.0,
            100.0 * (1.0 - (100.0 - out["energy_reduction_pct"][1]) / 100.0
                     * compressed.inferences_per_s / baseline.inferences_per_s)
            if baseline.inferences_per_s else 0.0]
    return out
