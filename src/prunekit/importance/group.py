"""Group importance: one score per unit of a group of coupled dimensions.

A unit (a channel, a neuron, an attention head) spans slices of several tensors:
the producer's output rows, its bias, the norm's scale, the consumers' input
columns. Its score sums the per-weight criterion over all of those slices
(DepGraph's group L1/L2: Fang et al. 2023, "DepGraph: Towards Any Structural
Pruning"). Any criterion of the per-weight registry works (``l1``, ``l2``,
``taylor``, ``obd`` ...); three more are defined here:

- ``random``: uniform scores that never read weights, so it works on the meta device.
- ``bn_scale``: |gamma| of the normalization layers in the group (Liu et al. 2017,
  "Learning Efficient Convolutional Networks through Network Slimming");
  groups without one fall back to ``l1``.
- ``lamp``: group L2 scores normalized as in LAMP (Lee et al. 2021, "Layer-adaptive
  Sparsity for the Magnitude-based Pruning"), comparable across layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError
from .criteria import ParamStats, get_criterion, list_criteria

if TYPE_CHECKING:
    from ..graph import Graph, Group

GROUP_CRITERIA = ("random", "bn_scale", "lamp")
_NORM_TYPES = ("BatchNorm", "GroupNorm", "LayerNorm", "InstanceNorm", "RMSNorm", "SyncBatchNorm")


def list_group_criteria() -> list[str]:
    """Every criterion :func:`group_importance` accepts."""
    from .group_activation import list_group_activation

    return sorted(set(list_criteria()) | set(GROUP_CRITERIA) | set(list_group_activation()))


def check_criterion(name: str) -> None:
    """Raise ConfigError for an unknown criterion name (listing the valid ones)."""
    if name not in list_group_criteria():
        raise ConfigError(f"unknown criterion {name!r}; valid criteria: "
                          f"{', '.join(list_group_criteria())}")


def group_importance(
    graph: Graph,
    groups: Iterable[Group],
    *,
    criterion: str = "l2",
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    batches: int = 4,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """Score every unit of every group.

    Args:
        graph: the traced graph (its model's weights are read, never changed).
        groups: the groups to score.
        criterion: ``l1``/``magnitude``, ``l2``, ``random``, ``taylor``, ``bn_scale``,
            ``lamp`` or any per-weight criterion of the registry.
        data: ``(inputs, targets)`` batches, for criteria that need gradients; batches of
            model inputs for the activation criteria (``wanda``, ``flap``).
        loss_fn: loss for those criteria (cross-entropy by default).
        batches: number of batches used for gradients.
        seed: seed of the ``random`` criterion.

    Returns:
        group id -> float tensor of unit scores (higher = more important).

    Example:
        >>> scores = group_importance(graph, graph.prunable_groups, criterion="l2")
    """
    check_criterion(criterion)
    groups = list(groups)
    gen = torch.Generator().manual_seed(seed)
    if criterion == "random":
        return {g.id: torch.rand(g.size, generator=gen) for g in groups}
    from .group_activation import activation_importance, list_group_activation

    if criterion in list_group_activation():  # scored from consumers' columns and their inputs
        _require_values(_tensors(graph), groups, criterion)
        return activation_importance(graph, groups, criterion=criterion, data=data,
                                     batches=batches)
    tensors = _tensors(graph)
    _require_values(tensors, groups, criterion)
    if criterion == "bn_scale":
        per_position = _PerPosition(tensors, lambda n, t: t.detach().abs())
        return {g.id: _bn_scale(graph, g, per_position) for g in groups}
    base = "l2" if criterion == "lamp" else criterion
    stats = _stats(graph, groups, tensors, base, data, loss_fn, batches, gen)
    crit = get_criterion(base)
    per_position = _PerPosition(tensors, lambda n, t: crit(t, stats[n]))
    scores = {g.id: _aggregate(graph, g, per_position) for g in groups}
    if criterion == "lamp":
        scores = {gid: lamp(s) for gid, s in scores.items()}
    return scores


def lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP normalization: s_u / sum of scores s_v >= s_u (Lee et al. 2021)."""
    order = torch.argsort(scores)
    sorted_s = scores[order]
    tail = torch.flip(torch.cumsum(torch.flip(sorted_s, [0]), 0), [0])
    out = torch.empty_like(scores)
    out[order] = sorted_s / tail.clamp_min(torch.finfo(scores.dtype).tiny)
    return out


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
    from ..graph import _axes as ax

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
    from .stats import collect_stats

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
