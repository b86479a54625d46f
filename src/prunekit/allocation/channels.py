"""Structured allocation: how many units of each channel group to keep.

The mask path decides per weight (:mod:`prunekit.allocation.rules`); this module decides per
group of coupled dimensions: candidates (what may be cut, what is ignored), per-group ratios by
name pattern, layer or global scope with a per-group cap, a params / MACs target met by bisection,
and rounding of kept counts to hardware-friendly multiples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._utils import name_matches
from ..errors import ConfigError
from ..graph import Graph, Group
from ..graph import axes as ax
from ..surgery.surgeons import input_dims


@dataclass
class _Options:
    ratio: float
    ratios: dict[str, float]
    scope: str
    max_ratio: float
    target: dict[str, float]
    round_to: int
    producers: dict[int, list[str]] = field(default_factory=dict)
    unit_round: dict[int, int] = field(default_factory=dict)
    normalize: bool = True
    lamp: bool = False

    @classmethod
    def of(cls, config: Any, producers: dict[int, list[str]],
           unit_round: dict[int, int]) -> _Options:
        """The allocation options of a :class:`~prunekit.config.PlanConfig`.

        Scope ``lamp`` ranks across groups like ``global`` but on LAMP-normalized scores,
        which compare across layers as they are (criterion ``lamp`` is the older spelling).
        """
        lamp = config.scope == "lamp" or config.criterion == "lamp"
        budget = {config.budget.kind: config.budget.fraction} if config.budget else {}
        return cls(float(config.ratio or 0.0), dict(config.ratios),
                   "global" if config.scope == "lamp" else config.scope,
                   config.max_ratio, budget, config.round_to, producers, unit_round,
                   normalize=not lamp, lamp=config.scope == "lamp")


def _is_input_dim(model: nn.Module, name: str, dim: int) -> bool:
    """Whether ``dim`` of tensor ``name`` is an input side (a consumer's columns)."""
    path, _, local = name.rpartition(".")
    return dim in input_dims(model.get_submodule(path) if path else model, local)


def _candidates(graph: Graph, ignored: set[str]) -> list[Group]:
    out = []
    for g in graph.prunable_groups:
        hit = next((m for m in g.members if any(m.module == p or m.module.startswith(p + ".")
                                                for p in ignored)
                    and not _is_input_dim(graph.model, m.name, m.dim)), None)
        if hit is None:
            out.append(g)
    return out


def _one_factor_per_dim(graph: Graph, groups: list[Group]) -> tuple[list[Group], dict]:
    """Where one dimension is a product of prunable groups (groups x channels-per-group),
    cut only the larger factor, so ``ratio`` stays the fraction of that dimension removed."""
    by_leaf = {ax.find(g.leaf): g for g in groups}
    dropped: dict[int, str] = {}
    for axes in graph.param_axes.values():
        for factor_leaves in (c for a in axes for c in _products(a)):
            here = [by_leaf[x] for x in dict.fromkeys(factor_leaves)
                    if x in by_leaf and by_leaf[x].id not in dropped]
            if len(here) > 1:
                keep = max(here, key=lambda g: (not g.unchecked, g.size, -g.id))
                dropped.update({g.id: keep.name for g in here if g is not keep})
    skipped = {graph.groups[i].name: f"shares dimensions with {n}, which is cut instead"
               for i, n in dropped.items()}
    return [g for g in groups if g.id not in dropped], skipped


def _products(a: Any) -> list[list[Any]]:
    """Leaves multiplied together anywhere in an axis tree (concatenated parts are separate)."""
    r = ax.find(a)
    if r.kind is None:
        return []
    out = [c for p in r.parts for c in _products(p)]
    if r.kind == "prod":
        out.append([leaf for p in r.parts for leaf in ax.leaves(p)])
    return out


def _group_ratio(group: Group, options: _Options) -> float:
    for pattern, r in options.ratios.items():
        if any(name_matches(m, pattern) for m in options.producers.get(group.id, ())):
            return r
    return options.ratio


def _producers(graph: Graph, groups: list[Group]) -> dict[int, list[str]]:
    """Per group, the modules whose outputs it cuts (consumers' input columns left out)."""
    return {g.id: list(dict.fromkeys(m.module for m in g.members
                                     if not _is_input_dim(graph.model, m.name, m.dim)))
            for g in groups}


def _unit_rounding(graph: Graph, groups: list[Group], round_to: int) -> dict[int, int]:
    """Units per rounding step: channel counts are rounded, and a unit may span many channels
    (a head of 64 channels makes any head count a multiple of 8 channels)."""
    out = {}
    for g in groups:
        span = min((int((idx == 0).sum()) for m in g.members
                    for idx in ax.leaf_index(graph.param_axes[m.name][m.dim], ax.find(g.leaf))),
                   default=1)
        out[g.id] = round_to // math.gcd(round_to, max(1, span))
    return out


def keep_count(n: int, ratio: float, round_to: int) -> int:
    """Units kept out of ``n`` at ``ratio``: rounded to a multiple of ``round_to``, at least one."""
    keep = n * (1.0 - ratio)
    if round_to > 1:
        if n <= round_to:
            return n
        keep = max(round_to, round(keep / round_to) * round_to)
    return int(min(n, max(1, round(keep))))




def _layer_counts(groups: list[Group], options: _Options, r: float | None) -> dict[int, int]:
    """Per-group counts: each group's own ratio, or the searched uniform ratio ``r``."""
    out = {}
    for g in groups:
        gr = _group_ratio(g, options) if r is None else min(options.max_ratio, r)
        out[g.id] = keep_count(g.size, gr, options.unit_round.get(g.id, options.round_to))
    return out


def _global_counts(groups: list[Group], scores: dict[int, torch.Tensor], ratio: float,
                   options: _Options) -> dict[int, int]:
    """Remove the globally lowest units, capped per group.

    Scores are divided by their group's mean so that layers of different scale compare;
    LAMP scores are comparable as they are.
    """
    total = sum(g.size for g in groups)
    entries = []
    for g in groups:
        s = scores[g.id].double()
        if options.normalize:
            s = s / s.mean().clamp_min(1e-300)
        entries += [(float(v), g.id) for v in s]
    entries.sort()
    budget = int(round(ratio * total))
    caps = {g.id: min(g.size - 1, int(math.floor(options.max_ratio * g.size))) for g in groups}
    removed = dict.fromkeys(caps, 0)
    for _, gid in entries:
        if budget <= 0:
            break
        if removed[gid] < caps[gid]:
            removed[gid] += 1
            budget -= 1
    sizes = {g.id: g.size for g in groups}
    return {gid: keep_count(sizes[gid], removed[gid] / sizes[gid],
                             options.unit_round.get(gid, options.round_to)) for gid in removed}


def _counts_at(groups, scores, options: _Options, r: float | None) -> dict[int, int]:
    if options.scope == "global":
        return _global_counts(groups, scores, options.ratio if r is None else r, options)
    return _layer_counts(groups, options, r)


def _allocate(graph: Graph, groups: list[Group], scores: dict[int, torch.Tensor],
              options: _Options) -> tuple[dict[int, torch.Tensor], dict]:
    """Kept unit indices per group (top scores), meeting the ratio or the target."""
    info: dict[str, Any] = {}
    if options.target:
        counts, info = _search_target(graph, groups, scores, options)
    else:
        counts = _counts_at(groups, scores, options, None)
    kept = {}
    for g in groups:
        k = counts[g.id]
        if k < g.size:
            top = torch.topk(scores[g.id], k).indices
            kept[g.id] = torch.sort(top).values
    return kept, info


def _search_target(graph, groups, scores, options) -> tuple[dict[int, int], dict]:
    """Bisect the ratio until the removed fraction of params or MACs reaches the target."""
    (key, goal), = options.target.items()
    measure = graph.params_after if key == "params" else graph.macs_after
    base = measure({})
    if base == 0:
        raise ConfigError(f"the model has no {key} that structured pruning can remove")

    def removed(r: float) -> tuple[float, dict[int, int]]:
        counts = _counts_at(groups, scores, options, r)
        return 1.0 - measure(counts) / base, counts

    lo, hi = 0.0, options.max_ratio
    best = removed(hi)
    if best[0] < goal:
        return best[1], {"target_reached": round(best[0], 4)}
    for _ in range(30):
        mid = (lo + hi) / 2
        got = removed(mid)
        if got[0] >= goal:
            hi, best = mid, got
        else:
            lo = mid
    return best[1], {"target_reached": round(best[0], 4), "ratio_found": round(hi, 4)}
