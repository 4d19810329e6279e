"""The memristor cell's non-idealities, one model per module behind one interface per concern
(:mod:`.base`), registered by name."""

from . import (  # noqa: F401  (register the shipped models)
    gaussian,
    lognormal,
    pcm_power_law,
    pcm_read,
    polynomial,
    polynomial_read,
    relative_read,
    rram_cmo,
    stuck_at,
)
from .base import (
    REGISTRY,
    CellModel,
    DriftModel,
    FaultModel,
    ProgrammingModel,
    ReadNoiseModel,
    build,
    describe,
)
from .write_verify import WriteVerify, WriteVerifyResult

__all__ = [
    "REGISTRY",
    "CellModel",
    "DriftModel",
    "FaultModel",
    "ProgrammingModel",
    "ReadNoiseModel",
    "WriteVerify",
    "WriteVerifyResult",
    "build",
    "describe",
]
