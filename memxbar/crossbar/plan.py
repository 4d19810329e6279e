"""Masked mapping: which rows and columns of a layer get devices, and how they pack into tiles.

Matrix view (DESIGN.md): a Linear layer is ``W[out, in]``, a Conv2d layer ``W[out, in*kh*kw]``
in im2col order. Inputs drive rows (word lines), outputs are read on columns (bit lines). A
grouped convolution (``groups = G``) is ``G`` independent matrices ``[out/G, in/G*kh*kw]``
stacked along the outputs, i.e. its weight's own matrix view ``W[out, in/G*kh*kw]`` whose rows
are *group-local*: row ``r`` of output ``o`` reads input channel ``(o // (out/G)) * in/G +
r // (kh*kw)``.

Packing rule (one implementation, read by the simulator and the cost model):

1. Live columns (outputs with any live weight) are taken in order, group by group, and cut
   into column groups of ``outputs_per_tile``; a column group never holds outputs of two
   convolution groups, so every tile belongs to one group.
2. Inside a column group, a row is live if any weight of that group's columns in it is live.
   Live rows are packed in order into tiles of ``tile_rows`` word lines, keeping each *row unit*
   together: for a convolution whose kernel fits a tile (``kh*kw <= tile_rows``) a unit is one
   input channel's kernel rows, so every tile is an ordinary convolution over a subset of input
   channels; otherwise a unit is a single row.
3. All-zero rows or columns are never given a device; a block of a tile that is all zero in a
   column group never opens a tile.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._validate import check_choice, check_int, check_optional_int, fail
from .config import CrossbarConfig
from .io import atomic_write_text
from .mappings import MAPPINGS, MappingStyle, mapping_style

PLAN_FORMAT_VERSION = 1
LAYER_KINDS = ("linear", "conv1d", "conv2d")
MAX_LAYER_WEIGHTS = 2**30
"""Largest matrix (``in_features * out_features``) a plan may describe: above the largest
layers of today's models (a 12288 x 49152 feed-forward matrix is 6e8 weights), below what the
cost model can re-plan dense in memory."""
MAX_MVMS_PER_SAMPLE = 10**12
"""Largest count of matrix-vector products per sample a plan may hold."""


@dataclass(frozen=True)
class Tile:
    """One crossbar tile: the matrix rows (word lines) and output columns it holds."""

    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_cols(self) -> int:
        return len(self.cols)


@dataclass(frozen=True)
class LayerPlan:
    """The mapping of one Linear/Conv2d layer onto tiles.

    Attributes:
        name: module name in the model (``model.named_modules()``).
        kind: ``"linear"``, ``"conv1d"`` or ``"conv2d"``.
        out_features: matrix columns (outputs / filters).
        in_features: matrix rows (``in`` or ``in*kh*kw``).
        row_unit: rows kept together when packing (``kh*kw`` for a conv that fits a tile, else 1).
        tile_rows, tile_cols: physical crossbar size.
        outputs_per_tile: outputs one tile can hold (bit lines left after the differential pair
            or reference column and weight slices take theirs).
        weight_slices: cell pairs per weight (``ceil(weight_bits / cell_bits)``).
        mapping: ``"differential"`` or ``"offset"``.
        mvms_per_sample: matrix-vector products per input sample (1 for Linear, ``H_out*W_out``
            for Conv2d); ``None`` when no example input has been seen.
        tiles: the tiles, column group by column group.
        groups: convolution groups (1 for Linear); tile rows are group-local (module
            docstring) and every tile's columns lie in one group.
    """

    name: str
    kind: str
    out_features: int
    in_features: int
    row_unit: int
    tile_rows: int
    tile_cols: int
    outputs_per_tile: int
    weight_slices: int
    mapping: str
    mvms_per_sample: int | None
    tiles: tuple[Tile, ...] = field(default_factory=tuple)
    groups: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            fail("layer plan name", self.name, "a module name (a string)")
        check_choice(f"{self.name}: kind", self.kind, LAYER_KINDS)
        check_choice("mapping", self.mapping, tuple(MAPPINGS))
        for key in ("out_features", "in_features", "row_unit", "tile_rows", "tile_cols",
                    "outputs_per_tile", "weight_slices", "groups"):
            check_int(f"{self.name}: {key}", getattr(self, key), 1)
        if self.in_features * self.out_features > MAX_LAYER_WEIGHTS:
            fail(f"{self.name}: in_features x out_features",
                 (self.in_features, self.out_features),
                 f"a matrix of at most {MAX_LAYER_WEIGHTS} weights")
        check_optional_int(f"{self.name}: mvms_per_sample", self.mvms_per_sample, 1,
                           MAX_MVMS_PER_SAMPLE)
        if self.out_features % self.groups or (self.kind == "linear" and self.groups != 1):
            fail(f"{self.name}: groups", self.groups,
                 "1 for a linear layer, else a divisor of out_features="
                 f"{self.out_features}")
        seen: dict[tuple[int, ...], set[int]] = {}
        for t in self.tiles:
            if t.n_rows == 0 or t.n_cols == 0:
                fail(f"{self.name}: tile shape", (t.n_rows, t.n_cols), "a non-empty tile")
            for what, idx in (("rows", t.rows), ("cols", t.cols)):
                if len(set(idx)) != len(idx):
                    fail(f"{self.name}: tile {what}", sorted(i for i in set(idx)
                                                             if idx.count(i) > 1)[:5],
                         "each index once per tile")
            if self.groups > 1 and self.group_of(min(t.cols)) != self.group_of(max(t.cols)):
                fail(f"{self.name}: tile cols", (min(t.cols), max(t.cols)),
                     f"outputs of one group (groups={self.groups}, "
                     f"{self.out_features // self.groups} outputs each)")
            rows = seen.setdefault(t.cols, set())
            if not rows.isdisjoint(t.rows):
                fail(f"{self.name}: tile rows", sorted(rows & set(t.rows))[:5],
                     "rows not already held by another tile of the same columns")
            rows.update(t.rows)
            if t.n_rows > self.tile_rows or t.n_cols > self.outputs_per_tile:
                fail(f"{self.name}: tile shape", (t.n_rows, t.n_cols),
                     f"at most ({self.tile_rows}, {self.outputs_per_tile})")
            if t.rows and (min(t.rows) < 0 or max(t.rows) >= self.in_features):
                fail(f"{self.name}: tile rows", (min(t.rows), max(t.rows)),
                     f"indices in [0, {self.in_features - 1}]")
            if t.cols and (min(t.cols) < 0 or max(t.cols) >= self.out_features):
                fail(f"{self.name}: tile cols", (min(t.cols), max(t.cols)),
                     f"indices in [0, {self.out_features - 1}]")

    # ------------------------------------------------------------------------------- summaries
    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    def group_of(self, col: int) -> int:
        """The convolution group output ``col`` belongs to (0 for a Linear)."""
        return col // (self.out_features // self.groups)

    @functools.cached_property
    def live_rows(self) -> tuple[int, ...]:
        """Inputs that drive a word line, as rows of the layer's full im2col input
        (``group * in_features + row``: for a grouped convolution, input channel x kernel
        position; the matrix rows themselves when ``groups == 1``)."""
        if self.groups == 1:
            return tuple(sorted(set().union(*(t.rows for t in self.tiles))))
        return tuple(sorted({self.group_of(t.cols[0]) * self.in_features + r
                             for t in self.tiles for r in t.rows}))

    @functools.cached_property
    def live_cols(self) -> tuple[int, ...]:
        return tuple(sorted(set().union(*(t.cols for t in self.tiles))))

    @property
    def columns_per_output(self) -> int:
        """Bit lines one output takes in a tile: 2 per slice (pair) or 1 per slice (offset)."""
        return self.weight_slices * self.style.cells_per_weight

    def tile_bit_lines(self, tile: Tile) -> int:
        """Bit lines a tile uses, including the reference column of the offset mapping (one
        per tile, shared by all outputs and weight slices of the tile)."""
        return tile.n_cols * self.columns_per_output + self.style.reference_columns

    @property
    def style(self) -> MappingStyle:
        """The mapping style (cells per weight, reference columns, arrays per tile)."""
        return mapping_style(self.mapping)

    @property
    def n_word_lines(self) -> int:
        """Driven word lines summed over tiles (one DAC drive each per input vector)."""
        return sum(t.n_rows for t in self.tiles)

    @property
    def n_bit_lines(self) -> int:
        return sum(self.tile_bit_lines(t) for t in self.tiles)

    @property
    def n_dacs(self) -> int:
        """Input DACs: one per live word line of every tile."""
        return self.n_word_lines

    def adcs_per_tile(self, cols_per_adc: int = 1) -> list[int]:
        """ADCs of each tile when ``cols_per_adc`` converted signals share one converter. A
        signal is one output's weight slice: the differential pair (or the reference column)
        is subtracted in analog before the ADC, so a pair needs one conversion, not two."""
        return [math.ceil(t.n_cols * self.weight_slices / cols_per_adc) for t in self.tiles]

    @property
    def n_devices(self) -> int:
        """Programmed memristors: every cell at a live word line x used bit line of a tile."""
        return sum(t.n_rows * self.tile_bit_lines(t) for t in self.tiles)

    @property
    def mapped_weights(self) -> int:
        """Weights held on live crossbar rows and columns (the compression-ratio denominator)."""
        return sum(t.n_rows * t.n_cols for t in self.tiles)

    def cell_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """Bool ``[out, in]``: True where a weight has a device (inside some tile)."""
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=device)
        for t in self.tiles:
            rows = torch.tensor(t.rows, dtype=torch.long, device=device)
            cols = torch.tensor(t.cols, dtype=torch.long, device=device)
            mask[cols.unsqueeze(1), rows.unsqueeze(0)] = True
        return mask

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tiles"}
        data["tiles"] = [{"rows": list(t.rows), "cols": list(t.cols)} for t in self.tiles]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerPlan:
        if not isinstance(data, Mapping):
            fail("layer plan", data, "a JSON object of LayerPlan fields")
        data = dict(data)
        tiles = data.pop("tiles", None)
        if not isinstance(tiles, list) or not all(
                isinstance(t, Mapping) and isinstance(t.get("rows"), list)
                and isinstance(t.get("cols"), list) and set(t) == {"rows", "cols"}
                for t in tiles):
            fail(f"{data.get('name')}: tiles", tiles,
                 "a list of {'rows': [...], 'cols': [...]} objects")
        for t in tiles:
            for what in ("rows", "cols"):
                if not all(type(i) is int for i in t[what]):
                    fail(f"{data.get('name')}: tile {what}", t[what][:5], "integer indices")
        tiles = tuple(Tile(tuple(t["rows"]), tuple(t["cols"])) for t in tiles)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            fail("layer plan key", unknown[0], "one of " + ", ".join(sorted(known)))
        return cls(tiles=tiles, **data)


@dataclass
class MappingPlan:
    """Per-layer plans of one model, keyed by module name."""

    layers: dict[str, LayerPlan]

    def __getitem__(self, name: str) -> LayerPlan:
        return self.layers[name]

    def __iter__(self) -> Iterator[LayerPlan]:
        return iter(self.layers.values())

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def n_tiles(self) -> int:
        return sum(p.n_tiles for p in self)

    @property
    def mapped_weights(self) -> int:
        return sum(p.mapped_weights for p in self)

    @property
    def dense_weights(self) -> int:
        return sum(p.in_features * p.out_features for p in self)

    def summary(self) -> list[dict]:
        """One row per layer: shapes, live rows/cols, tiles, DACs, ADCs (one per bit line),
        devices."""
        return [
            {
                "layer": p.name,
                "kind": p.kind,
                "shape": [p.out_features, p.in_features],
                "live_rows": len(p.live_rows),
                "live_cols": len(p.live_cols),
                "tiles": p.n_tiles,
                "dacs": p.n_dacs,
                "adcs": sum(p.adcs_per_tile()),
                "devices": p.n_devices,
                "mapped_weights": p.mapped_weights,
            }
            for p in self
        ]

    def to_dict(self) -> dict:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "layers": [p.to_dict() for p in self],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MappingPlan:
        version = data.get("format_version")
        if version != PLAN_FORMAT_VERSION:
            fail("format_version", version, f"{PLAN_FORMAT_VERSION}")
        if not isinstance(data.get("layers"), list) or not data["layers"]:
            fail("layers", data.get("layers"), "a non-empty list of layer plans")
        layers = [LayerPlan.from_dict(d) for d in data["layers"]]
        names = [p.name for p in layers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            fail("layer plan name", twice[0], "each layer once (it is listed "
                 f"{names.count(twice[0])} times)")
        empty = [p.name for p in layers if not p.tiles]
        if empty:
            fail(f"{empty[0]}: tiles", [], "at least one tile (a layer with every weight "
                 "pruned would be costed as zero; leave it out of the plan instead)")
        return cls({p.name: p for p in layers})

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temporary file in the same folder, then rename)."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MappingPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------------- packing
def outputs_per_tile(config: CrossbarConfig) -> int:
    """Outputs a tile can hold: ``tile_cols`` bit lines less the reference column (offset
    mapping), divided among each output's weight slices (and the pair of a differential
    mapping, which uses a second array of the same size: see docs/crossbar.md)."""
    reference = mapping_style(config.mapping).reference_columns
    usable = config.tile_cols - reference
    per_output = config.weight_slices
    n = usable // per_output
    if n < 1:
        fail(
            "tile_cols",
            config.tile_cols,
            f"at least {per_output + reference} for mapping="
            f"{config.mapping!r} with {config.weight_slices} weight slice(s)",
        )
    return n


def plan_layer(
    name: str,
    kind: str,
    live: torch.Tensor,
    config: CrossbarConfig,
    kernel_size: int = 1,
    mvms_per_sample: int | None = None,
    groups: int = 1,
) -> LayerPlan:
    """Pack the live weights ``live`` (bool ``[out, in]``) of one layer into tiles.

    ``kernel_size`` is ``kh*kw`` for a Conv2d (the row unit when it fits a tile), 1 for Linear.
    ``groups``: a grouped convolution's matrix view ``[out, in/groups*kh*kw]``; each group's
    outputs are packed on their own tiles, with the rows live in that group.
    """
    if live.dim() != 2:
        fail(f"{name}: live mask shape", tuple(live.shape), "a 2-D [out, in] mask")
    live = live.detach().to("cpu", torch.bool)
    out_f, in_f = live.shape
    if groups < 1 or out_f % groups:
        fail(f"{name}: groups", groups, f"a divisor of the layer's {out_f} outputs")
    per_tile = outputs_per_tile(config)
    row_unit = kernel_size if kernel_size <= config.tile_rows else 1
    live_out = live.any(dim=1)
    per_group = out_f // groups
    tiles: list[Tile] = []
    for g in range(groups):
        first = g * per_group
        live_cols = (torch.nonzero(live_out[first:first + per_group]).flatten() + first).tolist()
        for start in range(0, len(live_cols), per_tile):
            cols = live_cols[start:start + per_tile]
            group_rows = torch.nonzero(live[cols].any(dim=0)).flatten().tolist()
            tiles.extend(Tile(rows, tuple(cols)) for rows in _pack_rows(group_rows, row_unit,
                                                                       config.tile_rows))
    return LayerPlan(
        name=name,
        kind=kind,
        out_features=out_f,
        in_features=in_f,
        row_unit=row_unit,
        tile_rows=config.tile_rows,
        tile_cols=config.tile_cols,
        outputs_per_tile=per_tile,
        weight_slices=config.weight_slices,
        mapping=config.mapping,
        mvms_per_sample=mvms_per_sample,
        tiles=tuple(tiles),
        groups=groups,
    )


def dense_layer_plan(plan: LayerPlan, config: CrossbarConfig) -> LayerPlan:
    """``plan``'s layer dense and unpruned, packed for ``config``: what :func:`plan_layer`
    gives for an all-True mask, computed from the shape alone (no ``[out, in]`` mask is made)."""
    per_tile = outputs_per_tile(config)
    row_unit = plan.row_unit if plan.row_unit <= config.tile_rows else 1
    per_group = plan.out_features // plan.groups
    row_bins = _pack_rows(list(range(plan.in_features)), row_unit, config.tile_rows)
    col_bins = [tuple(range(first + start, first + min(start + per_tile, per_group)))
                for first in range(0, plan.out_features, per_group)
                for start in range(0, per_group, per_tile)]
    tiles = tuple(Tile(rows, cols) for cols in col_bins for rows in row_bins)
    return LayerPlan(name=plan.name, kind=plan.kind, out_features=plan.out_features,
                     in_features=plan.in_features, row_unit=row_unit,
                     tile_rows=config.tile_rows, tile_cols=config.tile_cols,
                     outputs_per_tile=per_tile, weight_slices=config.weight_slices,
                     mapping=config.mapping, mvms_per_sample=plan.mvms_per_sample,
                     tiles=tiles, groups=plan.groups)


def _pack_rows(rows: list[int], unit: int, capacity: int) -> list[tuple[int, ...]]:
    """Next-fit packing of sorted ``rows`` into bins of ``capacity``, units kept whole."""
    bins: list[tuple[int, ...]] = []
    current: list[int] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j] // unit == rows[i] // unit:
            j += 1
        if current and len(current) + (j - i) > capacity:
            bins.append(tuple(current))
            current = []
        current.extend(rows[i:j])
        i = j
    if current:
        bins.append(tuple(current))
    return bins


def check_plan(layer: LayerPlan, config: CrossbarConfig) -> None:
    """A layer plan must have been packed for ``config``'s tiles, mapping and weight slices."""
    planned = (layer.tile_rows, layer.tile_cols, layer.mapping, layer.weight_slices)
    wanted = (config.tile_rows, config.tile_cols, config.mapping, config.weight_slices)
    if planned != wanted:
        fail(f"{layer.name}: plan (tile_rows, tile_cols, mapping, weight_slices)", planned,
             f"the crossbar config's {wanted}")


