"""The change of structure of ``compressor=decompose`` (docs/decompose.md), as the run layer
needs it before any work and before a checkpoint is read: which convolutions become basis +
coefficient convolutions with how many basis kernels (:func:`decomposed_ranks`), the ``admm``
constraints on the new layers (:func:`decomposed_constraints`), the checks of the settings on
the model (:func:`check_decompose`) and the model of the compression checkpoints
(:func:`compressed_structure`). No adapter is imported here, so the checkpoint checks can
read it."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

from torch import nn

from memxbar.admm import LayerConstraint, select_layers
from memxbar.admm.decompose import decomposable, decompose_model
from memxbar.crossbar.convert import match_layers
from memxbar.crossbar.plan import crossbar_layers, matches
from memxbar.experiments.checks import fail
from memxbar.experiments.compressors.settings import DecomposeSettings

__all__ = ["check_decompose", "compressed_structure", "decomposed_constraints",
           "decomposed_mapped", "decomposed_ranks", "decompose_block", "mapped_names"]


def decompose_block(compressor: str, s: DecomposeSettings) -> DecomposeSettings | None:
    """The ``decompose`` block when ``compressor`` is ``decompose``, else None."""
    return s if compressor == "decompose" else None


def mapped_names(model: nn.Module, digital: Sequence[str]) -> list[str]:
    """The crossbar layers of ``model`` not kept digital by the ``layers.digital`` patterns."""
    names = [n for n, _ in crossbar_layers(model)]
    kept = match_layers("layers.digital", digital, names) if digital else set()
    return [n for n in names if n not in kept]


def decomposed_ranks(model: nn.Module, s: DecomposeSettings, mapped: Sequence[str]
                     ) -> dict[str, int]:
    """Layer name -> ``M`` for every mapped, decomposable ``Conv2d``
    (``admm.decompose.decomposable``) that a ``decompose.layers`` pattern matches:
    ``per_layer``'s ``M`` or ``basis``. Fails naming the key when a ``per_layer`` name is not
    such a layer, no layer matches, or an ``M`` exceeds the layer's ``kh*kw``."""
    modules = dict(model.named_modules())
    candidates = [n for n in decomposable(model) if n in mapped]
    chosen = [n for n in candidates if any(matches(p, n) for p in s.layers)]
    if not chosen:
        fail("decompose.layers", s.layers, "patterns matching at least one mapped Conv2d with "
             f"groups 1 and a kernel larger than 1x1: {candidates or 'the model has none'}")
    for name, m in s.per_layer.items():
        if name not in chosen:
            fail(f"decompose.per_layer.{name}", m, f"names of decomposed layers: {chosen}")
    ranks = {n: s.per_layer.get(n, s.basis) for n in chosen}
    for name, m in ranks.items():
        k2 = math.prod(modules[name].kernel_size)
        if m > k2:
            key = f"decompose.per_layer.{name}" if name in s.per_layer else "decompose.basis"
            fail(key, m, f"an integer in [1, {k2}] (kh*kw of layer {name!r})")
    return ranks


def _exact(name: str) -> str:
    return "re:" + re.escape(name)


def decomposed_constraints(model: nn.Module, constraints: Sequence[LayerConstraint],
                           ranks: Mapping[str, int], s: DecomposeSettings
                           ) -> list[LayerConstraint]:
    """The ``admm`` constraints of the undecomposed ``model`` moved onto the decomposed one,
    one per layer by its exact name: a decomposed layer ``L``'s constraint goes to
    ``L.coeff`` (the crossbar word lines pruned are now its ``C*M`` rows; ratios carry over,
    ``row_keep`` / ``block_keep`` counts of the ``C*kh*kw`` rows do not and are refused), with
    ``decompose.coeff_levels`` when set; ``L.basis`` is quantized to
    ``decompose.basis_levels`` and never pruned (dense, reused by every output)."""
    out = []
    for name, c in select_layers(model, list(constraints)).items():
        if name not in ranks:
            out.append(dataclasses.replace(c, pattern=_exact(name)))
            continue
        for key in ("row_keep", "block_keep"):
            if getattr(c, key) is not None:
                fail(f"admm constraint {c.pattern!r}: {key}", getattr(c, key),
                     f"a ratio (row_ratio, block_ratio) for layer {name!r}, which "
                     "compressor=decompose turns into C*M coefficient rows (a count of its "
                     "C*kh*kw rows does not carry over)")
        levels = c.levels if s.coeff_levels is None else s.coeff_levels
        out.append(dataclasses.replace(c, pattern=_exact(f"{name}.coeff"), levels=levels))
    for name in ranks:
        if s.basis_levels is not None:
            out.append(LayerConstraint(pattern=_exact(f"{name}.basis"), levels=s.basis_levels))
    return out


def decomposed_mapped(mapped: Sequence[str], ranks: Mapping[str, int]) -> list[str]:
    """The mapped layer names after the decomposition (``L`` -> ``L.basis``, ``L.coeff``)."""
    return [x for n in mapped for x in ((f"{n}.basis", f"{n}.coeff") if n in ranks else (n,))]


def check_decompose(model: nn.Module, s: DecomposeSettings | None, digital: Sequence[str],
                    constraints: Sequence[LayerConstraint], allocation: Mapping | None,
                    devices: Mapping[str, object]) -> None:
    """The ``decompose`` block ``s`` (None: another compressor, nothing to check) on ``model``
    (the undecomposed one, any device), before any work: the ranks and the ``admm``
    ``constraints`` on the new layers build (``digital``: the ``layers.digital`` patterns),
    no budgeted ``allocation`` (it prices the undecomposed layers), and no ``layers.devices``
    pattern names a decomposed layer (its name is gone after the decomposition)."""
    if s is None:
        return
    if allocation is not None:
        fail("allocation", allocation, "null with compressor=decompose (the allocation prices "
             "the undecomposed layers; set the admm constraints instead)")
    ranks = decomposed_ranks(model, s, mapped_names(model, digital))
    decomposed_constraints(model, constraints, ranks, s)
    for pattern, device in devices.items():
        hit = [n for n in ranks if matches(pattern, n)]
        if hit:
            fail(f"layers.devices.{pattern}", device, f"patterns of layers kept whole; "
                 f"{hit[0]!r} becomes {hit[0]}.basis and {hit[0]}.coeff with "
                 "compressor=decompose")


def compressed_structure(model: nn.Module, s: DecomposeSettings | None, digital: Sequence[str]
                         ) -> nn.Module:
    """The model the compression checkpoints hold: ``model`` itself, or with the ``decompose``
    block ``s`` (``compressor=decompose``) a copy with its layers decomposed (shapes only:
    ``model`` may be on the ``meta`` device; ``digital``: the ``layers.digital`` patterns)."""
    if s is None:
        return model
    out = copy.deepcopy(model)
    decompose_model(out, decomposed_ranks(out, s, mapped_names(out, digital)), fill=False)
    return out
