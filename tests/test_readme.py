"""The README's library example runs as written, on real data (scikit-learn's digits), and
keeps the model's accuracy and every output class."""

import re
from pathlib import Path

import torch

from experiments.datasets import make_loaders
from experiments.models import build_model
from experiments.train import evaluate, fit

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
