"""Redraw a finished device study's figures and study.md from its files, without re-running
any chip (e.g. after a change of the plotting code, or to restyle figures for a paper).

    python -m memxbar.experiments.replot outputs/device_study/<date>/<time>
    python -m memxbar.experiments.replot <dir> --width column --format pdf svg --no-caption

Reads ``config.yaml`` (the held-fixed caption is derived from it again), ``metrics.json`` and
``study_points.json`` (every chip's accuracy per point); rewrites the PNG/PDF figures,
``metrics.json``'s caption and ``study.md``. The three files are checked against each other
before anything is written: every number metrics.json shows is recomputed from the chips'
accuracies in study_points.json, and both must come from the study config.yaml describes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from memxbar.crossbar import style
from memxbar.crossbar.io import atomic_write_text, one_line, run_cli
from memxbar.experiments import plots
from memxbar.experiments.config import load_study_config
from memxbar.experiments.lifetime import lifetime_markdown, plot_lifetime
from memxbar.experiments.plots import VECTOR_FORMATS, FigureOptions, ci95
from memxbar.experiments.reports import held_fixed, plot_study, study_markdown, summary_row
from memxbar.experiments.runtime import write_json
from memxbar.experiments.study import study_fingerprint, yield_figures

ALLOWED = "allowed: the file the study wrote"
SUMMARY = ("mean", "std", "ci95", "min", "max", "chips")
"""The fields of a study row recomputed from its point's chip accuracies."""


def replot_study(run_dir: str | Path) -> list[str]:
    """Redraw the study in ``run_dir``; returns the figure names."""
    if not str(run_dir):
        raise ValueError("run_dir='' is invalid; allowed: the folder of a finished python -m "
                         "memxbar.experiments.device_study run")
    run_dir = Path(run_dir)
    needed = ("config.yaml", "metrics.json", "study_points.json")
    allowed = "allowed: the folder of a finished python -m memxbar.experiments.device_study run"
    if run_dir.exists() and not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is a file; {allowed} (it holds "
                                f"{', '.join(needed)})")
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        where = "" if run_dir.exists() else " (there is no such folder)"
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}{where}; {allowed}")
    exp = _config(run_dir / "config.yaml")
    metrics = _json(run_dir / "metrics.json")
    points = check_study(run_dir, exp, metrics, _json(run_dir / "study_points.json"))
    chip_rows = []
    for row in metrics["study"]:  # only this study's points (a resumed study's file may hold
        accs = points[_key("sweep", row["setting"], row["value"], row["model"])]  # others)
        chip_rows += [{"setting": row["setting"], "value": row["value"], "model": row["model"],
                       "chip": i, "accuracy": a} for i, a in enumerate(accs)]
    same = f"software, same {metrics['crossbar_test_samples']} test samples"
    reference: dict = {f"compressed, {same}": metrics["compressed_accuracy_chip_samples"],
                       f"dense, {same}": metrics["dense_accuracy_chip_samples"]}
    reference.update({k: tuple(v) for k, v in metrics["layer_sensitivity_reference"].items()})
    metrics["held_fixed"] = held_fixed(exp, metrics["crossbar_test_samples"], metrics["chips"])
    plots = plot_study(metrics["study"], chip_rows, metrics["grids"],
                       metrics["layer_sensitivity"], reference, metrics["held_fixed"], run_dir,
                       metrics.get("layer_sensitivity_severity"))
    spec, yields, names = yield_figures(exp.eval, chip_rows, reference[f"dense, {same}"],
                                        metrics["held_fixed"], run_dir)
    plots += names
    metrics["yield_spec"], metrics["study_yield"] = spec, yields
    lifetime_md: list[str] = []
    if metrics.get("lifetime"):
        check_lifetime(run_dir, metrics["lifetime"])
        for name, m in metrics["lifetime"].items():
            plot_lifetime(m, name, run_dir / f"lifetime_{name}.png", metrics["held_fixed"])
            plots.append(f"lifetime_{name}.png")
        lifetime_md = lifetime_markdown(metrics["lifetime"])
    write_json(run_dir / "metrics.json", metrics)
    md = study_markdown(metrics, plots)
    if lifetime_md:
        md = md.rstrip("\n") + "\n\n" + "\n".join(lifetime_md) + "\n"
    atomic_write_text(run_dir / "study.md", md)
    return plots