def matrix_view(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear/Conv2d as the crossbar matrix ``[out, in*kh*kw]``."""
    return module.weight.detach().reshape(module.weight.shape[0], -1)


MAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""Layer types that map onto crossbars (a Conv1d is a Conv2d of height 1). The projections of
an ``nn.MultiheadAttention`` (:func:`attention_projections`) and the input, hidden and
projection matrices of an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (:func:`recurrent_matrices`) map
too."""


UNMAPPED = {
    nn.ConvTranspose1d: "a transposed convolution: not mapped yet",
    nn.ConvTranspose2d: "a transposed convolution: not mapped yet",
    nn.ConvTranspose3d: "a transposed convolution: not mapped yet",
    nn.Conv3d: "a 3-D convolution: not mapped yet",
    nn.Bilinear: "a bilinear layer: not mapped yet",
    nn.Embedding: "an embedding: a table lookup, no matrix-vector product to map",
    nn.EmbeddingBag: "an embedding: a table lookup, no matrix-vector product to map",
}
"""Weighted layers that stay digital whatever the ``layers`` section says: neither simulated
nor costed, and named so (:func:`unmapped_layers`)."""


def unmapped_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, why)`` of every weighted layer of ``model`` that stays digital because no
    crossbar mapping exists for its type (:data:`UNMAPPED`): the run reports name them."""
    out = []
    for name, module in model.named_modules():
        for kind, why in UNMAPPED.items():
            if isinstance(module, kind):
                out.append((name or type(module).__name__, f"{type(module).__name__}, {why}"))
                break
    return out


def crossbar_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` for every Linear, Conv1d and Conv2d in ``model`` (the mappable
    layers); for every ``nn.MultiheadAttention`` its projections as ``nn.Linear`` views
    named ``<attention>.in_proj`` (or ``q_proj``, ``k_proj``, ``v_proj``) and
    ``<attention>.out_proj`` (:func:`attention_projections`); for every ``nn.LSTM``,
    ``nn.GRU`` and ``nn.RNN`` its matrices as ``nn.Linear`` views named ``<rnn>.ih_l0``,
    ``<rnn>.hh_l0``, ``<rnn>.ih_l0_reverse``, ... (:func:`recurrent_matrices`)."""
    composite: list[str] = []  # prefixes of the attention/recurrent modules met so far
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in composite):
            continue  # out_proj: listed with its attention module (views list the rest)
        views = (attention_projections(module) if isinstance(module, nn.MultiheadAttention)
                 else recurrent_matrices(module) if isinstance(module, nn.RNNBase) else None)
        if views is not None:
            prefix = f"{name}." if name else ""
            composite.append(prefix)
            for suffix, view in views:
                yield prefix + suffix, view
        elif isinstance(module, MAPPABLE):
            yield name, module


RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
"""Gate blocks ``G`` stacked in a recurrent layer's matrices (``[G*H, in]``), by
``nn.RNNBase.mode``: LSTM ``i, f, g, o``; GRU ``r, z, n``; RNN one."""


def recurrent_matrices(rnn: nn.RNNBase) -> list[tuple[str, nn.Linear]]:
    """The weight matrices of an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` as ``nn.Linear`` views
    sharing its parameters, per layer ``k`` and direction (``_reverse`` for the backward one
    of a bidirectional layer), in this order: ``ih_l{k}`` (``weight_ih_l{k}``, ``[G*H, in]``,
    bias ``bias_ih_l{k}``), ``hh_l{k}`` (``weight_hh_l{k}``, ``[G*H, H]`` or ``[G*H, P]``
    with an LSTM ``proj_size = P``; bias ``bias_hh_l{k}``) and, with ``proj_size``,
    ``hr_l{k}`` (``weight_hr_l{k}``, ``[P, H]``, no bias). Each is driven once per time step
    and sequence (:class:`crossbar.recurrent.CrossbarRecurrent`)."""
    if rnn.mode not in RECURRENT_GATES:
        fail(f"{type(rnn).__name__}.mode", rnn.mode, "one of " + ", ".join(RECURRENT_GATES))
    out = []
    for k in range(rnn.num_layers):
        for suffix in ("", "_reverse")[:2 if rnn.bidirectional else 1]:
            tail = f"_l{k}{suffix}"
            for kind in ("ih", "hh", "hr")[:3 if rnn.proj_size else 2]:
                bias = getattr(rnn, f"bias_{kind}{tail}") if rnn.bias and kind != "hr" else None
                out.append((kind + tail, _linear_view(getattr(rnn, f"weight_{kind}{tail}"),
                                                      bias)))
    return out


