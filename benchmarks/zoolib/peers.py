"""Peers for side-by-side zoo runs: Torch-Pruning (DepGraph, Fang et al., CVPR 2023).

The adapter prunes the way Torch-Pruning's own examples do (``examples/torchvision_models``,
``examples/timm_models``, ``examples/transformers``, ``examples/LLMs``): group L2 magnitude
importance, one uniform ratio, the same output heads ignored as for prunekit, attention
projections registered in ``num_heads`` (whole heads removed for Hugging Face q/k/v
attention, head dimensions for fused ``qkv`` attention, channels rounded to the head count
for ``nn.MultiheadAttention``), the custom ``SwinPatchMerging`` pruner of its Hugging Face
Swin example, and afterwards the module attributes its examples update by hand (head counts
and sizes, torchvision ViT's ``hidden_dim``).

A Torch-Pruning run passes when its prune completes, something was removed, and the pruned
model runs on the example inputs with every output tensor of the original's shape. It has no
counterpart of ``pk.verify`` or of portable plans, so those are not checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit._registry import Registry
from prunekit.models.catalog import Inputs, ZooModel, call_model

from .runner import TOOLS, ZooResult, check_pruned, check_same_shapes, measure, output_shapes

_FUSED_QKV = ("qkv", "to_qkv", "qkv_proj")
_SPLIT_QKV = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"),
              ("q_lin", "k_lin", "v_lin"), ("q", "k", "v"))  # fmt: skip
_HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
_WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size", "embed_dim", "dim", "hidden_size")


@dataclass
class AttentionSite:
    """An attention module and its projections, as Torch-Pruning's ``num_heads`` needs them."""

    module: nn.Module
    projections: tuple[nn.Linear, ...]  # (qkv,) or (q, k, v)
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1


