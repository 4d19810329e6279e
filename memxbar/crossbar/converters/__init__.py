"""DACs and ADCs by name (``CrossbarConfig.dac``, ``CrossbarConfig.adc_range``): see
:mod:`.base`."""

from . import bit_serial_dac, calibrated_adc, full_scale_adc, parallel_dac  # noqa: F401
from .base import ADC, ADCS, DAC, DACS, Drive, get_adc, get_dac

__all__ = ["ADC", "ADCS", "DAC", "DACS", "Drive", "get_adc", "get_dac"]
