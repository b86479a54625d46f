"""A network prepared as each runtime serves it: the same outputs as PyTorch, the model left
as it was, and clear errors for what a runtime cannot take."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from prunekit.allocation.latency import measured_timer
from prunekit.errors import ConfigError
from prunekit.export.runtimes import RUNTIMES, compiled

_ONNX = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


def convnet() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 4))
    for m in net.modules():  # batch norm that is not the identity, so folding it matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return net.train()  # compiled() must run it in eval mode without changing the model


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_gives_the_eval_outputs_and_leaves_the_model(runtime):
    if runtime == "onnxruntime" and _ONNX:
        pytest.skip(f"needs {_ONNX}: pip install onnx onnxscript onnxruntime")
    net, x = convnet(), torch.randn(2, 3, 16, 16)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        expected = net.eval()(x)
    net.train()
    run = compiled(net, x, runtime)
    out = run()
    out = torch.as_tensor(out[0] if isinstance(out, list) else out)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


LAYERS = [
    (lambda: nn.Conv2d(8, 16, 3, stride=2, padding=1), (1, 8, 20, 20)),
    (lambda: nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16, bias=False), (2, 16, 9, 9)),
    (lambda: nn.Conv2d(4, 6, (3, 1), padding=(1, 0), groups=2), (1, 4, 7, 7)),
    (lambda: nn.Conv1d(4, 6, 5, padding=2), (1, 4, 30)),
    (lambda: nn.Conv3d(2, 4, 3), (1, 2, 6, 6, 6)),
    (lambda: nn.Linear(10, 7), (3, 10)),
    (lambda: nn.Linear(10, 7, bias=False), (2, 5, 10)),
]


@pytest.mark.skipif(bool(_ONNX), reason=f"needs {_ONNX}: pip install onnx onnxscript onnxruntime")
@pytest.mark.parametrize(("make", "shape"), LAYERS)
def test_a_lone_layer_is_written_as_one_onnx_node_with_the_same_outputs(make, shape, monkeypatch):
    """The latency table times thousands of lone layers in onnxruntime: they are written as a
    one-node graph, not exported, and compute what PyTorch does."""
    from prunekit.export import onnx as onnx_module

    def no_export(*args, **kwargs):
        raise AssertionError("a lone layer must not go through torch.onnx.export")

    monkeypatch.setattr(onnx_module, "_export_bytes", no_export)
    torch.manual_seed(0)
    layer, x = make().eval(), torch.randn(shape)
    out = compiled(layer, x, "onnxruntime")()[0]
    torch.testing.assert_close(torch.as_tensor(out), layer(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(bool(_ONNX), reason=f"needs {_ONNX}: pip install onnx onnxscript onnxruntime")
@pytest.mark.parametrize("make", [lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                                  lambda: nn.Conv2d(3, 4, 3, padding="same")])
def test_a_layer_one_node_cannot_express_is_exported(make):
    torch.manual_seed(0)
    layer, x = make().eval(), torch.randn(1, 3, 9, 9)
    from prunekit.export.runtimes import _layer_graph

    assert _layer_graph(layer, x) is None
    out = compiled(layer, x, "onnxruntime")()[0]
    torch.testing.assert_close(torch.as_tensor(out), layer(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(bool(_ONNX), reason=f"needs {_ONNX}: pip install onnx onnxscript onnxruntime")
def test_the_timer_times_a_network_in_onnxruntime(monkeypatch):
    """Every run the timer times (and its warm-up) is an onnxruntime session's run."""
    ort = pytest.importorskip("onnxruntime")
    sessions, real = [], ort.InferenceSession.run

    def counted(self, *args, **kwargs):
        sessions.append(id(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    timer = measured_timer(clock="cpu", runs=3, warmup=2, runtime="onnxruntime")
    assert timer(convnet(), torch.randn(1, 3, 16, 16)) > 0
    assert len(sessions) == 5 and len(set(sessions)) == 1
    assert "onnxruntime" in timer.__qualname__


def test_the_timer_prepares_the_network_in_the_runtime_it_names(monkeypatch):
    """What a runtime timer times is the network as that runtime prepares it, not eager."""
    import prunekit.export.runtimes as runtimes

    asked, real = [], runtimes.compiled

    def spy(model, inputs, runtime="eager", **kw):
        asked.append(runtime)
        return real(model, inputs, runtime, **kw)

    monkeypatch.setattr(runtimes, "compiled", spy)
    measured_timer(clock="cpu", runs=1, warmup=0, runtime="torchscript")(
        convnet(), torch.randn(1, 3, 16, 16))
    assert asked == ["torchscript"]


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x  # torch.fx cannot follow this


def test_what_a_runtime_cannot_take_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'; valid: eager, "):
        compiled(convnet(), torch.randn(1, 3, 8, 8), "tensorrt")
    with pytest.raises(ConfigError, match="threads must be a whole number >= 1"):
        compiled(convnet(), torch.randn(1, 3, 8, 8), "eager", threads=0)
    with pytest.raises(ConfigError, match="torch.fx, which cannot follow DataDependent.*"
                                          "use runtime='onnxruntime' or 'eager'"):
        compiled(DataDependent(), torch.randn(1, 3), "torchscript")
    with pytest.raises(ConfigError, match="for keyword inputs .* use runtime='onnxruntime'"):
        compiled(convnet(), {"x": torch.randn(1, 3, 8, 8)}, "torchscript")
    with pytest.raises(ConfigError, match="unknown runtime 'tvm'"):
        measured_timer(runtime="tvm")
