"""Tile units: which tiles a crossbar layer computes in one product, and where their weights
and inputs live (derived from the mapping plan once per layer and device)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TileIndex:
    """Where the weights and inputs of the tiles one product computes live (derived from the
    plan): one tile, or, in a grouped convolution, the tiles that hold the same group-local
    rows and as many outputs each, computed together as one grouped convolution with one
    group per tile (every tile keeps its own weights, read noise, ADCs and ranges)."""

    tiles: tuple[int, ...]  # the plan's tile indices
    cols: torch.Tensor  # output indices, tile after tile
    rows: torch.Tensor  # matrix rows (linear) or group-local input channels (conv), shared
    inputs: torch.Tensor  # input indices (rows or channels of x), tile after tile
    input_slice: slice | None  # ``inputs`` as a contiguous range, else None (gather)
    row_mask: torch.Tensor | None  # conv: [channels, kh*kw] rows of the tiles, when partial
    n_rows: int  # live word lines of each tile
    col_slice: slice | None = None  # ``cols`` as a contiguous range, else None (index_add)


def as_slice(index: list[int]) -> slice | None:
    if index and index == list(range(index[0], index[-1] + 1)):
        return slice(index[0], index[-1] + 1)
    return None


def linear_units(plan, dev: torch.device) -> list[TileIndex]:
    """One unit per tile of a Linear layer's plan."""
    out = []
    for i, t in enumerate(plan.tiles):
        rows = torch.tensor(t.rows, dtype=torch.long, device=dev)
        out.append(TileIndex(tiles=(i,), cols=torch.tensor(t.cols, dtype=torch.long,
                                                            device=dev),
                              rows=rows, inputs=rows, input_slice=as_slice(list(t.rows)),
                              row_mask=None, n_rows=t.n_rows,
                              col_slice=as_slice(list(t.cols))))
    return out


def conv_units(plan, kernel_area: int, group_channels: int, groups: int, dev: torch.device
               ) -> list[TileIndex]:
    """The units of a Conv2d layer's plan: in a grouped convolution, the tiles of different
    groups that hold the same group-local rows (and as many outputs) form one unit, computed
    as one grouped convolution; otherwise one unit per tile."""
    k = kernel_area
    units: dict[object, list[int]] = {}  # tiles of the same local rows share a product
    for t, tile in enumerate(plan.tiles):
        units.setdefault((tile.rows, tile.n_cols) if groups > 1 else t, []).append(t)
    out = []
    for tiles in units.values():
        first = plan.tiles[tiles[0]]
        channels = sorted({r // k for r in first.rows})
        mask = torch.zeros(len(channels), k, dtype=torch.bool)
        pos = {c: i for i, c in enumerate(channels)}
        for r in first.rows:
            mask[pos[r // k], r % k] = True
        inputs = [plan.group_of(plan.tiles[t].cols[0]) * group_channels + c
                  for t in tiles for c in channels]
        cols = [c for t in tiles for c in plan.tiles[t].cols]
        out.append(TileIndex(
            tiles=tuple(tiles),
            cols=torch.tensor(cols, dtype=torch.long, device=dev),
            col_slice=as_slice(cols),
            rows=torch.tensor(channels, dtype=torch.long, device=dev),
            inputs=torch.tensor(inputs, dtype=torch.long, device=dev),
            input_slice=as_slice(inputs),
            row_mask=None if bool(mask.all()) else mask.to(dev),
            n_rows=first.n_rows,
        ))
    return out
