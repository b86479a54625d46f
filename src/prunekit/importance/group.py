"""Group importance: one score per unit of a group of coupled dimensions.

A unit (a channel, a neuron, an attention head) spans slices of several tensors:
the producer's output rows, its bias, the norm's scale, the consumers' input
columns. Its score sums the per-weight criterion over all of those slices
(DepGraph's group L1/L2: Fang et al. 2023, "DepGraph: Towards Any Structural
Pruning"). Any per-weight criterion of the registry works (``l1``, ``l2``, ``taylor``, ``obd`` ...);
three group reductions are registered here:

- ``random``: uniform scores that never read weights, so it works on the meta device.
- ``bn_scale``: |gamma| of the normalization layers in the group (Liu et al. 2017,
  "Learning Efficient Convolutional Networks through Network Slimming");
  groups without one fall back to ``l1``.
- ``lamp``: group L2 scores normalized as in LAMP (Lee et al. 2021, "Layer-adaptive
  Sparsity for the Magnitude-based Pruning"), comparable across layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from .._defaults import DEFAULT_CALIBRATION_BATCHES
from ..allocation.rules import lamp_scores
from ..errors import ConfigError
from ..graph import axes as ax
from .criteria import ParamStats, get_criterion, list_criteria, register_group_criterion
from .stats import collect_stats

if TYPE_CHECKING:
    from ..graph import Graph, Group

_NORM_TYPES = ("BatchNorm", "GroupNorm", "LayerNorm", "InstanceNorm", "RMSNorm", "SyncBatchNorm")


def list_group_criteria() -> list[str]:
    """Every criterion :func:`group_importance` accepts (``list_criteria(kind="group")``)."""
    return list_criteria(kind="group")


def check_criterion(name: str) -> None:
    """Raise ConfigError for an unknown criterion name (listing the valid ones)."""
    get_criterion(name)


def group_importance(
    graph: Graph,
    groups: Iterable[Group],
    *,
    criterion: str = "l2",
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    batches: int = DEFAULT_CALIBRATION_BATCHES,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """Score every unit of every group.

    A criterion's group reduction scores groups directly where it has one
    (``random``, ``bn_scale``, ``wanda``, ``flap``); any other criterion's per-weight
    scores are summed over every slice of each unit.

    Args:
        graph: the traced graph (its model's weights are read, never changed).
        groups: the groups to score.
        criterion: any name of :func:`prunekit.list_criteria`.
        data: ``(inputs, targets)`` batches, for criteria that need gradients; batches of
            model inputs for the activation criteria (``wanda``, ``flap``).
        loss_fn: loss for those criteria (cross-entropy by default).
        batches: number of calibration batches read.
        seed: seed of the ``random`` criterion.

    Returns:
        group id -> float tensor of unit scores (higher = more important).

    Example:
        >>> scores = group_importance(graph, graph.prunable_groups, criterion="l2")
    """
    crit = get_criterion(criterion)
    groups = list(groups)
    gen = torch.Generator().manual_seed(seed)
    if crit.group is not None:
        return crit.group(graph, groups, data=data, loss_fn=loss_fn, batches=batches,
                          generator=gen)
    return _summed(graph, groups, crit, data, loss_fn, batches, gen)


def _summed(graph, groups, crit, data, loss_fn, batches, gen) -> dict[int, torch.Tensor]:
    """Per-weight scores of ``crit`` summed over every slice of each unit."""
    tensors = _tensors(graph)
    _require_values(tensors, groups, crit.name)
    stats = _stats(graph, groups, tensors, crit.name, data, loss_fn, batches, gen)
    per_position = _PerPosition(tensors, lambda n, t: crit(t, stats[n]))
    return {g.id: _aggregate(graph, g, per_position) for g in groups}


@register_group_criterion("random")
def _random_groups(graph, groups, *, generator, **_: Any) -> dict[int, torch.Tensor]:
    """Uniform scores that never read weights, so planning works on the meta device."""
    return {g.id: torch.rand(g.size, generator=generator) for g in groups}


@register_group_criterion("bn_scale")
def _bn_scale_groups(graph, groups, **_: Any) -> dict[int, torch.Tensor]:
    """|gamma| of the normalization layers in the group (Liu et al. 2017, "Learning
    Efficient Convolutional Networks through Network Slimming"); groups without one use l1."""
    tensors = _tensors(graph)
    _require_values(tensors, groups, "bn_scale")
    per_position = _PerPosition(tensors, lambda n, t: t.detach().abs())
    return {g.id: _bn_scale(graph, g, per_position) for g in groups}


@register_group_criterion("lamp")
def _lamp_groups(graph, groups, *, data, loss_fn, batches, generator,
                 **_: Any) -> dict[int, torch.Tensor]:
    """Group L2 scores, LAMP-normalized: the older spelling of ``criterion="l2",
    scope="lamp"`` (kept so that existing recipes and plans work)."""
    scores = _summed(graph, groups, get_criterion("l2"), data, loss_fn, batches, generator)
    return {gid: lamp(s) for gid, s in scores.items()}


def lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP normalization of group L2 scores (sums of squares): s_u / sum of s_v >= s_u
    (Lee et al. 2021), the mask path's :func:`~prunekit.allocation.lamp_scores` on the norms."""
    return lamp_scores(scores.double().clamp_min(0).sqrt()).to(scores.dtype)


def _tensors(graph: Graph) -> dict[str, torch.Tensor]:
    model = graph.model
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out


def _require_values(tensors: dict[str, torch.Tensor], groups: list, criterion: str) -> None:
    for g in groups:
        for m in g.members:
            if tensors[m.name].device.type == "meta":
                raise ConfigError(
                    f"criterion {criterion!r} reads weight values, but the model is on the meta "
                    "device; use criterion='random' (or load real weights first)"
                )


class _PerPosition:
    """Per-weight scores of each tensor, summed per position of a dimension (cached)."""

    def __init__(self, tensors: dict[str, torch.Tensor], score_fn: Callable) -> None:
        self.tensors, self.score_fn = tensors, score_fn
        self.scores: dict[str, torch.Tensor] = {}
        self.cache: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, name: str, dim: int) -> torch.Tensor:
        key = (name, dim)
        if key not in self.cache:
            if name not in self.scores:
                self.scores[name] = self.score_fn(name, self.tensors[name]).detach()
            s = self.scores[name]
            other = [d for d in range(s.dim()) if d != dim]
            per_pos = s.sum(dim=other) if other else s
            self.cache[key] = per_pos.to("cpu", torch.float64).reshape(-1)
        return self.cache[key]


def _aggregate(graph: Graph, group: Group, per_position: _PerPosition,
               members: Iterable | None = None) -> torch.Tensor:
    """Sum per-weight scores over every member slice, per unit."""
    total = torch.zeros(group.size, dtype=torch.float64)
    leaf = ax.find(group.leaf)
    for m in group.members if members is None else members:
        if not m.is_param:
            continue
        per_pos = per_position(m.name, m.dim)
        for idx in ax.leaf_index(graph.param_axes[m.name][m.dim], leaf):
            hit = idx >= 0
            total.index_add_(0, idx[hit], per_pos[hit])
    return total.float()


def _stats(graph, groups, tensors, name, data, loss_fn, batches, gen) -> dict[str, ParamStats]:
    names = {m.name for g in groups for m in g.members if m.is_param}
    crit = get_criterion(name)
    if not crit.needs:
        return {n: ParamStats(generator=gen) for n in names}
    params = {n: tensors[n] for n in names}
    return collect_stats(graph.model, params, data, needs=crit.needs, loss_fn=loss_fn,
                         batches=batches, generator=gen)


def _bn_scale(graph: Graph, group: Group, per_position: _PerPosition) -> torch.Tensor:
    model = graph.model
    norm_members = [
        m for m in group.members
        if m.name.endswith("weight")
        and any(k in type(model.get_submodule(m.module)).__name__ for k in _NORM_TYPES)
    ]
    return _aggregate(graph, group, per_position, norm_members or None)
