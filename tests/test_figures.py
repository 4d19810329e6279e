"""Figures a journal accepts (issue 25): every PDF embeds TrueType (Type 42) fonts, never
Type 3, and every PNG is 300 dpi, for the run reports (experiments.plots) and the cost report
(crossbar.report) alike."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from memxbar.crossbar import CrossbarConfig, style
from memxbar.crossbar.report import write_cost_report
from memxbar.experiments.plots import plt, write_png


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

    from memxbar.crossbar import MappingPlan
    from memxbar.crossbar.plan import plan_layer

    xbar = CrossbarConfig()
    plan = MappingPlan({"fc": plan_layer("fc", "linear", torch.ones(40, 30, dtype=torch.bool),
                                         xbar, mvms_per_sample=1)})
    write_cost_report(plan, xbar, tmp_path)
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs
    for png in pngs:
        _check(png)


# ------------------------------------------- stage_accuracy and admm_residuals (issue 25)
def _round(stage, r, layers, rho):
    return {"event": "admm_round", "stage": stage, "epoch": 0, "round": r, "task_loss": 1.0,
            "layers": {name: {"rho": rho, "primal": scale / r ** 2,
                              "dual": rho * scale / (10 * r), "near": 0.5}
                       for name, scale in layers.items()}}


def _compress_run(tmp_path, monkeypatch, dense_weights=True):
    """plots_compress on a small hand-made history (two ADMM stages, a layer that only the
    second one constrains, listed first there), with the figures kept open for inspection."""
    import torch

    from memxbar.experiments import reports

    history = [{"event": "eval", "stage": "dense", "metric": 98.0}]
    history += [_round("prune", r, {"conv": 2.0, "fc1": 4.0}, 0.01 * 1.5 ** r)
                for r in range(1, 6)]
    history += [{"event": "eval", "stage": "prune", "metric": 45.0},
                {"event": "eval", "stage": "prune_retrain", "metric": 97.0}]
    history += [_round("quant", r, {"fc2": 1.0, "conv": 0.5, "fc1": 0.8}, 0.01 * 1.5 ** r)
                for r in range(1, 6)]
    history += [{"event": "eval", "stage": "quant", "metric": 90.0},
                {"event": "eval", "stage": "quant_retrain", "metric": 96.5}]
    chips = [95.1, 94.0, 96.2, 95.5, 93.8]
    metrics = {"dense_accuracy": 98.0, "compressed_accuracy": 96.5,
               "crossbar_ideal_accuracy": 96.0, "crossbar_accuracies": chips,
               "crossbar_accuracy_mean": sum(chips) / len(chips), "crossbar_accuracy_std": 1.0,
               "settings_caption": "Run settings: test run; 5 programmed chips."}
    norms = {"conv": 4.0, "fc1": 8.0, "fc2": 2.0}
    if dense_weights:   # weights whose Frobenius norms are ``norms``
        torch.save({"model": {f"{n}.weight": torch.full((4, 4), v / 4) for n, v in
                              norms.items()}}, tmp_path / "dense.pt")
    figures = {}
    real = reports.write_png

    def keep(path, fig):
        figures[path.name] = fig
        real(path, fig)

    monkeypatch.setattr(reports, "write_png", keep)
    plots = reports.plots_compress(metrics, history, tmp_path)
    return metrics, history, norms, plots, figures


def test_stage_accuracy_is_a_dot_plot_with_chips_ci_references_and_caption(
        tmp_path, monkeypatch):
    metrics, history, _, plots, figures = _compress_run(tmp_path, monkeypatch)
    assert "stage_accuracy.png" in plots
    fig = figures["stage_accuracy.png"]
    ax = fig.axes[0]
    for line in ax.get_lines():   # markers only: no line joins the categorical stages
        ys = set(line.get_ydata())
        assert line.get_linestyle() == "None" or len(ys) == 1, line.get_label()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == 5 + 2 and ticks[0].startswith("dense")
    assert "after hard projection\n(before retraining)" in ticks[1]
    assert "after hard projection\n(before retraining)" in ticks[3]
    assert ticks[-2].startswith("crossbar,") and "5 programmed" in ticks[-1]
    chips = [line for line in ax.get_lines() if line.get_label() == "one programmed chip"]
    assert len(chips) == 1 and list(chips[0].get_ydata()) == metrics["crossbar_accuracies"]
    assert len(set(chips[0].get_xdata())) == 5   # jittered: every chip visible
    labels = ax.get_legend_handles_labels()[1]
    assert "dense (software)" in labels and "compressed (software)" in labels
    assert any(label.startswith("chips: mean") and "95 % CI" in label for label in labels)
    # every point inside the axis with a margin, but not all of 0-100 %
    low, high = ax.get_ylim()
    assert low < 45.0 and high > 98.0 and (low > 0 or high < 100)
    assert any("Run settings" in t.get_text() for t in fig.texts)
    _check(tmp_path / "stage_accuracy.png")


def test_admm_residuals_relative_one_colour_per_layer_shared_legend(tmp_path, monkeypatch):
    _, history, norms, plots, figures = _compress_run(tmp_path, monkeypatch)
    assert "admm_residuals.png" in plots
    fig = figures["admm_residuals.png"]
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() in norms:
                colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == set(norms)   # every layer drawn
    assert all(len(c) == 1 for c in colours.values()), colours   # same colour in every panel
    assert len({c.pop() for c in colours.values()}) == len(norms)   # and one per layer
    (legend,) = fig.legends   # one legend for the figure, listing every layer and rho
    texts = [t.get_text() for t in legend.get_texts()]
    assert set(norms) <= set(texts)
    assert any("rho" in t for t in texts)
    ylabels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert any("||W - Z||_F / ||W_dense||_F" in y for y in ylabels)
    assert any("||Z - Z_prev||_F / ||W_dense||_F" in y for y in ylabels)
    assert any("rho" in y for y in ylabels)
    rounds = [h for h in history if h["event"] == "admm_round" and h["stage"] == "quant"]
    (fc2,) = [line for line in fig.axes[1].get_lines() if line.get_label() == "fc2"]
    assert list(fc2.get_ydata()) == [h["layers"]["fc2"]["primal"] / norms["fc2"]
                                     for h in rounds]   # relative, not absolute
    (fc2,) = [line for line in fig.axes[3].get_lines() if line.get_label() == "fc2"]
    assert list(fc2.get_ydata()) == [h["layers"]["fc2"]["dual"]
                                     / (h["layers"]["fc2"]["rho"] * norms["fc2"])
                                     for h in rounds]   # dual / (rho ||W_dense||)
    assert fig.axes[0].get_yscale() == "log"   # the residuals span decades
    rho = [line for ax in fig.axes for line in ax.get_lines() if "rho" in line.get_label()]
    assert rho and all(line.get_label() == "penalty rho (all layers)" for line in rho)
    _check(tmp_path / "admm_residuals.png")


def test_admm_residuals_say_absolute_without_dense_weights(tmp_path, monkeypatch):
    *_, figures = _compress_run(tmp_path, monkeypatch, dense_weights=False)
    ylabels = [ax.get_ylabel() for ax in figures["admm_residuals.png"].axes]
    assert any("||W - Z||_F (absolute)" in y for y in ylabels)


def test_replot_options_fit_a_column_and_write_the_caption_beside(tmp_path, monkeypatch):
    """``--width column``: long titles and labels are re-wrapped so that nothing sticks out of
    3.5 in (bbox_inches='tight' would widen the PNG); ``--no-caption``: the caption is
    written as text beside the figure, not drawn; ``--format svg``: an SVG besides the PNG;
    three panels at a column's width are named in a warning."""
    import logging

    from memxbar.experiments import plots
    from memxbar.experiments.plots import FigureOptions, caption

    monkeypatch.setattr(plots, "OPTIONS", FigureOptions(width_in=3.5, vector=("pdf", "svg"),
                                                        dpi=300, caption=False))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot([0, 1], [2, 3])
    ax.set_title("Accuracy of every programmed chip against the programming variation of "
                 "the device, with the chips as dots")
    ax.set_ylabel("drop below the ideal chip (98.62 %), points, mean over 25 chips")
    caption(fig, "Held fixed unless swept: a long caption. " * 4)
    write_png(tmp_path / "f.png", fig)
    assert Image.open(tmp_path / "f.png").size[0] <= 3.5 * 300 * 1.03
    assert (tmp_path / "f.svg").is_file() and b"/Type3" not in (tmp_path / "f.pdf").read_bytes()
    assert (tmp_path / "f.caption.txt").read_text().startswith("Held fixed unless swept")
    # with the caption drawn, it is re-wrapped to the new width too
    monkeypatch.setattr(plots, "OPTIONS", FigureOptions(width_in=3.5))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    caption(fig, "Held fixed unless swept: a long caption. " * 6)
    write_png(tmp_path / "g.png", fig)
    assert Image.open(tmp_path / "g.png").size[0] <= 3.5 * 300 * 1.03
    assert not (tmp_path / "g.caption.txt").exists()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    plots.log.addHandler(handler)
    try:
        write_png(tmp_path / "h.png", fig)
    finally:
        plots.log.removeHandler(handler)
    assert any("3 panels side by side" in r.getMessage() for r in records)


