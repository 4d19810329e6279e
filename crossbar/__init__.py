"""Device-level memristor crossbar simulator and hardware cost model."""

from .config import CrossbarConfig
from .device import DeviceModel
from .plan import LayerPlan, MappingPlan, Tile, plan_layer, plan_model

__all__ = [
    "CrossbarConfig",
    "DeviceModel",
    "LayerPlan",
    "MappingPlan",
    "Tile",
    "plan_layer",
    "plan_model",
]
