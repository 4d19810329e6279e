"""Weight-noise injection: the output noise has the variance of independent weight noise."""

import pytest
import torch
from torch import nn

from memxbar.admm import CompressConfig, LayerConstraint
from memxbar.admm.noise import WeightNoise


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_output_noise_matches_weight_noise_statistics(kind: str) -> None:
    torch.manual_seed(0)
    sigma = 0.1
    if kind == "linear":
        layer, x = nn.Linear(20, 3, bias=False), torch.randn(1, 20)
    else:
        layer, x = nn.Conv2d(2, 3, 3, padding=1, bias=False), torch.randn(1, 2, 5, 5)
    clean = layer(x).detach()
    with WeightNoise({"l": layer}, sigma):
        injected = torch.stack([layer(x).detach() for _ in range(4000)])
    # Reference: perturb the weights themselves.
    w = layer.weight.detach().clone()
    direct = []
    for _ in range(4000):
        with torch.no_grad():
            layer.weight.copy_(w * (1 + sigma * torch.randn_like(w)))
            direct.append(layer(x))
        layer.weight.data.copy_(w)
    direct = torch.stack(direct)
    assert torch.allclose(injected.mean(0), clean, atol=0.02)
    ratio = injected.std(0) / direct.std(0)
    assert ((ratio - 1).abs() < 0.1).all()


def test_noise_only_in_training_mode_and_hooks_removed() -> None:
    layer = nn.Linear(5, 2)
    x = torch.randn(3, 5)
    with WeightNoise({"l": layer}, 0.5):
        assert not torch.equal(layer(x), layer(x))
        layer.eval()
        assert torch.equal(layer(x), layer(x))
        layer.train()
    assert torch.equal(layer(x), layer(x))


def test_invalid_train_noise_is_rejected() -> None:
    with pytest.raises(ValueError, match="train_noise"):
        CompressConfig(constraints=[LayerConstraint(pattern="*", levels=4)], train_noise=-0.1)
