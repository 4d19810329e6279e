"""One figure style for every figure the toolkit writes (cost report, run reports, studies),
set to what journals accept: TrueType (Type 42) fonts embedded in PDFs, never Type 3 (IEEE and
ACM reject them), and PNGs at 300 dpi. :func:`apply` sets matplotlib's parameters once; the
writers save with :data:`PNG_DPI`."""

from __future__ import annotations

import logging

import matplotlib

PNG_DPI = 300
"""Resolution of every PNG (journals ask for at least 300 dpi for line art with text)."""

STYLE = {
    "pdf.fonttype": 42,   # TrueType, embedded: no Type 3 fonts in the PDFs
    "ps.fonttype": 42,
    "savefig.dpi": PNG_DPI,
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 8.0,
    "legend.fontsize": 7.0,
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
}
"""matplotlib parameters of the house style."""

WIDTHS_IN = {"column": 3.5, "page": 7.16}
"""Figure widths (inches) of an IEEE two-column paper: one column, and the full text width."""


def apply() -> None:
    """Set :data:`STYLE` in matplotlib's parameters (idempotent), and keep fontTools' font
    subsetting (which a Type 42 PDF runs) at warnings: its INFO records ("GSUB pruned", ...)
    were 1,265 of a run's log lines."""
    matplotlib.rcParams.update(STYLE)
    logging.getLogger("fontTools").setLevel(logging.WARNING)
