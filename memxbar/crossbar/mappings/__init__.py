"""Mapping styles by name (``CrossbarConfig.mapping``): see :mod:`.base`."""

from . import differential, offset  # noqa: F401  (register the shipped styles)
from .base import MAPPINGS, MappingStyle, mapping_style

__all__ = ["MAPPINGS", "MappingStyle", "mapping_style"]
