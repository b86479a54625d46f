"""Turn per-group decisions (kept units) into a :class:`Plan`.

Besides the tensor cuts, a plan records every attribute the forward pass reads:
sizes bound to axes by the tracer (``groups``, ``num_groups``, ``num_heads``,
``normalized_shape``, ``hidden_size``), head counts of modules that split a
projection into heads (``num_attention_heads``, ``all_head_size``,
``split_size`` ...), size attributes of container modules (``intermediate_size``),
and the matching Hugging Face config fields when every layer agrees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..graph import axes as ax
from .apply import module_attrs
from .plan import GroupCut, Plan, PlanInfo, TensorCut

if TYPE_CHECKING:
    from ..graph import Graph

# Attributes that count heads, and those that hold heads x head_dim.
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads",
              "num_kv_heads", "n_kv_heads", "n_kv_head", "num_kv")
INNER_ATTRS = ("all_head_size", "inner_dim", "split_size", "inner_size", "attention_dim",
               "proj_dim", "attn_dim")
# Attributes of container modules that hold the width of their children's layers.
SIZE_ATTRS = ("intermediate_size", "hidden_size", "embed_dim", "d_model", "hidden_dim",
              "ffn_dim", "d_ff", "n_embd", "n_inner", "dim", "mlp_dim", "intermediate_dim")
# Of those, the ones that name a width inside the container (not the residual stream's).
INNER_SIZE_ATTRS = ("intermediate_size", "hidden_dim", "ffn_dim", "d_ff", "n_inner", "mlp_dim",
                    "intermediate_dim")
# Config fields and the module attributes (or head counts) that stand for them.
CONFIG_FIELDS = {
    "num_attention_heads": ("num_attention_heads", "num_heads", "n_head", "n_heads", "@heads"),
    "n_head": ("n_head", "num_heads", "@heads"),
    "num_heads": ("num_heads", "@heads"),
    "num_key_value_heads": ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "@kv_heads"),
    "intermediate_size": ("intermediate_size",),
    "hidden_size": ("hidden_size", "embed_dim", "n_embd", "d_model"),
    "n_embd": ("n_embd", "embed_dim", "hidden_size"),
    "n_inner": ("n_inner",),
    "d_model": ("d_model", "hidden_size"),
    "d_ff": ("d_ff",),
    "ffn_dim": ("ffn_dim",),
}


def build_plan(graph: Graph, kept: dict[int, torch.Tensor], *, info: dict | None = None) -> Plan:
    """A plan keeping ``kept[gid]`` (sorted unit indices) of each listed group.

    Args:
        graph: the traced graph.
        kept: group id -> kept unit indices; groups not listed keep everything.
        info: free-form description stored in the plan.
    """
    masks = {}
    for gid, idx in kept.items():
        m = torch.zeros(graph.groups[gid].size, dtype=torch.bool)
        m[idx] = True
        masks[gid] = m
    cuts = graph.keep_masks(masks)
    tensors = {
        name: TensorCut(graph.param_shapes[name],
                        {d: torch.nonzero(m).flatten().tolist() for d, m in dims.items()})
        for name, dims in cuts.items()
    }
    counts = {gid: int(m.sum()) for gid, m in masks.items()}
    plan = Plan(tensors, {}, {}, dict(graph.aliases), [], PlanInfo.of(info))
    bound = _bound_attrs(graph, counts)
    bound.update(_head_attrs(graph, counts))
    bound.update(_size_attrs(graph, plan, counts, skip=_by_module(bound)))
    plan.groups = [_group_cut(graph, gid, masks[gid], bound) for gid in sorted(masks)]
    plan.attrs = _by_module(bound)
    plan.attrs = module_attrs(graph.model, plan)
    plan.config, skipped = _config_fields(graph, plan, counts)
    if skipped:
        plan.info.config_not_updated = skipped
    plan.before = before_values(graph.model, plan)
    plan.expected_views = graph.predicted_views(counts)
    return plan


def before_values(model: nn.Module, plan: Plan) -> dict[str, dict[str, Any]]:
    """The values ``plan``'s module attributes and config fields have now (``plan.before``:
    what replaying the plan checks the model against)."""
    out: dict[str, dict[str, Any]] = {}
    for path, values in plan.attrs.items():
        module = model.get_submodule(path) if path else model
        out[path] = {a: _plain(getattr(module, a, None)) for a in values}
    for path, fields in plan.config.items():
        cfg = (model.get_submodule(path) if path else model).config
        out[f"config:{path}"] = {f: getattr(cfg, f, None) for f in fields}
    return out


def _plain(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _group_cut(graph: Graph, gid: int, mask: torch.Tensor, bound: dict) -> GroupCut:
    g = graph.groups[gid]
    leaf = ax.find(g.leaf)
    members: dict[str, dict[int, list[int]]] = {}
    for m in g.members:
        pos = ax.keep_mask(graph.param_axes[m.name][m.dim], {leaf: mask})
        if pos is not None:
            members.setdefault(m.name, {})[m.dim] = torch.nonzero(pos).flatten().tolist()
    attrs = {k: v for k, v in bound.items() if gid in k[2]}
    grouped: dict[str, dict[str, Any]] = {}
    for (module, attr, _), value in attrs.items():
        grouped.setdefault(module, {})[attr] = value
    return GroupCut(gid, g.name, g.size, torch.nonzero(mask).flatten().tolist(), members,
                    g.unchecked, grouped)


def _leaf_groups(graph: Graph, axes: list) -> tuple[int, ...]:
    leaves = {leaf for a in axes for leaf in ax.leaves(a)}
    return tuple(g.id for g in graph.groups if ax.find(g.leaf) in leaves)


def _bound_attrs(graph: Graph, counts: dict[int, int]) -> dict[tuple, Any]:
    """(module, attr, group ids) -> new value, for bindings whose value changes."""
    out = {}
    for b in graph.bindings:
        sizes = [graph.kept_size(a, counts) for a in b.axes]
        old = [graph.kept_size(a, {}) for a in b.axes]
        if sizes == old:
            continue
        value = tuple(sizes) if b.as_tuple else sizes[0]
        out[(b.module, b.attr, _leaf_groups(graph, b.axes))] = value
    return out


def _by_module(bound: dict[tuple, Any]) -> dict[str, dict[str, Any]]:
    """(module, attr, group ids) -> value, regrouped as module -> attr -> value."""
    out: dict[str, dict[str, Any]] = {}
    for (module, attr, _), value in bound.items():
        out.setdefault(module, {})[attr] = value
    return out


def _head_attrs(graph: Graph, counts: dict[int, int]) -> dict[tuple, Any]:
    """(module, attr, group ids) -> value for head-count and inner-width attributes of
    modules that split projections into heads."""
    model = graph.model
    out: dict[tuple, Any] = {}
    for split in graph.head_splits:
        heads_old = graph.kept_size(split.parts[0], {})
        heads_new = graph.kept_size(split.parts[0], counts)
        whole_old, whole_new = graph.kept_size(split.whole, {}), graph.kept_size(split.whole,
                                                                                 counts)
        if heads_old == heads_new and whole_old == whole_new:
            continue
        module = model.get_submodule(split.module) if split.module else model
        gids = _leaf_groups(graph, [split.whole])
        for attr, old, new in [*[(a, heads_old, heads_new) for a in HEAD_ATTRS],
                               *[(a, whole_old, whole_new) for a in INNER_ATTRS]]:
            if old != new and getattr(module, attr, None) == old and type(old) is int:
                out[(split.module, attr, gids)] = new
    return out


def _size_attrs(graph: Graph, plan: Plan, counts: dict[int, int], *,
                skip: dict) -> dict[tuple, Any]:
    """(module, attr, group ids) -> new width for attributes of containers
    (``intermediate_size``, ``hidden_dim``) that all their children's changed sizes agree on."""
    cut = {ax.find(graph.groups[g].leaf): g for g in counts}
    near: dict[str, list[tuple[int, int, frozenset]]] = {}  # module -> (old, new, groups)
    tensors: dict[int, set[str]] = {}  # group -> the tensors it cuts
    for name, tcut in plan.tensors.items():
        owner = name.rpartition(".")[0]
        for d, size in enumerate(tcut.shape):
            new = len(tcut.kept[d]) if d in tcut.kept else size
            gids = frozenset(cut[x] for x in ax.leaves(graph.param_axes[name][d]) if x in cut)
            for g in gids:
                tensors.setdefault(g, set()).add(name)
            for path in {owner, owner.rpartition(".")[0] if owner else ""}:
                near.setdefault(path, []).append((size, new, gids))
    out: dict[tuple, Any] = {}
    for path, entries in near.items():
        module = graph.model.get_submodule(path) if path else graph.model
        for attr in SIZE_ATTRS:
            old = getattr(module, attr, None)
            if type(old) is not int or attr in skip.get(path, {}):
                continue
            hits = [(n, g) for o, n, g in entries if o == old]
            if len({n for n, _ in hits}) > 1:  # two widths of the same size: keep the attr's own
                hits = _own_width(hits, attr, path, tensors)
            values = {n for n, _ in hits}
            if len(values) == 1 and old not in values:
                gids = tuple(sorted(set().union(*(g for _, g in hits))))
                out[(path, attr, gids)] = values.pop()
    return out


