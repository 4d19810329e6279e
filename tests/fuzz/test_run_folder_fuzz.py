"""Hostile run folders and job names (issue 22): each is refused with one message naming it (no
traceback, nothing written outside the folder) or is a legitimate name the run accepts (its
config.yaml lands inside the named folder). The runs use ``train.epochs=0``, so an accepted
run stops at once at the dense-model check. Prints the counts (docs/reliability.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.epochs=0", "runtime.progress=false", "eval.chips=1"]


def _cases(tmp: Path) -> list[tuple[str, list[str], str | None, Path | None]]:
    """(label, overrides, words the refusal must hold or None when legitimate, the folder a
    legitimate run must write its config.yaml into)."""
    (tmp / "file").write_text("x")
    os.symlink(tmp / "nowhere", tmp / "dangling")
    earlier = tmp / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    os.symlink(earlier, tmp / "link_to_earlier")
    spaced, newline = tmp / "with spaces", tmp / "new\nline"
    return [
        ("run dir is a file", [f"hydra.run.dir={tmp / 'file'}"], "is a file, not a folder",
         None),
        ("run dir below a file", [f"hydra.run.dir={tmp / 'file' / 'run'}"],
         "is a file, not a folder", None),
        ("run dir a dangling link", [f"hydra.run.dir={tmp / 'dangling'}"], "a link to nothing",
         None),
        ("run dir a link to an earlier run", [f"hydra.run.dir={tmp / 'link_to_earlier'}"],
         "already holds results of an earlier run", None),
        ("run dir name too long", [f"hydra.run.dir={tmp / ('c' * 300)}"],
         "longer than a file system takes", None),
        ("sweep dir is a file", ["-m", "seed=0", f"hydra.sweep.dir={tmp / 'file'}"],
         "hydra.sweep.dir=", None),
        ("job name leaving the folder", ["hydra.job.name=../evil", f"hydra.run.dir={tmp / 'j1'}"],
         "hydra.job.name='../evil' is invalid", None),
        ("job name with a slash", ["hydra.job.name=a/b", f"hydra.run.dir={tmp / 'j2'}"],
         "hydra.job.name='a/b' is invalid", None),
        ("job name hidden file", ["hydra.job.name=.x", f"hydra.run.dir={tmp / 'j3'}"],
         "hydra.job.name='.x' is invalid", None),
        ("job name with a space", ["hydra.job.name=a b", f"hydra.run.dir={tmp / 'j4'}"],
         "hydra.job.name='a b' is invalid", None),
        ("run dir with spaces", [f"hydra.run.dir={spaced}"], None, spaced),
        # Hydra's override grammar refuses it, naming the override (no traceback)
        ("run dir with a newline", [f"hydra.run.dir={newline}"],
         "LexerNoViableAltException: hydra.run.dir=", None),
    ]


def test_hostile_run_folders_and_job_names(tmp_path, capsys):
    cases = _cases(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "memxbar.experiments.compress", *FAST,
                               *overrides],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for _, overrides, _, _ in cases]
    table, problems = Counter(), []
    for (label, _, words, folder), proc in zip(cases, procs, strict=True):
        _, err = proc.communicate(timeout=300)
        if "Traceback" in err:
            table["raw"] += 1
            problems.append(f"{label}: traceback\n{err[-1500:]}")
        elif words is not None:
            ok = proc.returncode == 1 and words in err
            table["clear" if ok else "raw"] += 1
            if not ok:
                problems.append(f"{label}: rc {proc.returncode}: {err[-800:]}")
        elif (folder / "config.yaml").is_file():
            table["legit"] += 1
        else:
            table["silent"] += 1
            problems.append(f"{label}: accepted but no config.yaml in {folder!r}: {err[-800:]}")
    assert not (tmp_path.parent / "evil.log").exists() and not (tmp_path / "evil.log").exists()
    with capsys.disabled():
        print(f"\nrun folders and job names: {sum(table.values())} inputs, {dict(table)}")
    assert not problems, "\n".join(problems)
