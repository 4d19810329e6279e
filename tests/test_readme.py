"""The README's library example runs as written, on real data (scikit-learn's digits), and
keeps the model's accuracy and every output class."""

import re
from pathlib import Path

import pytest
import torch

from memxbar.experiments.datasets import make_loaders
from memxbar.experiments.models import build_model
from memxbar.experiments.train import evaluate, fit

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs_on_digits(tmp_path, monkeypatch) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    torch.manual_seed(0)
    train, test, info = make_loaders("digits", batch_size=64, seed=0)
    model = build_model("lenet5", input_shape=info.input_shape)
    fit(model, (train, test), epochs=15, lr=3e-3, progress=False)
    dense = evaluate(model, test)
    assert dense > 90.0
    x_train = next(iter(make_loaders("digits", batch_size=256, seed=0)[0]))[0]
    namespace = {"model": model, "x_train": x_train, "train_loader": train,
                 "test_loader": test}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["accuracy"] > dense - 5.0  # the dense model on NeuRRAM-like chips
    assert (tmp_path / "cost_report" / "report.md").exists()
    plan = namespace["plan"]
    assert plan.mapped_weights < plan.dense_weights
    assert len(plan["classifier.4"].live_cols) == 10  # no output class was pruned
    compressed = evaluate(namespace["xmodel"], test)
    assert compressed > 80.0, compressed


def _readme_app_commands() -> list[tuple[str, list[str], bool]]:
    """Every ``python -m memxbar.experiments.compress|device_study`` line of the README's bash
    blocks: (app, overrides, multirun), continuation lines joined and comments dropped."""
    import shlex

    found = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for app in ("memxbar.experiments.compress", "memxbar.experiments.device_study"):
                if app in words:
                    args = words[words.index(app) + 1:]
                    found.append((app, [a for a in args if a != "-m"], "-m" in args))
    return found


def _composable() -> list[tuple[str, list[str], bool]]:
    """The README's app commands but the one with the user's own ``--config-dir`` (a folder the
    README does not ship: tests/test_user_model.py runs that command's whole path)."""
    return [c for c in _readme_app_commands() if "--config-dir" not in c[1]]


def test_the_readme_names_its_app_commands():
    apps = _readme_app_commands()
    assert len(apps) >= 14, apps  # a block lost to a formatting change would shrink this
    assert sum(multi for *_, multi in apps) == 2
    assert len(apps) - len(_composable()) == 1  # only the user's own model is left out


@pytest.mark.parametrize("app, args, multirun", _composable(),
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_every_readme_app_command_is_accepted(app, args, multirun, tmp_path):
    """Issue 25: each README command's overrides compose and pass the app's checks (every
    job of a multirun), so a renamed key or a refused value in the README fails CI. The
    placeholders (a run folder, the user's own config dir) are filled in; running the
    commands themselves is covered by test_the_main_job_runs_as_written and the apps' tests."""
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from memxbar.experiments.conf_source import CONF_DIR
    from memxbar.experiments.config import load_compress_config, load_study_config

    args = [a.replace("$RUN", str(tmp_path)) for a in args]
    parsed = OverridesParser.create().parse_overrides(args)
    choices = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line]
               for o in parsed]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            choices[i] = [f"{o.get_key_element()}={v}" for v in choices[i]]
    assert multirun == any(o.is_sweep_override() for o in parsed), args
    name = "config" if app.endswith("compress") else "device_study"
    load = load_compress_config if name == "config" else load_study_config
    for job in itertools.product(*choices):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(name, overrides=[a for a in job if not a.startswith("hydra/")])
        load(cfg)


def test_the_main_job_runs_as_written(tmp_path):
    """The README's first command (``make run`` = ``python -m memxbar.experiments.compress``)
    runs as written on a fresh checkout (only the run folder is moved under tmp), then its cost
    report again with ``crossbar.report --run``, as the README shows (about 20 s on 2 cores)."""
    import subprocess
    import sys

    root = README.parent
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "memxbar.experiments.compress",
                          f"hydra.run.dir={run_dir}"], cwd=root, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"report: {run_dir / 'report.md'}"
    assert "result: dense" in (run_dir / "compress.log").read_text()
    report = subprocess.run([sys.executable, "-m", "memxbar.crossbar.report", "--run",
                             str(run_dir)], cwd=root, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (run_dir / "cost_rerun" / "report.md").is_file()
    # every figure the app wrote: a PDF without Type 3 fonts, a PNG at 300 dpi (issue 25)
    from PIL import Image

    pdfs = sorted(run_dir.rglob("*.pdf"))
    assert len(pdfs) >= 8, pdfs
    for pdf in pdfs:
        data = pdf.read_bytes()
        assert b"/Type3" not in data and (b"/TrueType" in data or b"/CIDFontType2" in data), pdf
        png = pdf.with_suffix(".png")
        assert [round(v) for v in Image.open(png).info["dpi"]] == [300, 300], png