def _own_width(hits: list, attr: str, path: str, tensors: dict[int, set[str]]) -> list:
    """Of the dims of ``path``'s layers that have an attribute's size, those it names: for an
    inner width (an MLP's ``intermediate_size``) the dims cut by groups whose every tensor
    lies inside ``path``; for the others (``hidden_size``), every other dim. Tells an MLP as
    wide as the residual stream apart from it."""
    prefix = f"{path}." if path else ""

    def inside(gids: frozenset) -> bool:
        return bool(gids) and all(n.startswith(prefix) for g in gids for n in tensors[g])

    inner = attr in INNER_SIZE_ATTRS
    return [(n, g) for n, g in hits if inside(g) == inner]


def _hf_configs(model: nn.Module) -> dict[int, tuple[str, Any, list[str]]]:
    """id(config) -> (owner path, config, paths of all modules that hold it)."""
    out: dict[int, tuple[str, Any, list[str]]] = {}
    for path, module in model.named_modules():
        cfg = getattr(module, "config", None)
        if cfg is None or not hasattr(cfg, "to_dict") or not type(cfg).__name__.endswith("Config"):
            continue
        entry = out.setdefault(id(cfg), (path, cfg, []))
        entry[2].append(path)
    return out


def _config_fields(graph: Graph, plan: Plan, counts: dict[int, int]) -> tuple[dict, list[str]]:
    """Config fields every holder module agrees on; the rest are listed as not updated."""
    heads = _head_counts(graph, counts)
    model = graph.model
    config_changes: dict[str, dict[str, Any]] = {}
    skipped = []
    for owner, cfg, holders in _hf_configs(model).values():
        for field, sources in CONFIG_FIELDS.items():
            old = getattr(cfg, field, None)
            if type(old) is not int:
                continue
            votes = _votes(model, plan, holders, sources, old, heads)
            changed = {v for v in votes if v != old}
            if changed and len(set(votes)) == 1:
                config_changes.setdefault(owner, {})[field] = votes[0]
            elif changed:
                skipped.append(f"{owner or '<model>'}.config.{field} (sizes differ per layer)")
    return config_changes, skipped


def _votes(model, plan, holders, sources, old, heads) -> list[int]:
    votes = []
    for path in holders:
        module = model.get_submodule(path) if path else model
        for src in sources:
            if src.startswith("@"):
                for kind, o, n in heads.get(path, []):
                    if (src == "@heads" and kind == "q" or src == "@kv_heads") and o == old:
                        votes.append(n)
            elif getattr(module, src, None) == old or src in plan.attrs.get(path, {}):
                value = plan.attrs.get(path, {}).get(src, getattr(module, src, None))
                if type(value) is int:
                    votes.append(value)
    return votes


def _head_counts(graph: Graph, counts: dict[int, int]) -> dict[str, list[tuple[str, int, int]]]:
    """module -> (kind, old, new) head counts of its head splits (the largest are query heads)."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for split in graph.head_splits:
        old = graph.kept_size(split.parts[0], {})
        new = graph.kept_size(split.parts[0], counts)
        out.setdefault(split.module, []).append(("kv", old, new))
    for path, items in out.items():
        top = max(o for _, o, _ in items)
        out[path] = [("q" if o == top else kind, o, n) for kind, o, n in items]
    return out
