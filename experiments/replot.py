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
    metrics = json.loads((run_dir / "metrics.json").read_text())
    points = json.loads((run_dir / "study_points.json").read_text())["points"]
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished device study's folder")
    args = parser.parse_args(argv)
    for name in replot_study(args.run_dir):
        print(Path(args.run_dir) / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
