"""Wire resistance (IR drop): solve time, inference overhead, and accuracy vs wire resistance.

1. Time to solve one 128 x 128 and one 256 x 256 array (random 1-100 uS cells, 2 ohm wires),
   and to program LeNet-5 (MNIST shape, 128 x 128 tiles) with and without the wire model.
2. Inference overhead with the wire model on vs off on the ``sim_overhead`` set-up (LeNet-5,
   10,000 inputs, batch 1,000, 8-bit DAC/ADC, 2 % read noise, 5 % programming variation),
   interleaved in one process, median of ``--repeats``.
3. Accuracy of LeNet-5 trained on MNIST (``--epochs`` of Adam on ../shared/data/mnist; ideal
   cells, 8-bit DAC and ADC, 16-level cells are not used: continuous 1-100 uS) against the
   wire resistance per cell (word- and bit-line segments alike, ideal drivers and sense) for
   64, 128 and 256-row square tiles, on ``--test`` test images. Plot: docs/figures/.

    .venv/bin/python benchmarks/irdrop.py --out results/irdrop.json \
        --plot docs/figures/irdrop_accuracy.png
    .venv/bin/python benchmarks/irdrop.py --smoke [DIR]  # seconds

``--smoke [DIR]``: the same three parts at the smallest sizes (16 x 16 and 32 x 32 solves, one
repetition, 64 inputs in batches of 32, LeNet-5 trained 1 epoch on scikit-learn's embedded
digits instead of MNIST, 100 test images, 0 and 1 ohm on 16 x 16 tiles), one thread; irdrop.json
and irdrop_accuracy.png into DIR (default: a new temporary folder).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from memxbar import crossbar  # noqa: E402
from memxbar.crossbar.arrays import solve_array  # noqa: E402
from memxbar.crossbar.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from memxbar.experiments.datasets import make_loaders  # noqa: E402
from memxbar.experiments.models import build_model  # noqa: E402
from memxbar.experiments.train import evaluate, fit  # noqa: E402

WIRES_OHM = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
TILES = (64, 128, 256)


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def solve_times(sizes: tuple[int, ...] = (128, 256), repeats: int = 3) -> dict:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for _ in range(2):  # warm-up (first linear-algebra calls load their kernels)
        solve_array(torch.rand(64, 64, dtype=torch.float64) * 1e-4, 1.0, 1.0, 0.0, 0.0)
    for n in sizes:
        g = (1 + 99 * torch.rand(n, n, generator=gen, dtype=torch.float64)) * 1e-6
        out[f"solve_{n}x{n}_s"] = timed(lambda g=g: solve_array(g, 2.0, 2.0, 0.0, 0.0), repeats)
    model = build_model("lenet5").eval()
    config = crossbar.CrossbarConfig(tile_rows=128, tile_cols=128)
    device = crossbar.DeviceModel(prog_sigma=0.05)
    for label, cfg in (("ideal", config), ("wires", config.with_setting("r_wire_ohm", 2.0))):
        xmodel = crossbar.to_crossbar(model, device, cfg)
        out[f"program_lenet5_{label}_s"] = timed(lambda x=xmodel: x.program(1), repeats)
    out["lenet5_tiles"] = xmodel.mapping_plan.n_tiles
    return out


def inference_overhead(repeats: int, n: int = 10_000, batch: int = 1000) -> dict:
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    inputs = torch.randn(n, 1, 28, 28)
    device = crossbar.DeviceModel(prog_sigma=0.05, read_sigma=0.02)
    config = crossbar.CrossbarConfig(tile_rows=128, tile_cols=128, dac_bits=8, adc_bits=8)
    models = {label: crossbar.to_crossbar(model, device, cfg, calibration=inputs[:batch]).eval()
              for label, cfg in (("off", config), ("on", config.with_setting("r_wire_ohm", 2.0)))}

    def run(m: torch.nn.Module) -> None:
        with torch.inference_mode():
            for i in range(0, n, batch):
                m(inputs[i:i + batch])

    times: dict[str, list[float]] = {"off": [], "on": []}
    run(models["off"])
    run(models["on"])
    for _ in range(repeats):
        for label, m in models.items():
            times[label].append(timed(lambda m=m: run(m), 1))
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"irdrop_off_s": off, "irdrop_on_s": on, "ratio_on_off": on / off}


def accuracy_sweep(epochs: int, n_test: int,
                   data: tuple[str, str | None] = ("mnist", "../shared/data/mnist"),
                   tiles: tuple[int, ...] = TILES, wires: tuple[float, ...] = WIRES_OHM) -> dict:
    train, test, info = make_loaders(*data, batch_size=128, seed=0, test_subset=n_test,
                                     test_batch_size=500)
    model = build_model("lenet5", input_shape=info.input_shape)
    fit(model, (train, test), epochs=epochs, lr=1e-3, progress=False)
    model.eval()
    dense = evaluate(model, test)
    calibration = next(iter(train))[0][:256]
    device = crossbar.DeviceModel()  # ideal cells: the wires are the only effect
    rows = []
    for tile in tiles:
        base = crossbar.CrossbarConfig(tile_rows=tile, tile_cols=tile, dac_bits=8, adc_bits=8)
        for r in wires:
            start = time.perf_counter()
            xmodel = crossbar.to_crossbar(model, device, base.with_setting("r_wire_ohm", r),
                                          calibration=calibration)
            acc = evaluate(xmodel, test)
            rows.append({"tile": tile, "r_wire_ohm": r, "accuracy": acc,
                         "convert_s": time.perf_counter() - start})
            print(f"tile {tile}: {r:g} ohm -> {acc:.2f} %", flush=True)
    return {"dense_accuracy": dense, "epochs": epochs, "test_images": n_test, "points": rows}


def plot(sweep: dict, path: str, data: str = "MNIST") -> None:
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for tile in sorted({p["tile"] for p in sweep["points"]}):
        pts = [p for p in sweep["points"] if p["tile"] == tile]
        ax.plot([p["r_wire_ohm"] for p in pts], [p["accuracy"] for p in pts], marker="o",
                label=f"{tile} x {tile} tiles")
    ax.axhline(sweep["dense_accuracy"], color="gray", ls=":", label="software")
    ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
    ax.set_xlim(0, 13)
    wires = sorted({p["r_wire_ohm"] for p in sweep["points"]})
    ax.set_xticks(wires, [f"{r:g}" for r in wires])
    ax.minorticks_off()
    ax.set_xlabel("wire resistance per cell, word and bit line (ohm)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"LeNet-5 on {data}, ideal cells 1-100 uS, 8-bit DAC/ADC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--out", default="results/irdrop.json")
    parser.add_argument("--plot", default="results/irdrop_accuracy.png")
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    args = parser.parse_args()
    smoke = args.smoke is not None
    if smoke:
        folder = Path(args.smoke or tempfile.mkdtemp(prefix="irdrop_smoke_"))
        folder.mkdir(parents=True, exist_ok=True)
        args.out, args.plot = str(folder / "irdrop.json"), str(folder / "irdrop_accuracy.png")
        args.threads, args.repeats, args.epochs, args.test = 1, 1, 1, 100
    torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "threads": args.threads,
              **(solve_times((16, 32), 1) if smoke else solve_times())}
    print({k: v for k, v in result.items() if k.endswith("_s")})
    result.update(inference_overhead(args.repeats, 64, 32) if smoke
                  else inference_overhead(args.repeats))
    print(f"inference with wires {result['irdrop_on_s']:.3f} s vs without "
          f"{result['irdrop_off_s']:.3f} s: {result['ratio_on_off']:.3f}x")
    if not args.skip_accuracy:
        if smoke:
            result["accuracy"] = accuracy_sweep(args.epochs, args.test, ("digits", None), (16,),
                                                (0.0, 1.0))
            plot(result["accuracy"], args.plot, "digits")
        else:
            result["accuracy"] = accuracy_sweep(args.epochs, args.test)
            plot(result["accuracy"], args.plot)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
