"""experiments.plots: axis labels with meaning and unit, tick labels, log and integer axes."""

import matplotlib.pyplot as plt
import pytest

from memxbar.experiments.plots import (
    _tick,
    axis_label,
    ci95,
    log_axis,
    pareto_front,
    set_value_axis,
)


def test_axis_labels_name_the_quantity_and_its_unit():
    assert axis_label("adc_bits") == "ADC resolution (bits)"
    assert axis_label("override.crossbar.adc_bits") == "ADC resolution (bits)"
    assert axis_label("device.g_max_uS") == "maximum conductance (uS)"
    assert axis_label("array.r_sense_ohm") == "array: r sense (ohm)"  # unknown: unit spelled
    assert axis_label("robustness.placement") == "robustness: placement"
    assert axis_label("energy_nJ") == "energy per inference (nJ)"


def test_tick_labels_and_log_axes():
    assert _tick("t_inference_s", 86400) == "1 d" and _tick("t_inference_s", 1e6) == "11.6 d"
    assert _tick("t_inference_s", 3.2e7) == "1.01 y" and _tick("t_inference_s", 30) == "30 s"
    assert _tick("adc_bits", None) == "ideal" and _tick("drift_compensation", True) == "on"
    assert log_axis("t_inference_s", [0, 60, 3600]) and log_axis("r_wire_ohm", [0.1, 1])
    assert log_axis("g_max_uS", [1, 1000]) and not log_axis("g_max_uS", [10, 100])
    assert not log_axis("adc_bits", [4, 6, 8]) and not log_axis("t_inference_s", [0])


def test_value_axes_integer_ticks_and_categories():
    fig, ax = plt.subplots()
    assert set_value_axis(ax, "adc_bits", [4, 6, 8]) == [4.0, 6.0, 8.0]
    assert list(ax.get_xticks()) == [4, 6, 8]  # a tick at each value
    set_value_axis(ax, "tile_rows", list(range(16, 160, 16)))  # 9 values: integer locator
    ax.set_xlim(15.7, 144.3)
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())  # no fractional rows
    fig2, ax2 = plt.subplots()
    set_value_axis(ax2, "n_levels", [4, 8, 16, 32])
    assert ax2.get_xscale() == "log" and ax2.xaxis.get_transform().base == 2
    plt.close(fig2)
    assert set_value_axis(ax, "adc_bits", [4, None], axis="y") == [0.0, 1.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["4", "ideal"]
    set_value_axis(ax, "t_inference_s", [0, 60, 86400])
    assert ax.get_xscale() == "symlog"
    plt.close(fig)


def test_ci95_and_pareto_front_against_closed_forms():
    assert ci95([1.0]) == 0.0
    # n = 4, s = 1: t(0.975, 3) = 3.18245 -> 3.18245 / 2
    assert ci95([-1.0, -1.0, 1.0, 1.0]) == pytest.approx(3.18245 * (4 / 3) ** 0.5 / 2, rel=1e-5)
    assert pareto_front([(1, 90), (2, 89), (3, 95), (3, 94), (0.5, 80)]) == [4, 0, 2]


@pytest.mark.parametrize("values, joined", [([False, True], False), ([None, 0.1, 0.2], False),
                                            ([0.0, 0.1, 0.2], True)])
def test_on_off_settings_are_points_not_lines_with_bands(monkeypatch, tmp_path, values, joined):
    """Issue 25: a binary or named setting (placement on/off, ideal) is drawn as points with
    error bars per model, side by side; only numeric settings get a line and a CI band."""
    from matplotlib.collections import PolyCollection

    from memxbar.experiments import plots

    figs = []
    monkeypatch.setattr(plots, "write_png", lambda path, fig: figs.append(fig))
    rows = [{"value": v, "model": m, "mean": 95.0 + i, "ci95": 0.5}
            for m in ("dense", "compressed") for i, v in enumerate(values)]
    plots.plot_sweep(rows, "robustness.placement", tmp_path / "s.png")
    ax = figs[0].axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    joined_lines = [ln for ln in ax.get_lines()
                    if len(ln.get_xdata()) > 1 and ln.get_linestyle() not in ("None", "none")]
    assert bool(bands) == joined and bool(joined_lines) == joined
    if not joined:  # the two models side by side at each value, not on top of each other
        xs = [tuple(ln.get_xdata()) for ln in ax.get_lines() if ln.get_marker() == "o"]
        assert len(set(xs)) == 2, xs
    plt.close(figs[0])


@pytest.mark.parametrize("collapsed", [74.8, None])
def test_a_collapsed_search_point_does_not_squash_the_budget_scale(monkeypatch, tmp_path,
                                                                   collapsed):
    """The budget-search figure stays on the budget's scale: a point far below it is a marker
    on the lower edge labelled with its step and accuracy, not a point that flattens the rest;
    without one, every point is drawn on scale."""
    from memxbar.experiments import plots

    figs = []
    monkeypatch.setattr(plots, "write_png", lambda path, fig: figs.append(fig))
    points = [{"step": k, "budget": b, "compression_ratio": b, "energy_nJ": 100 / b,
               "chip_mean": m, "chip_ci95": 0.1, "compressed_accuracy": m + 0.3, "chips": 5}
              for k, b, m in ((1, 25.0, 98.5), (3, 31.0, 98.2), (4, 57.0, 97.4))]
    if collapsed is not None:
        points.append({**points[0], "step": 2, "budget": 128.0, "compression_ratio": 128.0,
                       "energy_nJ": 0.8, "chip_mean": collapsed, "compressed_accuracy": 78.0})
    plots.plot_budget_search(points, 99.25, 1.0, 31.0, tmp_path / "b.png")
    for ax in figs[0].axes[:2]:
        bottom, top = ax.get_ylim()
        assert 94.0 <= bottom <= 97.4 and 99.25 < top <= 100.0
        labels = [t.get_text() for t in ax.texts]
        assert any("2: 74.8 %" in t and "off scale" in t for t in labels) == bool(collapsed)
    plt.close(figs[0])
