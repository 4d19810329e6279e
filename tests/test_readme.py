"""The README's library example runs as written (on a small model and random data)."""

import re
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from experiments.models import build_model

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    namespace = {"model": build_model("lenet5", input_shape=(1, 8, 8)), "x_train": x,
                 "train_loader": loader, "test_loader": loader}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), namespace)
    assert 0.0 <= namespace["accuracy"] <= 100.0
    assert (tmp_path / "cost_report" / "report.md").exists()
    assert namespace["plan"].mapped_weights < namespace["plan"].dense_weights
