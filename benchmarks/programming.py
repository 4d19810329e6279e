"""Time to program a chip (single-shot and write-verify) and its pulse/energy/time estimate.

LeNet-5 (MNIST shape) on 128 x 128 tiles with the ``rram_milo`` preset (analog, 4.3 uS spread),
single-shot vs write-verify (tolerance 1 uS, at most 20 pulses, NeuRRAM's band); median of
``--repeats`` calls of ``program(seed)`` (sampling, write-verify iterations, faults and the
rebuild of the cached tile weights; no calibration batch, so no recalibration).

    .venv/bin/python benchmarks/programming.py --out results/programming.json
    .venv/bin/python benchmarks/programming.py --smoke [DIR]  # seconds

``--smoke [DIR]``: one repetition, one thread; programming.json into DIR (default: a new
temporary folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from memxbar import crossbar
from memxbar.crossbar.io import atomic_write_text
from memxbar.experiments.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/programming.json")
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    args = parser.parse_args()
    if args.smoke is not None:
        folder = Path(args.smoke or tempfile.mkdtemp(prefix="programming_smoke_"))
        args.out, args.repeats, args.threads = str(folder / "programming.json"), 1, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    config = crossbar.CrossbarConfig(tile_rows=128, tile_cols=128)
    base = crossbar.DeviceModel.preset("rram_milo")
    verify = crossbar.WriteVerify(tolerance_uS=1.0, max_pulses=20)
    result = {"model": "lenet5", "threads": args.threads, "torch": torch.__version__}
    for label, device in (("single_shot", base), ("write_verify", base.with_(
            write_verify=verify))):
        xmodel = crossbar.to_crossbar(model, device, config)
        times = []
        for seed in range(args.repeats):
            start = time.perf_counter()
            xmodel.program(seed + 1)
            times.append(time.perf_counter() - start)
        stats = crossbar.programming_stats(xmodel)
        cost = crossbar.programming_cost(stats, verify_reads=0 if device.write_verify is None
                                         else device.write_verify.verify_reads)
        result[label] = {"program_s_median": statistics.median(times), "program_s": times,
                         **{k: v for k, v in cost.items() if k != "assumptions"},
                         "max_pulses": stats["max_pulses"]}
        print(f"{label}: program {statistics.median(times):.3f} s, {stats['cells']} cells, "
              f"{cost['pulses_per_cell']:.2f} pulses/cell, {stats['failed']} failed, "
              f"{cost['energy_uJ']:.3f} uJ, {cost['time_serial_s']:.3f} s serial, "
              f"{cost['time_tiles_parallel_s']:.4f} s tiles in parallel")
    result["assumptions"] = crossbar.PulseCost().to_dict()
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
