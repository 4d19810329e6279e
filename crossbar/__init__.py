"""Device-level memristor crossbar simulator and hardware cost model."""

from .config import CrossbarConfig
from .convert import calibrate, mapping_plan, program, to_crossbar
from .device import PRESETS, DeviceModel
from .layers import CrossbarConv2d, CrossbarLayer, CrossbarLinear
from .plan import LayerPlan, MappingPlan, Tile, plan_layer, plan_model

__all__ = [
    "PRESETS",
    "CrossbarConfig",
    "CrossbarConv2d",
    "CrossbarLayer",
    "CrossbarLinear",
    "DeviceModel",
    "LayerPlan",
    "MappingPlan",
    "Tile",
    "calibrate",
    "mapping_plan",
    "plan_layer",
    "plan_model",
    "program",
    "to_crossbar",
]
