"""Converter settings of a finished compress run: accuracy against energy.

For every DAC (parallel / bit-serial, bits) and ADC resolution, the run's compressed model on
ideal devices and on ``--chips`` programmed chips of the run's device (with the run's
robustness steps), and the energy / area reduction against the fixed cost baseline
(``crossbar.estimate``). Writes ``converter_sweep.json`` and ``converter_sweep.png`` (chip
accuracy against energy) into the run directory.

    .venv/bin/python benchmarks/converter_sweep.py outputs/<run> --chips 5
    .venv/bin/python benchmarks/converter_sweep.py --smoke [DIR]  # ~15 s (4 s on a made run)

``--smoke [DIR]``: sweeps a tiny run in DIR/run, made first unless DIR already holds one
(calibration_percentile's SMOKE_RUN: the default pipeline, digits and LeNet-5, at its smallest
settings): one parallel and one bit-serial 4-bit DAC, a 6-bit ADC, 1 chip. Default DIR: a new
temporary folder; the outputs go into DIR/run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memxbar.crossbar import MappingPlan, estimate  # noqa: E402
from memxbar.experiments import data as D  # noqa: E402
from memxbar.experiments.chips import ChipDesign, evaluate_chips  # noqa: E402
from memxbar.experiments.config import load_compress_config  # noqa: E402
from memxbar.experiments.estimators import ci95  # noqa: E402
from memxbar.experiments.models import build_model  # noqa: E402
from memxbar.experiments.train import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?")
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--dac", nargs="*", default=["parallel:4", "parallel:6", "parallel:8",
                                                     "bit_serial:4", "bit_serial:6",
                                                     "bit_serial:8"])
    parser.add_argument("--adc", nargs="*", type=int, default=[6, 7, 8])
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw converter_sweep.png from the run's converter_sweep.json")
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    args = parser.parse_args()
    if args.smoke is not None:
        from calibration_percentile import smoke_setup  # (this script's folder is on sys.path)

        folder, args.run = smoke_setup(args.smoke, "converter_sweep_smoke_")
        args.dac, args.adc, args.chips = ["parallel:4", "bit_serial:4"], [6], 1
    elif args.run is None:
        parser.error("the following arguments are required: run")
    if args.plot_only:
        rows = json.loads((args.run / "converter_sweep.json").read_text())
        software = json.loads((args.run / "metrics.json").read_text())["compressed_accuracy"]
        plot(rows, software, args.run / "converter_sweep.png")
        return
    from omegaconf import OmegaConf

    torch.set_num_threads(1)
    exp = load_compress_config(OmegaConf.load(args.run / "config.yaml"))
    train, test, info = D.load_data(exp.dataset, exp.seed)
    state = torch.load(args.run / "compressed.pt", weights_only=True)
    model = build_model(exp.model.name, input_shape=info.input_shape, **exp.model.kwargs)
    model.load_state_dict(state["model"])
    model.eval()
    calibration = D.calibration_batch(train, exp.eval.calibration_samples, "cpu", exp.seed)
    outputs = D.calibration_batch(train, exp.robustness.calibration_samples, "cpu",
                                  exp.seed + 1)
    plan = MappingPlan.load(args.run / "plan.json")
    xtest = D.crossbar_test_loader(test, exp.eval.test_subset, exp.seed)
    rows = []
    for dac, adc in itertools.product(args.dac, args.adc):
        kind, bits = dac.split(":")
        xbar = exp.crossbar.with_(dac=kind, dac_bits=int(bits), adc_bits=adc)
        out = outputs if xbar.output_calibration else None
        design = ChipDesign(exp.device, xbar, exp.robustness.repair())
        common = {"calibration": calibration, "test": xtest, "seed": exp.seed,
                  "scales": state["scales"], "outputs": out}
        ideal = evaluate_chips(model, plan, design.ideal().with_(repair=None), chips=1,
                               **common).mean
        run = evaluate_chips(model, plan, design, chips=args.chips, **common)
        chips, mean, std = run.accuracies, run.mean, run.std
        half = ci95(chips)
        cost = estimate(plan, xbar, exp.cost)
        row = {"dac": kind, "dac_bits": int(bits), "adc_bits": adc, "ideal": ideal,
               "chips_mean": mean, "chips_std": std, "chips_ci95": half,
               "chips_min": min(chips), "chips": len(chips),
               "energy_nJ": cost.compressed.totals()["energy_nJ"],
               "energy_reduction_pct": cost.reduction["energy_reduction_pct"],
               "area_reduction_pct": cost.reduction["area_reduction_pct"]}
        rows.append(row)
        print(f"{kind:>10} {bits} b DAC, {adc} b ADC: ideal {ideal:.2f}%, chips {mean:.2f} % "
              f"(95 % CI +- {half:.2f}, sample std {std:.2f}), energy {row['energy_nJ']:.3g} nJ "
              f"(-{row['energy_reduction_pct']:.2f}%), area -{row['area_reduction_pct']:.2f}%",
              flush=True)
    (args.run / "converter_sweep.json").write_text(json.dumps(rows, indent=1))
    plot(rows, evaluate(model, test), args.run / "converter_sweep.png")


def plot(rows: list[dict], software: float, path: Path) -> None:
    """Chip accuracy (mean and 95 % CI of the mean over the chips; the sample std for files
    written before the CI was stored) against energy per inference, one marker per converter
    setting, labelled DAC/ADC bits; PNG and PDF (``experiments.plots.write_png``)."""
    from memxbar.experiments.plots import plt, write_png

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for kind, marker in (("parallel", "o"), ("bit_serial", "s")):
        sel = [r for r in rows if r["dac"] == kind]
        if not sel:
            continue
        ci = all("chips_ci95" in r for r in sel)
        ax.errorbar([r["energy_nJ"] for r in sel], [r["chips_mean"] for r in sel],
                    yerr=[r["chips_ci95"] if ci else r["chips_std"] for r in sel], fmt=marker,
                    capsize=3, label=f"{kind} DAC (chips: mean, "
                    + ("95 % CI)" if ci else "sample std)"))
        for r in sel:
            ax.annotate(f"{r['dac_bits']}/{r['adc_bits']}", (r["energy_nJ"], r["chips_mean"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(software, color="k", linestyle="--", label="compressed (software)")
    ax.set_xscale("log")
    ax.set_xlabel("energy per inference (nJ)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Chip accuracy vs energy per converter setting\n(labels: DAC / ADC bits)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(path, fig)


if __name__ == "__main__":
    main()
