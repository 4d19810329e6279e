"""Per-layer constraint configuration and layer selection by module name."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import Tensor, nn

from memxbar.admm.projections import keep_count, pair_levels, structured_mask


@dataclass(frozen=True)
class LayerConstraint:
    """Constraint set of the layers whose module name matches ``pattern``.

    ``pattern`` is an fnmatch pattern (``"features.*"``) or, with prefix ``re:``, a regular
    expression matched against the whole name. Pruning in the matrix view ``W[out, in*kh*kw]``:

    * ``row_ratio`` / ``row_keep``: crossbar rows (word lines = inputs) pruned fraction / count
      kept;
    * ``col_ratio`` / ``col_keep``: crossbar columns (bit lines = outputs, filters);
    * ``block_ratio`` / ``block_keep``: tile blocks of ``block = (rows, cols)`` cells.

    ``levels`` quantizes onto a differential pair of devices with that many uniform levels (int)
    or those conductance values (tuple); ``None`` means no quantization. ``per_column`` gives each
    output its own scale. ``prune_outputs`` must be set to prune columns of the model's final
    layer (the last Linear/Conv2d registered): its columns are the model's outputs (classes),
    and pruning one silently kills that output. (Block pruning is allowed there: it removes an
    output only if every block of its column goes.)
    """

    pattern: str = "*"
    row_ratio: float | None = None
    row_keep: int | None = None
    col_ratio: float | None = None
    col_keep: int | None = None
    block_ratio: float | None = None
    block_keep: int | None = None
    block: tuple[int, int] = (128, 128)
    levels: int | tuple[float, ...] | None = None
    per_column: bool = False
    prune_outputs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"pattern={self.pattern!r} is invalid; allowed: a non-empty layer "
                             "name pattern (string), e.g. 'features.0' or 'classifier.*'")
        if not isinstance(self.per_column, bool):
            raise ValueError(f"per_column={self.per_column!r} is invalid; allowed: true or "
                             "false")
        for key in ("row", "col", "block"):
            keep_count(10**9, getattr(self, f"{key}_ratio"), getattr(self, f"{key}_keep"), key)
        if len(self.block) != 2 or any(not isinstance(b, int) or b < 1 for b in self.block):
            raise ValueError(f"block={self.block!r} out of range: need two integers >= 1")
        if self.levels is not None:
            pair_levels(self.levels)
        if not isinstance(self.prune_outputs, bool):
            raise ValueError(f"prune_outputs={self.prune_outputs!r} is invalid; allowed: true "
                             "or false")

    @property
    def prunes_outputs(self) -> bool:
        """Whether whole columns (outputs) are pruned."""
        return self.col_ratio is not None or self.col_keep is not None

    @property
    def prunes(self) -> bool:
        """Whether any structured pruning is requested."""
        return any(getattr(self, f"{k}_{s}") is not None
                   for k in ("row", "col", "block") for s in ("ratio", "keep"))

    def keep_counts(self, shape: tuple[int, int]) -> tuple[int | None, int | None, int | None]:
        """Structures kept in a matrix view of ``shape = (out, in)``: ``(rows_keep, cols_keep,
        blocks_keep)`` (crossbar rows = inputs, crossbar columns = outputs, tile blocks); ``None``
        where that structure is not constrained."""
        out_n, in_n = shape
        br, bc = self.block
        n_blocks = -(-in_n // br) * -(-out_n // bc)
        return (_keep_or_none(in_n, self.row_ratio, self.row_keep, "row"),
                _keep_or_none(out_n, self.col_ratio, self.col_keep, "col"),
                _keep_or_none(n_blocks, self.block_ratio, self.block_keep, "block"))

    def prune_mask(self, W: Tensor, importance: Tensor | None = None) -> Tensor:
        """Mask of the projection of the matrix view ``W`` onto this layer's sparsity set, in the
        Euclidean norm or, with ``importance`` (``>= 0``, the shape of ``W``), in the weighted
        norm ``sum imp_i x_i^2`` (:func:`admm.projections.structured_mask`)."""
        rows_keep, cols_keep, blocks_keep = self.keep_counts(tuple(W.shape))
        return structured_mask(W, rows_keep=rows_keep, cols_keep=cols_keep,
                               blocks_keep=blocks_keep, block=self.block, weights=importance)


def _keep_or_none(n: int, ratio: float | None, count: int | None, key: str) -> int | None:
    return None if ratio is None and count is None else keep_count(n, ratio, count, key)


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def crossbar_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's Linear and Conv2d modules by name (the layers that map onto crossbars)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if not layers:
        raise ValueError("model has no Linear, Conv1d, Conv2d or attention projection to compress")
    return layers


def select_layers(model: nn.Module,
                  constraints: list[LayerConstraint] | tuple[LayerConstraint, ...],
                  ) -> dict[str, LayerConstraint]:
    """Assign each constraint to the Linear/Conv2d layers its pattern matches.

    Raises ``ValueError`` if a pattern matches no such layer or two patterns match one layer
    (no silent override).
    """
    layers = crossbar_layers(model)
    chosen: dict[str, LayerConstraint] = {}
    for c in constraints:
        names = [n for n in layers if _matches(c.pattern, n)]
        if not names:
            raise ValueError(f"pattern={c.pattern!r} matches no Linear/Conv2d layer; "
                             f"layers are {sorted(layers)}")
        for n in names:
            if n in chosen:
                raise ValueError(f"layer {n!r} is matched by both pattern="
                                 f"{chosen[n].pattern!r} and pattern={c.pattern!r}")
            chosen[n] = c
    final = next(reversed(layers), None)
    c = chosen.get(final)
    if c is not None and c.prunes_outputs and not c.prune_outputs:
        setting = f"col_ratio={c.col_ratio!r}" if c.col_ratio is not None \
            else f"col_keep={c.col_keep!r}"
        raise ValueError(
            f"pattern={c.pattern!r} with {setting} prunes the output columns of the model's "
            f"final layer {final!r} (each is a model output, e.g. a class); allowed: row "
            "pruning or quantization only on it, a pattern that leaves it out, or "
            "prune_outputs=True to prune outputs on purpose")
    return chosen


def weight_matrix(module: nn.Module) -> Tensor:
    """Matrix view ``W[out, in*kh*kw]`` of a Linear/Conv2d weight (a view, shares storage)."""
    return module.weight.reshape(module.weight.shape[0], -1)