def check_lifetime(run_dir: Path, summary: Mapping) -> None:
    """metrics.json's lifetime means are those of lifetime.json's chips (every model, policy
    and time), before anything is redrawn."""
    path = run_dir / "lifetime.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; metrics.json holds a lifetime study; "
                                f"{ALLOWED}")
    full = _json(path)
    for name, m in summary.items():
        for policy, d in m["policies"].items():
            try:
                chips = full[name]["policies"][policy]["chips"]
                for k, point in enumerate(d["series"]):
                    accs = [c["accuracies"][k] for c in chips]
                    if not _close(point["mean"], statistics.fmean(accs)):
                        raise ValueError(f"mean {point['mean']!r} at t = {point['t_s']} s")
            except (KeyError, IndexError, TypeError, ValueError, statistics.StatisticsError) \
                    as exc:
                raise ValueError(f"{path} does not hold the chips of metrics.json's lifetime "
                                 f"({name}, {policy}: {one_line(exc)}); {ALLOWED}") from None


def _config(path: Path):
    """The study's settings from its config.yaml, any failure naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not YAML ({type(exc).__name__}: {one_line(exc)}); "
                         f"{ALLOWED}") from None
    if not isinstance(data, dict):
        held = "nothing" if data is None else f"a YAML {type(data).__name__}"
        raise ValueError(f"{path} holds {held}; allowed: the config.yaml the study wrote (a "
                         "YAML mapping)")
    try:
        return load_study_config(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: {one_line(exc)}") from None


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not JSON ({type(exc).__name__}: {one_line(exc)}); "
                         f"{ALLOWED}") from None
    if not isinstance(data, dict):
        held = "null" if data is None else f"a JSON {type(data).__name__}"
        raise ValueError(f"{path} holds {held}; {ALLOWED}")
    return data


def _key(*point: object) -> str:
    """A point's key in study_points.json (as :class:`experiments.study.StudyPoints` makes it)."""
    return json.dumps(list(point), default=str)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _accuracies(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(
        _number(a) and 0 <= a <= 100 for a in value)


def _close(a: object, b: float) -> bool:
    return _number(a) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


METRICS = {  # key -> (what is allowed, check)
    "model": ("the model's name (a string)", lambda v: isinstance(v, str)),
    **{k: ("an accuracy in [0, 100] (%)", lambda v: _number(v) and 0 <= v <= 100)
       for k in ("dense_accuracy", "compressed_accuracy", "dense_accuracy_chip_samples",
                 "compressed_accuracy_chip_samples")},
    **{k: ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool)
           and v >= 1) for k in ("chips", "crossbar_test_samples")},
    **{k: ("a list of rows (objects)", lambda v: isinstance(v, list) and all(
        isinstance(r, dict) for r in v)) for k in ("study", "grids", "layer_sensitivity")},
    "layer_sensitivity_reference": ("a mapping of label -> [mean, 95 % CI half width]",
                                    lambda v: isinstance(v, dict)),
    "failed": ("a list of {point, error} objects", lambda v: isinstance(v, list) and all(
        isinstance(f, dict) and isinstance(f.get("point"), str)
        and isinstance(f.get("error"), str) for f in v)),
}
"""What replot reads from metrics.json besides the rows, and what each must be."""


def check_study(run_dir: Path, exp, metrics: dict, stored: dict) -> dict[str, list[float]]:
    """The chip accuracies by point of study_points.json (``stored``), after checking that
    metrics.json (``metrics``), study_points.json and config.yaml (``exp``) are the three files
    of one finished study: every value of the right type and range, every row of metrics.json
    the summary of its point's chips, both made with config.yaml's settings. The first
    difference fails naming the file and key."""
    m_file, p_file = run_dir / "metrics.json", run_dir / "study_points.json"
    _check_fields(m_file, exp, metrics)
    points = _check_points(run_dir, p_file, m_file, exp, metrics, stored)
    models = exp.study.models
    wanted = {_key("sweep", k, v, name) for k, vs in exp.study.sweeps.items() for v in vs
              for name in models}
    _rows(m_file, "study", metrics["study"], points, wanted,
          lambda r: _key("sweep", r.get("setting"), r.get("value"), r.get("model")),
          lambda r: {"setting": r["setting"], "value": r["value"], "model": r["model"],
                     "tiles": r.get("tiles")}, accuracies=False)
    for i, row in enumerate(metrics["study"]):
        tiles = row.get("tiles")
        if not isinstance(tiles, int) or isinstance(tiles, bool) or tiles < 0:
            raise ValueError(f"{m_file}: study[{i}].tiles={tiles!r} is invalid; allowed: an "
                             "integer >= 0")
    grid_keys = {_key("grid", xk, xv, yk, yv, name) for grid in exp.study.grids
                 for xk, yk in [tuple(grid)] for xv in grid[xk] for yv in grid[yk]
                 for name in models}
    _rows(m_file, "grids", metrics["grids"], points, grid_keys,
          lambda r: _key("grid", r.get("x_setting"), r.get("x"), r.get("y_setting"),
                         r.get("y"), r.get("model")),
          lambda r: {k: r[k] for k in ("x_setting", "x", "y_setting", "y", "model")})
    name = "compressed" if "compressed" in models else "dense"
    layer_keys = {k for k in points if k.startswith(_key("layers")[:-1])} - {
        _key("layers", "every", name), _key("layers", "none", name)}
    _rows(m_file, "layer_sensitivity", metrics["layer_sensitivity"], points, layer_keys,
          lambda r: _key("layers", r.get("layer"), r.get("model")),
          lambda r: {"layer": r["layer"], "model": r["model"]})
    _check_references(m_file, p_file, metrics, points, name)
    return points


