"""Energy and time to program a chip, from the pulse counts of its cells.

Every programming pulse is followed by a verify of ``n_verify`` averaged reads (the device's
``write_verify.verify_reads``, which also sets the simulated verify read's noise; a single-shot
cell gets one pulse and no verify). With ``p_c`` pulses on cell ``c``::

    E = sum_c p_c * (E_pulse + n_verify * E_read)
    t_serial = sum_c p_c * (t_pulse + n_verify * t_read)        (one cell at a time)
    t_tiles  = max_tile sum_{c in tile} p_c * (t_pulse + n_verify * t_read)
                                                                (one cell per tile at a time,
                                                                 tiles in parallel)

Defaults (docs/crossbar.md, "Programming cost"): NeuRRAM's write-verify (Wan et al., Nature
2022; the chip's control code ``weierwan/Neurram_48core``, ``wupdate_control.py``): 1 us pulses,
8 verify reads per pulse at 0.2 V. The energies are derived, cell only, as ``V^2 G t``: a 2 V
pulse on a 40 uS cell for 1 us is 160 pJ; a 0.2 V read of 100 ns (ISAAC's array read cycle)
is 0.16 pJ. Drivers, wires and sensing are not included: treat the energy as a lower bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._validate import check_float, check_int


@dataclass(frozen=True)
class PulseCost:
    """Per-pulse and per-read energy (pJ) and time (ns). The reads per verify are the device's
    (``WriteVerify.verify_reads``), not a setting of their own."""

    pulse_energy_pJ: float = 160.0
    pulse_time_ns: float = 1000.0
    read_energy_pJ: float = 0.16
    read_time_ns: float = 100.0

    def __post_init__(self) -> None:
        for key in ("pulse_energy_pJ", "pulse_time_ns", "read_energy_pJ", "read_time_ns"):
            check_float(key, getattr(self, key), 0.0, 1e9)

    def to_dict(self) -> dict:
        return asdict(self)


def programming_cost(stats: dict, verify_reads: int, cost: PulseCost | None = None) -> dict:
    """Energy (uJ) and time (s) to program a chip from :func:`crossbar.programming_stats`;
    ``verify_reads``: the reads averaged per verify after each pulse (the device's
    ``write_verify.verify_reads``; 0 for single-shot programming)."""
    check_int("verify_reads", verify_reads, 0, 1000)
    cost = cost or PulseCost()
    reads = verify_reads
    e_pulse = (cost.pulse_energy_pJ + reads * cost.read_energy_pJ) * 1e-12
    t_pulse = (cost.pulse_time_ns + reads * cost.read_time_ns) * 1e-9
    pulses = stats["pulses"]
    tile_pulses = stats.get("tile_pulses") or [pulses]
    return {"cells": stats["cells"], "pulses": pulses, "failed_cells": stats["failed"],
            "pulses_per_cell": pulses / max(stats["cells"], 1),
            "energy_uJ": pulses * e_pulse * 1e6, "time_serial_s": pulses * t_pulse,
            "time_tiles_parallel_s": max(tile_pulses) * t_pulse,
            "assumptions": cost.to_dict() | {"verify_reads_used": reads}}
