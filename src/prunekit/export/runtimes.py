"""A network prepared the way it is deployed, as a call to time: eager PyTorch, frozen
TorchScript, or onnxruntime.

A pruned network's speed-up depends on the runtime: eager PyTorch keeps a cost per operator
that TorchScript and onnxruntime mostly remove, and onnxruntime runs some widths (not
multiples of 8 or 16) far slower than others. Latency budgets are only meaningful in the
runtime that ships.

Example:
    >>> run = compiled(model, torch.randn(1, 3, 224, 224), "onnxruntime")
    >>> run()            # one forward pass, the way onnxruntime serves it
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._calls import run_model
from ..errors import ConfigError

RUNTIMES = ("eager", "torchscript", "onnxruntime")


def compiled(model: nn.Module, inputs: Any, runtime: str = "eager", *,
             threads: int = 1) -> Callable[[], Any]:
    """``model`` on ``inputs`` as ``runtime`` runs it: a call that makes one forward pass.

    Args:
        model: the network (not changed: the runtimes work on copies or exports).
        inputs: one example batch (a tensor, a tuple or a dict of keyword inputs).
        runtime: ``"eager"`` (the module in eval mode under ``torch.inference_mode``),
            ``"torchscript"`` (batch norm folded into the convolutions by ``torch.fx``,
            traced and frozen, channels_last for 4-d inputs) or ``"onnxruntime"``
            (:func:`prunekit.export_onnx` with a fixed batch; onnxruntime's CPU provider,
            every graph optimization, sequential execution).
        threads: intra-op threads: torch's for eager and TorchScript (set around each
            call), onnxruntime's session threads.

    Raises:
        ConfigError: an unknown runtime; a model that TorchScript cannot trace or torch.fx
            cannot follow (the message says which); a model that does not export to ONNX.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if int(threads) != threads or threads < 1:
        raise ConfigError(f"threads must be a whole number >= 1, got {threads!r}")
    if runtime == "onnxruntime":
        return _onnxruntime(model, inputs, threads)
    net = copy.deepcopy(model).eval()
    if runtime == "torchscript":
        net, inputs = _torchscript(net, inputs)

    def run() -> Any:
        before = torch.get_num_threads()
        if before != threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return run_model(net, inputs)
        finally:
            if before != threads:
                torch.set_num_threads(before)

    return run


def _torchscript(net: nn.Module, inputs: Any) -> tuple[Any, Any]:
    from torch.fx.experimental.optimization import fuse

    if isinstance(inputs, dict):
        raise ConfigError("runtime='torchscript' takes a tensor or a tuple of positional "
                          "tensors; for keyword inputs (a Hugging Face model) use "
                          "runtime='onnxruntime'")

    try:
        net = fuse(net)
    except Exception as e:  # fx raises many types; the user needs the reason
        raise ConfigError(
            f"runtime='torchscript' folds batch norm with torch.fx, which cannot follow "
            f"{type(net).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "use runtime='onnxruntime' or 'eager'") from None
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        net = net.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit's deprecation notices
            frozen = torch.jit.freeze(torch.jit.trace(net, args, strict=False))
    except Exception as e:
        raise ConfigError(
            f"runtime='torchscript' cannot trace {type(net).__name__} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "use runtime='onnxruntime' or 'eager'") from None
    return frozen, inputs


def _onnxruntime(model: nn.Module, inputs: Any, threads: int) -> Callable[[], Any]:
    from .onnx import _eval, _export_bytes, _exportable, _feed, _session, _split_inputs

    data = _layer_graph(model, inputs)
    if data is None:
        args, kwargs = _split_inputs(inputs)
        net = _exportable(model)
        with _eval(net), torch.no_grad():
            data = _export_bytes(net, args, kwargs, opset=18, dynamic_batch=False)
    session = _session(data, threads=threads)
    feed = _feed(session, inputs)
    return lambda: session.run(None, feed)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _layer_graph(layer: nn.Module, inputs: Any) -> bytes | None:
    """A lone convolution or linear layer as a one-node ONNX graph (``Conv``, or ``MatMul``
    and ``Add``), written directly: what the exporter would emit for it, in milliseconds
    instead of the half second ``torch.onnx.export`` takes, so a latency table can time
    thousands of layers in onnxruntime. ``None`` for anything else (it is exported)."""
    if type(layer) not in (*_CONVS, nn.Linear) or not isinstance(inputs, torch.Tensor) \
            or inputs.dtype != torch.float32:
        return None
    if type(layer) in _CONVS and (layer.padding_mode != "zeros"
                                  or isinstance(layer.padding, str)):
        return None
    from .onnx import _import

    onnx = _import("onnx", "onnx")
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto

    def constant(t: torch.Tensor, name: str) -> Any:
        return numpy_helper.from_array(t.detach().cpu().float().numpy(), name)

    if isinstance(layer, nn.Linear):
        weights = [constant(layer.weight.t(), "w")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if layer.bias is None else "xw"])]
        if layer.bias is not None:
            weights.append(constant(layer.bias, "b"))
            nodes.append(helper.make_node("Add", ["xw", "b"], ["y"]))
    else:
        weights = [constant(layer.weight, "w")]
        if layer.bias is not None:
            weights.append(constant(layer.bias, "b"))
        pads = list(layer.padding)
        nodes = [helper.make_node("Conv", ["x", "w", "b"][:len(weights) + 1], ["y"],
                                  kernel_shape=list(layer.kernel_size),
                                  strides=list(layer.stride), pads=pads + pads,
                                  dilations=list(layer.dilation), group=layer.groups)]
    graph = helper.make_graph(
        nodes, type(layer).__name__,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(inputs.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]
                             ).SerializeToString()