def _check_fields(m_file: Path, exp, metrics: dict) -> None:
    """metrics.json's values: each of the right type and range, made with config.yaml's
    model, chips and test subset."""
    for key, (what, ok) in METRICS.items():
        if key not in metrics:
            raise ValueError(f"{m_file} has no '{key}' ({what}); {ALLOWED}")
        value = metrics[key]
        if isinstance(value, list) and not ok(value):  # name the first bad row
            i = next((i for i, r in enumerate(value) if not ok([r])), None)
            if i is not None:
                raise ValueError(f"{m_file}: {key}[{i}]={value[i]!r:.100} is invalid; allowed: "
                                 f"{what}")
        if not ok(value):
            raise ValueError(f"{m_file}: {key}={value!r:.100} is invalid; allowed: {what}")
    if metrics["model"] != exp.model.name:
        raise ValueError(f"{m_file}: model={metrics['model']!r} is invalid; allowed: "
                         f"config.yaml's model.name ({exp.model.name!r}): the files of one "
                         "study")
    if metrics["chips"] != exp.eval.chips:
        raise ValueError(f"{m_file}: chips={metrics['chips']!r} is invalid; allowed: "
                         f"config.yaml's eval.chips ({exp.eval.chips})")
    subset = exp.eval.test_subset
    if subset is not None and metrics["crossbar_test_samples"] > subset:
        raise ValueError(f"{m_file}: crossbar_test_samples={metrics['crossbar_test_samples']} "
                         f"is invalid; allowed: at most config.yaml's eval.test_subset ({subset})")


def _check_points(run_dir: Path, p_file: Path, m_file: Path, exp, metrics: dict,
                  stored: dict) -> dict:
    """study_points.json's points: made with config.yaml's settings, each key a point the
    study wrote, each value one accuracy per chip."""
    points = stored.get("points")
    if not isinstance(points, dict):
        raise ValueError(f"{p_file} has no 'points' mapping; {ALLOWED}")
    if stored.get("fingerprint") != study_fingerprint(exp.raw):
        raise ValueError(f"{p_file} was not made with the settings of {run_dir / 'config.yaml'}"
                         " (its fingerprint differs: one of them was edited or comes from "
                         "another study); allowed: the files of one study")
    for key, accs in points.items():
        try:
            point = json.loads(key)
        except ValueError:
            point = None
        if not isinstance(point, list) or not point:
            raise ValueError(f"{p_file}: point {key!r} is invalid; allowed: a point key the "
                             "study wrote (a JSON list)")
        if not _accuracies(accs):
            raise ValueError(f"{p_file}: point {key} holds {accs!r:.100}; allowed: a non-empty "
                             "list of accuracies in [0, 100] (%)")
        if len(accs) != metrics["chips"]:
            raise ValueError(f"{p_file}: point {key} holds {len(accs)} chips' accuracies; "
                             f"allowed: one per chip (chips={metrics['chips']} in {m_file})")
    return points


def _check_references(m_file: Path, p_file: Path, metrics: dict, points: Mapping,
                      name: str) -> None:
    """The layer-sensitivity reference bands: the mean and 95 % CI of their points."""
    labels = {f"every layer non-ideal ({name})": _key("layers", "every", name),
              f"ideal devices ({name})": _key("layers", "none", name)}
    where = f"{m_file}: layer_sensitivity_reference"
    for label, value in metrics["layer_sensitivity_reference"].items():
        if label not in labels:
            raise ValueError(f"{where} label {label!r} is invalid; allowed: "
                             f"{', '.join(map(repr, labels))}")
        if not (isinstance(value, list) and len(value) == 2 and all(map(_number, value))
                and 0 <= value[0] <= 100 and value[1] >= 0):
            raise ValueError(f"{where}[{label!r}]={value!r:.80} is invalid; allowed: [mean in "
                             "[0, 100] (%), 95 % CI half width >= 0]")
        accs = points.get(labels[label])
        if accs is None or not (_close(value[0], statistics.fmean(accs)) and any(
                _close(value[1], c) for c in _spreads(accs)["ci95"] | {ci95(accs)})):
            raise ValueError(f"{where}[{label!r}]={value!r} is invalid; allowed: the mean and "
                             f"95 % CI of {p_file}'s point {labels[label]} "
                             + ("(missing there)" if accs is None else
                                f"({statistics.fmean(accs)!r}, {ci95(accs)!r})"))


