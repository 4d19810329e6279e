"""Model zoo shapes, registry errors, and the plain training loop on digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from memxbar.experiments.datasets import make_loaders
from memxbar.experiments.models import MODELS, LeNet5, build_model
from memxbar.experiments.train import evaluate, fit, make_optimizer

CONF = Path(__file__).resolve().parents[1] / "memxbar" / "conf" / "model"


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("mlp", (1, 28, 28), 266_610),  # 784*300+300 + 300*100+100 + 100*10+10
        ("mlp", (1, 8, 8), 50_610),
        ("lenet5", (1, 28, 28), 61_706),  # the classic LeNet-5 count
        ("lenet5", (1, 8, 8), None),
        ("vgg16", (3, 32, 32), None),
        ("resnet18", (3, 32, 32), None),
    ],
)
def test_forward_shape(name: str, shape: tuple[int, int, int], params: int | None) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_vgg16_and_resnet18_structure() -> None:
    vgg = build_model("vgg16")
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(m.kernel_size == (3, 3) for m in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 13
    assert [m.in_features for m in vgg.modules() if isinstance(m, nn.Linear)] == [512]
    resnet = build_model("resnet18", num_classes=100)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet.modules())
    assert [len(s) for s in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)] == [2] * 4
    assert resnet.fc.out_features == 100


def test_lenet5_mnist_layout() -> None:
    model = LeNet5()
    assert model.classifier[0].in_features == 400  # 16 x 5 x 5
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [120, 84, 10]
    small = LeNet5(input_size=8)
    assert small(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="input_size=3"):
        LeNet5(input_size=3)


def test_unknown_model_names_key_value_and_allowed() -> None:
    with pytest.raises(ValueError) as err:
        build_model("alexnet")
    message = str(err.value)
    assert "model.name='alexnet'" in message
    assert all(name in message for name in ("mlp", "lenet5", "vgg16", "resnet18"))


def test_shape_kwarg_contradicting_input_shape() -> None:
    with pytest.raises(ValueError, match="model.in_features=784"):
        build_model("mlp", input_shape=(1, 8, 8), in_features=784)
    assert build_model("lenet5", input_shape=(1, 8, 8), input_size=[8, 8]) is not None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_configs_build(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    shape = (3, 32, 32) if name in ("vgg16", "resnet18") else (1, 28, 28)
    model = build_model(**cfg, input_shape=shape, num_classes=10)
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_no_hard_coded_device() -> None:
    model = build_model("lenet5").to("meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model(torch.empty(2, 1, 28, 28, device="meta")).device.type == "meta"


def test_fit_mlp_on_digits_learns_and_is_seeded() -> None:
    runs = []
    for _ in range(2):  # fresh loaders: their seeded generator fixes the shuffle order
        loaders = make_loaders("digits", batch_size=64, seed=0)[:2]
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=(1, 8, 8))
        history = fit(model, loaders, epochs=3, lr=1e-3, optimizer="adam", seed=0, progress=False)
        runs.append(history)
    assert runs[0] == runs[1]
    assert runs[0][-1]["test_acc"] > 85.0
    assert evaluate(model, loaders[1]) == pytest.approx(runs[0][-1]["test_acc"])
    assert model.training  # evaluate restores the mode


def test_make_optimizer_rejects_unknown() -> None:
    params = [nn.Parameter(torch.zeros(1))]
    assert isinstance(make_optimizer("sgd", params, lr=0.1), torch.optim.SGD)
    with pytest.raises(ValueError, match="train.optimizer='lbfgs'.*adam"):
        make_optimizer("lbfgs", params, lr=0.1)
