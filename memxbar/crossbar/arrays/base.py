"""Array models: how a programmed array turns word-line voltages into bit-line currents.

An array model maps the conductances of one physical array ``G [R, C]`` (siemens, word lines x
bit lines) to ``M [C, R]``, the column current per volt on each word line: ``I = M v``. With
linear cells ``M`` does not depend on the inputs, so it is computed once per programmed chip
(and inference time) and folded into the cached tile weights: inference costs the same with
any array model. Models register by name in :data:`ARRAYS`; ``CrossbarConfig.array`` picks one
(``None`` = ideal: ``M = G^T``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import torch

from .._validate import fail
from ..registry import Registry

ARRAYS = Registry("array.model")
register = ARRAYS.register


class ArrayModel:
    name: ClassVar[str]

    def effective(self, g_S: torch.Tensor) -> torch.Tensor:
        """``M [C, R]`` of an array with conductances ``g_S [R, C]``."""
        raise NotImplementedError

    def effective_in_tile(self, g_S: torch.Tensor, tile_rows: int, tile_cols: int
                          ) -> torch.Tensor:
        """``M [C, R]`` of the live block ``g_S [R, C]`` of a physical ``tile_rows x
        tile_cols`` array, placed as the model says (default: as :meth:`effective`)."""
        return self.effective(g_S)

    def effective_pair_in_tile(self, g_a_S: torch.Tensor, g_b_S: torch.Tensor, tile_rows: int,
                               tile_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M_a, M_b)`` of the two arrays of a differential pair (G+ and G-), whose word
        line ``i`` shares one driver (default: the arrays do not interact)."""
        return (self.effective_in_tile(g_a_S, tile_rows, tile_cols),
                self.effective_in_tile(g_b_S, tile_rows, tile_cols))

    @property
    def ideal(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return {"model": self.name, **dataclasses.asdict(self)}


def build_array(spec: object) -> ArrayModel | None:
    """An array model from an instance, ``None``, a name or ``{"model": name, **fields}``."""
    if spec is None or isinstance(spec, ArrayModel):
        return None if spec is not None and spec.name == "ideal" else spec
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, Mapping):
        fail("array", spec, "null, a model name or a mapping with 'model': one of "
             + ", ".join(repr(k) for k in ARRAYS))
    data = dict(spec)
    name = data.pop("model", None)
    cls = ARRAYS.get(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        fail(f"array.{unknown[0]}", data[unknown[0]],
             f"a field of the {name!r} array model: " + ", ".join(sorted(known) or ["none"]))
    return None if name == "ideal" else cls(**data)  # one spelling of "ideal": None
