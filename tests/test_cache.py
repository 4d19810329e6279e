"""The model cache as a content-addressed store (issue 22): keys from the content of input
files, entries verified before use (a bad one named, moved aside and recomputed, never copied
into a run folder), an unusable cache directory refused before any work, and a failed cache
write that leaves the finished run alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_experiments import TINY, _compose

from memxbar.experiments import cache as cache_module
from memxbar.experiments.cache import cached
from memxbar.experiments.pipeline import run_compress

FAST = [*TINY, "robustness.ablation=false", "robustness.hardware_aware=false"]


def _entries(cache, name):
    return sorted(cache.glob(f"{name}-*.pt"))


def test_an_input_file_is_keyed_by_its_content(tmp_path):
    ckpt = tmp_path / "dense.pt"
    torch.save({"w": torch.zeros(3)}, ckpt)
    fp = {"train": {"checkpoint": str(ckpt)}}
    first = cached(str(tmp_path / "c"), "dense", fp)
    assert cached(str(tmp_path / "c"), "dense", fp) == first  # stable
    torch.save({"w": torch.ones(3)}, ckpt)  # the same path, other weights
    assert cached(str(tmp_path / "c"), "dense", fp) != first


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A run on a fresh cache: its folder, the cache (one dense and one compressed model) and
    its metrics; the tests copy the cache (``_cache_of``) before they change it."""
    base = tmp_path_factory.mktemp("first")
    metrics = run_compress(_compose([*FAST, f"runtime.cache_dir={base / 'cache'}"]), base / "a")
    assert [len(_entries(base / "cache", n)) for n in ("dense", "compressed")] == [1, 1]
    return base / "a", base / "cache", metrics


def _cache_of(first_run, tmp_path):
    """A copy of the first run's cache in ``tmp_path``."""
    return Path(shutil.copytree(first_run[1], tmp_path / "cache"))


def test_a_changed_train_checkpoint_is_not_served_the_old_compressed_model(first_run, tmp_path,
                                                                          caplog):
    cache = _cache_of(first_run, tmp_path)
    ckpt = tmp_path / "given.pt"
    ckpt.write_bytes((first_run[0] / "dense.pt").read_bytes())
    with_ckpt = [*FAST, f"runtime.cache_dir={cache}", f"train.checkpoint={ckpt}"]
    first = run_compress(_compose(with_ckpt), tmp_path / "b")
    state = torch.load(ckpt, weights_only=True)  # another dense model at the same path
    state["model"] = {k: v * 0.5 if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, ckpt)
    caplog.clear()
    with caplog.at_level("INFO"):
        second = run_compress(_compose(with_ckpt), tmp_path / "c")
    assert "compressed model reused from the cache" not in caplog.text
    assert second["dense_accuracy"] != first["dense_accuracy"] or \
        second["compressed_accuracy"] != first["compressed_accuracy"]
    assert len(_entries(cache, "compressed")) == 3


def test_bad_entries_are_named_moved_aside_and_recomputed(first_run, tmp_path, caplog):
    cache, first = _cache_of(first_run, tmp_path), first_run[2]
    dense, compressed = _entries(cache, "dense")[0], _entries(cache, "compressed")[0]
    dense.write_bytes(dense.read_bytes()[:1000])           # truncated
    torch.save({"model": {}, "fingerprint": {"other": 1}}, compressed)  # foreign
    caplog.clear()
    with caplog.at_level("INFO"):
        again = run_compress(_compose([*FAST, f"runtime.cache_dir={cache}"]), tmp_path / "b")
    for entry in (dense, compressed):
        assert f"cache entry {entry} is unusable" in caplog.text
        assert len(list(cache.glob(entry.name + ".bad-*"))) == 1
        assert entry.exists()  # made again, verified next time
    assert again["compressed_accuracy"] == first["compressed_accuracy"]
    caplog.clear()
    with caplog.at_level("INFO"):
        run_compress(_compose([*FAST, f"runtime.cache_dir={cache}"]), tmp_path / "c")
    assert "compressed model reused from the cache" in caplog.text


def test_an_unusable_cache_dir_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    try:
        run_compress(_compose([*FAST, f"runtime.cache_dir={blocker}/cache"]), tmp_path / "run")
    except ValueError as exc:
        assert "runtime.cache_dir=" in str(exc) and "writable directory" in str(exc)
    else:
        raise AssertionError("an unusable cache dir was accepted")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_failed_cache_write_leaves_the_finished_run(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    real = cache_module.atomic_write_bytes

    def full_disk(path, data):
        if str(path).startswith(str(cache)):
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(cache_module, "atomic_write_bytes", full_disk)
    with caplog.at_level("WARNING"):
        metrics = run_compress(_compose([*FAST, f"runtime.cache_dir={cache}"]), tmp_path / "a")
    assert metrics["compression_ratio"] > 1 and (tmp_path / "a" / "metrics.json").is_file()
    assert "could not be written (" in caplog.text and "No space left" in caplog.text


def test_compressed_models_are_keyed_by_the_constraints_they_met(tmp_path):
    """An allocation chooses the constraints from the settings and the dense model: a changed
    choice under the same settings (another allocation method's code) is another entry."""
    from pathlib import Path

    from memxbar.admm import LayerConstraint
    from memxbar.crossbar import CrossbarConfig, DeviceModel
    from memxbar.experiments.compressors.base import CompressInputs, cache_key

    def inputs(rows):
        return CompressInputs(run_dir=Path(tmp_path), fingerprint={"allocation": {"budget": 30}},
                              settings=None, constraints=(LayerConstraint("fc", row_keep=rows),),
                              seed=0, device=DeviceModel(), crossbar=CrossbarConfig(),
                              cache_dir=str(tmp_path))

    first, second = (cached(str(tmp_path), "compressed", cache_key(inputs(r))) for r in (4, 8))
    assert first != second
    assert cached(str(tmp_path), "compressed", cache_key(inputs(4))) == first
