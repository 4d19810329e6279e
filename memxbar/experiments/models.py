"""Model zoo: the networks the toolkit compresses and maps onto crossbars.

All models are plain ``torch.nn`` modules built from ``Linear`` and ``Conv2d`` layers, so every
weight matrix has the crossbar view of the design (Linear ``W[out, in]``, Conv2d
``W[out, in*kh*kw]``). No model hard-codes a device; move it with ``model.to(device)``.

- ``mlp``: LeNet-300-100 (LeCun et al., 1998): ``in -> 300 -> 100 -> classes`` with ReLU.
- ``lenet5``: LeNet-5 in its common modern form (ReLU, max pooling).
- ``vgg16``: VGG-16 (Simonyan and Zisserman, 2015) in the CIFAR-10 form used by Yuan et al.
  (ISLPED 2019): 13 conv3x3 + BatchNorm + ReLU, 5 max pools, one ``512 -> classes`` classifier.
- ``resnet18``: ResNet-18 (He et al., 2016) in the CIFAR-10 form: 3x3 stem without max pool,
  BasicBlocks ``[2, 2, 2, 2]`` of widths 64-128-256-512, global average pool, one fc layer.

``build_model(name, **kwargs)`` builds any of them by name; pass ``input_shape`` (C, H, W) to fill
the shape-dependent arguments from a dataset's ``DatasetInfo.input_shape``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from memxbar.experiments.checks import import_target

__all__ = ["MLP", "LeNet5", "VGG16", "ResNet18", "BasicBlock", "MODELS", "build_model"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int or a two-element sequence."""
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    return height, width


class MLP(nn.Module):
    """LeNet-300-100: a fully connected ``in_features -> hidden... -> num_classes`` network.

    The input is flattened, so MNIST (1x28x28, ``in_features=784``) and scikit-learn digits
    (1x8x8, ``in_features=64``) both work. Hidden layers use ReLU; the output is raw logits.
    """

    def __init__(
        self, in_features: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10
    ) -> None:
        super().__init__()
        widths = [int(in_features), *(int(h) for h in hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], int(num_classes)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (pad 2), max pool, conv 16@5x5, max pool, fc 120-84-classes, ReLU.

    On MNIST (1x28x28) the feature map is 16x5x5 = 400 before the classifier, as in LeCun et al.
    (1998). Smaller inputs are supported: when the map after the first pool is smaller than the
    5x5 kernel (e.g. 4x4 for 8x8 digits), the second conv uses "same" padding (2) instead of none.
    The flatten size is taken from a dummy forward pass, so any input size >= 4 works.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int | Sequence[int] = 28,
    ) -> None:
        super().__init__()
        height, width = _pair(input_size)
        if min(height, width) < 4:
            raise ValueError(
                f"LeNet5 input_size={input_size!r} is too small; allowed: height and width >= 4"
            )
        conv2_padding = 0 if min(height, width) // 2 >= 5 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=conv2_padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, height, width)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, int(num_classes)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)
"""VGG-16 features: an int is conv3x3 + BatchNorm + ReLU of that width, "M" a 2x2 max pool."""


class VGG16(nn.Module):
    """VGG-16, CIFAR-10 form: 13 conv3x3 (pad 1) + BatchNorm + ReLU, 5 max pools, fc 512-classes.

    Expects 32x32 inputs (five pools leave a 512x1x1 map). Convs have no bias because the
    following BatchNorm makes it redundant.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, int(spec), kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(int(spec)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two conv3x3 + BatchNorm, identity (or 1x1 conv + BN) shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR-10 form: 3x3 stem (64, stride 1, no max pool), BasicBlocks [2, 2, 2, 2]
    of widths 64-128-256-512 (strides 1, 2, 2, 2), global average pool, fc 512-classes."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


def _mlp_shape(shape: tuple[int, int, int]) -> dict[str, int]:
    return {"in_features": shape[0] * shape[1] * shape[2]}


def _lenet_shape(shape: tuple[int, int, int]) -> dict[str, object]:
    return {"in_channels": shape[0], "input_size": (shape[1], shape[2])}


def _cifar_shape(shape: tuple[int, int, int]) -> dict[str, int]:
    return {"in_channels": shape[0]}


MODELS: dict[str, tuple[type[nn.Module], Callable[[tuple[int, int, int]], dict]]] = {
    "mlp": (MLP, _mlp_shape),
    "lenet5": (LeNet5, _lenet_shape),
    "vgg16": (VGG16, _cifar_shape),
    "resnet18": (ResNet18, _cifar_shape),
}
"""Registry: model name -> (class, function mapping an input shape (C, H, W) to its kwargs)."""


def build_model(
    name: str, *, input_shape: Sequence[int] | None = None, target: str | None = None,
    data_classes: int | None = None, **kwargs: object
) -> nn.Module:
    """Build the model registered under ``name`` with constructor ``kwargs``, or (``target``)
    the user's model that the dotted path names (``model._target_``).

    ``input_shape`` (C, H, W), e.g. ``DatasetInfo.input_shape``, fills the shape arguments
    (``in_features`` for ``mlp``; ``in_channels``/``input_size`` for ``lenet5``; ``in_channels``
    for ``vgg16``/``resnet18``). An explicit kwarg that disagrees with it is an error.
    ``data_classes``, the data's class count, fills ``num_classes`` where the config leaves it
    unset. A user's constructor receives ``input_shape`` (a tuple) and ``num_classes`` from the
    data when it takes parameters of those names and the config does not set them.

    Raises:
        ValueError: unknown ``name``, or a shape kwarg that contradicts ``input_shape``.
    """
    if target is not None:
        return _build_target(target, input_shape, data_classes, kwargs)
    if name not in MODELS:
        raise ValueError(
            f"model.name={name!r} is not a known model; allowed: {sorted(MODELS)}"
        )
    cls, shape_kwargs = MODELS[name]
    if data_classes is not None and "num_classes" in inspect.signature(cls).parameters:
        kwargs.setdefault("num_classes", int(data_classes))
    if input_shape is not None:
        c, h, w = (int(s) for s in input_shape)
        for key, value in shape_kwargs((c, h, w)).items():
            given = kwargs.setdefault(key, value)
            if not _same(given, value):
                raise ValueError(
                    f"model.{key}={given!r} contradicts the dataset input shape {(c, h, w)}; "
                    f"allowed: {value!r} (or leave it unset)"
                )
    return cls(**kwargs)


def _build_target(target: str, input_shape: Sequence[int] | None, num_classes: int | None,
                  kwargs: dict) -> nn.Module:
    builder = import_target("model._target_", target)
    params = inspect.signature(builder).parameters
    for key, value in (("input_shape", input_shape), ("num_classes", num_classes)):
        if key in params and key not in kwargs and value is not None:
            kwargs[key] = tuple(int(v) for v in value) if key == "input_shape" else int(value)
    model = builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model._target_={target!r} is invalid; allowed: a constructor that "
                         f"returns a torch.nn.Module (it returned {type(model).__name__})")
    return model


def _same(given: object, expected: object) -> bool:
    """Compare a kwarg with its shape-derived value; sizes may be an int, list or tuple."""
    if isinstance(expected, tuple):
        return _pair(given) == expected  # type: ignore[arg-type]
    return given == expected