def recurrent_steps(inputs: object) -> int:
    """Time steps summed over the sequences of one recurrent-layer input (a padded tensor
    ``(L, N, in)``/``(N, L, in)``/``(L, in)``, or a ``PackedSequence``): the products each of
    the layer's matrices makes in one forward."""
    if isinstance(inputs, nn.utils.rnn.PackedSequence):
        return int(inputs.data.shape[0])
    return inputs.numel() // inputs.shape[-1]


def attention_projections(attention: nn.MultiheadAttention) -> list[tuple[str, nn.Linear]]:
    """The static weight matrices of an ``nn.MultiheadAttention`` (embedding ``E``) as
    ``nn.Linear`` modules sharing its parameters, named as under the attention module:
    ``in_proj`` ``[3E, E]`` (the packed Q, K, V projection, when ``kdim == vdim == E``) or
    ``q_proj`` ``[E, E]``, ``k_proj`` ``[E, kdim]``, ``v_proj`` ``[E, vdim]`` (biases: the
    thirds of ``in_proj_bias``); and ``out_proj`` ``[E, E]``. Attention's own products
    (``Q K^T``, softmax, ``x V``) multiply two activations: no static matrix, no crossbar."""
    bias = attention.in_proj_bias
    if attention._qkv_same_embed_dim:
        views = [("in_proj", _linear_view(attention.in_proj_weight, bias))]
    else:
        weights = (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight)
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        views = [(n, _linear_view(w, b)) for n, w, b in
                 zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True)]
    return [*views, ("out_proj", attention.out_proj)]


