"""Validation of the cost model against published chips (issue 23).

Each published design is rebuilt in this project's terms (a :class:`~crossbar.plan.MappingPlan`
and a :class:`~crossbar.config.CrossbarConfig`: array size, weight and cell bits, DAC kind and
bits, ADC bits, mapping) and costed by :func:`crossbar.cost.model_cost` with a component table
for that technology (``memxbar/crossbar/data/validation/*.yaml``, every entry with its source). The
model's energy efficiency and energy breakdown are then compared with the published ones.

Ops convention, everywhere here: **one multiply-accumulate (MAC) is two operations** (a multiply
and an add), and the MACs of a matrix-vector multiply (MVM) are its logical weights times its
input vectors, whatever the precision: a b-bit input times a w-bit weight is one MAC, however
many cells, slices or input cycles the hardware spends on it. ``TOPS/W = 2 x MACs / energy``.
NeuRRAM states this convention (Wan et al., Nature 2022, Extended Data Fig. 12a caption: "one
multiply-accumulate (MAC) counts as two operations"); for the Hung et al. macro it is assumed.

Designs (details and sources: ``docs/cost_model.md``, "Validation against published chips"):

- **NeuRRAM** (Wan et al., Nature 608, 2022): eight input/output precisions, 1-bit in / 3-bit out
  to 8-bit in / 10-bit out. The table's energies are derived from the published breakdown of ONE
  point (4-bit in / 6-bit out); the other seven are predictions.
- **ISAAC** tile (Shafiee et al., ISCA 2016, Table 6): power and area of one tile, and the power
  breakdown, through :func:`crossbar.report.isaac_tile_comparison` (the existing check).
- **Hung et al. 2021** (Nature Electronics 4, 22 nm RRAM macro): the binary and the 8-bit x 8-bit
  points, with ISAAC's components scaled to 22 nm (nothing taken from the macro itself).

:func:`validation_report` returns the rows, :func:`validation_markdown` renders them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import torch
import yaml

from .config import CrossbarConfig
from .cost import PARTS, ComponentTable, CostConfig, ModelCost, load_table, model_cost
from .plan import MappingPlan, plan_layer

OPS_PER_MAC = 2
"""Operations per multiply-accumulate: a multiply and an add (the convention of every row)."""

VALIDATION_DIR = "data/validation"
"""Folder (inside the ``crossbar`` package) of the per-design component tables."""


# ------------------------------------------------------------------------------- helpers
def validation_tables() -> list[str]:
    """Names of the component tables used only for validation."""
    folder = resources.files("memxbar.crossbar").joinpath(VALIDATION_DIR)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_validation_table(name: str) -> ComponentTable:
    """A validation table by name (``"neurram"``, ``"hung2021"``)."""
    if name not in validation_tables():
        raise ValueError(f"validation table {name!r}: allowed: one of "
                         f"{', '.join(validation_tables())}")
    text = resources.files("memxbar.crossbar").joinpath(VALIDATION_DIR, f"{name}.yaml").read_text()
    return ComponentTable.from_dict(yaml.safe_load(text))


def macs(plan: MappingPlan) -> int:
    """MACs of one inference of ``plan``: each layer's live weights (live rows x live outputs,
    one MAC per weight whatever its bits, cells or slices) times its MVMs per inference."""
    return sum(len(p.live_rows) * len(p.live_cols) * (p.mvms_per_sample or 1) for p in plan)


def tops_per_watt(n_macs: float, energy_J: float) -> float:
    """Energy efficiency in tera-operations per second per watt (= per joule):
    ``OPS_PER_MAC * n_macs / energy_J / 1e12``."""
    if energy_J <= 0:
        raise ValueError(f"energy {energy_J!r} J: allowed: > 0")
    return OPS_PER_MAC * n_macs / energy_J / 1e12


def rel_error(model: float, published: float) -> float:
    """``model / published - 1`` (signed; negative = the model is below the paper)."""
    return model / published - 1.0


def _dense_plan(name: str, outputs: int, inputs: int, xbar: CrossbarConfig) -> MappingPlan:
    layer = plan_layer(name, "linear", torch.ones(outputs, inputs, dtype=torch.bool), xbar,
                       mvms_per_sample=1)
    return MappingPlan({name: layer})


def _shares(energy: Mapping[str, float], groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    total = sum(energy.values())
    return {cat: sum(energy[k] for k in kinds) / total for cat, kinds in groups.items()}


def _sum_energy(costs: Sequence[ModelCost]) -> dict[str, float]:
    out = {k: 0.0 for k in PARTS}
    for mc in costs:
        for k, v in mc.energy_pJ.items():
            out[k] += v
    return out


# ------------------------------------------------------------------------------- NeuRRAM
NEURRAM_SOURCE = ("Wan et al., 'A compute-in-memory chip based on resistive random-access "
                  "memory', Nature 608, 504-512 (2022), Extended Data Fig. 12b (breakdown) and "
                  "12e (TOPS/W), read from the figure (digitisation published with CiMLoop, "
                  "Andrulis et al., ISPASS 2024)")


@dataclass(frozen=True)
class NeurramPoint:
    """One published NeuRRAM operating point.

    ``breakdown_fJ_per_op``: the three published categories (WL switching, neuron read-out,
    input pulses) in fJ per operation, Extended Data Fig. 12b as digitised."""

    in_bits: int
    out_bits: int
    two_phase: bool
    tops_per_w: float
    breakdown_fJ_per_op: tuple[float, float, float]


NEURRAM_POINTS: tuple[NeurramPoint, ...] = (
    # in, out, two-phase, TOPS/W (ED Fig. 12e), (WL switching, neuron, input pulses) fJ/op (12b)
    NeurramPoint(1, 3, False, 43.1, (8.990, 10.619, 3.446)),
    NeurramPoint(2, 4, False, 40.3, (8.271, 12.387, 3.956)),
    NeurramPoint(3, 5, False, 23.1, (15.463, 20.118, 7.732)),
    NeurramPoint(4, 6, False, 16.0, (21.756, 29.108, 11.507)),
    NeurramPoint(5, 7, False, 11.3, (30.926, 44.212, 14.025)),
    NeurramPoint(6, 8, False, 9.1, (37.219, 52.483, 19.239)),
    NeurramPoint(7, 9, True, 7.75, (43.692, 61.833, 22.835)),
    NeurramPoint(8, 10, True, 6.44, (50.525, 75.857, 27.510)),
)
"""Outputs are two bits wider than inputs (Extended Data Fig. 12 caption). 7- and 8-bit inputs
run in two phases (Fig. 3f: inputs over 4 bits are split into an MSB and an LSB segment); the
published 5- and 6-bit values are the one-phase ones (Extended Data Fig. 12a, 'without 2-phase
operation'). The TOPS/W values are the issue's, which agree with the digitised figure."""

NEURRAM_ANCHOR = (4, 6)
"""The (input, output) bits whose published breakdown the ``neurram`` table is derived from."""

NEURRAM_CATEGORIES: dict[str, tuple[str, ...]] = {
    "WL switching": ("input_register",),
    "read-out (neuron)": ("adc", "sample_hold", "shift_add", "output_register"),
    "input pulses": ("dac", "crossbar", "spare_cells", "buffer", "calibration_register",
                     "multiply_add"),
}
"""The paper's three categories and the model components charged for each (see the table's
header: the WL pulse per magnitude bit is the model's per-input-bit event, ``input_register``)."""

NEURRAM_COST = CostConfig(cols_per_adc=1)
"""One neuron (ADC) per output; the clock only sets latency, which TOPS/W does not use."""


def neurram_phases(in_bits: int, out_bits: int, two_phase: bool) -> list[tuple[int, int]]:
    """``(input magnitude bits, ADC bits)`` of each MVM phase. A b-bit signed input has
    ``max(1, b - 1)`` magnitude bits (the sign is the pulse polarity). Two phases: the MSB
    segment takes ``ceil(m / 2)`` bits and is converted at ``out_bits``; the LSB segment's result
    is shifted right by the MSB segment's bits before the shift-and-add, so it is converted at
    ``out_bits - ceil(m / 2)`` (more bits could not change a result of ``out_bits`` bits)."""
    m = max(1, in_bits - 1)
    if not two_phase:
        return [(m, out_bits)]
    hi = math.ceil(m / 2)
    return [(hi, out_bits), (m - hi, out_bits - hi)]


def neurram_config(mag_bits: int, adc_bits: int) -> CrossbarConfig:
    """One NeuRRAM core in model terms: 256 word lines x 128 outputs, differential (two arrays
    of 256 x 128 = the core's 65,536 cells), 4-bit weights in one cell pair (no slicing), a
    parallel (pulse-count) DAC of ``mag_bits`` magnitude bits, ``adc_bits``-bit read-out."""
    return CrossbarConfig(tile_rows=256, tile_cols=128, mapping="differential", weight_bits=4,
                          cell_bits=None, dac="parallel", dac_bits=mag_bits, adc_bits=adc_bits)


def neurram_point_cost(point: NeurramPoint, table: ComponentTable | None = None
                       ) -> tuple[dict[str, float], int]:
    """Model energy per MVM by component (pJ, summed over the phases) and the MACs per MVM."""
    tab = table or load_validation_table("neurram")
    costs, n_macs = [], None
    for mag, adc in neurram_phases(point.in_bits, point.out_bits, point.two_phase):
        xbar = neurram_config(mag, adc)
        plan = _dense_plan("neurram_core", 128, 256, xbar)
        costs.append(model_cost(plan, xbar, NEURRAM_COST, tab))
        n_macs = macs(plan)  # the same matrix in every phase: one MVM, counted once
    return _sum_energy(costs), int(n_macs)


def neurram_rows(table: ComponentTable | None = None) -> list[dict]:
    tab = table or load_validation_table("neurram")
    rows = []
    for pt in NEURRAM_POINTS:
        energy, n_macs = neurram_point_cost(pt, tab)
        model = tops_per_watt(n_macs, sum(energy.values()) * 1e-12)
        published_shares = dict(zip(NEURRAM_CATEGORIES, (
            v / sum(pt.breakdown_fJ_per_op) for v in pt.breakdown_fJ_per_op), strict=True))
        model_shares = _shares(energy, NEURRAM_CATEGORIES)
        anchor = (pt.in_bits, pt.out_bits) == NEURRAM_ANCHOR
        rows.append({
            "design": "NeuRRAM (130 nm RRAM, Wan et al. 2022)",
            "point": f"{pt.in_bits}b in / {pt.out_bits}b out"
                     + (", two phases" if pt.two_phase else ""),
            "metric": "TOPS/W",
            "published": pt.tops_per_w,
            "model": model,
            "rel_error": rel_error(model, pt.tops_per_w),
            "role": "anchor" if anchor else "prediction",
            "breakdown": {c: {"published": published_shares[c], "model": model_shares[c]}
                          for c in NEURRAM_CATEGORIES},
            "macs_per_mvm": n_macs,
            "energy_pJ_per_mvm": sum(energy.values()),
            "source": NEURRAM_SOURCE,
        })
    return rows


# --------------------------------------------------------------------------------- ISAAC
ISAAC_SOURCE = ("Shafiee et al., ISAAC, ISCA 2016, Table 6 (rows quoted in "
                "memxbar/crossbar/data/isaac.yaml)")

ISAAC_TABLE6_POWER_mW: dict[str, float] = {
    "crossbar": 12 * 2.4, "dac": 12 * 4.0, "adc": 12 * 16.0, "sample_hold": 12 * 0.01,
    "shift_add": 12 * 0.2, "input_register": 12 * 1.24, "output_register": 12 * 0.23,
    "buffer": 20.7,
}
"""Table 6 power of the rows this model has, for one tile (12 IMAs + eDRAM), in mW; they add
up to 309.7 mW = 289 mW (12 IMAs) + 20.7 mW (eDRAM)."""


def isaac_tile_comparison(table: str | os.PathLike | Mapping | ComponentTable = "isaac"
                          ) -> dict[str, float]:
    """Model one fully used ISAAC tile and compare with the paper's Table 6 totals.

    ISAAC tile: 12 IMAs x 8 arrays of 128x128 2-bit cells = 96 arrays, 16-bit weights in 8
    slices, 16-bit inputs fed bit-serially through 1-bit DACs, one 8-bit ADC per array
    (128 bit lines per ADC) at 1.28 GS/s. Here: one layer of 128 inputs x 1440 outputs with the
    offset mapping (15 outputs x 8 slices + 1 reference column = 121 of 128 bit lines per
    array), so 96 tiles of one array each, one MVM per inference; power = energy / latency.
    """
    tab = load_table(table)
    xbar = CrossbarConfig(tile_rows=128, tile_cols=128, mapping="offset", weight_bits=16,
                          cell_bits=2, dac_bits=16, adc_bits=8, bit_serial=True)
    layer = plan_layer("isaac_tile", "linear", torch.ones(15 * 96, 128, dtype=torch.bool),
                       xbar, mvms_per_sample=1)
    mc = model_cost(MappingPlan({layer.name: layer}), xbar,
                    CostConfig(clock_MHz=1280.0, cols_per_adc=128), tab)
    rep = {k: v[0] for k, v in tab.reported.items()}
    paper_power = (rep["ima_x12_power"] + 0.0207) * 1e3   # + eDRAM row (20.7 mW)
    paper_area = (rep["ima_x12_area"] * 1e6 + 0.083)      # + eDRAM row (0.083 mm2)
    out = {
        "tiles": mc.tiles,
        "model_power_mW": mc.power_mW,
        "model_area_mm2": mc.total_area_mm2,
        "paper_modelled_rows_power_mW": paper_power,
        "paper_modelled_rows_area_mm2": paper_area,
        "paper_tile_power_mW": rep["tile_power"] * 1e3,
        "paper_tile_area_mm2": rep["tile_area"] * 1e6,
        "unmodelled_tile_power_mW": rep["unmodelled_tile_power"] * 1e3,
        "unmodelled_tile_area_mm2": rep["unmodelled_tile_area"] * 1e6,
    }
    out["gap_modelled_rows_power_pct"] = 100 * (mc.power_mW / paper_power - 1)
    out["gap_modelled_rows_area_pct"] = 100 * (mc.total_area_mm2 / paper_area - 1)
    out["gap_tile_power_pct"] = 100 * (mc.power_mW / out["paper_tile_power_mW"] - 1)
    out["gap_tile_area_pct"] = 100 * (mc.total_area_mm2 / out["paper_tile_area_mm2"] - 1)
    for comp in PARTS:
        out[f"model_power_mW_{comp}"] = mc.energy_pJ[comp] / mc.latency_ns
        out[f"model_area_mm2_{comp}"] = mc.area_um2[comp] * 1e-6
    return out


def isaac_rows() -> list[dict]:
    r = isaac_tile_comparison()
    model_power = {k: r[f"model_power_mW_{k}"] for k in ISAAC_TABLE6_POWER_mW}
    pub_total = sum(ISAAC_TABLE6_POWER_mW.values())
    model_total = sum(r[f"model_power_mW_{k}"] for k in PARTS)
    breakdown = {k: {"published": v / pub_total, "model": model_power[k] / model_total}
                 for k, v in ISAAC_TABLE6_POWER_mW.items()}
    common = {"design": "ISAAC tile (32 nm, Shafiee et al. 2016)", "source": ISAAC_SOURCE}
    return [
        {**common, "point": "12 IMAs + eDRAM, 16b x 16b, 1-bit DACs", "metric": "power (mW)",
         "published": r["paper_modelled_rows_power_mW"], "model": r["model_power_mW"],
         "rel_error": r["gap_modelled_rows_power_pct"] / 100, "role": "check",
         "breakdown": breakdown},
        {**common, "point": "12 IMAs + eDRAM, 16b x 16b, 1-bit DACs", "metric": "area (mm2)",
         "published": r["paper_modelled_rows_area_mm2"], "model": r["model_area_mm2"],
         "rel_error": r["gap_modelled_rows_area_pct"] / 100, "role": "check",
         "breakdown": None},
    ]


# ------------------------------------------------------------------------------ Hung 2021
HUNG_SOURCE = ("Hung et al., 'A four-megabit compute-in-memory macro with eight-bit precision "
               "based on CMOS and resistive random-access memory for AI edge devices', Nature "
               "Electronics 4, 921-930 (2021), abstract")

HUNG_POINTS: tuple[tuple[str, int, int, float], ...] = (
    # label, input bits, weight bits, published TOPS/W
    ("binary (1b in x 1b weight)", 1, 1, 194.4),
    ("8b in x 8b weight", 8, 8, 15.6),
)

HUNG_COST = CostConfig(cols_per_adc=128)
"""One 8-bit ADC per 128 converted signals, as in the isaac table it is scaled from."""


def hung_config(in_bits: int, weight_bits: int) -> CrossbarConfig:
    """The macro in model terms (assumed: its array organisation, input scheme and ADC could not
    be retrieved): 128 x 128 arrays of binary cells (``cell_bits=1``, the paper's binary RRAM),
    differential, bit-serial inputs through a 1-bit DAC, an 8-bit ADC per conversion (a 128-row
    binary partial sum needs 8 bits)."""
    return CrossbarConfig(tile_rows=128, tile_cols=128, mapping="differential",
                          weight_bits=weight_bits, cell_bits=1,
                          dac="bit_serial" if in_bits > 1 else "parallel", dac_bits=in_bits,
                          adc_bits=8)


def hung_rows(table: ComponentTable | None = None) -> list[dict]:
    tab = table or load_validation_table("hung2021")
    rows = []
    for label, in_bits, w_bits, published in HUNG_POINTS:
        xbar = hung_config(in_bits, w_bits)
        plan = _dense_plan("hung_macro", 128, 128, xbar)
        mc = model_cost(plan, xbar, HUNG_COST, tab)
        model = tops_per_watt(macs(plan), mc.total_energy_nJ * 1e-9)
        rows.append({
            "design": "Hung et al. 2021 (22 nm RRAM macro)", "point": label, "metric": "TOPS/W",
            "published": published, "model": model, "rel_error": rel_error(model, published),
            "role": "prediction", "breakdown": None, "macs_per_mvm": macs(plan),
            "energy_pJ_per_mvm": mc.total_energy_nJ * 1e3, "source": HUNG_SOURCE,
        })
    return rows


# -------------------------------------------------------------------------------- report
def validation_report() -> list[dict]:
    """Every published point against the model: ``design``, ``point``, ``metric``,
    ``published``, ``model``, ``rel_error`` (``model / published - 1``), ``role`` (``anchor``:
    the point the table was derived from; ``prediction``; ``check``: the existing ISAAC tile
    check), ``breakdown`` (category -> published and model share of the energy or power, where
    published; else ``None``) and ``source``."""
    return neurram_rows() + isaac_rows() + hung_rows()


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def validation_markdown(rows: list[dict] | None = None) -> str:
    """The rows as Markdown: one table of published vs model values, one of breakdown shares."""
    rows = validation_report() if rows is None else rows
    out = ["| design | point | metric | published | model | error | role |",
           "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['design']} | {r['point']} | {r['metric']} | {r['published']:.4g} | "
                   f"{r['model']:.4g} | {_pct(r['rel_error'])} | {r['role']} |")
    out += ["", f"Ops convention: 1 MAC = {OPS_PER_MAC} operations; error = model / published - 1.",
            "", "| design | point | category | published share | model share |",
            "|---|---|---|---:|---:|"]
    for r in rows:
        for cat, s in (r["breakdown"] or {}).items():
            out.append(f"| {r['design']} | {r['point']} | {cat} | {100 * s['published']:.1f}% | "
                       f"{100 * s['model']:.1f}% |")
    return "\n".join(out) + "\n"