def _rows(m_file: Path, section: str, rows: list, points: Mapping, wanted: set, key_of,
          fields_of, accuracies: bool = True) -> None:
    """Each row of ``metrics[section]`` is one of this study's points (``wanted``), once, and
    the summary of that point's chips in study_points.json."""
    seen = set()
    for i, row in enumerate(rows):
        where = f"{m_file}: {section}[{i}]"
        key = key_of(row)
        if key not in wanted or key in seen:
            raise ValueError(f"{where} is point {key}, " + (
                "listed twice" if key in seen else "not a point of this study's config.yaml")
                + f"; allowed: each point of the study once ({ALLOWED})")
        seen.add(key)
        accs = points.get(key)
        if accs is None:
            raise ValueError(f"{where}: point {key} is missing from "
                             f"{m_file.parent / 'study_points.json'}; allowed: the files of "
                             "one study")
        if accuracies and row.get("accuracies") != accs:
            raise ValueError(f"{where}.accuracies={row.get('accuracies')!r:.80} is invalid; "
                             "allowed: the chips' accuracies of its point in study_points.json "
                             f"({accs!r:.80})")
        want = summary_row(accs, **fields_of(row))
        spreads = _spreads(accs)
        for field in SUMMARY:
            got = row.get(field)
            allowed = spreads[field] | {want[field]} if field in spreads else {want[field]}
            same = got == want[field] if field == "chips" else any(
                _close(got, a) for a in allowed)
            if not same:
                raise ValueError(f"{where}.{field}={got!r} is invalid; allowed: "
                                 f"{' or '.join(map(repr, sorted(allowed)))}, from its point's "
                                 f"chips in study_points.json (they average {want['mean']!r}): "
                                 "the files of one study")


def _spreads(accs: list[float]) -> dict[str, set[float]]:
    """The std and 95 % CI half width over ``accs`` that a study of this or an earlier version
    wrote: the population or the sample std (before and after issue 25), and Student's t
    interval on the sample std (the current definitions are added by the caller)."""
    n = len(accs)
    if n < 2:
        return {"std": {0.0}, "ci95": {0.0}}
    from scipy.stats import t

    sample = statistics.stdev(accs)
    return {"std": {statistics.pstdev(accs), sample},
            "ci95": {float(t.ppf(0.975, n - 1) * sample / math.sqrt(n))}}


def figure_options(width: str | None, formats: Sequence[str] | None, dpi: int | None,
                   no_caption: bool) -> FigureOptions:
    """The figure options of the command line, checked: ``width`` column, page or inches in
    [1, 20]; ``formats`` among the vector formats (the PNG is always written: study.md shows
    it); ``dpi`` in [72, 1200]."""
    width_in = None
    if width is not None:
        if width in style.WIDTHS_IN:
            width_in = style.WIDTHS_IN[width]
        else:
            try:
                width_in = float(width)
            except ValueError:
                width_in = math.nan
            if not 1.0 <= width_in <= 20.0:
                raise ValueError(f"--width={width!r} is invalid; allowed: column (3.5 in), "
                                 "page (7.16 in) or a width in inches in [1, 20]")
    vector = tuple(formats) if formats is not None else ("pdf",)
    bad = [f for f in vector if f not in VECTOR_FORMATS]
    if bad:
        raise ValueError(f"--format={bad[0]!r} is invalid; allowed: "
                         + ", ".join(VECTOR_FORMATS) + " (the PNG is always written)")
    if dpi is not None and not 72 <= dpi <= 1200:
        raise ValueError(f"--dpi={dpi!r} is invalid; allowed: an integer in [72, 1200]")
    return FigureOptions(width_in=width_in, vector=vector,
                         dpi=style.PNG_DPI if dpi is None else dpi, caption=not no_caption)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished device study's folder")
    parser.add_argument("--width", help="figure width: column (3.5 in), page (7.16 in) or "
                        "inches; default: each figure's own")
    parser.add_argument("--format", nargs="+", dest="formats", metavar="FORMAT",
                        help="vector formats besides the PNG: pdf, svg, eps (default: pdf)")
    parser.add_argument("--dpi", type=int, help="PNG resolution (default 300)")
    parser.add_argument("--no-caption", action="store_true",
                        help="no settings caption in the figures; written beside each as "
                        "<name>.caption.txt for the paper's own caption")
    args = parser.parse_args(argv)
    options = figure_options(args.width, args.formats, args.dpi, args.no_caption)
    previous = dataclasses.replace(plots.OPTIONS)
    plots.OPTIONS.__dict__.update(dataclasses.asdict(options))
    try:
        names = replot_study(args.run_dir)
    finally:
        plots.OPTIONS.__dict__.update(dataclasses.asdict(previous))
    for name in names:
        print(Path(args.run_dir) / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
