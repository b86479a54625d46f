"""Reference networks: shapes on 28x28 and 8x8 inputs, sizes, standard modules only."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from prunekit.errors import ConfigError
from prunekit.models import CLASSIFIER, build_model, list_models

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 13, 9)]
STANDARD = (
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
)


def test_registry_names():
    assert list_models() == ["lenet300", "lenet5", "resnet20", "vgg-small"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_classifier(name, shape):
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, num_classes=7)
    classifier = getattr(model, CLASSIFIER)
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 7
    seen = []
    classifier.register_forward_hook(lambda mod, args, out: seen.append(out))
    x = torch.randn(3, *shape)
    out = model(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    assert torch.equal(seen[0], out)  # the classifier's output is the network's output
    model.eval()
    assert model(x).shape == (3, 7)


@pytest.mark.parametrize("name", list_models())
def test_only_standard_modules_and_traceable(name):
    model = build_model(name, input_shape=(1, 28, 28), num_classes=10)
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, STANDARD) for m in leaves)
    assert all(not m.inplace for m in leaves if isinstance(m, nn.ReLU))
    graph = fx.symbolic_trace(model).graph
    functions = {n.target for n in graph.nodes if n.op == "call_function"}
    assert functions <= {operator.add}  # residual sums only; every ReLU is a module


def test_lenet300_parameter_count():
    model = build_model("lenet300", input_shape=(1, 28, 28), num_classes=10)
    # 784*300 + 300 + 300*100 + 100 + 100*10 + 10
    assert sum(p.numel() for p in model.parameters()) == 266_610


def test_lenet5_classic_sizes_on_28x28():
    model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    assert model.fc1.in_features == 16 * 5 * 5
    assert sum(p.numel() for p in model.parameters()) == 61_706


def test_resnet20_has_20_weighted_layers_and_option_b_shortcuts():
    model = build_model("resnet20", input_shape=(1, 28, 28), num_classes=10)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    shortcuts = {n: m for n, m in convs.items() if ".downsample." in n}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) - len(shortcuts) == 19 and len(linears) == 1
    assert sorted(shortcuts) == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert all(m.kernel_size == (1, 1) and m.stride == (2, 2) for m in shortcuts.values())
    widths = [
        model.layer1[0].conv1.out_channels,
        model.layer2[0].conv1.out_channels,
        model.layer3[0].conv1.out_channels,
    ]
    assert widths == [16, 32, 64]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"input_shape": (28, 28), "num_classes": 10}, "input_shape"),
        ({"input_shape": (1, 0, 28), "num_classes": 10}, "input_shape"),
        ({"input_shape": (1, 28, 28), "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model("lenet5", **kwargs)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="valid models: lenet300, lenet5, resnet20, vgg-small"):
        build_model("alexnet", input_shape=(1, 28, 28), num_classes=10)
