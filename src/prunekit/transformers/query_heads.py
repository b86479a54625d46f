"""Query heads inside the key/value groups of grouped-query attention.

Under grouped-query attention (GQA) ``g = num_attention_heads / num_key_value_heads``
query heads share each key/value head, and Hugging Face's ``repeat_kv`` needs the same
``g`` in every group. The plan / apply engine therefore cuts heads only as whole groups
(a key head, a value head and their ``g`` query heads). Here the key/value heads stay and
the same number of query heads is removed from every group of every block: ``q_proj``
rows and ``o_proj`` columns go, ``num_key_value_groups`` of each attention module and
``num_attention_heads`` of the config are rewritten, and ``head_dim`` is written into the
config (Hugging Face derives it as ``hidden_size / num_attention_heads`` when absent).

Each query head is scored as an MLP channel is, from the columns of ``o_proj`` that
consume it (``flap`` or ``wanda``, summed over its ``head_dim`` channels, see
:mod:`prunekit.importance.group_activation`), and ranked within its group.

Example:
    >>> from prunekit.transformers import prune_width
    >>> plan = prune_width(model, batches, query_ratio=1/3)   # SmolLM2: 9/3 -> 6/3 heads
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..importance.group_activation import InputStats, column_scores
from ..surgery import Plan
from ..surgery.apply import module_attrs
from ..surgery.build import before_values
from ..surgery.plan import GroupCut, PlanInfo, TensorCut
from ._model import _ATTENTION, block_child, decoder_layers, hf_config

UNIT = "query heads inside key/value groups"
# Children of an attention module whose shapes do not depend on the number of query heads
# (besides q_proj / o_proj, which are cut): anything else is refused.
_KNOWN = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")


@dataclass(frozen=True)
class Heads:
    """The head layout shared by every attention module of a model.

    Attributes:
        query: query heads per block (``num_attention_heads``).
        kv: key/value heads per block.
        head_dim: channels per head.
    """

    query: int
    kv: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.query // self.kv


def attention_paths(model: nn.Module) -> list[str]:
    """Paths of every decoder block's attention module."""
    path, layers = decoder_layers(model)
    child = block_child(layers[0], _ATTENTION)
    if child is None:
        raise ConfigError(f"no attention module found in the blocks of {type(model).__name__} "
                          f"(looked for a child named {', '.join(_ATTENTION)})")
    return [f"{path}.{i}.{child}" for i in range(len(layers))]


def heads_of(model: nn.Module) -> Heads:
    """The model's head layout, read from its config (``head_dim`` from the modules)."""
    cfg = hf_config(model)
    query = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or query
    if type(query) is not int or type(kv) is not int or query % kv:
        raise ConfigError(f"{type(model).__name__}'s config has no usable num_attention_heads "
                          f"/ num_key_value_heads ({query!r} / {kv!r})")
    attn = model.get_submodule(attention_paths(model)[0])
    head_dim = getattr(attn, "head_dim", None)
    if type(head_dim) is not int:
        raise ConfigError(f"{type(attn).__name__} has no integer head_dim; query heads are cut "
                          "in attention modules like Llama's, Qwen2's or Mistral's")
    return Heads(query, kv, head_dim)


def keep_per_group(heads: Heads, ratio: float) -> int:
    """Query heads kept in each group at ``ratio``, or a ConfigError that names the fix."""
    g = heads.group
    if g == 1:
        raise ConfigError(f"this model has one query head per key/value head ({heads.query} / "
                          f"{heads.kv}: no grouped-query attention), so no head can be cut "
                          f"inside a group; use attention_ratio={ratio:g}, which removes whole "
                          "heads")
    keep = round(g * (1.0 - ratio))
    if keep < 1:
        raise ConfigError(f"query_ratio={ratio:g} would leave no query head in groups of {g}; "
                          f"use at most {(g - 1) / g:.4g} (one head kept per group), or "
                          "attention_ratio to remove whole key/value groups")
    if keep == g:
        raise ConfigError(f"query_ratio={ratio:g} removes no query head from groups of {g} "
                          f"({g} x {1 - ratio:.3g} rounds to {g}); use at least {0.5 / g:.4g} "
                          "(1/g removes one head per group)")
    return keep


def check_modules(model: nn.Module, heads: Heads) -> list[str]:
    """Attention paths, each checked to be cuttable: q_proj / o_proj of the expected sizes,
    ``num_key_value_groups``, and no parameters but the projections and per-head norms
    (a per-query-head tensor such as attention sinks would need slicing too)."""
    width = heads.query * heads.head_dim
    paths = attention_paths(model)
    for path in paths:
        attn = model.get_submodule(path)
        q, o = getattr(attn, "q_proj", None), getattr(attn, "o_proj", None)
        ok = (isinstance(q, nn.Linear) and isinstance(o, nn.Linear)
              and q.out_features == width and o.in_features == width
              and getattr(attn, "num_key_value_groups", None) == heads.group)
        if not ok:
            raise ConfigError(f"{path} ({type(attn).__name__}) is not an attention module whose "
                              "query heads can be cut: expected q_proj / o_proj Linears of "
                              f"{width} = {heads.query} x {heads.head_dim} features and "
                              f"num_key_value_groups = {heads.group}")
        others = [n for n, _ in attn.named_parameters() if n.partition(".")[0] not in _KNOWN]
        if others:
            raise ConfigError(f"{path} has parameters this cut does not know how to slice "
                              f"({', '.join(others[:4])}); use attention_ratio to remove "
                              "whole key/value groups")
    return paths


def kept_heads(o_proj: nn.Linear, stats: InputStats, heads: Heads, keep: int,
               criterion: str) -> list[int]:
    """The ``keep`` best-scored query heads of every group (sorted head indices)."""
    cols = column_scores(criterion, o_proj.weight, stats)  # (query * head_dim,)
    per_head = cols.reshape(heads.query, heads.head_dim).sum(1)  # (query,)
    per_group = per_head.reshape(heads.kv, heads.group)  # (kv, group)
    best = per_group.topk(keep, dim=1).indices.sort(dim=1).values  # (kv, keep)
    base = torch.arange(heads.kv)[:, None] * heads.group
    return (best + base).flatten().tolist()


def query_plan(model: nn.Module, kept: dict[str, list[int]], heads: Heads, keep: int,
               info: dict[str, Any]) -> Plan:
    """The plan keeping ``kept[path]`` query heads of each attention module."""
    d = heads.head_dim
    tensors: dict[str, TensorCut] = {}
    attrs: dict[str, dict[str, Any]] = {}
    groups = []
    for i, (path, idx) in enumerate(kept.items()):
        attn = model.get_submodule(path)
        rows = [h * d + c for h in idx for c in range(d)]
        members = {f"{path}.q_proj.weight": {0: rows}, f"{path}.o_proj.weight": {1: rows}}
        if attn.q_proj.bias is not None:
            members[f"{path}.q_proj.bias"] = {0: rows}
        for name, dims in members.items():
            tensors[name] = TensorCut(tuple(model.get_parameter(name).shape), dims)
        attrs[path] = {"num_key_value_groups": keep}
        groups.append(GroupCut(i, f"{path} query heads", heads.query, list(idx), members))
    fields = {"num_attention_heads": heads.kv * keep, "head_dim": d}
    plan = Plan(tensors, attrs, {"": fields}, {}, groups, PlanInfo.of(info))
    plan.attrs = module_attrs(model, plan)
    plan.before = before_values(model, plan)
    return plan
