"""Bad-input test of the model cache (issue 22): cache folders a user may name
(``runtime.cache_dir``) and entries a crash, another version or another user may leave in it.
A bad folder is refused naming ``runtime.cache_dir`` before any work; a bad entry is named in a
warning, moved aside and never copied into the run folder; a good entry is reused. Prints the
counts (docs/reliability.md)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import torch

from memxbar.admm import save_atomic
from memxbar.experiments.cache import cache_lock, cached, check_cache_dir, reuse

FP = {"seed": 0, "model": {"name": "lenet5"}, "train": {"lr": 0.003, "checkpoint": None}}


def _folder_cases(root: Path) -> dict[str, tuple[str, bool]]:
    """label -> (runtime.cache_dir value, whether it is legitimate)."""
    (root / "a_file").write_text("x")
    (root / "dir").mkdir()
    os.symlink(root / "a_file", root / "link_to_file")
    os.symlink(root / "nowhere", root / "dangling")
    os.symlink(root / "dir", root / "link_to_dir")
    return {
        "a file": (str(root / "a_file"), False),
        "below a file": (str(root / "a_file" / "cache"), False),
        "a link to a file": (str(root / "link_to_file"), False),
        "a dangling link": (str(root / "dangling"), False),
        "empty string": ("", False),
        "only spaces": ("   ", False),
        "a NUL byte": ("ca\x00che", False),
        "a name longer than the file system takes": ("c" * 300, False),
        "a new folder": (str(root / "new" / "cache"), True),
        "an existing folder": (str(root / "dir"), True),
        "a link to a folder": (str(root / "link_to_dir"), True),
    }


def test_cache_folders_are_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table, problems = Counter(), []
    for label, (value, legit) in _folder_cases(tmp_path).items():
        try:
            check_cache_dir(value)
            assert label != "a new folder" or not (tmp_path / "new").exists()  # creates nothing
            entry = cached(value, "dense", FP)
            with cache_lock(entry):
                pass
            outcome = "legit" if legit else "silent"
        except ValueError as exc:
            outcome = "clear" if "runtime.cache_dir" in str(exc) and not legit else "raw"
            if outcome == "raw":
                problems.append(f"{label}: {exc}")
        except Exception as exc:  # noqa: BLE001
            outcome = "raw"
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
        if outcome == "silent":
            problems.append(f"{label}: accepted")
        table[outcome] += 1
    print(f"\ncache folders: {sum(table.values())} inputs, {dict(table)}")
    assert not problems, "\n".join(problems)


def _entries(entry: Path) -> dict:
    """label -> a function that leaves a bad entry at ``entry``."""
    good = {"model": {"w": torch.ones(2)}, "fingerprint": FP}

    def torch_file(obj):
        return lambda: save_atomic(obj, entry)

    def raw_bytes(data: bytes):
        return lambda: entry.write_bytes(data)

    def half():
        save_atomic(good, entry)
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])

    return {
        "garbage bytes": raw_bytes(b"not a torch file"),
        "empty file": raw_bytes(b""),
        "half a checkpoint": half,
        "a tensor, not a checkpoint": torch_file(torch.ones(3)),
        "a list": torch_file([1, 2]),
        "a state dict without fingerprint": torch_file({"w": torch.ones(2)}),
        "a checkpoint without model": torch_file({"fingerprint": FP}),
        "another fingerprint": torch_file({"model": {}, "fingerprint": {**FP, "seed": 1}}),
        "a fingerprint of another type": torch_file({"model": {}, "fingerprint": "abc"}),
        "a folder": lambda: entry.mkdir(),
        "a dangling link": lambda: os.symlink(entry.parent / "gone", entry),
        "a pickle that would run code": raw_bytes(
            b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94"
            b"\x93\x94\x8c\x04true\x94\x85\x94R\x94."),
    }


def test_bad_cache_entries_are_named_moved_aside_and_never_used(tmp_path, caplog):
    table, problems = Counter(), []
    for label in _entries(tmp_path / "probe.pt"):
        folder = tmp_path / label.replace(" ", "_")
        folder.mkdir()
        entry, target = folder / "dense-0123.pt", folder / "run" / "dense.pt"
        _entries(entry)[label]()
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING, "memxbar.experiments.cache"):
                used = reuse(entry, FP, target, "dense")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
            table["raw"] += 1
            continue
        named = any(str(entry) in r.getMessage() and "moved aside" in r.getMessage()
                    for r in caplog.records)
        if used or target.exists():
            problems.append(f"{label}: used")
            table["silent"] += 1
        elif not named or entry.exists() or entry.is_symlink():
            problems.append(f"{label}: not named or not moved aside")
            table["raw"] += 1
        else:
            table["clear"] += 1
    good = tmp_path / "good.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "fingerprint": FP}, good)
    assert reuse(good, FP, tmp_path / "run" / "dense.pt", "dense")  # a good entry is used
    table["legit"] += 1
    print(f"\ncache entries: {sum(table.values())} inputs, {dict(table)}")
    assert not problems, "\n".join(problems)
