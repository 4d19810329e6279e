"""Device-level memristor crossbar simulator and hardware cost model."""

from .attention import CrossbarMultiheadAttention
from .calibration import calibrate_outputs
from .cells import WriteVerify
from .config import CrossbarConfig
from .convert import (
    calibrate,
    mapping_plan,
    program,
    programming_stats,
    set_inference_time,
    to_crossbar,
)
from .cost import (
    ComponentTable,
    CostConfig,
    CostEstimate,
    ModelCost,
    estimate,
    load_table,
    model_cost,
)
from .device import PRESETS, DeviceModel
from .hardware_aware import HardwareAware
from .layers import CrossbarConv1d, CrossbarConv2d, CrossbarLayer, CrossbarLinear
from .plan import LayerPlan, MappingPlan, Tile, plan_layer, plan_model
from .programming_cost import PulseCost, programming_cost
from .recurrent import CrossbarRecurrent
from .repair import RepairConfig

__all__ = [
    "ComponentTable",
    "CostConfig",
    "CostEstimate",
    "ModelCost",
    "estimate",
    "load_table",
    "model_cost",
    "write_cost_report",
    "PRESETS",
    "CrossbarConfig",
    "CrossbarConv1d",
    "CrossbarConv2d",
    "CrossbarLayer",
    "CrossbarLinear",
    "CrossbarMultiheadAttention",
    "CrossbarRecurrent",
    "DeviceModel",
    "HardwareAware",
    "LayerPlan",
    "MappingPlan",
    "Tile",
    "WriteVerify",
    "calibrate",
    "calibrate_outputs",
    "programming_stats",
    "PulseCost",
    "RepairConfig",
    "programming_cost",
    "set_inference_time",
    "mapping_plan",
    "plan_layer",
    "plan_model",
    "program",
    "to_crossbar",
]


def __getattr__(name: str):
    """``write_cost_report`` is imported on first use, so ``python -m memxbar.crossbar.report``
    does not find its own module already imported (runpy's RuntimeWarning)."""
    if name == "write_cost_report":
        from .report import write_cost_report

        return write_cost_report
    raise AttributeError(f"module 'crossbar' has no attribute {name!r}")
