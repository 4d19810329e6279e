"""Table-driven bad-input test (issue 22, "Nothing silent, nothing lost"), two areas:

- **A, the device study** (``python -m memxbar.experiments.device_study``): every key of the
  ``study`` block (and ``eval.chips``) set to a wrong type, a negative, zero, NaN, inf, a huge
  number, a list, a string and null; the sweep and grid keys and values a user writes
  (``+study.sweeps={adc_bits: [...]}``: unknown keys, an ``<effect>.<field>`` that does not
  exist, wrong types, NaN, negatives, huge values, empty lists, duplicates, two names of one
  setting on a grid's axes); and ``study.source`` folders that do not exist, are a file, hold
  another model's or data set's run, lack or truncate a checkpoint.
- **B, data, checkpoints and resume**: IDX and CIFAR-10 files that are missing, truncated,
  corrupt, empty, of the wrong magic, size or label range; a user's own data
  (``dataset._target_``) of wrong shapes, dtypes, labels, NaN inputs or empty splits;
  ``train.checkpoint`` pointing at a truncated file, a non-torch file, a directory, another
  model's weights or NaN weights; ``resume=true`` into folders holding half-written or foreign
  checkpoints, a foreign ``config.yaml`` or a broken ``study_points.json`` (beside what
  ``tests/test_run_folders.py`` covers).

Each input runs in-process through the app's own entry (``run_compress`` /
``run_device_study``: the loader, the preflight, the source and run-folder checks) with its work
(``compress_run`` / ``_run_device_study``: loading the data, pretraining, ...) replaced by a
sentinel, and is classified:

- ``clear``: refused before any work, nothing written in the run folder, the message naming the
  key or file, the value and what is allowed (a file: what is wrong with it);
- ``legit``: a fine input, listed as such with the reason (it must reach the work);
- ``late``: an input the checks let through, or refused after something was written: the run
  is then repeated for real, with tiny settings, and fails later;
- ``silent``: let through, and the real run finishes on it;
- ``raw``: a traceback, or a message that does not name the key or file and what is allowed.

The test asserts no ``raw``, ``silent`` or ``late`` input (nor a refused legitimate one) and
prints the counts per area, to be quoted in docs/reliability.md
(``MEMXBAR_FUZZ_VERBOSE=1`` prints every input's outcome and message too)."""

from __future__ import annotations

import copy
import gzip
import json
import math
import os
import pickle
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from memxbar.experiments import pipeline
from memxbar.experiments import study as study_module
from memxbar.experiments.conf_source import CONF_DIR
from memxbar.experiments.config import load_compress_config, load_study_config
from memxbar.experiments.guard import DENSE_KEYS, fingerprint
from memxbar.experiments.runtime import save_config
from memxbar.experiments.stages import make_model

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
"""The official MNIST files (read, copied in part, never written)."""

FAST = ["train.epochs=3", "eval.chips=1", "eval.test_subset=40", "eval.calibration_samples=16",
        "runtime.progress=false", "runtime.threads=1", "runtime.device=cpu",
        "admm.prune_epochs=2", "admm.prune_retrain_epochs=2", "admm.quant_epochs=1",
        "admm.quant_retrain_epochs=1", "robustness.hardware_aware=false",
        "robustness.ablation=false", "robustness.calibration_samples=16"]
"""Tiny settings (a dense LeNet-5 of about 88 %): an input the checks let through is run for
real with them, its models shared through a model cache (late or silent)."""
STUDY_FAST = FAST + ["study.models=[compressed]", "study.grids=[]",
                     "study.layer_sensitivity=false", "~study.sweeps",
                     "+study.sweeps={adc_bits: [4, 8]}"]

BAD = {"str": "abc", "negative": -1, "zero": 0, "nan": math.nan, "inf": math.inf,
       "huge": 1e30, "negative_float": -0.5, "list": [1, 2], "null": None}


@dataclass
class Case:
    """One bad (or legitimate) input: the app, its resolved config, the words a clear refusal
    names, ``legit`` (why the input is fine: it must be accepted) and, for a resume, the
    prepared run folder (else a new one)."""

    label: str
    app: str
    config: dict
    words: tuple[str, ...]
    legit: str | None = None
    run_dir: Path | None = None
    setting: bool = True
    """A setting: the message also says what is allowed (a file: what is wrong with it)."""


class Reached(Exception):
    """The run passed every check and reached its first work."""