def _linear_view(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose weight and bias are ``weight`` and ``bias`` (shared, not
    copied)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


def linear_copy(view: nn.Linear) -> nn.Linear:
    """A digital ``nn.Linear`` holding a copy of ``view``'s weight and bias (an attention
    projection or recurrent matrix, before :func:`crossbar.to_crossbar` replaces it by name)."""
    layer = nn.Linear(view.in_features, view.out_features, bias=view.bias is not None,
                      device=view.weight.device, dtype=view.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(view.weight)
        if view.bias is not None:
            layer.bias.copy_(view.bias)
    return layer


def attention_inputs(packed: bool, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The projection calls of one attention forward, ``(projection, input)`` in order: the
    packed ``in_proj`` is driven once per distinct input (self-attention: once, giving Q, K
    and V; ``key is value``: query and key; else three times, a third of the outputs used each
    time), separate projections once each. The simulator and :func:`measure_mvms` both
    follow it."""
    if not packed:
        return [("q_proj", query), ("k_proj", key), ("v_proj", value)]
    if query is key and key is value:
        return [("in_proj", query)]
    if key is value:
        return [("in_proj", query), ("in_proj", key)]
    return [("in_proj", query), ("in_proj", key), ("in_proj", value)]


def matches(pattern: str, name: str) -> bool:
    """Whether a module name matches a layer pattern: fnmatch (``"features.*"``) or, with the
    prefix ``re:``, a regular expression matched against the whole name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def plan_model(
    model: nn.Module,
    config: CrossbarConfig,
    masks: Mapping[str, torch.Tensor] | None = None,
    example_input: torch.Tensor | None = None,
    exclude: Collection[str] = (),
) -> MappingPlan:
    """Mapping plan of every mapped layer of ``model`` (:func:`crossbar_layers`: Linear,
    Conv1d, Conv2d with their groups, attention projections, recurrent matrices) but the
    ``exclude``d names (layers kept digital).

    A weight is live where ``masks[name]`` (bool, matrix view or weight shape) is True, or, for
    layers without a mask, where it is non-zero, so an all-zero row or column never gets a
    device. With ``example_input``, ``mvms_per_sample`` is measured with one forward pass.
    """
    layers = {n: m for n, m in crossbar_layers(model) if n not in exclude}
    if not layers:
        raise ValueError(
            f"model {type(model).__name__} has no Linear, Conv1d, Conv2d or attention "
            "projection to map onto crossbars"
        )
    masks = {k: v for k, v in (masks or {}).items() if k not in exclude}
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        fail("masks key", unknown[0], "names of Linear/Conv2d layers: " + ", ".join(layers))
    live_masks = {name: _live_mask(name, mask, layers[name]) for name, mask in masks.items()}
    mvms = measure_mvms(model, example_input) if example_input is not None else {}
    plans = {}
    for name, module in layers.items():
        live = live_masks[name] if name in masks else matrix_view(module) != 0
        kind = "linear"
        if isinstance(module, nn.Conv2d):
            kind = "conv2d"
        elif isinstance(module, nn.Conv1d):
            kind = "conv1d"
        kernel = math.prod(module.kernel_size) if kind != "linear" else 1
        groups = module.groups if kind != "linear" else 1
        plans[name] = plan_layer(name, kind, live, config, kernel, mvms.get(name), groups)
    return MappingPlan(plans)


def _live_mask(name: str, mask: object, module: nn.Module) -> torch.Tensor:
    """``masks[name]`` as a bool matrix view: a tensor of the weight's or the matrix view's
    shape holding only 0/1 (or bools)."""
    view = tuple(matrix_view(module).shape)
    weight = tuple(module.weight.shape)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) not in (view, weight):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        fail(f"masks[{name!r}] shape", shape, "a tensor of shape " + " or ".join(
            map(str, dict.fromkeys((view, weight)))))
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        fail(f"masks[{name!r}] values", sorted({float(v) for v in mask.unique()[:5]}),
             "bools or 0/1")
    return mask.reshape(view).to(torch.bool)


def measure_mvms(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Matrix-vector products per sample of each mapped layer (one forward on one example;
    a layer called several times counts every call). An ``nn.MultiheadAttention`` counts its
    projections' calls (:func:`attention_inputs`) from its inputs' token counts; an
    ``nn.LSTM``/``nn.GRU``/``nn.RNN`` one product per time step for each of its matrices
    (:func:`recurrent_steps`)."""
    counts: dict[str, int] = {}
    hooks = []

    def add(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + int(n)

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            plan = getattr(module, "plan", None)
            kind = plan.kind if plan is not None else (
                "conv2d" if isinstance(module, nn.Conv2d) else
                "conv1d" if isinstance(module, nn.Conv1d) else "linear")
            if kind == "conv2d":
                add(name, output.shape[-1] * output.shape[-2])
            elif kind == "conv1d":
                add(name, output.shape[-1])
            else:  # a batch of one: every other position of the output is one product
                add(name, output.numel() // output.shape[-1])
        return record

    def attention_hook(prefix: str):
        def record(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output) -> None:
            query, key, value = (args[i] if len(args) > i else kwargs[k]
                                 for i, k in enumerate(("query", "key", "value")))
            for suffix, x in attention_inputs(module._qkv_same_embed_dim, query, key, value):
                add(prefix + suffix, x.numel() // x.shape[-1])
            add(prefix + "out_proj", query.numel() // query.shape[-1])
        return record

    def recurrent_hook(prefix: str):
        def record(module: nn.RNNBase, args: tuple, kwargs: dict, output) -> None:
            steps = recurrent_steps(args[0] if args else kwargs["input"])
            for suffix, _ in recurrent_matrices(module):
                add(prefix + suffix, steps)
        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):  # its forward never calls out_proj
            hooks.append(module.register_forward_hook(
                attention_hook(f"{name}." if name else ""), with_kwargs=True))
        elif isinstance(module, nn.RNNBase):  # its forward reads its weights itself
            hooks.append(module.register_forward_hook(
                recurrent_hook(f"{name}." if name else ""), with_kwargs=True))
        elif isinstance(module, MAPPABLE) or getattr(module, "is_crossbar", False):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()  # no BatchNorm statistics change, and a batch of one is fine
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return counts
