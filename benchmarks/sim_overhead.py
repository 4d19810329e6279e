"""Simulator overhead: crossbar inference time / plain PyTorch inference time.

``--model lenet5`` (default): LeNet-5 (MNIST shape), 10,000 inputs, batch 1,000, 2 threads;
``--model vgg16``: VGG-16 at CIFAR shape, 1,024 inputs, batch 128. Crossbar: 8-bit DAC and
ADC, 2 % read noise drawn for every matrix-vector product, 5 % programming variation,
128 x 128 tiles. Both run in the same process, interleaved, median of ``--repeats`` runs each.
``--chips N`` also times N programmed chips (program + recalibrate + inference) against N plain
passes. ``--memory`` measures, in a fresh process, the peak resident memory that converting
the model adds, against the converted model's live tensors (state and cached tile weights).

    .venv/bin/python benchmarks/sim_overhead.py --out results/sim_overhead.json
    .venv/bin/python benchmarks/sim_overhead.py --model vgg16 --chips 10 --memory \
        --out results/sim_overhead_vgg16.json
    .venv/bin/python benchmarks/sim_overhead.py --smoke [DIR]  # seconds

``--floor`` also times, in the same process and on the inputs each crossbar layer receives, the
work an exact simulation cannot skip: every tile unit's product with its cached weights (a
tile's partial sums must meet its own ADC before the tiles are added, so a product's reduction
is at most one tile's rows), the read-noise variance products, and one standard-normal draw per
partial sum (the simulator's own draw, on its threads). The floor of the ratio on this machine
is (plain pass - the plain layers' own products + those three) / plain pass: activations,
pooling and norms run in both.

``--smoke [DIR]``: 64 inputs in batches of 32, one repetition, one chip, one thread, the floor
(with the ``--model``, ``--memory`` and read-noise options given); sim_overhead.json into DIR
(default: a new temporary folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memxbar import crossbar
from memxbar.crossbar.io import atomic_write_text
from memxbar.experiments.models import build_model

SETUPS = {"lenet5": {"shape": (1, 28, 28), "n": 10_000, "batch": 1_000},
          "vgg16": {"shape": (3, 32, 32), "n": 1_024, "batch": 128}}

def device(read_sigma: float = 0.02) -> crossbar.DeviceModel:
    return crossbar.DeviceModel(g_min_uS=1.0, g_max_uS=100.0, prog_sigma=0.05,
                                read_sigma=read_sigma)

CONFIG = crossbar.CrossbarConfig(tile_rows=128, tile_cols=128, dac_bits=8, adc_bits=8)


def run_inference(model: torch.nn.Module, inputs: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, inputs.shape[0], batch):
            model(inputs[i:i + batch])
    return time.perf_counter() - start


def live_bytes(xmodel: torch.nn.Module) -> int:
    """Bytes of the converted model's parameters, buffers, cached tile tensors and
    programming records (pulse counts with write-verify)."""
    total = sum(t.numel() * t.element_size() for t in xmodel.state_dict().values()
                if isinstance(t, torch.Tensor))
    for m in xmodel.modules():
        if isinstance(m, crossbar.CrossbarLayer):
            for cache in (m._tile_w, getattr(m, "_tile_var", None) or [],
                          [getattr(m, k, None) for k in ("pulses", "converged")]):
                total += sum(t.numel() * t.element_size() for t in cache if t is not None)
    return total


def _status_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: now, ``VmHWM``: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def memory_probe(name: str) -> dict:
    """Run in a fresh process: the peak resident memory during ``to_crossbar`` (with its
    calibration pass) above the memory held before it, against the converted model's live
    tensors; and the peak of one plain inference pass at the same batch for scale."""
    torch.manual_seed(0)
    setup = SETUPS[name]
    model = build_model(name).eval()
    calib = torch.randn(setup["batch"], *setup["shape"])
    reset = Path("/proc/self/clear_refs")
    base = _status_kib("VmRSS")
    reset.write_text("5")  # reset the peak (VmHWM) to the current RSS
    with torch.inference_mode():
        model(calib)
    plain_peak = _status_kib("VmHWM") - base
    base = _status_kib("VmRSS")
    reset.write_text("5")
    xmodel = crossbar.to_crossbar(model, device(), CONFIG, calibration=calib)
    peak = _status_kib("VmHWM") - base
    live = live_bytes(xmodel)
    return {"conversion_peak_added_MiB": peak / 1024, "plain_inference_peak_MiB":
            plain_peak / 1024, "converted_live_MiB": live / 2**20,
            "ratio": peak * 1024 / live}


def _layer_inputs(model: torch.nn.Module, names: set[str], inputs: torch.Tensor,
                  batch: int) -> dict[str, list[torch.Tensor]]:
    """The inputs each named layer of ``model`` receives over one pass of ``inputs``."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda m, args, name=name: seen.setdefault(name, []).append(args[0]))
        for name, m in model.named_modules() if name in names]
    with torch.inference_mode():
        for i in range(0, inputs.shape[0], batch):
            model(inputs[i:i + batch])
    for h in hooks:
        h.remove()
    return seen