def _base(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def _with(data: dict, **changes: object) -> dict:
    """A deep copy of ``data`` with keys set (``study__sweeps=...`` sets ``study.sweeps``);
    the value ``...`` deletes the key."""
    out = copy.deepcopy(data)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


APPS: dict[str, Callable] = {}
GATE = {"open": False}


@pytest.fixture()
def gated(monkeypatch):
    """The apps with their first work replaced by :class:`Reached` while ``GATE`` is shut."""
    real = {"compress": pipeline.compress_run, "study": study_module._run_device_study}

    def gate(app):
        def run(*args, **kwargs):
            if not GATE["open"]:
                raise Reached
            return real[app](*args, **kwargs)
        return run

    monkeypatch.setattr(pipeline, "compress_run", gate("compress"))
    monkeypatch.setattr(study_module, "_run_device_study", gate("study"))
    APPS.update(compress=pipeline.run_compress, study=study_module.run_device_study)
    yield
    GATE["open"] = False


def _classify(case: Case, scratch: Path) -> tuple[str, str]:
    """``(outcome, detail)`` of one input (module docstring)."""
    run_dir = case.run_dir or scratch / "run"
    before = _snapshot(run_dir)
    GATE["open"] = False
    try:
        APPS[case.app](copy.deepcopy(case.config), run_dir)
    except Reached:
        if case.legit:
            return "legit", ""
        return _real_run(case, scratch)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        if _snapshot(run_dir) != before:
            return "late", f"refused after writing in the run folder: {message}"
        if case.legit:
            return "refused", f"a legitimate input ({case.legit}) was refused: {message}"
        missing = [w for w in case.words if w not in str(exc)]
        if case.setting and "allowed" not in str(exc):
            missing.append("allowed")
        if missing:
            return "raw", f"the message lacks {missing}: {message}"
        return "clear", message
    except Exception as exc:  # noqa: BLE001 - a raw error is a finding
        return "raw", f"{type(exc).__name__}: {exc}"
    return "late", "the sentinel did not stop the run"


def _real_run(case: Case, scratch: Path) -> tuple[str, str]:
    """An input the checks let through, run for real (tiny settings): ``late`` when the run
    fails on it after its work started, ``silent`` when it finishes."""
    run_dir = scratch / "real"
    if case.run_dir is not None:
        shutil.copytree(case.run_dir, run_dir)
    config = copy.deepcopy(case.config)
    if case.run_dir is None:  # (a resumed folder's checkpoints would be stored in the cache)
        config["runtime"]["cache_dir"] = str(scratch.parent / "cache")
    GATE["open"] = True
    try:
        APPS[case.app](config, run_dir)
    except Exception as exc:  # noqa: BLE001 - whatever it is, it came after the work began
        kind = "late" if isinstance(exc, (ValueError, FileNotFoundError)) else "raw"
        return kind, f"accepted, then after the work began: {type(exc).__name__}: {exc}"
    finally:
        GATE["open"] = False
    return "silent", "accepted, and the run finished on it"


def _run_cases(area: str, cases: list[Case], tmp_path: Path, capsys) -> Counter:
    outcome: Counter = Counter()
    problems, shown = [], []
    for i, case in enumerate(cases):
        scratch = tmp_path / f"{area}{i}"
        scratch.mkdir()
        kind, detail = _classify(case, scratch)
        outcome[kind] += 1
        if kind not in ("clear", "legit"):
            problems.append(f"[{kind}] {case.label}: {detail}"[:600])
        elif os.environ.get("MEMXBAR_FUZZ_VERBOSE"):
            shown.append(f"[{kind}] {case.label}: {detail or case.legit}"[:400])
    with capsys.disabled():
        print(f"\nstudy/data fuzz, area {area}: {len(cases)} inputs: "
              + ", ".join(f"{k} {outcome[k]}" for k in ("clear", "legit", "late", "raw",
                                                          "silent", "refused")))
        for line in shown + problems:
            print("  " + line)
    assert not problems, "\n".join(problems[:60])
    return outcome


# --------------------------------------------------------------------------------- area A
SWEEPS = [  # (sweeps, the key a clear refusal names, legit: why the input is fine)
    ({"bogus": [1]}, "bogus", None),
    ({"programming.bogus": [1.0]}, "programming.bogus", None),
    ({"drift.scale": [2.0]}, "drift.scale", None),                 # rram16 has no drift model
    ({"write_verify.tolerance_uS": [1.0]}, "write_verify.tolerance_uS", None),  # nor one
    ({"array.r_sense_ohm": [10.0]}, "array.r_sense_ohm", None),    # an ideal array
    ({"robustness.bogus": [1]}, "robustness.bogus", None),
    ({"robustness.hardware_aware": [True]}, "robustness.hardware_aware", None),
    ({"robustness.spare_rows": [-1]}, "spare_rows", None),
    ({"robustness.miss_rate": [math.nan]}, "miss_rate", None),
    ({"robustness.write_verify": ["x"]}, "write_verify", None),
    ({"adc_bits": ["abc"]}, "adc_bits", None),
    ({"adc_bits": [4.5]}, "adc_bits", None),
    ({"adc_bits": [True]}, "adc_bits", None),
    ({"adc_bits": [math.nan]}, "adc_bits", None),
    ({"adc_bits": [-1]}, "adc_bits", None),
    ({"adc_bits": [0]}, "adc_bits", None),
    ({"adc_bits": [1e30]}, "adc_bits", None),
    ({"adc_bits": [[4, 6]]}, "adc_bits", None),
    ({"adc_bits": []}, "adc_bits", None),
    ({"adc_bits": 4}, "adc_bits", None),
    ({"adc_bits": None}, "adc_bits", None),
    ({"adc_bits": "4,6"}, "adc_bits", None),
    ({"adc_bits": {"a": 1}}, "adc_bits", None),
    ({"adc_bits": [4, 4]}, "adc_bits", None),                      # a point twice
    ({"adc_bits": [4, 4.0]}, "adc_bits", None),                    # the same point, twice
    ({"adc_bits": [4, None]}, "adc_bits", "null: an ideal ADC (no quantization)"),
    ({"prog_sigma": ["x"]}, "prog_sigma", None),
    ({"prog_sigma": [math.nan]}, "prog_sigma", None),
    ({"prog_sigma": [math.inf]}, "prog_sigma", None),
    ({"prog_sigma": [-0.1]}, "prog_sigma", None),
    ({"prog_sigma": [1e30]}, "prog_sigma", None),
    ({"prog_sigma": [[0.1]]}, "prog_sigma", None),
    ({"prog_sigma": [0.0]}, "prog_sigma", "0: no programming variation"),
    ({"read_sigma": [-0.02]}, "read_sigma", None),
    ({"read_sigma": [math.nan]}, "read_sigma", None),
    ({"sa_rate": ["x"]}, "sa_rate", None),
    ({"sa_rate": [math.nan]}, "sa_rate", None),
    ({"sa_rate": [-0.01]}, "sa_rate", None),
    ({"sa_rate": [1.5]}, "sa_rate", None),
    ({"sa_rate": [1e30]}, "sa_rate", None),
    ({"sa_rate": [None]}, "sa_rate", None),
    ({"sa_rate": [True]}, "sa_rate", None),
    ({"n_levels": [1]}, "n_levels", None),
    ({"n_levels": [0]}, "n_levels", None),
    ({"n_levels": [-4]}, "n_levels", None),
    ({"n_levels": [1e30]}, "n_levels", None),
    ({"n_levels": [4.5]}, "n_levels", None),
    ({"n_levels": [2 ** 40]}, "n_levels", None),
    ({"n_levels": [2]}, "n_levels", "2: a binary cell"),
    ({"g_min_uS": [1e30]}, "g_min_uS", None),                      # above g_max_uS
    ({"g_min_uS": [-1.0]}, "g_min_uS", None),
    ({"g_max_uS": [0.0]}, "g_max_uS", None),
    ({"t_inference_s": [-1.0]}, "t_inference_s", None),
    ({"t_inference_s": [math.nan]}, "t_inference_s", None),
    ({"t_inference_s": [0.0, 3600.0]}, "t_inference_s",
     "no drift model: its points do not differ, and the log names the key and a device with "
     "drift (tests/test_experiments.py::test_time_sweep_on_a_device_without_drift_is_warned)"),
    ({"tile_rows": [0]}, "tile_rows", None),
    ({"tile_rows": [1e30]}, "tile_rows", None),
    ({"tile_rows": [3.5]}, "tile_rows", None),
    ({"mapping": ["bogus"]}, "mapping", None),
    ({"dac": ["bogus"]}, "dac", None),
    ({"drift_compensation": ["yes"]}, "drift_compensation", None),
    ({"r_wire_ohm": [math.nan]}, "r_wire_ohm", None),
    ({"prog_sigma": [0.1], "programming.sigma": [0.1]}, "programming.sigma",
     "two names of one setting in two one-at-a-time sweeps: each sweep is right on its own"),
    ({}, "study.sweeps", None),
    ({1: [4]}, "study.sweeps", None),
]

GRIDS = [  # (grids, the words a clear refusal names, legit)
    ([{"prog_sigma": [0.1]}], ("grids[0]",), None),
    ([{"prog_sigma": [0.1], "adc_bits": [4], "n_levels": [4]}], ("grids[0]",), None),
    ([{"prog_sigma": [], "adc_bits": [4]}], ("grids[0].prog_sigma",), None),
    ([{"prog_sigma": [math.nan], "adc_bits": [4]}], ("prog_sigma", "nan"), None),
    ([{"g_min_uS": [50.0], "g_max_uS": [10.0]}], ("g_min_uS", "g_max_uS"), None),
    ([{"prog_sigma": [0.1, 0.1], "adc_bits": [4]}], ("grids[0].prog_sigma",), None),
    ([{"prog_sigma": [0.1, 0.2], "programming.sigma": [0.05]}],
     ("prog_sigma", "programming.sigma"), None),                   # y overwrites x
    ([{"read_sigma": [0.02], "read_noise.sigma": [0.05, 0.1]}],
     ("read_sigma", "read_noise.sigma"), None),
    ({"prog_sigma": [0.1], "adc_bits": [4]}, ("study.grids",), None),   # not a list
    ([[0.1, 4]], ("grids[0]",), None),
    ([{"prog_sigma": [0.0, 0.1], "adc_bits": [4, 8]}], ("grids",), "a 2 x 2 heat map"),
]

MODELS = [
    (["dense", "dense"], "a model twice", None),
    (["Dense"], "a misspelt model", None),
    ([None], "null", None),
    (["compressed", "dense"], "both, in another order", "the order of the rows"),
    (["dense"], "the dense model alone", "the dense model's sweep alone (metrics.json still "
                                           "reports the compressed model's accuracy)"),
]


def _fabricated_run(folder: Path, exp, dense_fp: dict | None = None, fp: dict | None = None,
                    weights: dict | None = None) -> Path:
    """A compress run's dense.pt and compressed.pt for ``exp``'s model (random weights, the
    fingerprints a real run stores; ``dense_fp``/``fp``/``weights`` replace them)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (1, 8, 8) if exp.dataset.name == "digits" else (1, 28, 28)
    model = make_model(exp.model, shape, 10)
    state = weights if weights is not None else model.state_dict()
    torch.save({"model": state, "fingerprint": dense_fp or fingerprint(exp, DENSE_KEYS),
                "rng": torch.get_rng_state(), "loader_rng": None}, folder / "dense.pt")
    torch.save({"model": state, "masks": {}, "scales": {}, "levels": {}, "history": [],
                "compressor": "admm", "fingerprint": fp or fingerprint(exp)},
               folder / "compressed.pt")
    return folder


def _source_cases(base: dict, tmp: Path) -> list[Case]:
    exp = load_study_config(base)
    good = _fabricated_run(tmp / "good", exp)
    mlp = load_study_config(_with(base, model={"name": "mlp"}, admm__constraints=[
        {"pattern": "net.1", "row_ratio": 0.5}]))
    mnist = load_study_config(_with(base, dataset__name="mnist", dataset__data_dir=str(tmp)))
    nan_state = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                 for k, v in good_state(exp).items()}
    folders = {
        "a folder that does not exist": (tmp / "nowhere", ("nowhere",)),
        "a file": (good / "dense.pt", ("dense.pt", "folder")),
        "an empty folder": (_mkdir(tmp / "empty"), ("empty", "dense.pt")),
        "a run of another model": (_fabricated_run(tmp / "mlp", mlp), ("model=",)),
        "a run of another data set": (_fabricated_run(tmp / "mnist", mnist), ("dataset=",)),
        "a run of other pretraining": (_fabricated_run(
            tmp / "lr", load_study_config(_with(base, train__lr=0.01))), ("train=",)),
        "a run of another compressor": (_fabricated_run(
            tmp / "obc", load_study_config(_with(base, compressor="obc"))), ("compressor=",)),
        "a foreign dense.pt beside the right compressed.pt": (_fabricated_run(
            tmp / "foreign_dense", exp, dense_fp=fingerprint(mlp, DENSE_KEYS)),
            ("dense.pt", "model=")),
        "another model's weights under the right fingerprints": (_fabricated_run(
            tmp / "mlp_weights", exp, weights=good_state(mlp)), ("dense.pt", "another model")),
        "NaN weights under the right fingerprints": (_fabricated_run(
            tmp / "nan", exp, weights=nan_state), ("NaN",)),
    }
    lacking = _copy_run(good, tmp / "lacking")
    (lacking / "compressed.pt").unlink()
    folders["a run without compressed.pt"] = (lacking, ("compressed.pt",))
    for name, cut in (("compressed.pt", 300), ("dense.pt", 300)):
        folder = _copy_run(good, tmp / f"cut_{name}")
        (folder / name).write_bytes((good / name).read_bytes()[:cut])
        folders[f"{name} truncated"] = (folder, (name, "truncated"))
    folder = _copy_run(good, tmp / "text")
    (folder / "compressed.pt").write_text("not a checkpoint\n")
    folders["compressed.pt a text file"] = (folder, ("compressed.pt", "unreadable"))
    folder = _copy_run(good, tmp / "nofp")
    torch.save({"model": good_state(exp)}, folder / "compressed.pt")
    folders["compressed.pt without a fingerprint"] = (folder, ("compressed.pt", "fingerprint"))
    folder = _copy_run(good, tmp / "nomasks")
    state = torch.load(good / "compressed.pt", weights_only=True)
    del state["masks"]
    torch.save(state, folder / "compressed.pt")
    folders["compressed.pt without masks"] = (folder, ("compressed.pt", "masks"))
    cases = [Case(f"study.source: {label}", "study", _with(base, study__source=str(path)),
                  ("study.source",) + words, setting=False)
             for label, (path, words) in folders.items()]
    cases.append(Case("study.source='' (the start folder)", "study",
                      _with(base, study__source=""), ("study.source", "''")))
    cases.append(Case("study.source with another train.checkpoint", "study",
                      _with(base, study__source=str(good),
                            train__checkpoint=str(good / "compressed.pt")),
                      ("train.checkpoint", "study.source")))
    cases.append(Case("study.source: a matching compress run", "study",
                      _with(base, study__source=str(good)), (),
                      legit="the source's models were made with the study's settings"))
    return cases


def good_state(exp) -> dict:
    shape = (1, 8, 8) if exp.dataset.name == "digits" else (1, 28, 28)
    torch.manual_seed(0)
    return make_model(exp.model, shape, 10).state_dict()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _study_cases(tmp: Path) -> list[Case]:
    base = _base("device_study", STUDY_FAST)
    cases = []
    for key in ("source", "models", "sweeps", "grids", "layer_sensitivity"):
        for kind, value in BAD.items():
            legit = "null: run the compress stages here" if (key, kind) == ("source", "null") \
                else None
            words = ("study.grids[0]=1",) if (key, kind) == ("grids", "list") \
                else (f"study.{key}", str(value))
            cases.append(Case(f"study.{key}={value!r}", "study",
                              _with(base, **{f"study__{key}": value}), words, legit=legit))
    for value in BAD.values():
        cases.append(Case(f"eval.chips={value!r}", "study", _with(base, eval__chips=value),
                          ("eval.chips", str(value))))
    cases.append(Case("study.bogus=1", "study", _with(base, study__bogus=1), ("study.bogus",)))
    cases.append(Case("study removed", "study", _with(base, study=...), ("study",)))
    for sweeps, key, legit in SWEEPS:
        cases.append(Case(f"study.sweeps={sweeps!r}", "study", _with(base, study__sweeps=sweeps),
                          (key,), legit=legit))
    for grids, words, legit in GRIDS:
        cases.append(Case(f"study.grids={grids!r}", "study", _with(base, study__grids=grids),
                          words, legit=legit))
    for models, label, legit in MODELS:
        cases.append(Case(f"study.models={models!r} ({label})", "study",
                          _with(base, study__models=models), ("study.models",), legit=legit))
    cases.append(Case("study.layer_sensitivity=true with models=[dense]", "study",
                      _with(base, study__layer_sensitivity=True, study__models=["dense"]),
                      (), legit="layer sensitivity of the dense model"))
    return cases + _source_cases(base, tmp / "sources")


def test_area_a_the_device_study_refuses_every_bad_setting_before_any_work(tmp_path, gated,
                                                                           capsys):
    cases = _study_cases(tmp_path)
    outcome = _run_cases("A", cases, tmp_path, capsys)
    assert len(cases) >= 60 and outcome["clear"] > 0.8 * len(cases)


# --------------------------------------------------------------------------------- area B
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
       "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """``array`` (uint8) in LeCun's IDX format: big-endian magic, dims, data."""
    header = (magic or 0x0800 | array.ndim).to_bytes(4, "big")
    return header + b"".join(int(d).to_bytes(4, "big") for d in array.shape) \
        + array.astype(np.uint8).tobytes()


def _idx_set(folder: Path, gz: bool = False, **replace: bytes) -> Path:
    """12 train and 5 test 28 x 28 images with labels 0..9 as IDX files (``replace``: a
    file's bytes instead, by name without dashes, e.g. ``train_images=b""``)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {IDX[0]: rng.integers(0, 256, (12, 28, 28)), IDX[1]: np.arange(12) % 10,
              IDX[2]: rng.integers(0, 256, (5, 28, 28)), IDX[3]: np.arange(5)}
    for name, array in arrays.items():
        data = replace.get(name.replace("-idx3-ubyte", "").replace("-idx1-ubyte", "")
                           .replace("-", "_"), idx_bytes(array))
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz
                                                              else data)
    return folder


def _official(folder: Path, **replace: bytes) -> Path:
    """The official MNIST files linked into ``folder`` (``replace``: a file's bytes instead, by
    name as in :func:`_idx_set`)."""
    folder.mkdir(parents=True)
    for name in IDX:
        key = name.replace("-idx3-ubyte", "").replace("-idx1-ubyte", "").replace("-", "_")
        if key in replace:
            (folder / f"{name}.gz").write_bytes(replace[key])
        else:
            (folder / f"{name}.gz").symlink_to(MNIST / f"{name}.gz")
    return folder


def _cifar(folder: Path, change: Callable[[str, dict], dict | bytes | None] = lambda n, b: b
           ) -> Path:
    """Hand-made CIFAR-10 batches (4 images each) in ``folder/cifar-10-batches-py``;
    ``change(name, batch)``: the batch to write instead (bytes: written as they are; None:
    left out)."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = change(name, {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                              b"labels": [int(v) for v in rng.integers(0, 10, 4)]})
        if batch is not None:
            (batches / name).write_bytes(batch if isinstance(batch, bytes)
                                         else pickle.dumps(batch, protocol=2))
    return folder


def _data_cases(base: dict, tmp: Path) -> list[Case]:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 28, 28))
    labels = np.arange(12) % 10
    folders = {  # label -> (data_dir, verify, words of a clear refusal, legit)
        "an empty folder": (_mkdir(tmp / "empty"), True, (IDX[0], "found"), None),
        "hand-made files, verify=false": (_idx_set(tmp / "hand", gz=True), False, (),
                                          "verify=false is for hand-made files: format checked"),
        "hand-made .gz files, verify=true": (_idx_set(tmp / "hand_v", gz=True), True,
                                             (IDX[0] + ".gz", "corrupt"), None),
        "hand-made raw files, verify=true": (_idx_set(tmp / "raw_v"), True, (IDX[0], "official"),
                                             None),
        "a truncated gzip stream": (_idx_set(tmp / "cut_gz", gz=True), False,
                                    (IDX[0] + ".gz", "truncated"), None),
        "a .gz that is not gzip": (_idx_set(tmp / "not_gz", gz=True), False,
                                   (IDX[0] + ".gz", "cannot be read"), None),
        "an empty images file": (_idx_set(tmp / "zero", train_images=b""), False,
                                 (IDX[0], "too short"), None),
        "labels where images belong (magic)": (_idx_set(tmp / "magic", train_images=idx_bytes(
            labels)), False, (IDX[0], "magic"), None),
        "truncated images": (_idx_set(tmp / "short", train_images=idx_bytes(images)[:-100]),
                             False, (IDX[0], "truncated"), None),
        "trailing bytes": (_idx_set(tmp / "long", train_images=idx_bytes(images) + b"x"),
                           False, (IDX[0], "trailing"), None),
        "a header claiming 2**31 images": (_idx_set(tmp / "claims", train_images=(
            (0x0803).to_bytes(4, "big") + (2**31).to_bytes(4, "big") + (28).to_bytes(4, "big")
            * 2 + bytes(784))), False, (IDX[0], "truncated"), None),
        "11 labels for 12 images": (_idx_set(tmp / "count", train_labels=idx_bytes(
            labels[:11])), False, (IDX[0], "11 labels"), None),
        "a label 255": (_idx_set(tmp / "label", t10k_labels=idx_bytes(np.array(
            [0, 1, 2, 3, 255]))), False, (IDX[3], "labels span"), None),
        "27 x 27 images": (_idx_set(tmp / "size", train_images=idx_bytes(
            images[:, :27, :27])), False, (IDX[0], "shape"), None),
        "no images": (_idx_set(tmp / "none", t10k_images=idx_bytes(np.zeros((0, 28, 28))),
                               t10k_labels=idx_bytes(np.zeros(0))), False,
                      (IDX[2], "no samples"),
                      None),
        "a folder named like a file": (_mkdir(tmp / "dir_file" / (IDX[0] + ".gz")).parent,
                                       False, (IDX[0], "found"), None),
        "a file as data_dir": (tmp / "hand" / (IDX[0] + ".gz"), False,
                               ("dataset.data_dir", "existing directory"), None),
        "a data_dir that does not exist": (tmp / "nowhere", False,
                                           ("dataset.data_dir", "existing directory"), None),
    }
    (tmp / "cut_gz" / (IDX[0] + ".gz")).write_bytes(
        gzip.compress(idx_bytes(images))[:-40])
    (tmp / "not_gz" / (IDX[0] + ".gz")).write_bytes(b"plain text, not gzip\n" * 5)
    both = _idx_set(tmp / "both")
    (both / (IDX[1] + ".gz")).write_bytes(b"\x1f\x8b broken")
    folders["a corrupt .gz beside a good raw file"] = (both, False, (IDX[1] + ".gz", "cannot"),
                                                       None)
    if MNIST.is_dir():  # the official files (in CI and on this project's machines)
        official = (MNIST / (IDX[0] + ".gz")).read_bytes()
        folders.update({
            "the official files": (MNIST, True, (), "the official MNIST release"),
            "official files, train images truncated": (_official(
                tmp / "off_cut", train_images=official[:len(official) // 2]), True,
                (IDX[0] + ".gz", "corrupt"), None),
            "official files, test labels as train labels": (_official(
                tmp / "off_swap", train_labels=(MNIST / (IDX[3] + ".gz")).read_bytes()), True,
                (IDX[1] + ".gz", "corrupt"), None),
        })
    cases = [Case(f"mnist data_dir: {label}", "compress",
                  _with(base, dataset={"name": "mnist", "data_dir": str(path), "batch_size": 8,
                                       "verify": verify}),
                  words, legit=legit, setting=False)
             for label, (path, verify, words, legit) in folders.items()]
    if MNIST.is_dir():
        cases.append(Case("fashion_mnist on the MNIST files", "compress", _with(
            base, dataset={"name": "fashion_mnist", "data_dir": str(MNIST), "verify": True}),
            (IDX[0] + ".gz", "md5"), setting=False))
    cifar = {  # label -> (data_dir, verify, words, legit)
        "hand-made batches, verify=false": (_cifar(tmp / "c_ok"), False, (),
                                            "verify=false is for hand-made files"),
        "the MNIST folder": (tmp / "hand", False, ("data_batch_1", "not found"), None),
        "a batch of random bytes": (_cifar(tmp / "c_rand", lambda n, b: bytes(range(256)) * 4
                                           if n == "data_batch_1" else b), False,
                                    ("data_batch_1", "not a CIFAR-10"), None),
        "a batch without labels": (_cifar(tmp / "c_keys", lambda n, b: {b"data": b[b"data"]}
                                          if n == "data_batch_3" else b), False,
                                   ("data_batch_3", "labels"), None),
        "a label 10": (_cifar(tmp / "c_label", lambda n, b: {**b, b"labels": [0, 1, 2, 10]}
                              if n == "test_batch" else b), False, ("test_batch", "labels span"),
                       None),
        "float data": (_cifar(tmp / "c_float", lambda n, b: {**b, b"data": b[b"data"] / 255.0}
                              if n == "data_batch_2" else b), False, ("data_batch_2", "uint8"),
                       None),
        "no test batch": (_cifar(tmp / "c_missing", lambda n, b: None if n == "test_batch"
                                 else b), False, ("test_batch", "not found"), None),
        "a pickled function (code)": (_cifar(tmp / "c_code", lambda n, b: pickle.dumps(print)
                                             if n == "data_batch_4" else b), False,
                                      ("data_batch_4", "refusing"), None),
        "hand-made batches, verify=true (4 images a batch)": (tmp / "c_ok", True,
                                                               ("data_batch_1", "official"),
                                                               None),
    }
    _mkdir(tmp / "c_tar")
    (tmp / "c_tar" / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"not a tar" * 99))
    cifar["a tarball that is not a tar"] = (tmp / "c_tar", False,
                                            ("cifar-10-python.tar.gz", "corrupt"), None)
    cifar["a tarball, verify=true"] = (tmp / "c_tar", True, ("cifar-10-python.tar.gz", "md5"),
                                       None)
    cases += [Case(f"cifar10 data_dir: {label}", "compress",
                   _with(base, dataset={"name": "cifar10", "data_dir": str(path),
                                        "batch_size": 4, "verify": verify}),
                   words, legit=legit, setting=False)
              for label, (path, verify, words, legit) in cifar.items()]
    return cases


USER_DATA = '''
"""A user's data sets, good and bad (tests/fuzz/test_study_data_fuzz.py)."""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def _x(n, shape=(1, 6, 6)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(n))


def _y(n, classes=4):
    return torch.arange(n) % classes


def _pair(fx=lambda x: x, fy=lambda y: y, tx=None, ty=None):
    tx, ty = tx or fx, ty or fy
    return (fx(_x(64)), fy(_y(64))), (tx(_x(16)), ty(_y(16)))


class Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _set(i, x, v):
    x = x.clone()
    x.view(-1)[i] = v
    return x


good = lambda: (_pair()[0], TensorDataset(*_pair()[1]))
float64 = lambda: _pair(lambda x: x.double())
uint8_labels = lambda: _pair(fy=lambda y: y.to(torch.uint8))
numpy_arrays = lambda: tuple(tuple(t.numpy() for t in s) for s in _pair())
items = lambda: (Items([(x, int(y)) for x, y in zip(_x(64), _y(64))]), _pair()[1])
int_inputs = lambda: _pair(lambda x: (x * 50).to(torch.int64))
inf_inputs = lambda: _pair(lambda x: _set(7, x, float("inf")))
nan_test_inputs = lambda: _pair(tx=lambda x: _set(3, x, float("nan")))
complex_inputs = lambda: _pair(lambda x: x.to(torch.complex64))
negative_label = lambda: _pair(fy=lambda y: _set(0, y, -1))
huge_label = lambda: _pair(fy=lambda y: _set(0, y, 10**9))
one_class = lambda: _pair(fy=torch.zeros_like)
unseen_test_class = lambda: _pair(ty=lambda y: _set(0, y, 4))
class_gap = lambda: _pair(fy=lambda y: 2 * y)
empty_train = lambda: ((_x(0), _y(0)), _pair()[1])
empty_test = lambda: (_pair()[0], (_x(0), _y(0)))
shape_mismatch = lambda: (_pair()[0], (_x(16, (1, 5, 5)), _y(16)))
one_number_each = lambda: _pair(lambda x: x[:, 0, 0, 0])
labels_2d = lambda: _pair(fy=lambda y: y[:, None])
bool_labels = lambda: _pair(fy=lambda y: y > 1)
float_labels = lambda: _pair(fy=lambda y: y.float())
ragged_items = lambda: (Items([(_x(1, (1, 6, 6 - i % 2))[0], i % 4) for i in range(8)]),
                        _pair()[1])
unpaired_items = lambda: (Items(list(_x(8))), _pair()[1])
string_labels = lambda: (Items([(x, "cat") for x in _x(8)]), _pair()[1])
fractional_labels = lambda: (Items([(x, 1.5) for x in _x(8)]), _pair()[1])
empty_items = lambda: (Items([]), _pair()[1])
object_arrays = lambda: ((np.array([{"a": 1}] * 8, dtype=object), np.zeros(8)), _pair()[1])
returns_dict = lambda: {"train": _pair()[0], "test": _pair()[1]}
returns_three = lambda: (*_pair(), _pair()[1])
returns_loaders = lambda: tuple(DataLoader(TensorDataset(*s)) for s in _pair())
three_tensors = lambda: (TensorDataset(_x(64), _y(64), _y(64)), _pair()[1])
count_mismatch = lambda: ((_x(64), _y(63)), _pair()[1])


def raises():
    raise OSError("the share is not mounted")
'''

USER_CASES = {  # function -> (words of a clear refusal, legit)
    "good": ((), "a pair and a TensorDataset of float inputs, labels 0..3"),
    "float64": ((), "float64 inputs: converted to float32"),
    "uint8_labels": ((), "uint8 labels: integers"),
    "numpy_arrays": ((), "numpy arrays: converted to tensors"),
    "items": ((), "a map-style dataset of (tensor, int) items: stacked"),
    "int_inputs": (("inputs", "int64"), None),
    "inf_inputs": (("inputs", "non-finite"), None),
    "nan_test_inputs": (("test split", "non-finite"), None),
    "complex_inputs": (("inputs", "complex64"), None),
    "negative_label": (("labels", ">= 0"), None),
    "huge_label": (("class", "1000000000"), None),
    "one_class": (("one class",), None),
    "unseen_test_class": (("class 4",), None),
    "class_gap": (("class 1",), None),
    "empty_train": (("train split", "0 inputs"), None),
    "empty_test": (("test split", "0 inputs"), None),
    "shape_mismatch": (("(1, 6, 6)", "(1, 5, 5)"), None),
    "one_number_each": (("inputs of shape (64,)",), None),
    "labels_2d": (("labels", "(64, 1)"), None),
    "bool_labels": (("labels", "torch.bool"), None),
    "float_labels": (("labels", "torch.float32"), None),
    "ragged_items": (("shapes", "(1, 6, 5)"), None),
    "unpaired_items": (("item 0", "(input, label)"), None),
    "string_labels": (("labels", "tensor"), None),
    "fractional_labels": (("labels", "torch.float"), None),
    "empty_items": (("no samples",), None),
    "object_arrays": (("arrays", "tensor"), None),
    "returns_dict": (("(train, test)", "dict"), None),
    "returns_three": (("(train, test)", "tuple"), None),
    "returns_loaders": (("DataLoader",), None),
    "three_tensors": (("3 tensors",), None),
    "count_mismatch": (("64 inputs and 63 labels",), None),
    "raises": (("the share is not mounted",), None),
}


def _user_cases(base: dict, tmp: Path, monkeypatch) -> list[Case]:
    folder = _mkdir(tmp / "user")
    (folder / "fuzz_user_data.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(folder))
    return [Case(f"dataset._target_: {name}", "compress",
                 _with(base, dataset={"_target_": f"fuzz_user_data.{name}", "batch_size": 16}),
                 (f"fuzz_user_data.{name}",) + words, legit=legit, setting=legit is None
                 and name != "raises")
            for name, (words, legit) in USER_CASES.items()]


def _checkpoint_cases(base: dict, tmp: Path) -> list[Case]:
    exp = load_compress_config(base)
    state = good_state(exp)
    mlp = good_state(load_compress_config(_with(base, model={"name": "mlp"})))
    mnist = good_state(load_compress_config(_with(base, dataset={"name": "mnist",
                                                                 "data_dir": str(tmp)})))
    folder = _mkdir(tmp / "checkpoints")
    saved = {  # label -> (what torch.save writes, words, legit)
        "a list": ([1, 2], ("list",), None),
        "a tensor": (torch.ones(3), ("Tensor",), None),
        "another model's weights (MLP)": (mlp, ("another model",), None),
        "LeNet-5 weights of MNIST's shapes": (mnist, ("shape mismatch",), None),
        "NaN weights": ({k: v.fill_(math.nan) if k.endswith("weight") else v
                         for k, v in copy.deepcopy(state).items()}, ("NaN",), None),
        "an inf weight": ({**state, "features.0.bias": torch.full_like(
            state["features.0.bias"], math.inf)}, ("NaN/Inf",), None),
        "a weight missing": ({k: v for k, v in state.items() if k != "classifier.4.bias"},
                             ("missing keys", "classifier.4.bias"), None),
        "an extra weight": ({**state, "extra.weight": torch.ones(2)},
                            ("unexpected keys", "extra.weight"), None),
        "integer weights": ({k: v.to(torch.int64) for k, v in state.items()}, ("int64",),
                            None),
        "{'model': a list}": ({"model": [1, 2]}, ("list",), None),
        "a weight that is a string": ({**state, "features.0.bias": "zeros"}, ("not tensors",),
                                      None),
        "a state dict": (state, (), "the model's weights"),
        "{'model': state dict}": ({"model": state}, (), "the model's weights, as dense.pt"),
        "a dense.pt of another run of this model": (
            {"model": state, "fingerprint": {"train": {"lr": 0.1}}}, (),
            "train.checkpoint loads weights: another run's settings are not compared"),
        "float16 weights": ({k: v.half() for k, v in state.items()}, (),
                            "half precision: loaded into the float32 model"),
        "a pretrain_state.pt": ({"model": state, "optimizer": {}, "history": []}, (),
                                "a checkpoint holding the model's weights"),
    }
    paths = {}
    for label, (obj, words, legit) in saved.items():
        path = folder / f"{len(paths)}.pt"
        torch.save(obj, path)
        paths[label] = (path, words, legit)
    good = paths["a state dict"][0]
    raw = good.read_bytes()
    for label, data in (("a truncated file", raw[:len(raw) // 2]), ("an empty file", b""),
                        ("a text file", b"weights: none\n"),
                        ("a gzip of a state dict", gzip.compress(raw)),
                        ("a pickle of a function", pickle.dumps(print))):
        path = folder / f"{len(paths)}.pt"
        path.write_bytes(data)
        paths[label] = (path, ("unreadable",), None)
    (folder / "link.pt").symlink_to(good)
    paths["a link to a state dict"] = (folder / "link.pt", (), "a symbolic link is a path")
    (folder / "dangling.pt").symlink_to(folder / "gone.pt")
    paths["a dangling link"] = (folder / "dangling.pt", ("existing",), None)
    paths["a directory"] = (folder, ("existing",), None)
    return [Case(f"train.checkpoint: {label}", "compress",
                 _with(base, train__checkpoint=str(path)),
                 ("train.checkpoint",) + words, legit=legit, setting=False)
            for label, (path, words, legit) in paths.items()]


def _resume_cases(base: dict, study_base: dict, tmp: Path) -> list[Case]:
    base = _with(base, resume=True)
    exp = load_compress_config(base)
    state, dense_fp, fp = good_state(exp), fingerprint(exp, DENSE_KEYS), fingerprint(exp)
    mlp = load_compress_config(_with(base, model={"name": "mlp"}))
    nan = {k: torch.full_like(v, math.nan) for k, v in state.items()}
    dense = {"model": state, "fingerprint": dense_fp, "rng": torch.get_rng_state(),
             "loader_rng": None}
    pretrain = {"model": state, "optimizer": {"state": {}, "param_groups": []},
                "schedule": {}, "history": [], "rng": torch.get_rng_state(),
                "loader_rng": None, "fingerprint": dense_fp}
    compressed = {"model": state, "masks": {}, "scales": {}, "levels": {}, "history": [],
                  "compressor": "admm", "fingerprint": fp}
    config = object()  # this run's config.yaml
    folders = {  # label -> ({file: content}, words, legit); bytes are written as they are
        "dense.pt truncated": ({"dense.pt": b"PK\x03\x04" + bytes(50)}, ("dense.pt",
                                                                           "unreadable"), None),
        "dense.pt empty": ({"dense.pt": b""}, ("dense.pt", "unreadable"), None),
        "dense.pt a directory": ({"dense.pt": None}, ("dense.pt", "directory"), None),
        "dense.pt of another model's run": ({"dense.pt": {**dense, "fingerprint": fingerprint(
            mlp, DENSE_KEYS)}}, ("dense.pt", "model.name"), None),
        "dense.pt with another model's weights": ({"dense.pt": {**dense, "model": good_state(
            mlp)}}, ("dense.pt", "another model"), None),
        "dense.pt with NaN weights": ({"dense.pt": {**dense, "model": nan}},
                                      ("dense.pt", "NaN"), None),
        "dense.pt holding a list": ({"dense.pt": [1, 2]}, ("dense.pt", "list"), None),
        "dense.pt without a fingerprint": ({"dense.pt": state}, ("dense.pt", "fingerprint"),
                                           None),
        "pretrain_state.pt without its schedule and history": (
            {"pretrain_state.pt": {k: v for k, v in pretrain.items()
                                   if k not in ("schedule", "history")}},
            ("pretrain_state.pt", "schedule"), None),
        "pretrain_state.pt truncated": ({"pretrain_state.pt": b"PK\x03\x04"},
                                        ("pretrain_state.pt", "unreadable"), None),
        "compressed.pt without masks": ({"compressed.pt": {k: v for k, v in compressed.items()
                                                          if k != "masks"}},
                                        ("compressed.pt", "masks"), None),
        "compressed.pt with NaN weights": ({"compressed.pt": {**compressed, "model": nan}},
                                           ("compressed.pt", "NaN"), None),
        "admm_state.pt of a model and a stage only": (
            {"admm_state.pt": {"model": state, "stage": 1, "fingerprint": fp}},
            ("admm_state.pt", "epoch"), None),
        "another run's config.yaml and metrics.json": (
            {"config.yaml": _with(base, model={"name": "mlp"}), "metrics.json": b"{}"},
            ("config.yaml", "model.name='mlp'"), None),
        "a config.yaml that is not YAML": ({"config.yaml": b"seed: [0\n  model: {"},
                                           ("config.yaml", "unreadable"), None),
        "a config.yaml holding a list": ({"config.yaml": b"- 1\n- 2\n"},
                                         ("config.yaml", "list"), None),
        "only a half-written temporary": ({".dense.pt.x1.memxbar-tmp": b"PK"},
                                          ("resume=true", "no earlier run"), None),
        "this run's dense.pt": ({"dense.pt": dense}, (), "the run's own checkpoint"),
        "this run's pretrain_state.pt and dense.pt": (
            {"pretrain_state.pt": pretrain, "dense.pt": dense}, (), "the run's own"),
        "a finished run, resumed to evaluate again": (
            {"config.yaml": config, "metrics.json": b"{}", "report.md": b"# run"}, (),
            "the same settings: only evaluation runs again"),
        "a finished run, resumed with other eval settings": (
            {"config.yaml": _with(base, eval__chips=3), "metrics.json": b"{}"}, (),
            "eval settings never change the checkpoints (docs/reliability.md)"),
    }
    cases = [Case(f"resume=true: {label}", "compress", base, words, legit=legit,
                  run_dir=_folder(tmp / f"r{i}", files, base), setting=False)
             for i, (label, (files, words, legit)) in enumerate(folders.items())]
    cases.append(Case("resume=false: a folder holding another run's dense.pt", "compress",
                      _with(base, resume=False), ("resume=false", "already holds results"),
                      run_dir=_folder(tmp / "fresh", {"dense.pt": dense}, base)))
    study_base = _with(study_base, resume=True)
    sfp = study_module.study_fingerprint(load_study_config(study_base).raw)
    point = json.dumps(["sweep", "adc_bits", 4, "compressed"])
    points = {  # label -> (study_points.json, words, legit)
        "truncated": (b'{"fingerprint": {"seed": 0', ("study_points.json", "unreadable"),
                      None),
        "a list": (b"[1, 2]", ("study_points.json", "unreadable"), None),
        "accuracies as strings": ({"fingerprint": sfp, "points": {point: ["98.1", 97.0]}},
                                  ("study_points.json", point), None),
        "an accuracy of 150 %": ({"fingerprint": sfp, "points": {point: [150.0]}},
                                 ("study_points.json", "[0, 100]"), None),
        "points as a list": ({"fingerprint": sfp, "points": [[98.0]]},
                             ("study_points.json", "points"), None),
        "a directory": (None, ("study_points.json",), None),
        "points of other settings": ({"fingerprint": {"seed": 1}, "points": {point: [90.0]}},
                                     (), "recomputed: the log says the settings changed"),
        "this study's points": ({"fingerprint": sfp, "points": {point: [90.0]}}, (),
                                "reused: only the missing points are computed"),
    }
    cases += [Case(f"resume=true study: study_points.json {label}", "study", study_base,
                   words, legit=legit, setting=False,
                   run_dir=_folder(tmp / f"s{i}", {"study_points.json": data}, study_base))
              for i, (label, (data, words, legit)) in enumerate(points.items())]
    return cases


def _folder(folder: Path, files: dict, config: dict) -> Path:
    """A run folder holding ``files`` (bytes as they are, None a directory, a config dict as
    config.yaml, other objects through torch.save) and this run's config.yaml unless given."""
    folder.mkdir(parents=True)
    for name, content in files.items():
        if content is None:
            (folder / name).mkdir()
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        elif name == "config.yaml":
            save_config(config if not isinstance(content, dict) else content, folder)
        elif name.endswith(".json"):
            (folder / name).write_text(json.dumps(content))
        else:
            torch.save(content, folder / name)
    if "config.yaml" not in files and not any(n.startswith(".") for n in files):
        save_config(config, folder)
    return folder


def test_area_b_bad_data_checkpoints_and_run_folders_are_refused_before_any_work(
        tmp_path, gated, monkeypatch, capsys):
    base = _base("config", FAST)
    cases = (_data_cases(base, tmp_path / "data") + _user_cases(base, tmp_path, monkeypatch)
             + _checkpoint_cases(base, tmp_path)
             + _resume_cases(base, _base("device_study", STUDY_FAST), tmp_path / "resume"))
    outcome = _run_cases("B", cases, tmp_path, capsys)
    assert len(cases) >= 70 and outcome["clear"] > 0.7 * len(cases)