def test_tile_map_draws_what_sits_on_each_tile(tmp_path, monkeypatch):
    """Issue 25: the tile map shows each physical tile (word lines x bit lines) with the cells
    the plan programs, packed from the first line, the offset mapping's reference column and
    the unused lines; the programmed cells of every drawn tile add up to the plan's devices;
    "1 tile", not "1 tiles"."""
    import torch

    from memxbar.crossbar import MappingPlan
    from memxbar.crossbar.plan import plan_layer
    from memxbar.experiments import tile_map as reports

    live = torch.zeros(40, 70, dtype=torch.bool)
    live[:25, :50] = True  # 25 outputs x 50 inputs live
    for mapping, per_array in (("differential", 1), ("offset", 1)):
        xbar = CrossbarConfig(tile_rows=32, tile_cols=32, mapping=mapping)
        big = plan_layer("fc", "linear", live, xbar)
        small = plan_layer("head", "linear", torch.ones(3, 8, dtype=torch.bool), xbar)
        plan = MappingPlan({"fc": big, "head": small})
        for layer in plan:
            cells = sum(float((reports.tile_occupancy(layer, t) == 1.0).sum()) for t in
                        layer.tiles)
            refs = sum(float((reports.tile_occupancy(layer, t) == 0.5).sum()) for t in
                       layer.tiles)
            assert cells * layer.style.cells_per_weight == layer.n_devices - refs
            assert refs == (sum(t.n_rows for t in layer.tiles) if mapping == "offset" else 0)
            for t in layer.tiles:  # packed from the first word line and bit line
                grid = reports.tile_occupancy(layer, t)
                assert grid[:t.n_rows, :t.n_cols * per_array].min() == 1.0
                assert grid[t.n_rows:].max(initial=0.0) == 0.0
        titles: list[str] = []
        monkeypatch.setattr(reports, "write_png", lambda path, fig, titles=titles: titles.extend(
            a.get_title() for a in fig.axes))
        reports.plot_tile_map(plan, tmp_path / "tile_map.png")
        assert titles[0].startswith(f"fc: {big.n_tiles} tiles of 32 x 32"), titles
        assert titles[1].startswith("head: 1 tile of 32 x 32;"), titles
        assert ("G- array alike" in titles[0]) == (mapping == "differential")
        assert big.n_tiles > 1
