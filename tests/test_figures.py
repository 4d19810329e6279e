"""Figures a journal accepts (issue 25): every PDF embeds TrueType (Type 42) fonts, never
Type 3, and every PNG is 300 dpi, for the run reports (experiments.plots) and the cost report
(crossbar.report) alike."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from crossbar import CrossbarConfig, style
from crossbar.report import write_cost_report
from experiments.plots import plt, write_png


def _check(png: Path) -> None:
    pdf = png.with_suffix(".pdf").read_bytes()
    assert b"/Type3" not in pdf, png.with_suffix(".pdf")
    assert b"/TrueType" in pdf or b"/CIDFontType2" in pdf, png.with_suffix(".pdf")
    dpi = Image.open(png).info["dpi"]
    assert round(dpi[0]) == round(dpi[1]) == style.PNG_DPI, (png, dpi)


def test_run_figures_embed_truetype_fonts_at_300_dpi(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [2, 3], label="chips")
    ax.set_xlabel("programming variation (lognormal sigma of G)")
    ax.legend()
    write_png(tmp_path / "figure.png", fig)
    _check(tmp_path / "figure.png")


def test_cost_report_figures_too(tmp_path):
    import torch

    from crossbar import MappingPlan
    from crossbar.plan import plan_layer

    xbar = CrossbarConfig()
    plan = MappingPlan({"fc": plan_layer("fc", "linear", torch.ones(40, 30, dtype=torch.bool),
                                         xbar, mvms_per_sample=1)})
    write_cost_report(plan, xbar, tmp_path)
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs
    for png in pngs:
        _check(png)
