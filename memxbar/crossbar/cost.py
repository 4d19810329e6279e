"""Hardware cost model: area, energy, latency and power of a mapped model.

Reads the same :class:`~crossbar.plan.MappingPlan` the simulator uses, so accuracy and cost
describe the same hardware. Component numbers come from a table (YAML, shipped in
``memxbar/crossbar/data``, or the user's own) where every entry has a value, a unit and a source.
Equations and assumptions: ``docs/cost_model.md``.

Per tile ``t`` of a layer (``r`` live word lines, ``k`` outputs, ``bl`` bit lines used,
``S`` weight slices), with ``M`` MVMs per inference and ``c`` input cycles per MVM
(``c = dac_bits`` bit-serial, else 1)::

    DAC drives        = M * c * r                      (one per live word line per cycle)
    cells read        = M * c * r * bl                 (E = cells * E_array / (R * C))
    ADC conversions   = M * c * k * S                  (pair / reference subtracted in analog)
    S&H samples, shift-adds, output-register updates = ADC conversions
    input-register bits = M * c * r * b_dac            (b_dac = 1 bit-serial, else dac_bits)
    buffer bits (layer) = M * (live rows * dac_bits + live outputs * output_bits)
    calibration (output_calibration): M * o multiply-adds, M * o * 2 * calibration_bits
        register bits read      (o = live outputs of the layer: once per output per MVM)

    area = arrays * A_array + spare cells * A_array / (R * C) + r * A_dac
           + n_adc * (A_adc + A_sa) + bl * A_sh + r * dac_bits * A_ir + k * output_bits * A_or
           + arrays * A_buffer [+ o * 2 * calibration_bits * A_creg + n_adc * A_mac]
    n_adc = ceil(k * S / cols_per_adc),  arrays = 2 (differential) or 1 (offset)
    spare cells = (R + spare_rows) * (arrays * C + spare_cols * cpw * S) - arrays * R * C
        (cpw = cells per weight slice: 2 differential, 1 offset; no read energy)

    t_cycle = max(t_array_read, ceil(k * S / n_adc) / f_clock)
    latency(layer) = M * c * max_t t_cycle;  power = energy / latency(model)
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ._validate import (
    check_choice,
    check_float,
    check_int,
    check_optional_int,
    fail,
    from_mapping,
)
from .config import CrossbarConfig
from .converters import get_dac
from .cost_range import cost_ranges
from .plan import LayerPlan, MappingPlan, check_plan, dense_layer_plan

# ------------------------------------------------------------------------------------- units
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9, "p": 1e-12,
           "f": 1e-15, "a": 1e-18}
_BASE = {"J": "energy", "W": "power", "s": "time", "m2": "area", "Hz": "frequency"}
_UNIT_RE = re.compile(r"^(k|m|u|µ|n|p|f|a)?(J|W|s|m2|Hz)$")

#: Component kinds, what one unit of energy counts (per operation) and what one unit of area is.
COMPONENTS: dict[str, tuple[str, str]] = {
    "crossbar": ("array read", "array"),
    "dac": ("drive", "DAC"),
    "adc": ("conversion", "ADC"),
    "sample_hold": ("sample", "bit line"),
    "shift_add": ("operation", "ADC"),
    "input_register": ("bit", "bit"),
    "output_register": ("update", "bit"),
    "buffer": ("bit", "array"),
    "calibration_register": ("bit read", "bit"),
    "multiply_add": ("operation", "unit"),
    "digital_op": ("operation", "unit"),
}
#: Parts of the area and energy breakdown: the table's kinds plus ``spare_cells`` (the spare
#: word lines and column groups of each physical array, priced per cell from ``crossbar``).
PARTS: tuple[str, ...] = ("crossbar", "spare_cells",
                          *[k for k in COMPONENTS if k not in ("crossbar", "digital_op")])
#: Kinds a table may leave out: only looked up when the crossbar config uses them.
OPTIONAL_KINDS = ("calibration_register", "multiply_add", "digital_op")
#: Selectors that pick one entry of a kind.
SELECTORS: dict[str, tuple[str, ...]] = {"crossbar": ("rows", "cols"), "dac": ("bits",),
                                         "adc": ("bits",)}
#: Plausible SI ranges ``(energy J per operation, area m^2 per unit)``: a unit-prefix slip
#: (x1000) of a typical value lands outside.
PLAUSIBLE: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "crossbar": ((1e-13, 1e-9), (1e-12, 1e-8)),
    "dac": ((1e-16, 1e-10), (1e-14, 1e-9)),
    "adc": ((1e-15, 1e-10), (1e-12, 1e-7)),
    "sample_hold": ((1e-18, 1e-13), (1e-15, 1e-11)),
    "shift_add": ((1e-15, 1e-12), (1e-12, 1e-9)),
    "input_register": ((1e-15, 1e-12), (1e-14, 1e-11)),
    "output_register": ((1e-15, 1e-12), (1e-14, 1e-11)),
    "buffer": ((1e-15, 1e-12), (1e-11, 1e-7)),
    "calibration_register": ((1e-17, 1e-13), (1e-14, 1e-11)),
    "multiply_add": ((1e-14, 1e-10), (1e-11, 1e-7)),
    "digital_op": ((1e-16, 1e-11), (1e-12, 1e-8)),
}
TABLES_DIR = "data"


def parse_unit(unit: str) -> tuple[float, str]:
    """SI factor and dimension of a unit string: ``"pJ" -> (1e-12, "energy")``,
    ``"um2" -> (1e-12, "area")`` (the prefix is squared for areas)."""
    m = _UNIT_RE.match(str(unit).strip())
    if not m:
        fail("unit", unit, "a prefix in k, m, u, n, p, f, a and a base in J, W, s, m2, Hz "
             "(e.g. pJ, mW, ns, um2, mm2)")
    prefix, base = m.group(1) or "", m.group(2)
    factor = _PREFIX[prefix] ** (2 if base == "m2" else 1)
    return factor, _BASE[base]


def parse_quantity(q: Mapping, field_name: str = "quantity") -> tuple[float, str]:
    """``{value, unit}`` -> (SI value, dimension)."""
    if not isinstance(q, Mapping) or "value" not in q or "unit" not in q:
        fail(field_name, q, "a mapping with 'value' and 'unit'")
    check_float(f"{field_name}.value", q["value"], 0.0)
    factor, dim = parse_unit(q["unit"])
    return float(q["value"]) * factor, dim


# ------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class Component:
    """One table entry in SI units: energy per operation (J), area per unit (m^2)."""

    kind: str
    selectors: tuple[tuple[str, int], ...]
    energy_J: float
    area_m2: float
    source: str
    latency_s: float | None = None


@dataclass(frozen=True)
class ComponentTable:
    """A parsed component table (see ``memxbar/crossbar/data/isaac.yaml`` for the format)."""

    name: str
    components: tuple[Component, ...]
    reported: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    ranges: dict[str, KindRange] = field(default_factory=dict)

    def get(self, kind: str, **selectors: int) -> Component:
        """The entry of ``kind`` whose selectors equal ``selectors``; ValueError lists those
        available."""
        wanted = tuple(sorted(selectors.items()))
        found = [c for c in self.components if c.kind == kind and c.selectors == wanted]
        if not found:
            have = [dict(c.selectors) for c in self.components if c.kind == kind]
            fail(f"table {self.name!r} {kind}", dict(selectors) or None,
                 f"one of {have}" if have else f"a table with a {kind!r} entry")
        return found[0]

    @classmethod
    def from_dict(cls, data: Mapping) -> ComponentTable:
        """Parse and check a table: every entry has kind, energy, area (value + unit of the
        right dimension) and a non-empty source; no duplicate selectors."""
        name = str(data.get("name", "custom"))
        entries = data.get("components")
        if not isinstance(entries, list) or not entries:
            fail("table components", entries, "a non-empty list of entries")
        comps: list[Component] = []
        for i, e in enumerate(entries):
            where = f"{name}.components[{i}]"
            check_choice(f"{where}.kind", e.get("kind"), COMPONENTS)
            kind = e["kind"]
            energy, dim_e = parse_quantity(e.get("energy"), f"{where}.energy")
            area, dim_a = parse_quantity(e.get("area"), f"{where}.area")
            if dim_e != "energy":
                fail(f"{where}.energy.unit", e["energy"]["unit"], "an energy unit (J, pJ, fJ...)")
            if dim_a != "area":
                fail(f"{where}.area.unit", e["area"]["unit"], "an area unit (m2, mm2, um2...)")
            source = e.get("source")
            if not isinstance(source, str) or not source.strip():
                fail(f"{where}.source", source, "a non-empty citation or 'derived: ...'")
            sel = []
            for key in SELECTORS.get(kind, ()):
                check_int(f"{where}.{key}", e.get(key), 1)
                sel.append((key, int(e[key])))
            latency = None
            if "latency" in e:
                latency, dim_t = parse_quantity(e["latency"], f"{where}.latency")
                if dim_t != "time":
                    fail(f"{where}.latency.unit", e["latency"]["unit"], "a time unit (ns, us...)")
            comps.append(Component(kind, tuple(sorted(sel)), energy, area, source, latency))
        keys = [(c.kind, c.selectors) for c in comps]
        dupes = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        if dupes:
            fail(f"table {name!r} entry", dupes[0], "unique (kind, selectors) pairs")
        reported = {}
        for r in data.get("reported", []) or []:
            value, dim = parse_quantity(r, f"{name}.reported.{r.get('name')}")
            reported[str(r["name"])] = (value, dim, str(r.get("source", "")))
        table = cls(name, tuple(comps), reported)
        ranges = {}
        entries = data.get("ranges") or []
        if not isinstance(entries, list):
            fail(f"{name}.ranges", entries, "a list of range entries (kind, anchor, energy, "
                 "optional area)")
        for i, r in enumerate(entries):
            kr = KindRange.parse(r, table, f"{name}.ranges[{i}]")
            if kr.kind in ranges:
                fail(f"{name}.ranges[{i}].kind", kr.kind, "one range entry per kind")
            ranges[kr.kind] = kr
        return dataclasses.replace(table, ranges=ranges)


@dataclass(frozen=True)
class KindRange:
    """The low and high values of one component kind, from other published sources than the
    typical entry, as factors on every entry of the kind (``low <= 1 <= high``). A source's
    value is compared with the table entry it describes (``anchor``: the selectors, e.g. an
    8-bit ADC); the kind's other entries are derived from that one by multiplicative rules
    (docs/cost_model.md), so the same factor carries over. No area range: factors 1."""

    kind: str
    energy: tuple[float, float]
    area: tuple[float, float]
    sources: dict[str, str]

    @classmethod
    def parse(cls, r: Mapping, table: ComponentTable, where: str) -> KindRange:
        if not isinstance(r, Mapping):
            fail(where, r, "a mapping with kind, anchor, energy: {low, high} and optional area")
        unknown = sorted(set(r) - {"kind", "anchor", "energy", "area"}, key=str)
        if unknown:
            fail(f"{where}.{unknown[0]}", r[unknown[0]], "one of the keys kind, anchor, energy, "
                 "area")
        check_choice(f"{where}.kind", r.get("kind"), COMPONENTS)
        kind, anchor = r["kind"], r.get("anchor") or {}
        if not isinstance(anchor, Mapping):
            fail(f"{where}.anchor", anchor, "a mapping of selectors, e.g. {bits: 8}")
        try:
            entry = table.get(kind, **anchor)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}.anchor={dict(anchor)!r} is invalid; allowed: the "
                             f"selectors of a {kind!r} entry of the table ({exc})") from None
        factors, sources = {}, {}
        for quantity, typical, dim in (("energy", entry.energy_J, "energy"),
                                       ("area", entry.area_m2, "area")):
            block = r.get(quantity)
            if block is None and quantity == "area":
                factors[quantity] = (1.0, 1.0)
                continue
            if not isinstance(block, Mapping) or set(block) != {"low", "high"}:
                fail(f"{where}.{quantity}", block, "a mapping with 'low' and 'high', each "
                     "{value, unit, source}")
            pair = []
            for end in ("low", "high"):
                q = block[end]
                value, got = parse_quantity(q, f"{where}.{quantity}.{end}")
                if got != dim:
                    fail(f"{where}.{quantity}.{end}.unit", q["unit"], f"an {dim} unit")
                src = q.get("source")
                if not isinstance(src, str) or not src.strip():
                    fail(f"{where}.{quantity}.{end}.source", src, "a non-empty citation")
                sources[f"{quantity}_{end}"] = src
                pair.append(value / typical if typical else 1.0)
            lo, hi = pair
            if not lo <= 1.0 + 1e-9 or not hi >= 1.0 - 1e-9:
                fail(f"{where}.{quantity}", f"low {lo:.3g}x, high {hi:.3g}x of the typical "
                     f"{kind} {dict(anchor)}", "low <= typical <= high")
            factors[quantity] = (min(lo, 1.0), max(hi, 1.0))
        return cls(kind, factors["energy"], factors["area"], sources)


def check_plausible(table: ComponentTable) -> list[str]:
    """Entries whose SI energy or area lies outside :data:`PLAUSIBLE` for their kind (the
    symptom of a unit-prefix slip); empty when all are plausible."""
    problems = []
    for c in table.components:
        (e_lo, e_hi), (a_lo, a_hi) = PLAUSIBLE[c.kind]
        if not e_lo <= c.energy_J <= e_hi:
            problems.append(f"{table.name} {c.kind} {dict(c.selectors)}: energy {c.energy_J:.3g} J "
                            f"outside [{e_lo:g}, {e_hi:g}] J per {COMPONENTS[c.kind][0]}")
        if not a_lo <= c.area_m2 <= a_hi:
            problems.append(f"{table.name} {c.kind} {dict(c.selectors)}: area {c.area_m2:.3g} m2 "
                            f"outside [{a_lo:g}, {a_hi:g}] m2 per {COMPONENTS[c.kind][1]}")
    return problems


def available_tables() -> list[str]:
    """Names of the tables shipped in ``memxbar/crossbar/data``."""
    folder = resources.files("memxbar.crossbar").joinpath(TABLES_DIR)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_table(table: str | os.PathLike | Mapping | ComponentTable) -> ComponentTable:
    """A shipped table by name (``"isaac"``), a YAML path, a dict, or a parsed table."""
    if isinstance(table, ComponentTable):
        return table
    if isinstance(table, Mapping):
        return ComponentTable.from_dict(table)
    path = Path(table)
    if not path.suffix:
        if str(table) not in available_tables():
            fail("table", table, "a YAML path or one of " + ", ".join(available_tables()))
        text = resources.files("memxbar.crossbar").joinpath(TABLES_DIR, f"{table}.yaml").read_text()
    else:
        if not path.is_file():
            fail("table", str(table), "an existing YAML file")
        text = path.read_text()
    return ComponentTable.from_dict(yaml.safe_load(text))


# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class CostConfig:
    """Cost-model settings.

    Attributes:
        table: shipped table name (``"isaac"``) or path to a YAML table.
        clock_MHz: ADC conversion / digital clock; one conversion per ADC per period.
        cols_per_adc: converted signals (outputs x slices) multiplexed onto one ADC.
        default_dac_bits, default_adc_bits: resolution costed when the crossbar config leaves
            ``dac_bits`` / ``adc_bits`` as ``None`` (ideal converters still cost hardware).
        output_bits: width of an accumulated output (output register, buffer writes).
        calibration_bits: width of each of the two per-output registers (gain, offset) of
            ``CrossbarConfig.output_calibration``.
        baseline_weight_bits, baseline_dac_bits, baseline_adc_bits: precision of the dense,
            unpruned baseline mapping (default: 8-bit weights, parallel 8-bit DAC, 8-bit ADC,
            the same in the library, the CLI and the Hydra ``cost/isaac`` group). The baseline
            never takes the design's converters, spares or calibration: :func:`baseline_config`.
        baseline_cell_bits: bits per cell of the baseline (default 4: 16-level cells, two
            slices per 8-bit weight); ``None`` = the same as the config.
        pipelined: layers run as a pipeline (inference rate = 1 / slowest layer) instead of
            one after another (rate = 1 / sum of layer latencies).
        assume_mvms_per_sample: used, with a warning, for layers whose plan has no
            ``mvms_per_sample``; ``None`` = such a layer is an error.
        data_dependent: price the design with what was measured on real inputs on a
            programmed chip (:func:`estimate`'s ``measured``): DAC drives and input-register
            bits of zero inputs skipped, array reads at the measured ``V^2 G t`` activity
            (:mod:`crossbar.activity`). ``False`` (default): the worst case, every input
            driven and every cell read at full scale.
    """

    table: str = "isaac"
    clock_MHz: float = 1280.0
    cols_per_adc: int = 128
    default_dac_bits: int = 8
    default_adc_bits: int = 8
    output_bits: int = 16
    calibration_bits: int = 16
    baseline_weight_bits: int = 8
    baseline_dac_bits: int = 8
    baseline_adc_bits: int = 8
    baseline_cell_bits: int | None = 4
    pipelined: bool = False
    assume_mvms_per_sample: int | None = None
    data_dependent: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.table, (str, os.PathLike)) or not str(self.table):
            fail("table", self.table, "a table name or a YAML path")
        check_float("clock_MHz", self.clock_MHz, 0.0, 1e6, low_open=True)
        check_int("cols_per_adc", self.cols_per_adc, 1, 4096)
        for key in ("default_dac_bits", "default_adc_bits", "baseline_dac_bits",
                    "baseline_adc_bits"):
            check_int(key, getattr(self, key), 1, 32)
        check_int("output_bits", self.output_bits, 1, 64)
        check_int("calibration_bits", self.calibration_bits, 1, 64)
        check_int("baseline_weight_bits", self.baseline_weight_bits, 1, 32)
        check_optional_int("baseline_cell_bits", self.baseline_cell_bits, 1,
                           self.baseline_weight_bits)
        for key in ("pipelined", "data_dependent"):
            if not isinstance(getattr(self, key), bool):
                fail(key, getattr(self, key), "true or false")
        check_optional_int("assume_mvms_per_sample", self.assume_mvms_per_sample, 1)

    def with_(self, **changes: object) -> CostConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["table"] = str(self.table)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> CostConfig:
        return from_mapping(cls, data, "cost")


# ------------------------------------------------------------------------------- per layer
@dataclass(frozen=True)
class LayerCost:
    """Counts, area (um^2), energy per inference (pJ) and latency (ns) of one layer."""

    name: str
    tiles: int
    arrays: int
    live_rows: int
    live_cols: int
    word_lines: int
    bit_lines: int
    devices: int
    spare_devices: int
    weight_slices: int
    dacs: int
    adcs: int
    mvms_per_sample: int
    input_cycles: int
    dac_drives: int
    adc_conversions: int
    array_reads: int
    cells_read: int
    calibration_register_bits: int
    calibration_ops: int
    latency_ns: float
    area_um2: dict[str, float]
    energy_pJ: dict[str, float]

    @property
    def total_area_um2(self) -> float:
        return sum(self.area_um2.values())

    @property
    def total_energy_pJ(self) -> float:
        return sum(self.energy_pJ.values())

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["total_area_um2"] = self.total_area_um2
        data["total_energy_pJ"] = self.total_energy_pJ
        return data


def _bits(value: int | None, default: int) -> int:
    return default if value is None else value


def _mvms(layer: LayerPlan, cost: CostConfig) -> int:
    if layer.mvms_per_sample is not None:
        return layer.mvms_per_sample
    if cost.assume_mvms_per_sample is None:
        raise ValueError(
            f"layer {layer.name!r}: mvms_per_sample is None; build the plan with "
            "plan_model(..., example_input=x) or set CostConfig.assume_mvms_per_sample"
        )
    warnings.warn(
        f"layer {layer.name!r}: mvms_per_sample unknown, assuming "
        f"{cost.assume_mvms_per_sample}", stacklevel=3)
    return cost.assume_mvms_per_sample


def spare_cells_per_tile(layer: LayerPlan, xbar: CrossbarConfig) -> int:
    """Physical cells a tile has beyond its ``arrays x R x C``: ``spare_rows`` extra word lines
    across all of its bit lines and ``spare_cols`` extra output column groups
    (``cells_per_weight x weight_slices`` bit lines each, split over the tile's arrays) across
    all of its word lines:
    ``(R + spare_rows) (arrays C + spare_cols cpw S) - arrays R C``."""
    bit_lines = layer.style.arrays_per_tile * layer.tile_cols
    spare_bit_lines = xbar.spare_cols * layer.columns_per_output
    return ((layer.tile_rows + xbar.spare_rows) * (bit_lines + spare_bit_lines)
            - layer.tile_rows * bit_lines)


def layer_cost(
    layer: LayerPlan, xbar: CrossbarConfig, cost: CostConfig, table: ComponentTable
) -> LayerCost:
    """Area, energy per inference and latency of one layer (equations: module docstring).

    ``xbar`` gives the converter precisions and bit-serial mode the plan was built for, the
    spare lines of each tile and whether outputs are calibrated digitally.
    """
    check_plan(layer, xbar)
    dac_bits = _bits(xbar.dac_bits, cost.default_dac_bits)
    adc_bits = _bits(xbar.adc_bits, cost.default_adc_bits)
    dac = get_dac(xbar.dac)
    drive_bits, cycles = dac.bits_per_cycle(dac_bits), dac.cycles(dac_bits)
    mvms = _mvms(layer, cost)
    arrays_per_tile = layer.style.arrays_per_tile

    xb = table.get("crossbar", rows=layer.tile_rows, cols=layer.tile_cols)
    dac = table.get("dac", bits=drive_bits)
    adc = table.get("adc", bits=adc_bits)
    sh, sa = table.get("sample_hold"), table.get("shift_add")
    ir, orr, buf = table.get("input_register"), table.get("output_register"), table.get("buffer")
    cell_J = xb.energy_J / (layer.tile_rows * layer.tile_cols)
    cell_m2 = xb.area_m2 / (layer.tile_rows * layer.tile_cols)
    read_s = xb.latency_s or 0.0
    clock_s = 1e-6 / cost.clock_MHz

    rows, bit_lines, cells = layer.n_dacs, layer.n_bit_lines, layer.n_devices
    signals = sum(t.n_cols * layer.weight_slices for t in layer.tiles)
    outputs = sum(t.n_cols for t in layer.tiles)
    adcs_per_tile = layer.adcs_per_tile(cost.cols_per_adc)
    n_adcs = sum(adcs_per_tile)
    arrays = arrays_per_tile * layer.n_tiles
    spare_cells = layer.n_tiles * spare_cells_per_tile(layer, xbar)
    t_cycle = max(
        (max(read_s, math.ceil(t.n_cols * layer.weight_slices / n) * clock_s)
         for t, n in zip(layer.tiles, adcs_per_tile, strict=True)),
        default=0.0,
    )
    per_mvm = mvms * cycles
    conversions = per_mvm * signals
    buffer_bits = mvms * (len(layer.live_rows) * dac_bits + len(layer.live_cols) * cost.output_bits)
    # one gain/offset pair per output of the layer, applied after the tiles' partial sums
    # are added (crossbar.calibrate_outputs fits them per layer output, not per tile)
    layer_outputs = len(layer.live_cols)
    calib_bits = 2 * cost.calibration_bits * layer_outputs if xbar.output_calibration else 0
    calib_ops = mvms * layer_outputs if xbar.output_calibration else 0
    creg, mac = _calibration_parts(table, xbar.output_calibration)

    um2, pJ = 1e12, 1e12
    area = {
        "crossbar": arrays * xb.area_m2 * um2,
        "spare_cells": spare_cells * cell_m2 * um2,
        "dac": rows * dac.area_m2 * um2,
        "adc": n_adcs * adc.area_m2 * um2,
        "sample_hold": bit_lines * sh.area_m2 * um2,
        "shift_add": n_adcs * sa.area_m2 * um2,
        "input_register": rows * dac_bits * ir.area_m2 * um2,
        "output_register": outputs * cost.output_bits * orr.area_m2 * um2,
        "buffer": arrays * buf.area_m2 * um2,
        "calibration_register": calib_bits * creg.area_m2 * um2,
        "multiply_add": (n_adcs if xbar.output_calibration else 0) * mac.area_m2 * um2,
    }
    energy = {
        "crossbar": per_mvm * cells * cell_J * pJ,
        "spare_cells": 0.0,  # spare lines are neither driven nor sensed
        "dac": per_mvm * rows * dac.energy_J * pJ,
        "adc": conversions * adc.energy_J * pJ,
        "sample_hold": conversions * sh.energy_J * pJ,
        "shift_add": conversions * sa.energy_J * pJ,
        "input_register": per_mvm * rows * drive_bits * ir.energy_J * pJ,
        "output_register": conversions * orr.energy_J * pJ,
        "buffer": buffer_bits * buf.energy_J * pJ,
        "calibration_register": mvms * calib_bits * creg.energy_J * pJ,
        "multiply_add": calib_ops * mac.energy_J * pJ,
    }
    return LayerCost(
        name=layer.name,
        tiles=layer.n_tiles,
        arrays=arrays,
        live_rows=len(layer.live_rows),
        live_cols=len(layer.live_cols),
        word_lines=rows,
        bit_lines=bit_lines,
        devices=layer.n_devices,
        spare_devices=spare_cells,
        weight_slices=layer.weight_slices,
        dacs=rows,
        adcs=n_adcs,
        mvms_per_sample=mvms,
        input_cycles=cycles,
        dac_drives=per_mvm * rows,
        adc_conversions=conversions,
        array_reads=per_mvm * layer.n_tiles,
        cells_read=per_mvm * cells,
        calibration_register_bits=calib_bits,
        calibration_ops=calib_ops,
        latency_ns=per_mvm * t_cycle * 1e9,
        area_um2=area,
        energy_pJ=energy,
    )


_NONE = Component("none", (), 0.0, 0.0, "not used")


def _calibration_parts(table: ComponentTable, used: bool) -> tuple[Component, Component]:
    """The table's calibration register and multiply-add entries, looked up only when output
    calibration is on (a table without them serves every other config)."""
    if not used:
        return _NONE, _NONE
    return table.get("calibration_register"), table.get("multiply_add")


# ------------------------------------------------------------------------------- per model
@dataclass(frozen=True)
class ModelCost:
    """Per-layer costs and totals of one mapped model."""

    layers: tuple[LayerCost, ...]
    pipelined: bool
    table: str

    def _sum(self, key: str) -> int:
        return sum(getattr(layer, key) for layer in self.layers)

    @property
    def tiles(self) -> int:
        return self._sum("tiles")

    @property
    def area_um2(self) -> dict[str, float]:
        """Area by component, summed over layers (every layer has its own tiles)."""
        return _sum_dicts(layer.area_um2 for layer in self.layers)

    @property
    def energy_pJ(self) -> dict[str, float]:
        """Energy per inference by component."""
        return _sum_dicts(layer.energy_pJ for layer in self.layers)

    @property
    def total_area_mm2(self) -> float:
        return sum(self.area_um2.values()) * 1e-6

    @property
    def total_energy_nJ(self) -> float:
        return sum(self.energy_pJ.values()) * 1e-3

    @property
    def latency_ns(self) -> float:
        """Time one inference occupies the hardware: slowest layer when pipelined, else the
        sum over layers."""
        lat = [layer.latency_ns for layer in self.layers]
        return (max(lat) if self.pipelined else sum(lat)) if lat else 0.0

    @property
    def inferences_per_s(self) -> float:
        return 1e9 / self.latency_ns if self.latency_ns > 0 else 0.0

    @property
    def power_mW(self) -> float:
        """``P = E_inference * inference rate``."""
        return self.total_energy_nJ * 1e-9 * self.inferences_per_s * 1e3

    def totals(self) -> dict:
        keys = ("tiles", "arrays", "devices", "spare_devices", "dacs", "adcs", "dac_drives",
                "adc_conversions", "array_reads", "calibration_register_bits", "calibration_ops")
        data: dict = {k: self._sum(k) for k in keys}
        data.update(
            area_mm2=self.total_area_mm2,
            energy_nJ=self.total_energy_nJ,
            latency_ns=self.latency_ns,
            inferences_per_s=self.inferences_per_s,
            power_mW=self.power_mW,
            area_um2_by_component=self.area_um2,
            energy_pJ_by_component=self.energy_pJ,
        )
        return data

    def to_dict(self) -> dict:
        return {"table": self.table, "pipelined": self.pipelined, "totals": self.totals(),
                "layers": [layer.to_dict() for layer in self.layers]}


def _sum_dicts(dicts) -> dict[str, float]:
    out = {k: 0.0 for k in PARTS}
    for d in dicts:
        for k, v in d.items():
            out[k] += v
    return out


def model_cost(
    plan: MappingPlan,
    xbar: CrossbarConfig,
    cost: CostConfig | None = None,
    table: str | os.PathLike | Mapping | ComponentTable | None = None,
) -> ModelCost:
    """Cost of every layer of ``plan`` (``table`` overrides ``cost.table``)."""
    cost = cost or CostConfig()
    tab = load_table(cost.table if table is None else table)
    layers = tuple(layer_cost(p, xbar, cost, tab) for p in plan)
    return ModelCost(layers, cost.pipelined, tab.name)


# -------------------------------------------------------------------------------- baseline
def baseline_config(xbar: CrossbarConfig, cost: CostConfig) -> CrossbarConfig:
    """The one cost baseline's crossbar config: the design's tile size and mapping, and
    nothing else of the design. Weights of ``baseline_weight_bits`` on ``baseline_cell_bits``
    cells (``None``: the design's), a *parallel* ``baseline_dac_bits`` DAC and a
    ``baseline_adc_bits`` ADC, no spare lines, no output calibration, ideal array. The
    design's ``dac``, ``dac_bits``, ``adc_bits``, spares and calibration never reach it, so
    every design of a model is compared with the same numbers."""
    cell_bits = xbar.cell_bits if cost.baseline_cell_bits is None else cost.baseline_cell_bits
    if cell_bits is not None:
        cell_bits = min(cell_bits, cost.baseline_weight_bits)
    return CrossbarConfig(tile_rows=xbar.tile_rows, tile_cols=xbar.tile_cols,
                          mapping=xbar.mapping, weight_bits=cost.baseline_weight_bits,
                          cell_bits=cell_bits, dac="parallel", dac_bits=cost.baseline_dac_bits,
                          adc_bits=cost.baseline_adc_bits)


def baseline_description(cost: CostConfig) -> str:
    """One sentence naming the baseline, written into every report."""
    cells = (f"{cost.baseline_cell_bits}-bit cells" if cost.baseline_cell_bits is not None
             else "the design's cells")
    return (f"dense, unpruned model (every crossbar-mapped layer), {cost.baseline_weight_bits}"
            f"-bit weights on {cells}, {cost.baseline_dac_bits}-bit inputs through parallel "
            f"{cost.baseline_dac_bits}-bit DACs, {cost.baseline_adc_bits}-bit ADCs, no spare "
            "lines or output calibration; same tile size, mapping, component table, clock and "
            "ADC sharing as the design, whatever converters the design uses")


def baseline_cost(
    plan: MappingPlan,
    xbar: CrossbarConfig,
    cost: CostConfig | None = None,
    table: str | os.PathLike | Mapping | ComponentTable | None = None,
) -> ModelCost:
    """Cost of the baseline (:func:`baseline_config`) of ``plan``'s model: each layer re-planned
    dense with the baseline config, ``mvms_per_sample`` kept. The only baseline costing; the
    library, ``python -m memxbar.crossbar.report`` and the Hydra pipeline all reach it through
    :func:`estimate`."""
    cost = cost or CostConfig()
    base_xbar = baseline_config(xbar, cost)
    return model_cost(dense_plan(plan, base_xbar), base_xbar, cost, table)


def dense_plan(plan: MappingPlan, xbar: CrossbarConfig) -> MappingPlan:
    """The same layers dense and unpruned (all-True masks), mapped with ``xbar``;
    ``mvms_per_sample`` and convolution groups copied."""
    return MappingPlan({p.name: dense_layer_plan(p, xbar) for p in plan})


def reduction(compressed: ModelCost, baseline: ModelCost) -> dict[str, float]:
    """``baseline / compressed`` ratios (``x``) and percent reductions
    ``100 * (1 - compressed / baseline)`` of tiles, area, energy and power."""
    pairs = {
        "tiles": (compressed.tiles, baseline.tiles),
        "area": (compressed.total_area_mm2, baseline.total_area_mm2),
        "energy": (compressed.total_energy_nJ, baseline.total_energy_nJ),
        "power": (compressed.power_mW, baseline.power_mW),
        "latency": (compressed.latency_ns, baseline.latency_ns),
    }
    out: dict[str, float] = {}
    for key, (c, b) in pairs.items():
        out[f"{key}_ratio"] = b / c if c else math.inf
        out[f"{key}_reduction_pct"] = 100.0 * (1.0 - c / b) if b else 0.0
    return out


@dataclass(frozen=True)
class CostEstimate:
    """Compressed cost, the dense baseline's cost and the reductions between them."""

    compressed: ModelCost
    baseline: ModelCost | None
    reduction: dict[str, float] | None
    xbar: CrossbarConfig
    cost: CostConfig
    attribution: list[dict] | None = None
    ranges: dict | None = None

    def to_dict(self) -> dict:
        return {
            "attribution": self.attribution,
            "ranges": self.ranges,
            "crossbar_config": self.xbar.to_dict(),
            "cost_config": self.cost.to_dict(),
            "baseline_description": baseline_description(self.cost),
            "baseline_crossbar_config": baseline_config(self.xbar, self.cost).to_dict(),
            "compressed": self.compressed.to_dict(),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "reduction": self.reduction,
        }


def estimate(
    plan: MappingPlan,
    xbar: CrossbarConfig,
    cost: CostConfig | None = None,
    table: str | os.PathLike | Mapping | ComponentTable | None = None,
    baseline: bool = True,
    measured: Mapping[str, Mapping[str, float]] | None = None,
) -> CostEstimate:
    """Cost of ``plan`` and, with ``baseline``, of the baseline (:func:`baseline_cost`: the
    dense unpruned model at the baseline precision, independent of the design's converters)
    with the reductions, and the low-high range of both (:mod:`crossbar.cost_range`).

    ``measured``: per layer, ``zero_inputs`` (the share of its inputs that are zero,
    :func:`crossbar.digital.input_zero_fractions`) and ``activity`` (the array's measured
    read energy over the full-scale read, :func:`crossbar.activity.array_activity`); used
    only with ``cost.data_dependent``, which prices the design's DAC drives, input-register
    bits and array reads with them; the baseline stays the worst case (one fixed baseline),
    and the attribution gains a last step for the measured activity."""
    cost = cost or CostConfig()
    tab = load_table(cost.table if table is None else table)
    if cost.data_dependent and not measured:
        fail("cost.data_dependent", True, "false when nothing was measured on real inputs "
             "(the compress app measures them on its first chip; the plan-only command line "
             "cannot)")
    worst = compressed = model_cost(plan, xbar, cost, tab)
    if cost.data_dependent:
        compressed = with_measured(compressed, measured)
    if not baseline:
        return CostEstimate(compressed, None, None, xbar, cost,
                            ranges=cost_ranges(compressed, None, tab))
    base = baseline_cost(plan, xbar, cost, tab)
    steps = attribution(plan, xbar, cost, tab, ends=(base, worst))
    if cost.data_dependent:  # one more step: the measured inputs and conductances
        first, last = steps[0], steps[-1]
        row = {"step": "measured activity", "change": MEASURED_STEP, "tiles": compressed.tiles,
               "area_mm2": compressed.total_area_mm2, "energy_nJ": compressed.total_energy_nJ}
        for key in ("area_mm2", "energy_nJ"):
            row[f"{key.split('_')[0]}_change_pct"] = (
                100.0 * (row[key] - last[key]) / first[key] if first[key] else 0.0)
        steps.append(row)
    return CostEstimate(compressed, base, reduction(compressed, base), xbar, cost, steps,
                        cost_ranges(compressed, base, tab))


MEASURED_STEP = ("zero inputs not driven, array reads at the V^2 G t measured on a "
                 "programmed chip (cost.data_dependent)")


def with_measured(mc: ModelCost, measured: Mapping[str, Mapping[str, float]]) -> ModelCost:
    """``mc`` with each measured layer's DAC drive and input-register energy times the share
    of its inputs that are not zero and its array energy times the measured activity
    (:func:`estimate`)."""
    layers = []
    for layer in mc.layers:
        m = measured.get(layer.name)
        if m is None:
            layers.append(layer)
            continue
        e = dict(layer.energy_pJ)
        keep = 1.0 - float(m.get("zero_inputs", 0.0))
        e["dac"] *= keep
        e["input_register"] *= keep
        if "activity" in m:
            e["crossbar"] *= float(m["activity"])
        layers.append(dataclasses.replace(layer, energy_pJ=e))
    return dataclasses.replace(mc, layers=tuple(layers))


ATTRIBUTION_STEPS = (
    ("baseline", "dense, unpruned, baseline precision and converters"),
    ("weight precision", "the design's weight and cell bits (cells per weight), still dense"),
    ("pruning", "the design's pruned plan (its tiles, rows and columns)"),
    ("converters", "the design's DAC (kind, bits) and ADC bits"),
    ("spares and calibration", "the design's spare lines and output-calibration registers"),
)
"""The chain from the baseline to the design, one change per step, in this order."""


def attribution(plan: MappingPlan, xbar: CrossbarConfig, cost: CostConfig | None = None,
                table: str | os.PathLike | Mapping | ComponentTable | None = None,
                ends: tuple[ModelCost, ModelCost] | None = None) -> list[dict]:
    """Where the reduction from the baseline to the design comes from: the design's cost
    reached in :data:`ATTRIBUTION_STEPS`, each changing one thing with the earlier changes
    applied (so the steps add up to the total; another order would split the interactions
    differently). Per step: tiles, area (mm^2), energy per inference (nJ), and the change of
    area and energy against the previous step in percent of the baseline. ``ends``: the
    baseline's and the design's costs when the caller has them (:func:`estimate`)."""
    cost = cost or CostConfig()
    tab = load_table(cost.table if table is None else table)
    base = baseline_config(xbar, cost)
    precision = base.with_(weight_bits=xbar.weight_bits, cell_bits=xbar.cell_bits)
    converters = precision.with_(dac=xbar.dac, dac_bits=xbar.dac_bits, adc_bits=xbar.adc_bits)
    configs = (base, precision, precision, converters, xbar)
    plans = (None if ends else dense_plan(plan, base), dense_plan(plan, precision), plan, plan,
             plan)
    steps, previous, first = [], None, None
    known = {0: ends[0], len(configs) - 1: ends[1]} if ends else {}
    for i, ((name, what), config, step_plan) in enumerate(zip(ATTRIBUTION_STEPS, configs, plans,
                                                              strict=True)):
        mc = known.get(i) or model_cost(step_plan, config, cost, tab)
        row = {"step": name, "change": what, "tiles": mc.tiles,
               "area_mm2": mc.total_area_mm2, "energy_nJ": mc.total_energy_nJ}
        first = first or row
        for key in ("area_mm2", "energy_nJ"):
            before = previous[key] if previous else row[key]
            row[f"{key.split('_')[0]}_change_pct"] = (
                100.0 * (row[key] - before) / first[key] if first[key] else 0.0)
        steps.append(row)
        previous = row
    return steps