def floor_parts(model: torch.nn.Module, xmodel: torch.nn.Module, inputs: torch.Tensor,
                batch: int) -> dict:
    """Seconds of the parts of a crossbar pass over ``inputs`` (see ``--floor``): the plain
    model's own products (``plain_products_s``: what the crossbar layers replace), and the
    crossbar's tile products, variance products and draws, each timed on its own."""
    from memxbar.crossbar import functional
    from memxbar.crossbar.programming import crossbar_modules

    layers = dict(crossbar_modules(xmodel))
    plain_in = _layer_inputs(model, set(layers), inputs, batch)
    xbar_in = _layer_inputs(xmodel, set(layers), inputs, batch)
    parts = {"plain_products_s": 0.0, "products_s": 0.0, "variance_s": 0.0, "draws_s": 0.0}
    modules = dict(model.named_modules())
    with torch.inference_mode():
        for name, layer in layers.items():
            for x in plain_in.get(name, []):
                start = time.perf_counter()
                modules[name](x)
                parts["plain_products_s"] += time.perf_counter() - start
            for x in xbar_in.get(name, []):
                if x.dim() == 3 and getattr(layer, "is_conv1d", False):
                    x = x.unsqueeze(2)
                x = x.reshape(-1, x.shape[-1]) if x.dim() == 3 else x  # Linear on [N, L, F]
                drive = functional.dac_drive(layer, x)
                noisy = layer._tile_var is not None
                x2 = functional.variance_input(layer, drive) if noisy else None
                for u, idx in enumerate(layer._units):
                    w = layer._tile_w[u].flatten(0, 1)
                    start = time.perf_counter()
                    layer._tile_product(drive.x, w, idx)
                    parts["products_s"] += time.perf_counter() - start
                    if noisy:
                        var = layer._tile_var[u].to(x2.dtype)
                        start = time.perf_counter()
                        std = layer._tile_product(x2, var, idx)
                        parts["variance_s"] += time.perf_counter() - start
                        std = std.float()
                        start = time.perf_counter()  # the simulator's own draw (threads)
                        functional.normal(layer, std, "read")
                        parts["draws_s"] += time.perf_counter() - start
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SETUPS), default="lenet5")
    parser.add_argument("--n", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chips", type=int, default=0)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--read-sigma", type=float, default=0.02,
                        help="relative read noise (0: the overhead without per-MVM noise)")
    parser.add_argument("--noise-precision", choices=crossbar.config.NOISE_PRECISIONS,
                        default="auto", help="read-noise variance product: auto (bfloat16 "
                        "where the CPU has it natively) or exact (the model's dtype)")
    parser.add_argument("--floor", action="store_true",
                        help="also time the parts an exact simulation cannot skip (see above)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="results/sim_overhead.json")
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="smallest sizes, seconds (see above)")
    args = parser.parse_args()
    if args.smoke is not None:
        folder = Path(args.smoke or tempfile.mkdtemp(prefix="sim_overhead_smoke_"))
        args.out = str(folder / "sim_overhead.json")
        args.n, args.batch, args.repeats, args.chips, args.threads = 64, 32, 1, 1, 1
        args.floor = True
    if args.probe:
        print(json.dumps(memory_probe(args.model)))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setup = SETUPS[args.model]
    n, batch = args.n or setup["n"], args.batch or setup["batch"]
    model = build_model(args.model).eval()
    inputs = torch.randn(n, *setup["shape"])
    config = CONFIG.with_(noise_precision=args.noise_precision)
    xmodel = crossbar.to_crossbar(model, device(args.read_sigma), config,
                                  calibration=inputs[:batch]).eval()

    run_inference(model, inputs, batch)  # warm-up
    run_inference(xmodel, inputs, batch)
    plain, xbar = [], []
    for _ in range(args.repeats):
        plain.append(run_inference(model, inputs, batch))
        xbar.append(run_inference(xmodel, inputs, batch))
    result = {
        "model": args.model, "inputs": n, "batch": batch, "threads": args.threads,
        "read_sigma": args.read_sigma, "noise_precision": args.noise_precision,
        "plain_s_median": statistics.median(plain),
        "crossbar_s_median": statistics.median(xbar),
        "ratio": statistics.median(xbar) / statistics.median(plain),
        "plain_s": plain, "crossbar_s": xbar,
        "tiles": xmodel.mapping_plan.n_tiles, "torch": torch.__version__,
    }
    print(f"{args.model}: plain {result['plain_s_median']:.3f} s, crossbar "
          f"{result['crossbar_s_median']:.3f} s, ratio {result['ratio']:.2f}")
    if args.floor:
        runs = []
        for _ in range(args.repeats):  # interleaved with plain passes, like the ratio
            plain_s = run_inference(model, inputs, batch)
            runs.append((plain_s, floor_parts(model, xmodel, inputs, batch)))
        plain_s = statistics.median(r[0] for r in runs)
        parts = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
        # the rest of the plain pass (activations, pooling, norms) runs in both
        floor = plain_s - parts["plain_products_s"] + sum(
            v for k, v in parts.items() if k != "plain_products_s")
        result["floor"] = parts | {"plain_s": plain_s, "floor_s": floor,
                                   "floor_ratio": floor / plain_s}
        print("floor: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
              + f"; plain {plain_s:.3f} s: floor ratio {floor / plain_s:.2f}")
    if args.chips:
        start = time.perf_counter()
        for _ in range(args.chips):
            run_inference(model, inputs, batch)
        plain_chips = time.perf_counter() - start
        start = time.perf_counter()
        for seed in range(args.chips):
            xmodel.program(seed + 1)  # recalibrates on the stored batch
            run_inference(xmodel, inputs, batch)
        chips = time.perf_counter() - start
        result.update(chips=args.chips, chips_s=chips, plain_passes_s=plain_chips,
                      chips_ratio=chips / plain_chips)
        print(f"{args.chips} chips {chips:.2f} s vs {args.chips} plain passes "
              f"{plain_chips:.2f} s: ratio {chips / plain_chips:.2f}")
    if args.memory:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--probe"],
                             capture_output=True, text=True, check=True)
        result["memory"] = json.loads(out.stdout.strip().splitlines()[-1])
        m = result["memory"]
        print(f"conversion adds {m['conversion_peak_added_MiB']:.0f} MiB peak for "
              f"{m['converted_live_MiB']:.0f} MiB live: ratio {m['ratio']:.2f}")
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
