"""Monte Carlo over chips: time of ``experiments.chips.evaluate_chips`` for K programmed
chips (program, recalibrate the DAC/ADC ranges on the calibration batch, evaluate the test
set) against K plain PyTorch evaluations of the same model on the same test set.

LeNet-5 at MNIST shape, 10,000 test inputs in batches of 1,000, 256 calibration images (the
pipeline's default ``eval.calibration_samples``), 128 x 128 tiles, 8-bit DAC and ADC, 16
levels, 5 % programming variation. Settings: ``no read noise`` and ``2 % read noise`` (drawn for
every matrix-vector product), each also with the robustness group's repair (0.5 % stuck-at,
compensation + fault-aware placement) and output calibration on 512 images. Plain and chip
passes run in the same process, one setting after the other, the plain pass timed right
before each setting's chips.

    .venv/bin/python benchmarks/mc_chips.py --chips 25 --out results/mc_chips.json
    .venv/bin/python benchmarks/mc_chips.py --smoke [DIR]  # seconds

``--smoke [DIR]``: every setting with 1 chip, 64 test inputs in batches of 32, 16 calibration
and 16 output-calibration images, one thread; mc_chips.json into DIR (default: a new temporary
folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memxbar import crossbar  # noqa: E402
from memxbar.crossbar.io import atomic_write_text  # noqa: E402
from memxbar.experiments.chips import ChipDesign, evaluate_chips  # noqa: E402
from memxbar.experiments.models import build_model  # noqa: E402
from memxbar.experiments.stages import map_stage  # noqa: E402
from memxbar.experiments.train import evaluate  # noqa: E402

CONFIG = crossbar.CrossbarConfig(tile_rows=128, tile_cols=128, dac_bits=8, adc_bits=8)


def settings() -> dict[str, tuple[crossbar.DeviceModel, crossbar.CrossbarConfig, bool]]:
    """name -> (device, crossbar config, repair)."""
    base = crossbar.DeviceModel(n_levels=16, prog_sigma=0.05)
    faulty = base.with_(sa0_rate=0.0025, sa1_rate=0.0025)
    calibrated = CONFIG.with_(output_calibration=True)
    return {
        "no read noise": (base, CONFIG, False),
        "2 % read noise": (base.with_(read_sigma=0.02), CONFIG, False),
        "no read noise, faults + repair + output calibration": (faulty, calibrated, True),
        "2 % read noise, faults + repair + output calibration":
            (faulty.with_(read_sigma=0.02), calibrated, True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="run only the settings containing this")
    parser.add_argument("--out", default="results/mc_chips.json")
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    args = parser.parse_args()
    n, batch, n_calibration, n_outputs = 10_000, 1_000, 256, 512
    if args.smoke is not None:
        folder = Path(args.smoke or tempfile.mkdtemp(prefix="mc_chips_smoke_"))
        args.out, args.chips, args.threads = str(folder / "mc_chips.json"), 1, 1
        n, batch, n_calibration, n_outputs = 64, 32, 16, 16
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    inputs, labels = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    test = DataLoader(TensorDataset(inputs, labels), batch_size=batch)
    calibration = torch.randn(n_calibration, 1, 28, 28)
    outputs = torch.randn(n_outputs, 1, 28, 28)
    plan = map_stage(model, None, CONFIG, calibration)
    evaluate(model, test)  # warm-up
    rows = []
    for name, (device, xbar, repair) in settings().items():
        if args.only and args.only not in name:
            continue
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        start = time.perf_counter()
        for _ in range(args.chips):
            evaluate(model, test)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        design = ChipDesign(device, xbar, crossbar.RepairConfig() if repair else None)
        evaluate_chips(model, plan, design, calibration=calibration, test=test,
                       chips=args.chips, seed=0,
                       outputs=outputs if xbar.output_calibration else None)
        chips = time.perf_counter() - start
        rows.append({"setting": name, "chips": args.chips, "plain_s": plain, "chips_s": chips,
                     "ratio": chips / plain, "load_average_1min": float(load)})
        print(f"{name}: {args.chips} chips {chips:.2f} s, {args.chips} plain passes "
              f"{plain:.2f} s, ratio {chips / plain:.2f} (load {load})", flush=True)
    result = {"model": "lenet5", "test_inputs": n, "batch": batch,
              "calibration_samples": n_calibration, "threads": args.threads,
              "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
