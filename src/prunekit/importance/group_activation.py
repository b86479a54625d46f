"""Activation-aware scores of structured units: MLP channels, attention heads, any group.

A unit's score is read from the layers that *consume* it: the input columns of every
``nn.Linear`` in its group, weighted by statistics of the inputs those columns see on
calibration data.

- ``wanda``: ``sum_i |W_ij| * ||X_j||_2`` per input feature ``j`` (Wanda's weight times
  activation-norm score summed over a column, the structured "Wanda-sp" of An et al. 2024;
  Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").
- ``flap``: ``Var(X_j) * sum_i W_ij^2``, the fluctuation of an input feature across
  tokens times its column's squared norm: the error left after the feature's mean is
  folded into the next layer's bias (An et al. 2024, "Fluctuation-based Adaptive
  Structured Pruning for Large Language Models", AAAI).

A unit spanning several positions (an attention head of ``head_dim`` channels) sums its
positions. Groups with no ``nn.Linear`` consumer fall back to the group L2 norm (listed
in the returned notes).

Example:
    >>> graph = pk.trace(model, batch)
    >>> plan = pk.plan(graph, ratio=0.3, criterion="flap", data=[batch1, batch2])
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._calls import run_model
from .._registry import Registry
from ..errors import ConfigError
from .criteria import register_group_criterion
from .group import _aggregate, _PerPosition, _require_values, _tensors

if TYPE_CHECKING:
    from ..graph import Graph, Group

ColumnScore = Callable[[torch.Tensor, "InputStats"], torch.Tensor]
_COLUMN_SCORES: Registry[ColumnScore] = Registry("activation group criterion")


def register_group_activation(name: str) -> Callable[[ColumnScore], ColumnScore]:
    """Register ``fn(weight (out, in), stats) -> (in,)`` column scores under ``name``,
    and the group reduction that uses them in the one criteria registry."""

    def add(fn: ColumnScore) -> ColumnScore:
        _COLUMN_SCORES.register(name)(fn)
        register_group_criterion(name)(functools.partial(_reduction, criterion=name))
        return fn

    return add


def _reduction(graph: Graph, groups: list[Group], *, criterion: str, data: Iterable | None,
               batches: int | None = None, **_: object) -> dict[int, torch.Tensor]:

    _require_values(_tensors(graph), groups, criterion)
    return activation_importance(graph, groups, criterion=criterion, data=data, batches=batches)


def list_group_activation() -> list[str]:
    """Names of the activation-aware group criteria."""
    return _COLUMN_SCORES.names()


def column_scores(criterion: str, weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """Scores ``(in,)`` of a consumer's input columns by ``criterion`` (float64, CPU).

    Example:
        >>> column_scores("flap", o_proj.weight, stats["model.layers.0.self_attn.o_proj"])
    """
    return _COLUMN_SCORES.get(criterion)(weight, stats).to("cpu", torch.float64)


@dataclass
class InputStats:
    """Sums over calibration tokens of one Linear layer's inputs (float64, on the CPU).

    Attributes:
        rows: tokens seen.
        total: sum of ``x`` per input feature, ``(in,)``.
        sq: sum of ``x^2`` per input feature, ``(in,)``.
        gram: sum of ``x x^T``, ``(in, in)``, when asked for.
    """

    rows: int
    total: torch.Tensor
    sq: torch.Tensor
    gram: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        """Mean input per feature."""
        return self.total / max(self.rows, 1)

    @property
    def var(self) -> torch.Tensor:
        """Sample variance per feature across tokens (FLAP's fluctuation)."""
        n = max(self.rows, 2)
        return ((self.sq - self.total.pow(2) / n) / (n - 1)).clamp_min(0)

    @property
    def norm(self) -> torch.Tensor:
        """``||X_j||_2`` over all tokens (Wanda's activation norm)."""
        return self.sq.sqrt()


@register_group_activation("wanda")
def wanda_columns(weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """``sum_i |W_ij| * ||X_j||_2`` (Sun et al. 2023; structured as Wanda-sp, An et al. 2024)."""
    return weight.detach().abs().double().sum(0) * stats.norm


@register_group_activation("flap")
def flap_columns(weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """``Var(X_j) * ||W_:,j||^2``: FLAP's weighted input-feature variance (An et al. 2024)."""
    return weight.detach().double().pow(2).sum(0) * stats.var


def model_inputs(batch: Any) -> Any:
    """The model inputs of one calibration batch: a tensor, a dict of keyword inputs, or
    an ``(inputs, targets)`` pair whose targets are ignored."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch


def collect_input_stats(
    model: nn.Module,
    modules: Iterable[str],
    data: Iterable | None,
    *,
    batches: int | None = None,
    gram: bool | Iterable[str] = False,
) -> dict[str, InputStats]:
    """Run calibration batches through ``model`` and sum the inputs of the named Linears.

    Args:
        model: the network (run in eval mode without gradients; not changed).
        modules: paths of ``nn.Linear`` modules.
        data: batches of model inputs (tensors, dicts of keyword inputs, or
            ``(inputs, targets)`` pairs).
        batches: use at most this many batches (all by default).
        gram: also sum ``x x^T`` (for least-squares updates): for all modules or for those
            named.

    Returns:
        module path -> :class:`InputStats`.
    """
    if data is None:
        raise ConfigError("activation criteria need calibration data; pass data=<list of "
                          "input batches> (token ids, or dicts of model inputs)")
    names = list(dict.fromkeys(modules))
    want_gram = set(names) if gram is True else set(gram or ())
    acc: dict[str, list] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(_hook(acc, n, n in want_gram))
             for n in _linears(model, names)]
    was_training = model.training
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in itertools.islice(data, batches):
                run_model(model, model_inputs(batch))
                seen += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ConfigError("calibration data is empty; pass at least one batch of inputs")
    return {n: InputStats(*acc[n]) for n in names if n in acc}


def _linears(model: nn.Module, names: list[str]) -> list[str]:
    for n in names:
        if not isinstance(model.get_submodule(n), nn.Linear):
            raise ConfigError(f"activation statistics follow nn.Linear inputs; {n} is a "
                              f"{type(model.get_submodule(n)).__name__}")
    return names


def _hook(acc: dict[str, list], name: str, gram: bool) -> Callable:
    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to("cpu", torch.float64)  # (N, in)
        if name not in acc:
            acc[name] = [0, torch.zeros(x.shape[1], dtype=torch.float64),
                         torch.zeros(x.shape[1], dtype=torch.float64),
                         torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64) if gram
                         else None]
        entry = acc[name]
        entry[0] += x.shape[0]
        entry[1] += x.sum(0)
        entry[2] += x.pow(2).sum(0)
        if gram:
            entry[3].addmm_(x.T, x)

    return hook


def consumer_members(graph: Graph, group: Group) -> list:
    """Members of ``group`` that are input columns of an ``nn.Linear`` weight."""
    out = []
    for m in group.members:
        if not m.is_param or m.dim != 1 or not m.name.endswith(".weight"):
            continue
        if isinstance(graph.model.get_submodule(m.module), nn.Linear):
            out.append(m)
    return out


def activation_importance(
    graph: Graph,
    groups: Iterable[Group],
    *,
    criterion: str,
    data: Iterable | None,
    batches: int | None = None,
    stats: dict[str, InputStats] | None = None,
) -> dict[int, torch.Tensor]:
    """Score every unit of every group from its consumers' columns and their inputs.

    Args:
        graph: the traced graph (weights are read, never changed).
        groups: the groups to score.
        criterion: ``wanda``, ``flap`` or another registered activation criterion.
        data: calibration batches (ignored when ``stats`` is given).
        batches: use at most this many batches.
        stats: statistics already collected by :func:`collect_input_stats`.

    Returns:
        group id -> float tensor of unit scores (higher = more important).
    """

    column = _COLUMN_SCORES.get(criterion)
    groups = list(groups)
    consumers = {g.id: consumer_members(graph, g) for g in groups}
    wanted = sorted({m.module for ms in consumers.values() for m in ms})
    if stats is None:
        stats = collect_input_stats(graph.model, wanted, data, batches=batches)
    missing = [n for n in wanted if n not in stats]
    if missing:
        raise ConfigError(f"calibration data never reached {', '.join(missing[:3])}; pass "
                          "batches that run through the whole model")
    tensors = _tensors(graph)
    def per_col(name: str, dim: int) -> torch.Tensor:  # (in,) scores of the consumer's columns
        return column(tensors[name], stats[name.rpartition(".")[0]]).to("cpu", torch.float64)

    l2 = _PerPosition(tensors, lambda n, t: t.detach().double().pow(2))
    out = {}
    for g in groups:
        if consumers[g.id]:
            out[g.id] = _aggregate(graph, g, per_col, consumers[g.id])
        else:
            out[g.id] = _aggregate(graph, g, l2)
    return out
