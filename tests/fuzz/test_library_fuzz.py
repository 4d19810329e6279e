"""Table-driven bad-input test of the library API (issue 22): ``DeviceModel`` (every field, the
cell models' fields, presets), ``CrossbarConfig``, ``RepairConfig``, ``to_crossbar`` (every
argument), ``program``, ``calibrate``, ``calibrate_outputs`` and the mapping plan. Each bad value
is either refused with a ``ValueError``/``TypeError`` whose message names the argument or field,
or is a legitimate value listed in ALLOWED; a bad value accepted is *silent*, any other
exception or an unnamed message is *raw*. Prints the counts (docs/reliability.md)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from torch import nn

from memxbar import crossbar
from memxbar.crossbar import (
    CrossbarConfig,
    DeviceModel,
    MappingPlan,
    RepairConfig,
    calibrate_outputs,
    plan_layer,
    to_crossbar,
)

BAD = {"str": "abc", "negative": -1, "zero": 0, "nan": math.nan, "inf": math.inf,
       "huge": 1e30, "negative_float": -0.5, "list": [1, 2], "bool": True, "dict": {"a": 1}}

ALLOWED = {  # (class, field) -> kinds of "bad" value that are legitimate there
    ("DeviceModel", "g_min_uS"): {"zero"},            # an infinite on/off ratio
    ("DeviceModel", "t_inference_s"): {"zero"},       # read right after programming
    ("CrossbarConfig", "adc_noise"): {"zero"},
    ("CrossbarConfig", "spare_rows"): {"zero"},
    ("CrossbarConfig", "spare_cols"): {"zero"},
    ("CrossbarConfig", "drift_compensation"): {"bool"},
    ("CrossbarConfig", "output_calibration"): {"bool"},
    ("RepairConfig", "compensation"): {"bool"},
    ("RepairConfig", "placement"): {"bool"},
    ("RepairConfig", "miss_rate"): {"zero"},
    ("programming", "sigma"): {"zero"}, ("read_noise", "sigma"): {"zero"},
    ("faults", "sa0_rate"): {"zero"}, ("faults", "sa1_rate"): {"zero"},
    ("drift", "nu_std"): {"zero"},
    ("DeviceModel", "levels_uS"): {"list"},          # two levels, 1 and 2 uS: a binary cell
    ("programming", "coeffs_uS"): {"list"},          # sigma(G) = 1 uS + 2 G: a polynomial spread
    ("programming", "scale"): {"zero"},              # no programming spread
    ("read_noise", "scale"): {"zero"},               # no read noise (pcm_1f)
    ("drift", "scale"): {"zero"},                    # no drift
}


def _outcome(call: Callable[[], object], names: tuple[str, ...]) -> str:
    """``clear``: a ValueError/TypeError naming one of ``names``; ``raw``: any other exception
    or message; ``accepted``: no exception."""
    try:
        call()
    except (ValueError, TypeError) as exc:
        text = str(exc)
        return "clear" if any(n in text for n in names) else f"raw: {type(exc).__name__}: {text}"
    except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
        return f"raw: {type(exc).__name__}: {exc}"
    return "accepted"


def _record(table: Counter, problems: list, area: str, label: str, outcome: str,
            legit: bool) -> None:
    if outcome == "clear":
        table[area, "clear"] += 1
    elif outcome == "accepted" and legit:
        table[area, "legit"] += 1
    elif outcome == "accepted":
        table[area, "silent"] += 1
        problems.append(f"silent: {area} {label}")
    else:
        table[area, "raw"] += 1
        problems.append(f"{area} {label}: {outcome[:300]}")


# ---------------------------------------------------------------------------- the settings
def _settings_cases():
    """(area, label, call, names, legit) for every field of the three settings classes and of
    each cell model of the richest presets."""
    for cls in (DeviceModel, CrossbarConfig, RepairConfig):
        base = cls().to_dict() if hasattr(cls, "to_dict") else dataclasses.asdict(cls())
        for f in dataclasses.fields(cls):
            for kind, value in BAD.items():
                data = dict(base, **{f.name: value})
                build = (lambda d=data, c=cls: c.from_dict(d)) if hasattr(cls, "from_dict") \
                    else (lambda d=data, c=cls: c(**d))
                legit = kind in ALLOWED.get((cls.__name__, f.name), set())
                yield cls.__name__, f"{f.name}={value!r}", build, (f.name,), legit
    for preset in ("pcm_aihwkit", "rram_neurram", "rram_milo"):
        base = DeviceModel.preset(preset).to_dict()
        base.pop("preset", None)
        for component in ("programming", "read_noise", "drift", "faults", "write_verify"):
            block = base.get(component)
            if not isinstance(block, dict):
                continue
            for field in block:
                if field == "model":
                    continue
                for kind, value in BAD.items():
                    data = copy.deepcopy(base)
                    data[component][field] = value
                    legit = kind in ALLOWED.get((component, field), set())
                    yield ("DeviceModel cell models", f"{preset} {component}.{field}={value!r}",
                           lambda d=data: DeviceModel.from_dict(d), (field,), legit)
    for value in ("nope", 5, None, ["rram16"]):
        yield "DeviceModel", f"preset({value!r})", lambda v=value: DeviceModel.preset(v), \
            ("preset",), False


# ------------------------------------------------------------------------ the conversion API
@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    return model, torch.randn(16, 1, 8, 8)


def _conversion_cases(model, x):
    dev, cfg = DeviceModel(n_levels=16, prog_sigma=0.05), CrossbarConfig(adc_bits=6, dac_bits=6)
    cal_cfg = CrossbarConfig(adc_bits=6, dac_bits=6, output_calibration=True)

    def convert(**kw):
        args = dict(model=model, device=dev, config=cfg, calibration=x)
        args.update(kw)
        return lambda: to_crossbar(**args)

    bad_tensors = {
        "a list": x.tolist(), "int64": x.long(), "float64": x.double(), "float16": x.half(),
        "1-D": x[0, 0, 0], "no samples": x[:0], "3 channels": x.repeat(1, 3, 1, 1),
        "flat": x.flatten(1), "NaN": x * math.nan, "inf": x * math.inf, "5-D": x[None],
        "too small to convolve": x[:, :, :2, :2], "a string": "abc", "None with calibrated ADC":
        None}
    for label, value in bad_tensors.items():
        yield "to_crossbar", f"calibration {label}", convert(calibration=value), \
            ("calibration", "shape"), False
    for label, value in {"str": "abc", "dict": {}, "float64 model": copy.deepcopy(model).double(),
                         "no mapped layer": nn.Sequential(nn.ReLU()),
                         "half model": copy.deepcopy(model).half()}.items():
        yield "to_crossbar", f"model {label}", convert(model=value), ("model", "Linear"), False
    for label, value in {"device str": "rram16", "device dict": {}, "device None": None}.items():
        yield "to_crossbar", label, convert(device=value), ("device",), False
    for label, value in {"config str": "x", "config dict": {"tile_rows": 64}}.items():
        yield "to_crossbar", label, convert(config=value), ("config",), False
    for kind, value in BAD.items():
        yield "to_crossbar", f"seed={value!r}", convert(seed=value), ("seed",), kind == "zero"
    for value in (2**64, 1.5, "1", -3, None):
        yield "to_crossbar", f"seed={value!r}", convert(seed=value), ("seed",), False
    masks = {"wrong shape": {"0": torch.ones(3, 3, dtype=torch.bool)},
             "not a tensor": {"0": [[1]]}, "halves": {"0": torch.full((4, 9), 0.5)},
             "unknown layer": {"9": torch.ones(4, 9, dtype=torch.bool)},
             "a list": [torch.ones(4, 9)], "a string": "0"}
    for label, value in masks.items():
        yield "to_crossbar", f"masks {label}", convert(masks=value), ("masks",), False
    scales = {"negative": {"0": -1.0}, "NaN": {"0": math.nan}, "zero": {"0": 0.0},
              "wrong length": {"0": torch.ones(3)}, "unknown layer": {"9": 1.0},
              "a string": {"0": "big"}, "a list": [1.0]}
    for label, value in scales.items():
        yield "to_crossbar", f"scales {label}", convert(scales=value), ("scales",), False
    for label, value in {"a string": "0", "unknown": ["zz"], "every layer": ["*"],
                         "a number": [3]}.items():
        yield "to_crossbar", f"digital {label}", convert(digital=value), ("digital",), False
    for label, value in {"not a device": {"0": 5}, "unknown pattern": {"zz": dev},
                         "two patterns one layer": {"0": dev, "*": dev}}.items():
        yield "to_crossbar", f"devices {label}", convert(devices=value), ("devices",), False
    for label, value in {"a dict": {"placement": True}, "a string": "on"}.items():
        yield "to_crossbar", f"repair {label}", convert(repair=value), ("repair",), False
    good = crossbar.plan_model(model, cfg)
    other_tiles = crossbar.plan_model(model, CrossbarConfig(tile_rows=64, tile_cols=64))
    plans = {"of other tiles": other_tiles, "missing a layer": MappingPlan(
        {"0": good["0"]}), "a dict": good.to_dict(), "a string": "plan.json"}
    for label, value in plans.items():
        yield "to_crossbar", f"plan {label}", convert(plan=value), ("plan",), False

    chip = to_crossbar(model, dev, cal_cfg, calibration=x)
    for kind, value in BAD.items():
        yield "program", f"seed={value!r}", lambda v=value: chip.program(v), ("seed",), \
            kind == "zero"
    for value in (2**64, 1.5, "1", None):
        yield "program", f"seed={value!r}", lambda v=value: chip.program(v), ("seed",), False
    for label, value in bad_tensors.items():
        if value is None:
            continue
        yield "calibrate", f"inputs {label}", lambda v=value: chip.calibrate(v), \
            ("calibration", "shape"), False
    other_chip = to_crossbar(model, dev, cal_cfg, calibration=x, seed=1)
    wider = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 5))
    refs = {"the chip": chip, "another chip": other_chip, "another model": wider,
            "a float64 model": copy.deepcopy(model).double(), "a string": "model",
            "a model without the layers": nn.Sequential(nn.Linear(3, 3))}
    for label, value in refs.items():
        yield "calibrate_outputs", f"reference {label}", \
            lambda v=value: calibrate_outputs(chip, v, x), ("reference",), False
    for label, value in bad_tensors.items():
        yield "calibrate_outputs", f"inputs {label}", \
            lambda v=value: calibrate_outputs(chip, model, v), ("inputs",), False
    yield "calibrate_outputs", "one sample", lambda: calibrate_outputs(chip, model, x[:1]), \
        ("inputs",), False
    for value in BAD.values():
        yield "calibrate_outputs", f"batch_size={value!r}", \
            lambda v=value: calibrate_outputs(chip, model, x, batch_size=v), ("batch_size",), \
            False
    yield "calibrate_outputs", "a chip without output calibration", \
        lambda: calibrate_outputs(to_crossbar(model, dev, cfg, calibration=x), model, x), \
        ("output_calibration",), False
    for kind, value in BAD.items():
        if kind in ("list", "dict", "str"):
            continue
        yield "plan_layer", f"mvms_per_sample={value!r}", lambda v=value: plan_layer(
            "l", "linear", torch.ones(4, 4, dtype=torch.bool), cfg, mvms_per_sample=v), \
            ("mvms_per_sample",), False
    for label, value in {"3-D mask": torch.ones(2, 2, 2, dtype=torch.bool)}.items():
        yield "plan_layer", label, lambda v=value: plan_layer("l", "linear", v, cfg), \
            ("mask",), False


def test_every_bad_library_input_is_refused_naming_it(model_and_batch, capsys):
    model, x = model_and_batch
    table: Counter = Counter()
    problems: list[str] = []
    for area, label, call, names, legit in [*_settings_cases(), *_conversion_cases(model, x)]:
        _record(table, problems, area, label, _outcome(call, names), legit)
    areas = sorted({a for a, _ in table})
    with capsys.disabled():
        print("\nlibrary fuzz: area | inputs | clear | legit | raw | silent")
        for area in areas:
            counts = [table[area, k] for k in ("clear", "legit", "raw", "silent")]
            print(f"  {area} | {sum(counts)} | " + " | ".join(map(str, counts)))
        total = [sum(table[a, k] for a in areas) for k in ("clear", "legit", "raw", "silent")]
        print(f"  all | {sum(total)} | " + " | ".join(map(str, total)))
    assert not problems, "\n".join(problems)
