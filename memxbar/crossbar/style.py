"""One figure style for every figure the toolkit writes (cost report, run reports, studies),
set to what journals accept: TrueType (Type 42) fonts embedded in PDFs, never Type 3 (IEEE and
ACM reject them), and PNGs at 300 dpi. :func:`apply` sets matplotlib's parameters once; the
writers save with :data:`PNG_DPI`."""

from __future__ import annotations

import logging
import textwrap
import warnings

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


def _wrap_to(label, limit_px: float, renderer) -> None:
    """Re-wrap a title or axis label whose drawn extent exceeds ``limit_px``."""
    text = label.get_text().replace("\n", " ")
    extent = label.get_window_extent(renderer)
    size = max(extent.width, extent.height)  # a y label is drawn vertically
    if text and size > limit_px:
        label.set_text(textwrap.fill(text, max(10, int(len(text) * limit_px / size))))


def fit_width(fig, width_in: float) -> None:
    """Scale ``fig`` to ``width_in`` inches (e.g. :data:`WIDTHS_IN`; the font sizes kept, the
    height scaled alike but at least 0.8 of the width and at most the figure's own), re-wrap
    the titles and labels that no longer fit and lay it out again."""
    w, h = fig.get_size_inches()
    # the fonts keep their size, so a narrower figure needs relatively more height
    fig.set_size_inches(width_in, min(h, max(h * width_in / w, 0.8 * width_in)))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    if fig._suptitle is not None:
        _wrap_to(fig._suptitle, 0.95 * fig.bbox.width, renderer)
    for ax in fig.axes:
        _wrap_to(ax.title, 1.1 * ax.bbox.width, renderer)
        _wrap_to(ax.xaxis.label, ax.bbox.width, renderer)
        _wrap_to(ax.yaxis.label, ax.bbox.height, renderer)
    if fig.get_layout_engine() is None:
        with warnings.catch_warnings():  # a heat map's colour bar: laid out well enough
            warnings.filterwarnings("ignore", "This figure includes Axes that are not")
            fig.tight_layout()