def _int_attr(obj: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _heads(module: nn.Module) -> tuple[int | None, int | None]:
    config = getattr(module, "config", None)
    heads = _int_attr(module, _HEAD_ATTRS) or _int_attr(config, ("num_attention_heads",))
    kv = _int_attr(module, ("num_key_value_heads",)) or _int_attr(config, ("num_key_value_heads",))
    return heads, kv or heads


def _site(module: nn.Module) -> AttentionSite | None:
    heads, kv = _heads(module)
    if heads is None:
        return None
    for name in _FUSED_QKV:
        qkv = getattr(module, name, None)
        if isinstance(qkv, nn.Linear):
            return AttentionSite(module, (qkv,), heads, kv, qkv.out_features // (3 * heads))
    for names in _SPLIT_QKV:
        projs = tuple(getattr(module, n, None) for n in names)
        if all(isinstance(p, nn.Linear) for p in projs):
            return AttentionSite(module, projs, heads, kv, projs[0].out_features // heads)
    return None


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Attention modules with q/k/v (or fused qkv) Linear projections and a head count."""
    return [s for m in model.modules() if (s := _site(m)) is not None]


def _num_heads(sites: list[AttentionSite]) -> dict[nn.Module, int]:
    out: dict[nn.Module, int] = {}
    for site in sites:
        if site.fused:
            out[site.projections[0]] = site.heads
        else:
            q, k, v = site.projections
            out.update({q: site.heads, k: site.kv_heads, v: site.kv_heads})
    return out


def _mha_round_to(model: nn.Module) -> int | None:
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return max(heads) if heads else None


EXTRAS: Registry[Callable[[nn.Module], dict[str, Any]]] = Registry("tp extra")
"""Model-specific ``BasePruner`` options that Torch-Pruning's own examples add by hand."""


def pruner_options(model: nn.Module, sites: list[AttentionSite]) -> dict[str, Any]:
    """Options for ``tp.pruner.BasePruner``, as Torch-Pruning's examples set them."""
    options: dict[str, Any] = {"num_heads": _num_heads(sites), "round_to": _mha_round_to(model)}
    if any(not s.fused for s in sites):  # Hugging Face q/k/v: remove whole heads (LLM example)
        options.update(prune_num_heads=True, prune_head_dims=False)
    for name in EXTRAS.names():
        options.update(EXTRAS.get(name)(model))
    return options


@EXTRAS.register("hf swin patch merging")
def _hf_swin(model: nn.Module) -> dict[str, Any]:
    """``examples/transformers/prune_hf_swin.py``: a custom pruner for ``SwinPatchMerging``,
    which concatenates four shifted copies of its input, and head dimensions pruned."""
    merging = {type(m) for m in model.modules() if type(m).__name__ == "SwinPatchMerging"}
    if not merging:
        return {}
    pruner = _swin_patch_merging_pruner()
    return {
        "customized_pruners": {cls: pruner for cls in merging},
        "root_module_types": (nn.Linear, nn.LayerNorm, *merging),
        "prune_num_heads": False, "prune_head_dims": True,
    }


def _swin_patch_merging_pruner() -> Any:
    import torch_pruning as tp

    class SwinPatchMergingPruner(tp.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            tp.prune_linear_out_channels(layer.reduction, idxs)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            dim = self.get_in_channels(layer)
            repeated = [i + k * dim for k in range(4) for i in idxs]  # the 4 concatenated copies
            tp.prune_linear_in_channels(layer.reduction, repeated)
            tp.prune_layernorm_out_channels(layer.norm, repeated)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.reduction.out_features

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.reduction.in_features // 4

    return SwinPatchMergingPruner()


# --------------------------------------------------------------------------- after pruning

FIXUPS: Registry[Callable[[nn.Module, list[AttentionSite], Any], None]] = Registry("tp fixup")


@FIXUPS.register("fused attention")
def _fix_fused(model: nn.Module, sites: list[AttentionSite], pruner: Any) -> None:
    """timm example: ``num_heads`` from the pruner, ``head_dim`` from qkv's width."""
    for site in (s for s in sites if s.fused):
        (qkv,) = site.projections
        heads = pruner.num_heads.get(qkv, site.heads)
        _set_ints(site.module, _HEAD_ATTRS, heads)
        _set_ints(site.module, ("head_dim",), qkv.out_features // (3 * heads))


@FIXUPS.register("split attention")
def _fix_split(model: nn.Module, sites: list[AttentionSite], pruner: Any) -> None:
    """Hugging Face examples: head counts from the pruner, head size from q's width."""
    for site in (s for s in sites if not s.fused):
        q, k, _ = site.projections
        heads = pruner.num_heads.get(q, site.heads)
        kv = pruner.num_heads.get(k, site.kv_heads)
        _set_ints(site.module, _HEAD_ATTRS, heads)
        _set_ints(site.module, ("num_key_value_heads",), kv)
        _set_ints(site.module, ("num_key_value_groups",), heads // max(kv, 1))
        _set_ints(site.module, ("head_dim", "attention_head_size"), q.out_features // heads)
        _set_ints(site.module, _WIDTH_ATTRS, q.out_features)


@FIXUPS.register("torchvision vit")
def _fix_torchvision_vit(model: nn.Module, sites: list[AttentionSite], pruner: Any) -> None:
    """torchvision example: ViT's forward reads ``hidden_dim``, which pruning does not update."""
    conv_proj = getattr(model, "conv_proj", None)
    if isinstance(getattr(model, "hidden_dim", None), int) and isinstance(conv_proj, nn.Conv2d):
        model.hidden_dim = conv_proj.out_channels


def _set_ints(module: nn.Module, names: tuple[str, ...], value: int) -> None:
    for name in names:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, value)


# --------------------------------------------------------------------------- the tool


def _importance() -> Any:
    import torch_pruning as tp

    imp = getattr(tp.importance, "GroupMagnitudeImportance", None)
    imp = imp or tp.importance.GroupNormImportance
    return imp(p=2)


def _pruner_class() -> type:
    import torch_pruning as tp

    return getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner


def prune_with_torch_pruning(
    model: nn.Module, inputs: Inputs, *, ratio: float, ignore: list[str]
) -> nn.Module:
    """Prune ``model`` in place with Torch-Pruning (DepGraph) and fix attention attributes.

    Args:
        model: The model, in eval mode.
        inputs: Example inputs (tensor, tuple or dict of keyword tensors).
        ratio: Fraction of channels (and of heads, for Hugging Face attention) to remove.
        ignore: Qualified names of layers whose outputs are kept (classifier, LM head).

    Returns:
        The same model, pruned.
    """
    for module in model.modules():  # timm example: plain attention instead of the fused kernel
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = False
    sites = attention_sites(model)
    options = pruner_options(model, sites)
    pruner = _pruner_class()(
        model, inputs, importance=_importance(), pruning_ratio=ratio,
        head_pruning_ratio=ratio if options.get("prune_num_heads") else 0.0,
        ignored_layers=[model.get_submodule(n) for n in ignore],
        forward_fn=call_model, **options,
    )
    pruner.step()
    for name in FIXUPS.names():
        FIXUPS.get(name)(model, sites, pruner)
    return model


@TOOLS.register("torch-pruning")
def torch_pruning_tool(zoo_model: ZooModel, *, ratio: float, record: ZooResult) -> None:
    """Prune with Torch-Pruning; pass = it completes and the outputs keep their shapes."""
    model, inputs = zoo_model.create(), zoo_model.example_inputs()
    with torch.no_grad():
        expected = output_shapes(call_model(model, inputs))
    measure(record, model, inputs, when="before")
    ignore = zoo_model.ignored(model)
    record.stage = "prune"
    start = time.perf_counter()
    prune_with_torch_pruning(model, inputs, ratio=ratio, ignore=ignore)
    record.prune_s = time.perf_counter() - start
    record.stage = "forward"
    with torch.no_grad():
        check_same_shapes(expected, call_model(model, inputs))
    measure(record, model, inputs, when="after")
    check_pruned(record)


def torch_pruning_version() -> str | None:
    """The installed Torch-Pruning version (its package metadata), or None."""
    from importlib import metadata

    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return None
