"""Derived random streams: one independent generator per (chip seed, layer, effect).

``stream(seed, layer, effect)`` seeds a ``torch.Generator`` with the first 8 bytes of
``BLAKE2b("seed/layer/effect")``, so

* the same chip seed gives the same chip (bit-identical, on any machine: programming-time
  draws are made on the CPU);
* no two (layer, effect) pairs share a stream (a hash, not ``seed * stride + index``, whose
  streams collide across layers);
* changing one effect's parameters leaves every other effect's draws unchanged (common random
  numbers): a sweep over programming spread keeps the stuck-at map, and vice versa.
"""

from __future__ import annotations

import hashlib

import torch

CELL_EFFECTS = ("programming", "write_verify", "faults", "drift", "detection")
"""Effects drawn per physical cell; a mapping style's auxiliary cell group draws them under
its own prefix (the offset reference column: ``reference_faults``, ...)."""
OTHER_EFFECTS = ("read", "adc_noise", "training")
_CELL_PREFIXES = {""}  # the weight cells; each style adds its own when it registers


def allow_cell_prefix(prefix: str) -> None:
    """Let a mapping style's cell group draw the :data:`CELL_EFFECTS` under ``prefix`` (called
    when a style registers; a prefix is lower-case letters, digits and ``_``, ending in ``_``)."""
    named = isinstance(prefix, str) and prefix.endswith("_") and prefix[0].isalpha() \
        and prefix.replace("_", "").isalnum() and prefix.islower()
    if prefix != "" and not named:
        raise ValueError(f"cell group prefix={prefix!r} is invalid; allowed: '' or lower-case "
                         "letters, digits and '_', starting with a letter and ending in '_'")
    _CELL_PREFIXES.add(prefix)


def effects() -> tuple[str, ...]:
    """Every effect name a stream may have (without the ``.tile<t>`` suffix)."""
    cell = tuple(p + e for p in sorted(_CELL_PREFIXES) for e in CELL_EFFECTS)
    return cell + OTHER_EFFECTS


def stream_seed(seed: int, layer: str, effect: str) -> int:
    """A 63-bit seed derived from the chip seed, the layer's name and the effect (an effect
    drawn per physical tile is named ``<effect>.tile<t>``)."""
    base, _, part = effect.partition(".")
    if base not in effects() or (part and not (part.startswith("tile") and part[4:].isdigit())):
        raise ValueError(f"effect={effect!r} is invalid; allowed: one of {effects()}, "
                         "optionally with a '.tile<index>' suffix")
    digest = hashlib.blake2b(f"{int(seed)}/{layer}/{effect}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def stream(seed: int, layer: str, effect: str, device: torch.device | str = "cpu"
           ) -> torch.Generator:
    """A generator on ``device`` seeded by :func:`stream_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, layer, effect))
    return gen
