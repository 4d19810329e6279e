"""Interfaces and registries of the periphery converters: the word-line DAC and the per-tile
ADC, one module per implementation, chosen by name (``CrossbarConfig.dac``,
``CrossbarConfig.adc_range``).

Inputs and partial sums are kept in converter code units inside the crossbar layers: a DAC
turns an input batch into codes (and the weight of one code, its ``step``), an ADC gives the
full-scale range of each of a tile's partial-sum conversions; the layer folds both steps into
the tile weights, so each converter costs one round and one clamp on the activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..registry import Registry


@dataclass
class Drive:
    """What the DAC puts on the word lines: ``x`` in codes (``x * step`` is the input value;
    bit planes stacked on dim 0 when bit-serial), the weights of the bit planes (``None`` for
    a parallel drive) and the largest code (full scale)."""

    x: torch.Tensor
    plane_weights: torch.Tensor | None
    step: float
    max_code: float


class DAC:
    """Word-line driver: input values -> codes applied per cycle."""

    name: ClassVar[str]

    def cycles(self, bits: int) -> int:
        """Input cycles per matrix-vector product (the cost model's count)."""
        raise NotImplementedError

    def bits_per_cycle(self, bits: int) -> int:
        """Resolution of the DAC that drives one cycle (the cost model's DAC entry)."""
        raise NotImplementedError

    def drive(self, x: torch.Tensor, full: float, signed: bool, bits: int) -> Drive:
        """Codes of ``x`` over the range ``[-full, full]`` (``[0, full]`` unsigned)."""
        raise NotImplementedError


class ADC:
    """Per-tile partial-sum converter: how its full-scale range is set."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool]

    def ranges(self, layer: str, calibrated: list[float] | None, full_scale: list[float]
               ) -> list[float]:
        """Full-scale range per weight slice of one tile from the calibrated ranges
        (``None``: never calibrated) and the tile's largest possible partial sums."""
        raise NotImplementedError


DACS = Registry("dac")
ADCS = Registry("adc_range")
register_dac = DACS.register
register_adc = ADCS.register


def get_dac(name: str) -> DAC:
    return DACS.instance(name)


def get_adc(name: str) -> ADC:
    return ADCS.instance(name)
