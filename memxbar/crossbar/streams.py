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

EFFECTS = ("programming", "write_verify", "faults", "drift", "reference_programming",
           "reference_write_verify", "reference_faults", "reference_drift", "read",
           "adc_noise", "detection", "reference_detection", "training")


def stream_seed(seed: int, layer: str, effect: str) -> int:
    """A 63-bit seed derived from the chip seed, the layer's name and the effect (an effect
    drawn per physical tile is named ``<effect>.tile<t>``)."""
    base, _, part = effect.partition(".")
    if base not in EFFECTS or (part and not (part.startswith("tile") and part[4:].isdigit())):
        raise ValueError(f"effect={effect!r} is invalid; allowed: one of {EFFECTS}, "
                         "optionally with a '.tile<index>' suffix")
    digest = hashlib.blake2b(f"{int(seed)}/{layer}/{effect}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def stream(seed: int, layer: str, effect: str, device: torch.device | str = "cpu"
           ) -> torch.Generator:
    """A generator on ``device`` seeded by :func:`stream_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, layer, effect))
    return gen
