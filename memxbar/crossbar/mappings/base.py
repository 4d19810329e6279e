"""Mapping styles: how a signed weight is held by cells on bit lines.

A style answers, for the mapping plan, the simulator and the cost model alike:

* ``cells_per_weight``: cells (bit lines) per weight slice (2 for a differential pair);
* ``reference_columns``: extra bit lines per tile (the offset style's reference column, one
  per tile, shared by every output and weight slice of the tile);
* ``arrays_per_tile``: physical arrays a tile takes (the cost model's crossbar count);
* ``nominal``: normalised weights ``v`` in ``[-1, 1]`` -> target conductances per cell;
* ``weights``: conductances (and the reference column's) -> normalised weights;
* ``norm_uS``: the conductance difference of ``v = 1``, which turns a conductance noise into a
  weight noise.

Styles register by name in :data:`MAPPINGS`; ``CrossbarConfig.mapping`` picks one.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..registry import Registry


class MappingStyle:
    name: ClassVar[str]
    cells_per_weight: ClassVar[int]
    reference_columns: ClassVar[int]
    arrays_per_tile: ClassVar[int]
    aux_prefix: ClassVar[str] = ""
    """Stream prefix of the style's auxiliary cells (the ``reference_columns`` of each tile,
    ``CrossbarLayer.g_aux_uS``): they are programmed, fail and drift from their own streams."""

    def nominal(self, v: torch.Tensor, device) -> torch.Tensor:
        """Target conductances ``[..., cells_per_weight]`` of normalised weights ``v`` (clipped
        to ``[-1, 1]``)."""
        raise NotImplementedError

    def reference_uS(self, device) -> float | None:
        """Target conductance of the reference column, ``None`` without one."""
        return None

    def norm_uS(self, device) -> float:
        raise NotImplementedError

    def weights(self, g: torch.Tensor, g_ref: torch.Tensor | None, device) -> torch.Tensor:
        """Normalised weights from conductances ``g[..., cells_per_weight]`` and, for a style
        with a reference column, the reference conductance of each weight's row ``g_ref``."""
        raise NotImplementedError


    def pack_tile(self, block: torch.Tensor, aux: torch.Tensor | None) -> list[torch.Tensor]:
        """The physical arrays of one tile from its cells ``block [S, cells, cols, rows]``
        (uS) and its auxiliary cells ``aux [rows]``: one array ``[rows, bit lines]`` per cell of
        a weight (a pair's G+ and G-), bit lines output by output with the weight slices of an
        output side by side, the auxiliary column last in the first array. The array model
        solves these, and :meth:`unpack_tile` reads them back."""
        n_slices, n_cells, n_cols, n_rows = block.shape
        arrays = [block[:, k].permute(2, 1, 0).reshape(n_rows, n_cols * n_slices)
                  for k in range(n_cells)]
        if aux is not None:
            arrays[0] = torch.cat([arrays[0], aux.unsqueeze(1)], dim=1)
        return arrays

    def unpack_tile(self, arrays: list[torch.Tensor], n_slices: int, n_cols: int
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`pack_tile` backwards: ``(block [S, cells, cols, rows], aux [rows] | None)``
        from per-array ``[rows, bit lines]`` values (e.g. effective conductances)."""
        n_rows = arrays[0].shape[0]
        block = torch.stack([a[:, :n_cols * n_slices].reshape(n_rows, n_cols, n_slices)
                             .permute(2, 1, 0) for a in arrays], dim=1)
        aux = arrays[0][:, -1] if arrays[0].shape[1] > n_cols * n_slices else None
        return block, aux


MAPPINGS = Registry("mapping")
register = MAPPINGS.register


def mapping_style(name: str) -> MappingStyle:
    """The registered style ``name`` (ValueError naming the choices otherwise)."""
    return MAPPINGS.instance(name)
