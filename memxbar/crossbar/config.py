"""Crossbar array and periphery configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ._validate import (
    check_choice,
    check_float,
    check_int,
    check_optional_int,
    fail,
    from_mapping,
)
from .arrays import ArrayModel, build_array
from .converters import ADCS, DACS
from .mappings import MAPPINGS

NOISE_PRECISIONS = ("auto", "exact")
"""Choices of :attr:`CrossbarConfig.noise_precision`."""


@dataclass(frozen=True, init=False)
class CrossbarConfig:
    """Tiles and periphery.

    Attributes:
        tile_rows, tile_cols: crossbar size (word lines x bit lines), default 128 x 128.
        mapping: ``"differential"`` (a pair of columns per output, ``w ~ G+ - G-``) or
            ``"offset"`` (one column per output plus one reference column per tile at
            ``(g_min + g_max) / 2``, or the programmable level nearest to it; ``w ~ G - G_ref``).
        dac_bits: input (word-line) DAC resolution; ``None`` = ideal.
        adc_bits: per-tile partial-sum ADC resolution; ``None`` = ideal.
        adc_range: the ADC model (:mod:`crossbar.converters`), i.e. how its range is set:
            ``"calibrated"`` (per-tile range = largest |partial sum| seen on the calibration
            batch) or ``"full_scale"`` (the largest current the tile can produce).
        range_percentile: calibrated DAC and ADC ranges cover this percentile of the
            calibration batch's |values| (100 = the largest; e.g. 99.9 clips rare outliers
            and spends the converter's levels on the bulk of the distribution).
        dac: the DAC model (:mod:`crossbar.converters`): ``"parallel"`` (one ``dac_bits`` code
            per input) or ``"bit_serial"`` (inputs one bit per cycle, ``dac_bits`` cycles of a
            1-bit DAC, each cycle's partial sums ADC-converted, then shift-and-add). The 0.1
            key ``bit_serial: true/false`` is accepted as a shorthand.
        cell_bits: bits stored per cell for weight bit-slicing; ``None`` = one cell pair per
            weight holding the device's levels. With slicing, weights are quantized to
            ``weight_bits`` and split over ``ceil(weight_bits / cell_bits)`` cell pairs.
        weight_bits: weight precision used with ``cell_bits`` (and by the cost model).
        adc_noise: Gaussian noise at each ADC input (per conversion), its standard deviation
            in units of the ADC's full scale (its range ``r``); needs ``adc_bits``.
        drift_compensation: one digital gain per layer that undoes the mean conductance
            drift: ``alpha = readout(t=0) / readout(t)`` with the readout the mean |weight| the
            array holds (aihwkit's global drift compensation), applied after the ADCs.
        array: the array model (:mod:`crossbar.arrays`): ``None`` (ideal wires) or
            ``{"model": "wire_resistance", "r_row_ohm": ..., "r_col_ohm": ...,
            "r_driver_ohm": ..., "r_sense_ohm": ..., "read_voltage_V": ...}`` (IR drop, solved
            once per programmed chip and folded into the cached tile weights).
        spare_rows, spare_cols: spare word lines and spare output column groups (the bit lines
            of one output: a pair per weight slice, differential) per tile, beyond those the
            plan uses. Fault-aware placement (:mod:`crossbar.repair`) may move logical rows and
            outputs onto them; the cost model counts their devices and area.
        output_calibration: per-output digital gain and offset after the ADCs (two registers
            per output column, one multiply-add per output and matrix-vector product), fitted
            per chip by :func:`crossbar.calibrate_outputs`; the cost model counts them.
        noise_precision: arithmetic of the per-MVM read-noise variance product
            ``sum_i x_i^2 var_ij`` (a simulation setting, not hardware): ``"auto"`` computes it
            in bfloat16 with float32 accumulation on CPUs with native bfloat16 (AVX512-BF16 or
            AMX), which makes LeNet-5's noisy inference 1.2x faster (VGG-16's, dominated by the
            Gaussian draws, about the same) and puts at most 0.6 % relative
            error on each partial sum's noise standard deviation (the noise stays Gaussian
            and per-MVM; docs/crossbar.md); elsewhere, and with ``"exact"``, it runs in the
            model's dtype.
    """

    tile_rows: int = 128
    tile_cols: int = 128
    mapping: str = "differential"
    dac_bits: int | None = None
    adc_bits: int | None = None
    adc_range: str = "calibrated"
    range_percentile: float = 100.0
    dac: str = "parallel"
    cell_bits: int | None = None
    weight_bits: int = 8
    adc_noise: float = 0.0
    drift_compensation: bool = False
    array: ArrayModel | None = None
    spare_rows: int = 0
    spare_cols: int = 0
    output_calibration: bool = False
    noise_precision: str = "auto"

    def __init__(self, tile_rows: int = 128, tile_cols: int = 128,
                 mapping: str = "differential", dac_bits: int | None = None,
                 adc_bits: int | None = None, adc_range: str = "calibrated",
                 range_percentile: float = 100.0, dac: str = "parallel",
                 cell_bits: int | None = None, weight_bits: int = 8, adc_noise: float = 0.0,
                 drift_compensation: bool = False, array: object = None,
                 spare_rows: int = 0, spare_cols: int = 0, output_calibration: bool = False,
                 noise_precision: str = "auto", bit_serial: bool | None = None) -> None:
        if bit_serial is not None:  # 0.1 shorthand
            if not isinstance(bit_serial, bool):
                fail("bit_serial", bit_serial, "true or false")
            if dac != "parallel" and dac != ("bit_serial" if bit_serial else "parallel"):
                fail("bit_serial", bit_serial, f"omitted, or consistent with dac={dac!r}")
            dac = "bit_serial" if bit_serial else "parallel"
        values = dict(tile_rows=tile_rows, tile_cols=tile_cols, mapping=mapping,
                      dac_bits=dac_bits, adc_bits=adc_bits, adc_range=adc_range,
                      range_percentile=range_percentile, dac=dac, cell_bits=cell_bits,
                      weight_bits=weight_bits, adc_noise=adc_noise,
                      drift_compensation=drift_compensation, array=build_array(array),
                      spare_rows=spare_rows, spare_cols=spare_cols,
                      output_calibration=output_calibration, noise_precision=noise_precision)
        for key, value in values.items():
            object.__setattr__(self, key, value)
        self._validate()

    @property
    def bit_serial(self) -> bool:
        """Whether inputs are streamed one bit per cycle."""
        return self.dac == "bit_serial"

    def _validate(self) -> None:
        check_int("tile_rows", self.tile_rows, 1)
        check_int("tile_cols", self.tile_cols, 1)
        check_choice("mapping", self.mapping, tuple(MAPPINGS))
        check_optional_int("dac_bits", self.dac_bits, 1, 24)
        check_optional_int("adc_bits", self.adc_bits, 1, 24)
        check_choice("adc_range", self.adc_range, tuple(ADCS))
        check_choice("dac", self.dac, tuple(DACS))
        check_float("range_percentile", self.range_percentile, 0.0, 100.0, low_open=True)
        if self.dac != "parallel" and self.dac_bits is None:
            fail("dac_bits", None, f"an integer in [1, 24] with dac={self.dac!r}")
        check_int("weight_bits", self.weight_bits, 1, 32)
        check_optional_int("cell_bits", self.cell_bits, 1, self.weight_bits)
        check_float("adc_noise", self.adc_noise, 0.0, 1.0)
        if self.adc_noise > 0 and self.adc_bits is None:
            fail("adc_noise", self.adc_noise, "0 when adc_bits is null (the noise is in units "
                 "of the ADC's full scale: set adc_bits)")
        if not isinstance(self.drift_compensation, bool):
            fail("drift_compensation", self.drift_compensation, "true or false")
        check_int("spare_rows", self.spare_rows, 0, min(4096, self.tile_rows))  # spares are
        check_int("spare_cols", self.spare_cols, 0, min(4096, self.tile_cols))  # of the tile
        if not isinstance(self.output_calibration, bool):
            fail("output_calibration", self.output_calibration, "true or false")
        check_choice("noise_precision", self.noise_precision, NOISE_PRECISIONS)

    @property
    def weight_slices(self) -> int:
        """Cell pairs per weight: ``ceil(weight_bits / cell_bits)`` (1 without slicing)."""
        if self.cell_bits is None:
            return 1
        return -(-self.weight_bits // self.cell_bits)

    def with_(self, **changes: object) -> CrossbarConfig:
        """A copy with some fields (or the 0.1 ``bit_serial`` shorthand) changed."""
        if "bit_serial" in changes and "dac" not in changes:
            flag = changes.pop("bit_serial")
            if not isinstance(flag, bool):
                fail("bit_serial", flag, "true or false")
            changes["dac"] = "bit_serial" if flag else "parallel"
        return dataclasses.replace(self, **changes)

    def with_setting(self, key: str, value: object) -> CrossbarConfig:
        """A copy with one setting changed: a field, ``array.<field>`` of the array model, or
        ``r_wire_ohm`` (word- and bit-line segment resistance together; from an ideal array,
        a ``wire_resistance`` model with ideal drivers and sense amplifiers)."""
        if key == "r_wire_ohm":
            base = self.array.to_dict() if self.array is not None else {
                "model": "wire_resistance", "r_driver_ohm": 0.0, "r_sense_ohm": 0.0}
            return self.with_(array={**base, "r_row_ohm": value, "r_col_ohm": value})
        head, _, rest = key.partition(".")
        if head == "array" and rest:
            if self.array is None:
                fail(key, value, "a setting of a non-ideal array model; set crossbar.array "
                     "first (e.g. {model: wire_resistance}) or sweep r_wire_ohm")
            return self.with_(array={**self.array.to_dict(), rest: value})
        return self.with_(**{key: value})

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["array"] = None if self.array is None else self.array.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> CrossbarConfig:
        """From a mapping of fields (and the 0.1 ``bit_serial`` shorthand)."""
        data = dict(data)
        shorthand = {k: data.pop(k) for k in ("bit_serial",) if k in data}
        if shorthand and "dac" in data and data["dac"] != "parallel" \
                and shorthand["bit_serial"] is False:
            shorthand = {}  # dac names the converter; a stale shorthand does not override it
        return from_mapping(cls, data, "crossbar").with_(**shorthand)
