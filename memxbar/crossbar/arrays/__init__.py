"""Array models by name (``CrossbarConfig.array``): see :mod:`.base`."""

from . import ideal, wire_resistance  # noqa: F401  (register the shipped models)
from .base import ARRAYS, ArrayModel, build_array
from .solve import solve_array

__all__ = ["ARRAYS", "ArrayModel", "build_array", "solve_array"]
