"""ADC whose range is calibrated: per tile and weight slice, the largest |partial sum| seen on
the calibration batch (or its ``range_percentile``), so its ``2^(b-1) - 1`` codes cover what
the tile actually produces."""

from __future__ import annotations

from .base import ADC, register_adc


@register_adc
class CalibratedADC(ADC):
    name = "calibrated"
    needs_calibration = True

    def ranges(self, layer: str, calibrated: list[float] | None, full_scale: list[float]
               ) -> list[float]:
        if calibrated is None:
            raise ValueError(
                f"crossbar layer {layer!r} has adc_range='calibrated' but was never "
                "calibrated; allowed: call calibrate(model, inputs) (or pass calibration= to "
                "to_crossbar), or use adc_range='full_scale'")
        return calibrated
