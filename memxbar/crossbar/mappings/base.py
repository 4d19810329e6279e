"""Mapping styles: how a signed weight is held by cells on bit lines.

A style answers, for the mapping plan, the simulator and the cost model alike:

* ``cells_per_weight``: cells (bit lines) per weight slice (2 for a differential pair);
* ``reference_columns``: extra bit lines per tile (the offset style's reference column, one
  per tile, shared by every output and weight slice of the tile);
* ``arrays_per_tile``: physical arrays a tile takes (the cost model's crossbar count);
* ``nominal``: normalised weights ``v`` in ``[-1, 1]`` -> target conductances per cell;
* ``weights``: conductances (and the reference column's) -> normalised weights;
* ``norm_uS``: the conductance difference of ``v = 1``, which turns a conductance noise into a
  weight noise;
* ``cell_groups``: the kinds of physical cell the style programs (the weight cells and, for
  the offset style, each tile's reference column), each with its own random streams;
* ``pack_tile`` / ``unpack_tile``: where every cell of a tile sits in its physical arrays.

Styles register by name in :data:`MAPPINGS`; ``CrossbarConfig.mapping`` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..registry import Registry
from ..streams import allow_cell_prefix


@dataclass(frozen=True)
class CellGroup:
    """One kind of physical cell a mapping style programs. Every group goes through the same
    device chain (faults, programming or write-verify, drift, read noise;
    :mod:`crossbar.physical`), each from its own random streams (``prefix``), so adding a
    group changes no other group's draws.

    ``per_tile`` says the layout: ``False`` for the weight cells ``[S, cells, out, in]`` (every
    weight slice, cell of a pair, output and input); ``True`` for bit lines of each tile that
    every output of the tile shares, ``[tiles, in]`` (a cell on each word line the tile
    drives, 0 uS elsewhere)."""

    name: str  # "weights", or the style's name for its auxiliary cells
    buffer: str  # the crossbar layer's conductance buffer (uS)
    prefix: str  # stream prefix of the group's draws ("" for the weight cells)
    per_tile: bool


WEIGHT_CELLS = CellGroup("weights", "g_uS", "", per_tile=False)


class MappingStyle:
    name: ClassVar[str]
    cells_per_weight: ClassVar[int]
    reference_columns: ClassVar[int]
    arrays_per_tile: ClassVar[int]
    legacy_buffers: ClassVar[dict[str, str]] = {"g_ref_uS": "g_aux_uS"}
    """Buffers of the mapping's cells renamed in state-dict version 2 (issue 21): version 1
    (0.2-0.4) stored the auxiliary cells (the offset reference column, an empty tensor for
    other styles) under the offset mapping's own name. Read by
    :func:`crossbar.layer_state.upgrade_state`."""
    aux_prefix: ClassVar[str] = ""
    """Stream prefix of the style's auxiliary cells (the ``reference_columns`` of each tile,
    ``CrossbarLayer.g_aux_uS``): they are programmed, fail and drift from their own streams."""

    def cell_groups(self) -> tuple[CellGroup, ...]:
        """The kinds of cell this style programs: the weight cells, then (with
        ``reference_columns``) each tile's auxiliary column at :meth:`reference_uS`."""
        if not self.reference_columns:
            return (WEIGHT_CELLS,)
        return (WEIGHT_CELLS, CellGroup("reference", "g_aux_uS", self.aux_prefix, per_tile=True))

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


def register(cls: type[MappingStyle]) -> type[MappingStyle]:
    """Register a style by its ``name``; its cell groups' stream prefixes become valid
    effects (:func:`crossbar.streams.allow_cell_prefix`)."""
    for group in cls().cell_groups():
        allow_cell_prefix(group.prefix)
    return MAPPINGS.register(cls)


def mapping_style(name: str) -> MappingStyle:
    """The registered style ``name`` (ValueError naming the choices otherwise)."""
    return MAPPINGS.instance(name)
