"""Redraw a finished device study's figures and study.md from its files, without re-running
any chip (e.g. after a change of the plotting code, or to restyle figures for a paper).

    python -m experiments.replot outputs/device_study/<date>/<time>

Reads ``config.yaml`` (the held-fixed caption is derived from it again), ``metrics.json`` and
``study_points.json`` (every chip's accuracy per point); rewrites the PNG/PDF figures,
``metrics.json``'s caption and ``study.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import yaml

from crossbar.io import atomic_write_text, run_cli
from experiments.config import load_study_config
from experiments.reports import held_fixed, plot_study, study_markdown
from experiments.runtime import write_json


def replot_study(run_dir: str | Path) -> list[str]:
    """Redraw the study in ``run_dir``; returns the figure names."""
    run_dir = Path(run_dir)
    needed = ("config.yaml", "metrics.json", "study_points.json")
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}; allowed: the folder of a "
                                "finished python -m experiments.device_study run")
    exp = load_study_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    metrics = _json(run_dir / "metrics.json")
    points = _json(run_dir / "study_points.json").get("points")
    _check_points(run_dir, points, metrics)
    chip_rows = []
    for key, accs in points.items():
        point = json.loads(key)
        if point[0] == "sweep":
            _, setting, value, model = point
            chip_rows += [{"setting": setting, "value": value, "model": model, "chip": i,
                           "accuracy": a} for i, a in enumerate(accs)]
    same = f"software, same {metrics['crossbar_test_samples']} test samples"
    reference: dict = {f"compressed, {same}": metrics["compressed_accuracy_chip_samples"],
                       f"dense, {same}": metrics["dense_accuracy_chip_samples"]}
    reference.update({k: tuple(v) for k, v in metrics["layer_sensitivity_reference"].items()})
    metrics["held_fixed"] = held_fixed(exp, metrics["crossbar_test_samples"], metrics["chips"])
    plots = plot_study(metrics["study"], chip_rows, metrics["grids"],
                        metrics["layer_sensitivity"], reference, metrics["held_fixed"], run_dir)
    write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "study.md", study_markdown(metrics, plots))
    return plots


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON ({exc}); allowed: the file the study wrote") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; allowed: the file the "
                         "study wrote")
    return data


def _check_points(run_dir: Path, points: object, metrics: dict) -> None:
    """Every point's chip accuracies are numbers in [0, 100], and each sweep row of
    metrics.json is the mean of its point's chips (else the files do not belong together)."""
    where = run_dir / "study_points.json"
    if not isinstance(points, dict):
        raise ValueError(f"{where} has no 'points' mapping; allowed: the file the study wrote")
    for key, accs in points.items():
        if not isinstance(accs, list) or not accs or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool)
                and math.isfinite(a) and 0 <= a <= 100 for a in accs):
            raise ValueError(f"{where}: point {key} holds {accs!r}; allowed: a non-empty list "
                             "of accuracies in [0, 100] (%)")
    for row in metrics.get("study") or []:
        key = json.dumps(["sweep", row.get("setting"), row.get("value"), row.get("model")],
                         default=str)
        accs = points.get(key)
        if accs is not None and abs(statistics.fmean(accs) - row.get("mean", math.nan)) > 1e-6:
            raise ValueError(f"{run_dir / 'metrics.json'}: the mean of {key} is {row.get('mean')}"
                             f" but study_points.json's chips average {statistics.fmean(accs)};"
                             " allowed: the two files of one study")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished device study's folder")
    args = parser.parse_args(argv)
    for name in replot_study(args.run_dir):
        print(Path(args.run_dir) / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
