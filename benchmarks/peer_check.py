"""Cross-check crossbar MVMs against an independent simulator, IBM's aihwkit-lightning.

Random ``nn.Linear`` layers run through ``crossbar.to_crossbar`` with an ideal device and
through aihwkit-lightning's pure-PyTorch path (``TorchLinear``, eval mode, no noise, no weight
clipping or quantization); the script prints max |ours - peer| per case and exits nonzero if a
difference exceeds float rounding (ideal) or more than a stray ADC code (quantized).

How the settings are made equivalent:

* ideal: no DAC/ADC on our side; the peer with ``inp_res = out_res = -1``, no input range,
  ``max_input_size = tile_rows`` (it splits the rows evenly, e.g. 300 -> 3 x 100, where we cut
  128 + 128 + 44; for exact arithmetic the split does not matter).
* DAC: ours is one signed range per layer, ``r = max |calibration input|``, step ``r / q`` with
  ``q = 2^(b-1) - 1``, round, clamp to +-q codes. The peer clamps to a per-tile
  ``input_range`` and quantizes with step ``2 * input_range / inp_res``; with
  ``input_range = r`` on every tile and ``inp_res = 2^b - 2`` both give the same codes.
  (Non-negative inputs would get an unsigned ``2^b - 1`` code DAC from us; the peer is always
  signed, so the inputs here are signed.)
* ADC: ours quantizes each (row-tile x column-tile) partial sum with its own range R_t,
  step ``R_t / q``, clamp +-q. The peer quantizes each row slice's partial sums with step
  ``2 * bound / out_res`` and clamps to +-bound, ``bound = input_range * out_bound * wmax``,
  ``wmax`` = the slice's largest |weight|; ``out_bound`` is one number per layer, so a
  per-tile R_t cannot be expressed in one peer layer. We therefore run one single-slice peer
  layer per tile of our mapping plan (``W[cols, rows]``, ``out_res = 2^b - 2``,
  ``out_bound = R_t / (r * wmax_t)``) and add the tiles' outputs (what the peer's own slice
  loop does) and the bias digitally. R_t: ``calibrated`` = largest |partial sum| of the
  DAC-quantized calibration batch, measured with the peer (DAC only) and compared with ours
  indirectly through the outputs; ``full_scale`` = ``r * rows_t * max |W|`` (full-scale input
  on every row of a full-range cell pair).
* Remaining differences: both sides round the same values computed in different orders (we
  fold the DAC step into the weights and round in code units; the peer rounds in value units),
  and our weights pass through float32 conductances (relative error ~1e-7, also after a cast
  to float64). A DAC or ADC input that close to a rounding threshold can come out one code
  apart, so in float32 a few outputs (<0.01 %) differ by one LSB of one tile; all others, and
  all float64 outputs here, agree to float rounding. Not covered: noise (the peer's
  ``out_noise`` and weight noise are training-time only), bit-serial input, weight
  bit-slicing, offset mapping, unsigned DAC; the peer has no column tiles of its own (the
  per-tile layers emulate them) and adds a slice's outputs after its ADC, as we do.

    pip install -e .[peers]          # aihwkit-lightning (needs torch==2.13.0)
    python benchmarks/peer_check.py [--dac-bits 8] [--adc-bits 8]
    python benchmarks/peer_check.py --smoke [DIR]   # seconds

Without aihwkit-lightning the full check exits nonzero and says so. ``--smoke [DIR]`` runs the
two smaller sizes, every mode and dtype: with the peer installed, the same comparison; without
it, only our side of each case (the peer side is skipped, and the script says so: no
comparison with the peer takes place), checked where an exact reference exists: the ideal
cases against the digital ``nn.Linear``. Prints only (DIR, accepted for a uniform command line,
stays empty).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

import torch
from torch import nn

from memxbar import crossbar

try:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a notice when triton is absent
        from aihwkit_lightning.nn import AnalogLinear
        from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig
    PEER_MISSING = None
except ImportError as exc:
    PEER_MISSING = f"aihwkit-lightning is not installed ({exc})"

SIZES = [(64, 32), (300, 100), (512, 256)]  # (in_features, out_features)
TILE = 128
BATCH = 256


def peer_layer(w: torch.Tensor, bias: torch.Tensor | None, max_input_size: int,
               converters: tuple[int, int, float, float] | None = None) -> AnalogLinear:
    """A peer layer holding ``w``; ``converters`` = (dac_bits, adc_bits or 0, input range,
    out_bound): DAC on, ADC on when adc_bits > 0."""
    cfg = TorchInferenceRPUConfig()
    cfg.mapping.max_input_size = max_input_size
    if converters is not None:
        dac_bits, adc_bits, in_range, out_bound = converters
        cfg.pre_post.input_range.enable = True
        cfg.pre_post.input_range.learn_input_range = False
        cfg.forward.inp_res = 2**dac_bits - 2
        if adc_bits:
            cfg.forward.out_res = 2**adc_bits - 2
            cfg.forward.out_bound = out_bound
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias)
    layer = AnalogLinear.from_digital(lin, cfg).eval()
    if converters is not None:
        layer.input_range.data.fill_(converters[2])
    return layer


@torch.no_grad()
def peer_tiled(lin: nn.Linear, tiles, x: torch.Tensor, calib: torch.Tensor, mode: str,
               dac_bits: int, adc_bits: int) -> tuple[torch.Tensor, list[float]]:
    """Peer output with one single-slice peer layer per tile of ours; also the ADC steps."""
    w = lin.weight.to(x.dtype)
    r = float(calib.abs().max())
    wmax_layer = float(w.abs().max())
    out = x.new_zeros(x.shape[0], w.shape[0])
    steps = []
    for tile in tiles:
        rows, cols = list(tile.rows), list(tile.cols)
        wt = w[cols][:, rows]
        wmax = float(wt.abs().max())
        if mode == "calibrated":
            dac_only = peer_layer(wt, None, -1, (dac_bits, 0, r, 0.0))
            full = float(dac_only(calib[:, rows]).abs().max())
        else:  # full_scale
            full = r * len(rows) * wmax_layer
        layer = peer_layer(wt, None, -1, (dac_bits, adc_bits, r, full / (r * wmax)))
        out[:, cols] += layer(x[:, rows])
        steps.append(full / (2 ** (adc_bits - 1) - 1))
    return out + lin.bias.to(x.dtype), steps


def ours_case(n_in: int, n_out: int, mode: str, dtype: torch.dtype, dac_bits: int,
              adc_bits: int) -> tuple[nn.Linear, nn.Module, torch.Tensor, torch.Tensor,
                                      torch.Tensor]:
    """Our side of a case: the layer, its crossbar model, the calibration batch and inputs
    (in ``dtype``) and our output."""
    gen = torch.Generator().manual_seed(n_in * 1000 + n_out)
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.rand(n_out, n_in, generator=gen) * 2 - 1).div_(n_in**0.5)
        lin.bias.copy_(torch.randn(n_out, generator=gen) * 0.1)
    calib = torch.randn(BATCH, n_in, generator=gen)
    x = torch.randn(BATCH, n_in, generator=gen)  # its tails exceed the calibrated ranges
    ideal = mode == "ideal"
    config = crossbar.CrossbarConfig(
        tile_rows=TILE, tile_cols=TILE, dac_bits=None if ideal else dac_bits,
        adc_bits=None if ideal else adc_bits, adc_range="full_scale" if ideal else mode)
    ours_model = crossbar.to_crossbar(nn.Sequential(lin), crossbar.DeviceModel.ideal(), config,
                                      calibration=calib, seed=0).to(dtype)
    calib, x = calib.to(dtype), x.to(dtype)
    if not ideal:
        ours_model.calibrate(calib)  # recalibrate in this dtype
    with torch.no_grad():
        ours = ours_model(x)
    return lin, ours_model, calib, x, ours


def ours_only(n_in: int, n_out: int, mode: str, dtype: torch.dtype, dac_bits: int,
              adc_bits: int) -> dict:
    """Our side alone (no peer): finite outputs, and in the ideal mode the digital layer's
    output to float rounding (an exact reference, not the peer)."""
    lin, _, _, x, ours = ours_case(n_in, n_out, mode, dtype, dac_bits, adc_bits)
    row = {"case": f"{n_in}x{n_out} {mode} {str(dtype).removeprefix('torch.')}",
           "finite": bool(torch.isfinite(ours).all()), "max_out": float(ours.abs().max())}
    if mode == "ideal":
        with torch.no_grad():
            digital = nn.functional.linear(x, lin.weight.to(dtype), lin.bias.to(dtype))
        row["rel_digital"] = float((ours - digital).abs().max() / digital.abs().max())
    return row


def run_case(n_in: int, n_out: int, mode: str, dtype: torch.dtype, dac_bits: int,
             adc_bits: int) -> dict:
    lin, ours_model, calib, x, ours = ours_case(n_in, n_out, mode, dtype, dac_bits, adc_bits)
    ideal = mode == "ideal"
    if ideal:
        with torch.no_grad():
            peer = peer_layer(lin.weight.to(dtype), lin.bias.to(dtype), TILE)(x)
        steps = []
    else:
        (layer_plan,) = ours_model.mapping_plan.layers.values()
        peer, steps = peer_tiled(lin, layer_plan.tiles, x, calib, mode, dac_bits, adc_bits)
    diff = (ours - peer).abs()
    fine, coarse = (min(steps), max(steps)) if steps else (float("nan"), float("nan"))
    return {
        "case": f"{n_in}x{n_out} {mode} {str(dtype).removeprefix('torch.')}",
        "max_diff": float(diff.max()),
        "rel": float(diff.max() / peer.abs().max()),
        "lsb": float(diff.max()) / coarse,  # 1 = one code of the coarsest tile's ADC
        "off": float((diff > 0.5 * fine).float().mean()) if steps else 0.0,
        "max_lsb_allowed": len(steps) * 1.0001,  # each output meets <= n_tiles ADCs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dac-bits", type=int, default=8)
    parser.add_argument("--adc-bits", type=int, default=8)
    parser.add_argument("--smoke", nargs="?", const="", metavar="DIR",
                        help="the two smaller sizes, seconds (see above)")
    args = parser.parse_args()
    sizes = SIZES[:2] if args.smoke is not None else SIZES
    if PEER_MISSING is not None:
        if args.smoke is None:
            sys.exit(f"peer_check: {PEER_MISSING}; install the peer simulator with: pip "
                     "install .[peers]")
        return smoke_ours_only(sizes, args.dac_bits, args.adc_bits)
    torch.manual_seed(0)
    header = (f"{'case':<28} {'max|ours-peer|':>15} {'/ max|out|':>11} "
              f"{'/ ADC LSB':>10} {'outputs off':>12}")
    print(f"aihwkit-lightning peer check, tiles {TILE}x{TILE}, batch {BATCH}, "
          f"DAC {args.dac_bits} b, ADC {args.adc_bits} b, ideal device")
    print(header)
    print("-" * len(header))
    failures = []
    for mode in ("ideal", "calibrated", "full_scale"):
        for dtype in (torch.float32, torch.float64):
            for n_in, n_out in sizes:
                r = run_case(n_in, n_out, mode, dtype, args.dac_bits, args.adc_bits)
                lsb = "-" if mode == "ideal" else f"{r['lsb']:.3g}"
                off = "-" if mode == "ideal" else f"{100 * r['off']:.3f} %"
                print(f"{r['case']:<28} {r['max_diff']:>15.3e} {r['rel']:>11.3e} "
                      f"{lsb:>10} {off:>12}")
                bad = (r["rel"] > 1e-5 if mode == "ideal"
                       else r["lsb"] > r["max_lsb_allowed"] or r["off"] > 1e-3)
                if bad:
                    failures.append(r["case"])
    print("/ ADC LSB: max diff in steps of the coarsest tile's ADC; outputs off: share of "
          "outputs differing by more than half the finest tile's ADC step")
    if failures:
        sys.exit(f"peer_check: ours and aihwkit-lightning disagree beyond tolerance in: "
                 f"{', '.join(failures)}")
    print("OK: all cases agree within tolerance")


def smoke_ours_only(sizes: list[tuple[int, int]], dac_bits: int, adc_bits: int) -> None:
    """--smoke without the peer: our side of every case, the peer side skipped."""
    print(f"peer_check --smoke: {PEER_MISSING}: the peer side is SKIPPED and nothing is "
          "compared with aihwkit-lightning; running our side of each case only (install the "
          "peer with: pip install .[peers])")
    torch.manual_seed(0)
    print(f"{'case':<28} {'finite':>7} {'max|out|':>10} {'/ digital':>11}")
    failures = []
    for mode in ("ideal", "calibrated", "full_scale"):
        for dtype in (torch.float32, torch.float64):
            for n_in, n_out in sizes:
                r = ours_only(n_in, n_out, mode, dtype, dac_bits, adc_bits)
                rel = f"{r['rel_digital']:.3e}" if "rel_digital" in r else "-"
                print(f"{r['case']:<28} {str(r['finite']):>7} {r['max_out']:>10.3g} {rel:>11}")
                if not r["finite"] or r.get("rel_digital", 0.0) > 1e-5:
                    failures.append(r["case"])
    print("/ digital: max |ours - digital nn.Linear| / max |digital| (ideal cases: an exact "
          "reference, not the peer)")
    if failures:
        sys.exit(f"peer_check --smoke: our side failed in: {', '.join(failures)}")
    print("OK (our side only; peer comparison skipped: aihwkit-lightning is not installed)")


if __name__ == "__main__":
    main()
