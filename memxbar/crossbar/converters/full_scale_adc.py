"""ADC sized for the largest current a tile can produce: full-scale input on every live word
line of a full-range cell pair, ``r = input range x live rows x weight scale`` per slice (no
calibration; most of its codes go unused for typical inputs)."""

from __future__ import annotations

from .base import ADC, register_adc


@register_adc
class FullScaleADC(ADC):
    name = "full_scale"
    needs_calibration = False

    def ranges(self, layer: str, calibrated: list[float] | None, full_scale: list[float]
               ) -> list[float]:
        return full_scale
