"""Effect of the calibration percentile of the DAC/ADC ranges on a finished compress run.

Re-evaluates the run's compressed model (``compressed.pt`` + ``plan.json``) on crossbars with the
run's crossbar and device settings, once per ``range_percentile``: on an ideal device (the run's
levels, no variation or faults) and on ``--chips`` programmed chips of the run's device.

    .venv/bin/python benchmarks/calibration_percentile.py outputs/mnist_lenet5/<date>/<time>
    .venv/bin/python benchmarks/calibration_percentile.py --smoke [DIR]  # ~15 s, see SMOKE_RUN
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from memxbar import crossbar
from memxbar.experiments.config import load_compress_config
from memxbar.experiments.data import load_data
from memxbar.experiments.models import build_model
from memxbar.experiments.train import evaluate

# --smoke: the run re-evaluated is made first (unless DIR holds one), the default pipeline
# (digits, LeNet-5) at its smallest settings (a few epochs, 1 chip, no ablation), in <DIR>/run;
# converter_sweep.py --smoke uses the same
SMOKE_RUN = ["train.epochs=3", "train.lr=1e-2", "admm.prune_epochs=1",
             "admm.prune_retrain_epochs=1", "admm.quant_epochs=1", "admm.quant_retrain_epochs=1",
             "eval.chips=1", "eval.test_subset=100", "eval.calibration_samples=16",
             "robustness.ablation=false", "runtime.progress=false", "runtime.threads=1"]


def smoke_run(folder: Path) -> Path:
    """A finished compress run at the SMOKE_RUN settings in ``folder/run`` (reused when its
    metrics.json exists)."""
    if (folder / "run" / "metrics.json").exists():
        return folder / "run"
    from hydra import compose, initialize_config_dir

    from memxbar.experiments.conf_source import CONF_DIR
    from memxbar.experiments.pipeline import run_compress

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run_compress(compose(config_name="config", overrides=SMOKE_RUN), folder / "run")
    return folder / "run"


def smoke_setup(smoke: str, prefix: str) -> tuple[Path, Path]:
    """``--smoke [DIR]`` of a script that re-evaluates the smoke run: the folder (DIR, or a
    new temporary one named ``prefix``...) and the finished run in it (:func:`smoke_run`)."""
    folder = Path(smoke or tempfile.mkdtemp(prefix=prefix))
    return folder, smoke_run(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--percentiles", type=float, nargs="+", default=[100.0, 99.99, 99.9])
    parser.add_argument("--chips", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="make a tiny run in DIR/run (default DIR: a new temporary folder) "
                        "and re-evaluate it: 2 percentiles, 2 chips, 16 calibration images")
    args = parser.parse_args()
    if args.smoke is not None:
        folder = Path(args.smoke or tempfile.mkdtemp(prefix="calibration_percentile_smoke_"))
        args.run_dir = smoke_run(folder)
        args.percentiles, args.chips, args.calibration = [100.0, 99.9], 2, 16
    elif args.run_dir is None:
        parser.error("the following arguments are required: run_dir")

    torch.set_num_threads(1)
    exp = load_compress_config(OmegaConf.load(args.run_dir / "config.yaml"))
    train, test, info = load_data(exp.dataset, exp.seed)
    model = build_model(exp.model.name, input_shape=info.input_shape,
                        num_classes=info.num_classes, **exp.model.kwargs)
    model.load_state_dict(torch.load(args.run_dir / "compressed.pt", weights_only=True)["model"])
    model.eval()
    plan = crossbar.MappingPlan.load(args.run_dir / "plan.json")
    calibration = torch.cat([x for x, _ in train])[: args.calibration]
    device = exp.device
    ideal = device.with_(prog_sigma=0.0, read_sigma=0.0, sa0_rate=0.0, sa1_rate=0.0)
    print(f"software: {evaluate(model, test):.2f} %")
    print("| range_percentile | ideal crossbar (%) | chips mean +- std (%) |")
    print("|---:|---:|---:|")
    for pct in args.percentiles:
        config = exp.crossbar.with_(range_percentile=pct)
        xm = crossbar.to_crossbar(model, ideal, config, calibration=calibration, plan=plan)
        ideal_acc = evaluate(xm, test)
        chips = []
        for seed in range(args.chips):
            xm = crossbar.to_crossbar(model, device, config, calibration=calibration, plan=plan,
                                      seed=seed)
            chips.append(evaluate(xm, test))
        print(f"| {pct} | {ideal_acc:.2f} | {statistics.mean(chips):.2f} +- "
              f"{statistics.stdev(chips):.2f} |")


if __name__ == "__main__":
    main()
