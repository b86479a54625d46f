"""Layer surgeons: per module type, which attributes hold its sizes.

After parameters are sliced, a surgeon reads the new shapes and returns the
attribute values the module's forward needs (``in_features``, ``out_channels``,
``num_features``, ``embed_dim`` ...). Surgeons are registered by the qualified
name of the module class and found along the class's MRO, so subclasses are
covered and optional libraries need not be imported. Adding a layer type is
one decorated function::

    @register_surgeon("mylib.layers.Mixer")
    def mixer(module, shape, attrs):
        return {"width": shape("weight")[0]}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .._registry import Registry

ShapeFn = Callable[[str], "tuple[int, ...] | None"]
Surgeon = Callable[[nn.Module, ShapeFn, dict[str, Any]], dict[str, Any]]

_SURGEONS: Registry[Surgeon] = Registry("layer surgeon")
_FINALIZERS: Registry[Callable[[nn.Module], None]] = Registry("layer finalizer")
_INPUTS: Registry[Callable[[nn.Module, str], set[int]]] = Registry("layer input dimensions")


def register_surgeon(cls_name: str) -> Callable[[Surgeon], Surgeon]:
    """Register ``fn(module, shape, attrs) -> {attr: value}`` for a module class.

    ``shape(local_name)`` gives the new shape of one of the module's tensors
    (children's too: ``shape("out_proj.weight")``); ``attrs`` holds attribute
    values already decided (from the graph, e.g. ``groups``).
    """
    return _SURGEONS.register(cls_name)


def _lookup(registry: Registry, module: nn.Module) -> Any:
    for cls in type(module).__mro__:
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in registry:
            return registry.get(key)
    return None


def surgeon_for(module: nn.Module) -> Surgeon | None:
    """The surgeon of ``module``'s class (or nearest base class), if any."""
    return _lookup(_SURGEONS, module)


def input_dims(module: nn.Module, local: str) -> set[int]:
    """Dimensions of tensor ``local`` of ``module`` that face its inputs (columns of a
    Linear weight): a layer kept by ``ignore`` may still lose those."""
    fn = _lookup(_INPUTS, module)
    return set() if fn is None else fn(module, local)


def finalize(module: nn.Module) -> None:
    """Run the post-surgery hook of ``module``'s class (e.g. RNN flat weights)."""
    fn = _lookup(_FINALIZERS, module)
    if fn is not None:
        fn(module)


@register_surgeon("torch.nn.modules.linear.Linear")
def linear(module: nn.Linear, shape: ShapeFn, attrs: dict) -> dict:
    out_f, in_f = shape("weight")
    return {"in_features": in_f, "out_features": out_f}


@register_surgeon("torch.nn.modules.linear.Bilinear")
def bilinear(module: nn.Bilinear, shape: ShapeFn, attrs: dict) -> dict:
    out_f, in1, in2 = shape("weight")
    return {"in1_features": in1, "in2_features": in2, "out_features": out_f}


@register_surgeon("torch.nn.modules.conv._ConvNd")
def conv(module: nn.Module, shape: ShapeFn, attrs: dict) -> dict:
    groups = attrs.get("groups", module.groups)
    w = shape("weight")
    if module.transposed:  # (C_in, C_out / groups, k...)
        return {"in_channels": w[0], "out_channels": w[1] * groups, "groups": groups}
    return {"in_channels": w[1] * groups, "out_channels": w[0], "groups": groups}


def _features(module: nn.Module, shape: ShapeFn) -> int | None:
    for local in ("weight", "bias", "running_mean", "running_var"):
        s = shape(local)
        if s is not None:
            return s[0]
    return None


@register_surgeon("torch.nn.modules.batchnorm._NormBase")
def batch_norm(module: nn.Module, shape: ShapeFn, attrs: dict) -> dict:
    n = _features(module, shape)
    return {} if n is None else {"num_features": n}


@register_surgeon("torch.nn.modules.normalization.LayerNorm")
def layer_norm(module: nn.LayerNorm, shape: ShapeFn, attrs: dict) -> dict:
    if "normalized_shape" in attrs:
        return {"normalized_shape": tuple(attrs["normalized_shape"])}
    w = shape("weight")
    return {} if w is None else {"normalized_shape": tuple(w)}


@register_surgeon("torch.nn.modules.normalization.RMSNorm")
def rms_norm(module: nn.Module, shape: ShapeFn, attrs: dict) -> dict:
    return layer_norm(module, shape, attrs)


@register_surgeon("torch.nn.modules.normalization.GroupNorm")
def group_norm(module: nn.GroupNorm, shape: ShapeFn, attrs: dict) -> dict:
    out = {"num_groups": attrs.get("num_groups", module.num_groups)}
    n = _features(module, shape)
    if n is not None:
        out["num_channels"] = n
    return out


@register_surgeon("torch.nn.modules.sparse.Embedding")
def embedding(module: nn.Embedding, shape: ShapeFn, attrs: dict) -> dict:
    rows, dim = shape("weight")
    return {"num_embeddings": rows, "embedding_dim": dim}


@register_surgeon("torch.nn.modules.sparse.EmbeddingBag")
def embedding_bag(module: nn.Module, shape: ShapeFn, attrs: dict) -> dict:
    return embedding(module, shape, attrs)


@register_surgeon("torch.nn.modules.activation.PReLU")
def prelu(module: nn.PReLU, shape: ShapeFn, attrs: dict) -> dict:
    (n,) = shape("weight")
    return {"num_parameters": n}


@register_surgeon("torch.nn.modules.activation.MultiheadAttention")
def multihead_attention(module: nn.MultiheadAttention, shape: ShapeFn, attrs: dict) -> dict:
    embed = shape("out_proj.weight")[0]
    heads = attrs.get("num_heads", module.num_heads)
    out = {"embed_dim": embed, "num_heads": heads, "head_dim": embed // heads}
    if module._qkv_same_embed_dim:
        out.update(kdim=embed, vdim=embed)
    else:
        out.update(kdim=shape("k_proj_weight")[1], vdim=shape("v_proj_weight")[1])
    return out


@register_surgeon("torch.nn.modules.rnn.RNNBase")
def rnn(module: nn.RNNBase, shape: ShapeFn, attrs: dict) -> dict:
    out = {"input_size": shape("weight_ih_l0")[1]}
    if module.proj_size > 0:
        out["proj_size"], out["hidden_size"] = shape("weight_hr_l0")
    else:
        out["hidden_size"] = shape("weight_hh_l0")[1]
    return out


@_FINALIZERS.register("torch.nn.modules.rnn.RNNBase")
def rnn_finalize(module: nn.RNNBase) -> None:
    """RNNs keep a list of their flat weights; rebuild it after parameters change."""
    module._init_flat_weights()


@register_surgeon("transformers.pytorch_utils.Conv1D")
def hf_conv1d(module: nn.Module, shape: ShapeFn, attrs: dict) -> dict:
    """Hugging Face's GPT-2 ``Conv1D``: weight (in, out), ``nf`` = out features."""
    return {"nf": shape("weight")[1]}


@_INPUTS.register("torch.nn.modules.linear.Linear")
def _linear_inputs(module: nn.Module, local: str) -> set[int]:
    return {1} if local == "weight" else set()


@_INPUTS.register("torch.nn.modules.linear.Bilinear")
def _bilinear_inputs(module: nn.Module, local: str) -> set[int]:
    return {1, 2} if local == "weight" else set()


@_INPUTS.register("torch.nn.modules.conv._ConvNd")
def _conv_inputs(module: nn.Module, local: str) -> set[int]:
    return ({0} if module.transposed else {1}) if local == "weight" else set()


@_INPUTS.register("torch.nn.modules.rnn.RNNBase")
def _rnn_inputs(module: nn.Module, local: str) -> set[int]:
    return {1} if local in ("weight_ih_l0", "weight_ih_l0_reverse") else set()


@_INPUTS.register("transformers.pytorch_utils.Conv1D")
def _hf_conv1d_inputs(module: nn.Module, local: str) -> set[int]:
    return {0} if local == "weight" else set()
