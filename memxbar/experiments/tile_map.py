"""The tile map of a compress run: what sits on each physical tile of each mapped layer
(the programmed cells, the offset mapping's reference column, the unused lines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memxbar.crossbar import MappingPlan
from memxbar.experiments.plots import plt, write_png

TILE_MAP_MAX = 24
"""Tiles drawn per layer in the tile map (the title says how many the layer has)."""


def tile_occupancy(layer, tile) -> np.ndarray:
    """What sits on one physical array of ``tile``: ``[tile_rows, tile_cols]`` with 1 where a
    weight cell is programmed (the tile's live word lines, packed from the first, x its
    outputs' bit lines, one per weight slice), 0.5 on the offset mapping's reference column,
    0 where the array is unused. A differential pair's G- array holds the same pattern."""
    grid = np.zeros((layer.tile_rows, layer.tile_cols))
    used = tile.n_cols * layer.weight_slices
    grid[:tile.n_rows, :used] = 1.0
    ref = layer.style.reference_columns
    grid[:tile.n_rows, used:used + ref] = 0.5
    return grid


def plot_tile_map(plan: MappingPlan, path: Path) -> None:
    """One panel per mapped layer showing what sits on each of its tiles: the physical array
    (word lines x bit lines) with the programmed cells dark, the offset mapping's reference
    column grey and the unused lines white, tiles side by side (at most
    :data:`TILE_MAP_MAX` per layer), and each tile's share of cells in use."""
    layers = list(plan)
    fig, axes = plt.subplots(len(layers), 1, figsize=(7.0, 1.5 + 1.2 * len(layers)),
                             squeeze=False)
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        shown = layer.tiles[:TILE_MAP_MAX]
        gap = max(1, layer.tile_cols // 8)
        strip = np.full((layer.tile_rows, len(shown) * (layer.tile_cols + gap) - gap), np.nan)
        for k, tile in enumerate(shown):
            x0 = k * (layer.tile_cols + gap)
            strip[:, x0:x0 + layer.tile_cols] = tile_occupancy(layer, tile)
            used = tile.n_rows * layer.tile_bit_lines(tile) / layer.style.arrays_per_tile
            ax.text(x0 + layer.tile_cols / 2, -0.04 * layer.tile_rows,
                    f"{used / (layer.tile_rows * layer.tile_cols):.0%}", ha="center",
                    va="bottom", fontsize=6)
            ax.add_patch(plt.Rectangle((x0 - 0.5, -0.5), layer.tile_cols, layer.tile_rows,
                                       fill=False, edgecolor="#444444", linewidth=0.6))
        ax.imshow(strip, cmap="Greys", vmin=0, vmax=1.25, interpolation="nearest",
                  aspect="equal")
        n = layer.n_tiles
        more = f", the first {len(shown)} drawn" if n > len(shown) else ""
        pair = "; G+ array drawn, its G- array alike" if layer.style.arrays_per_tile == 2 \
            else ""
        ax.set_title(f"{layer.name}: {n} tile{'s' if n != 1 else ''} of {layer.tile_rows} x "
                     f"{layer.tile_cols}{more}; {layer.mapped_weights} weights{pair}",
                     fontsize=8, pad=12)
        ax.set_xticks([])
        ax.set_yticks([0, layer.tile_rows - 1], ["1", str(layer.tile_rows)], fontsize=6)
        ax.set_ylabel("word line", fontsize=7)
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
    axes[-1, 0].set_xlabel("tiles side by side: bit lines left to right; percent: cells in "
                           "use", fontsize=7)
    fig.suptitle("What sits on each tile: programmed cells (dark), reference column (grey), "
                 "unused lines (white)", fontsize=9)
    fig.tight_layout()
    write_png(path, fig)
