"""Reference networks for pruning experiments, built by name for any input shape.

Every network is made of standard modules only (Linear, Conv2d, BatchNorm2d, ReLU
as a module, MaxPool2d, AdaptiveAvgPool2d, Flatten) so that tracers and pruning
tools can follow it, and every network's final classifier is the attribute
``fc`` (an ``nn.Linear`` with ``num_classes`` outputs), the layer to protect or
ignore when pruning.

Example:
    >>> model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .._registry import Registry
from ..errors import ConfigError

ModelBuilder = Callable[[tuple[int, int, int], int], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")

CLASSIFIER = "fc"  # attribute name of every reference network's final nn.Linear


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered networks: ``lenet300``, ``lenet5``, ``resnet20``, ``vgg-small``."""
    return MODELS.names(pattern)


def build_model(name: str, *, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build a freshly initialized reference network.

    Weights are drawn from PyTorch's global generator: seed it first
    (``prunekit._utils.seed_everything``) for a repeatable network.

    Args:
        name: one of :func:`list_models`.
        input_shape: ``(C, H, W)`` of one input, e.g. ``(1, 28, 28)``.
        num_classes: number of outputs of the classifier ``model.fc``.

    Returns:
        A module mapping (B, C, H, W) to logits (B, num_classes).
    """
    builder = MODELS.get(name)
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(
            f"input_shape must be three positive integers (C, H, W), got {input_shape!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return builder(shape, num_classes)


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Number of features ``features`` yields for one input, found by a dummy forward."""
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape))
    if out.numel() == 0:
        raise ConfigError(f"input_shape {input_shape} is too small for this network")
    return out.numel()


class LeNet300(nn.Module):
    """LeNet-300-100: a multilayer perceptron (C*H*W)-300-100-classes with ReLU.

    Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to
    document recognition", Proc. IEEE 86(11), 1998; the pruning benchmark of
    S. Han et al., "Learning both Weights and Connections for Efficient Neural
    Networks", NeurIPS 2015. 266,610 parameters for 784 inputs and 10 classes.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(input_shape), 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (B, C*H*W)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (pad 2), max-pool, conv 16@5x5, max-pool, fc 120, 84, classes.

    LeCun et al. 1998 (see :class:`LeNet300`), with ReLU and max pooling as in
    modern re-implementations. On 28x28 inputs the second convolution sees 14x14
    and is unpadded (16x5x5 = 400 features); inputs whose first pooled map is
    smaller than 10x10 (e.g. 8x8 digits) pad it by 2 so the map does not vanish.
    Pools use ``ceil_mode`` so odd sizes keep their border.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        pooled = math.ceil(min(height, width) / 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(6, 16, kernel_size=5, padding=0 if pooled >= 10 else 2),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
        )
        self.fc1 = nn.Linear(_flat_size(self.features, input_shape), 120)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 16*h*w)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc(x)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 convolution (no bias), batch norm, ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class VGGSmall(nn.Module):
    """A small VGG-style network: conv-BN-ReLU blocks 32, 32, pool, 64, 64, pool, 128.

    Then global average pooling and the classifier ``fc``. After K. Simonyan and
    A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition", ICLR 2015.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = input_shape[0]
        for item in (32, 32, "pool", 64, 64, "pool", 128):
            if item == "pool":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += _conv_bn_relu(in_channels, item)
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_channels, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))  # (B, 128, 1, 1)
        return self.fc(self.flatten(x))  # (B, 128) -> (B, classes)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN (option B) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20: 3x3 conv 16, three stages of 3 BasicBlocks (16, 32, 64).

    Stages 2 and 3 halve the resolution; where a block changes shape its shortcut is
    a 1x1 conv + BN (option B). 19 convolutions plus ``fc`` are the 20 weighted
    layers (the two shortcut convolutions are not counted). K. He, X. Zhang, S. Ren,
    J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, stride=1)
        self.layer2 = self._stage(16, 32, stride=2)
        self.layer3 = self._stage(32, 64, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        _init_conv_bn(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, *, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride)]
        blocks += [BasicBlock(out_channels, out_channels, 1) for _ in range(2)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.pool(x)  # (B, 64, 1, 1)
        return self.fc(self.flatten(x))  # (B, 64) -> (B, classes)


def _init_conv_bn(model: nn.Module) -> None:
    """He (Kaiming) normal init for convolutions; BN scale 1 and shift 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


MODELS.register("lenet300")(LeNet300)
MODELS.register("lenet5")(LeNet5)
MODELS.register("vgg-small")(VGGSmall)
MODELS.register("resnet20")(ResNet20)
