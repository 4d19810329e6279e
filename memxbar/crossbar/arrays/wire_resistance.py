"""Array with wire resistance (IR drop), solved exactly as a linear resistive circuit.

Word-line segment resistance ``r_row_ohm`` and bit-line segment resistance ``r_col_ohm`` per
cell, driver (DAC) output resistance ``r_driver_ohm`` at the start of each word line, sense
(ADC input) resistance ``r_sense_ohm`` at the end of each bit line into a virtual ground;
``placement`` puts a partly used tile's live lines ``near`` the drivers and sense amplifiers
(default) or ``far`` from them;
``read_voltage_V`` is the word-line voltage of a full-scale input (it scales the physical
currents :func:`column_currents` reports, not the weights: the circuit is linear). Circuit,
method and assumptions: :mod:`.solve` and docs/crossbar.md ("Wire resistance").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_float, fail
from .base import ArrayModel, register
from .solve import solve_array, solve_pair

MIN_RESISTANCE_OHM = 1e-6
"""The smallest non-zero resistance accepted (a micro-ohm, far below any wire segment; smaller
values make the nodal conductances overflow the Cholesky solve)."""


PLACEMENTS = ("near", "far")
"""Where a partly used tile's live lines sit (:meth:`WireResistanceArray.effective_in_tile`):
``near`` the drivers and sense amplifiers (a mapper's best choice; the default) or ``far``
from them (the worst case, a bound)."""


@register
@dataclass(frozen=True)
class WireResistanceArray(ArrayModel):
    name = "wire_resistance"
    r_row_ohm: float = 1.9
    r_col_ohm: float = 5.6
    r_driver_ohm: float = 0.0
    r_sense_ohm: float = 0.0
    read_voltage_V: float = 0.2
    placement: str = "near"

    def __post_init__(self) -> None:
        for key in ("r_row_ohm", "r_col_ohm", "r_driver_ohm", "r_sense_ohm"):
            value = getattr(self, key)
            check_float(f"array.{key}", value, 0.0, 1e6)
            if 0.0 < value < MIN_RESISTANCE_OHM:  # 1/r would overflow the network solve
                fail(f"array.{key}", value, f"0 (no resistance) or a number in "
                     f"[{MIN_RESISTANCE_OHM:g}, 1e6] ohm")
        check_float("array.read_voltage_V", self.read_voltage_V, 0.0, 10.0, low_open=True)
        if self.placement not in PLACEMENTS:
            fail("array.placement", self.placement, "one of " + ", ".join(
                repr(p) for p in PLACEMENTS))

    @property
    def ideal(self) -> bool:
        return self.r_row_ohm == self.r_col_ohm == self.r_driver_ohm == self.r_sense_ohm == 0

    def effective(self, g_S: torch.Tensor) -> torch.Tensor:
        return solve_array(g_S, self.r_row_ohm, self.r_col_ohm, self.r_driver_ohm,
                           self.r_sense_ohm)

    def effective_in_tile(self, g_S: torch.Tensor, tile_rows: int, tile_cols: int
                          ) -> torch.Tensor:
        """The live block ``g_S [R, C]`` at its place in the physical ``tile_rows x
        tile_cols`` array. ``near``: live word lines next to the sense amplifiers and live bit
        lines next to the drivers, so the unused lines' segments carry no current and the
        block solves as it is. ``far``: the opposite corner, so every live word line's current
        first crosses ``tile_cols - C`` unused segments and every bit line's
        ``tile_rows - R``: cells of zero conductance branch nothing off them, so they are exact
        series resistances, added to the driver and the sense resistance."""
        if self.placement == "near":
            return self.effective(g_S)
        rows, cols = g_S.shape
        extra_drive = max(tile_cols - cols, 0) * self.r_row_ohm
        extra_sense = max(tile_rows - rows, 0) * self.r_col_ohm
        return solve_array(g_S, self.r_row_ohm, self.r_col_ohm, self.r_driver_ohm + extra_drive,
                           self.r_sense_ohm + extra_sense)

    def effective_pair_in_tile(self, g_a_S: torch.Tensor, g_b_S: torch.Tensor, tile_rows: int,
                               tile_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The G+ and G- arrays of a pair with ONE driver per word line, as the cost model
        prices it (one DAC per word line): the driver's output node feeds both arrays'
        word lines (:func:`~crossbar.arrays.solve.solve_pair`); ``far`` puts each array's live
        block ``tile_cols - C`` unused segments from that node (and ``tile_rows - R`` from its
        sense amplifiers). With an ideal driver (0 ohm) the arrays do not interact."""
        rows, cols = g_a_S.shape
        lead = sense = 0.0
        if self.placement == "far":
            lead = max(tile_cols - cols, 0) * self.r_row_ohm
            sense = max(tile_rows - rows, 0) * self.r_col_ohm
        return solve_pair(g_a_S, g_b_S, self.r_row_ohm, self.r_col_ohm, self.r_driver_ohm,
                          self.r_sense_ohm + sense, lead)

    def column_currents(self, g_S: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Physical column currents (A) for inputs in ``[-1, 1]`` of full scale ``[N, R]``:
        ``I = M (read_voltage_V * inputs)``."""
        m = self.effective(g_S)
        return (self.read_voltage_V * inputs.to(m.dtype)) @ m.T
