"""Structured pruning: remove channels, neurons and heads so the network becomes smaller and dense.

The four steps are separate functions, and :func:`prune` runs them in one call::

    graph = pk.trace(model, example_inputs)      # coupled dimensions, grouped
    plan = pk.plan(graph, ratio=0.5, criterion="l2", ignore=[model.fc], round_to=8)
    pk.apply(model, plan)                        # in place, all or nothing
    pk.verify(original, model, plan, example_inputs).ok

A plan is plain data: ``plan.save("plan.json")`` and later
``pk.load_pruned(fresh_model, "plan.json", "weights.safetensors")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .allocation.channels import (
    _allocate,
    _candidates,
    _check_args,
    _one_factor_per_dim,
    _Options,
    _producers,
    _resolve_ignore,
    _unit_rounding,
)
from .errors import ConfigError
from .export import load_pruned, save_pruned
from .graph import Graph, Group
from .surgery import Plan, apply_plan
from .surgery.build import build_plan
from .surgery.exclusion import _analogues, _failing_groups, _runner
from .verify import VerifyResult, verify

__all__ = [
    "Plan",
    "Report",
    "VerifyResult",
    "apply",
    "inspect_model",
    "load_pruned",
    "plan",
    "prune",
    "save_pruned",
    "trace",
    "verify",
]


def trace(model: nn.Module, example_inputs: Any) -> Graph:
    """Follow one forward pass at the operator level and group coupled dimensions.

    Works on real and meta-device models. Operators without a rule make the
    dimensions they touch unprunable (listed by :func:`inspect_model`).

    Args:
        model: any ``nn.Module``; it is run once in eval mode and left unchanged.
        example_inputs: a tensor, a tuple/list of positional inputs, or a dict of
            keyword inputs (as for Hugging Face models).

    Returns:
        The :class:`~prunekit.graph.Graph`, with ``graph.groups`` and ``graph.prunable_groups``.

    Example:
        >>> graph = pk.trace(model, torch.randn(1, 3, 224, 224))
    """
    from .graph import trace as _trace

    if not isinstance(model, nn.Module):
        raise ConfigError(f"trace needs an nn.Module, got {type(model).__name__}")
    return _trace(model, example_inputs)


# -- planning ------------------------------------------------------------------------------------
def plan(
    graph: Graph,
    *,
    ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
    criterion: str = "l2",
    scope: str = "layer",
    max_ratio: float = 0.9,
    target: Mapping[str, float] | None = None,
    round_to: int = 1,
    ignore: Iterable[nn.Module | str] = (),
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    batches: int = 4,
    seed: int = 0,
    check: bool | str = True,
) -> Plan:
    """Decide which units of each group to remove.

    Args:
        graph: from :func:`trace`.
        ratio: fraction of units removed from each group (default 0.5); with
            ``scope="global"`` the fraction of all units, ranked across groups.
        ratios: per-group ratio by module name pattern (``{"re:layer4\\..*": 0.7}``); the
            first pattern matching a module of the group wins.
        criterion: unit importance: ``l1``, ``l2``, ``taylor``, ``bn_scale``, ``random``,
            ``lamp`` or any criterion of the registry.
        scope: ``"layer"`` (each group on its own) or ``"global"`` (one ranking).
        max_ratio: with global scope or a target, the most any one group loses.
        target: instead of a ratio, the fraction of ``{"params": f}`` or ``{"macs": f}``
            to remove; the ratio is searched to meet it.
        round_to: kept units per group are a multiple of this (8 or 16 suit hardware).
        ignore: modules (objects or name patterns) whose own outputs keep their size;
            their inputs may still shrink with the layer that feeds them.
        data: ``(inputs, targets)`` batches for gradient-based criteria (``taylor``).
        loss_fn: loss for those criteria (cross-entropy by default).
        batches: batches used for gradients.
        seed: seed for ``random``.
        check: dry-run the plan on a weightless copy and leave out groups whose cut
            breaks the forward pass (sizes baked into the code): ``True`` (default)
            always, since code can also take a size from another tensor's shape
            (``reshape(B, N, x.shape[-1])``), which no trace can see; ``"auto"`` only
            when a cut group's size is spelled out in the code (``x.view(-1, 400)``);
            ``False`` never.

    Returns:
        The :class:`Plan`.

    Example:
        >>> plan = pk.plan(graph, ratio=0.5, criterion="l2", round_to=8)
    """
    from .importance.group import check_criterion, group_importance

    ratio = _check_args(graph, ratio, ratios, scope, max_ratio, target, round_to, check)
    check_criterion(criterion)
    ignored = _resolve_ignore(graph.model, ignore)
    candidates, skipped = _one_factor_per_dim(graph, _candidates(graph, ignored))
    if not candidates and (ratio > 0 or target):
        raise ConfigError(_nothing_to_prune(graph, ignored))
    scores = group_importance(graph, candidates, criterion=criterion, data=data,
                              loss_fn=loss_fn, batches=batches, seed=seed)
    options = _Options(ratio, dict(ratios or {}), scope, max_ratio, dict(target or {}), round_to,
                       _producers(graph, candidates), _unit_rounding(graph, candidates, round_to),
                       normalize=criterion != "lamp")
    info = {"criterion": criterion, "ratio": ratio, "scope": scope, "round_to": round_to,
            "target": dict(target or {}), "model": type(graph.model).__name__,
            "ignored": sorted(ignored), **({"skipped": skipped} if skipped else {})}
    excluded: dict[int, str] = {}
    while True:
        groups = [g for g in candidates if g.id not in excluded]
        kept, reached = _allocate(graph, groups, scores, options)
        result = build_plan(graph, kept, info={**info, **reached})
        if not (check is True or check == "auto" and any(graph.groups[g].literal for g in kept)):
            break
        bad, where = _failing_groups(graph, _runner(graph), result, kept)
        if not bad:
            break
        excluded.update(bad)
        excluded.update(_analogues(graph, groups, bad, excluded, where))
    if excluded:
        result.info["excluded"] = {graph.groups[g].name: why for g, why in excluded.items()}
        for gid, why in excluded.items():
            reason = f"forward pass fails when cut ({why})"
            if reason not in graph.groups[gid].extra_blocked:
                graph.groups[gid].extra_blocked.append(reason)
    return result


def _nothing_to_prune(graph: Graph, ignored: set[str]) -> str:
    """Why no group can be cut, naming operators without rules when there are any."""
    if graph.unknown_ops:
        ops = ", ".join(f"{u.op} in {u.module or '<model>'}" for u in graph.unknown_ops.values())
        return (f"nothing can be pruned: operators without a rule ({ops}) keep the dimensions "
                "they touch; run pk.inspect_model to see every group, or register a rule with "
                "prunekit.graph.register_op")
    why = "ignored modules cover every group" if ignored and graph.prunable_groups else \
        "every group is a model input/output or is otherwise blocked"
    return f"nothing can be pruned: {why}; run pk.inspect_model to see the groups and reasons"


# -- applying --------------------------------------------------------------------------------------
def apply(model: nn.Module, plan: Plan) -> nn.Module:
    """Carry out ``plan`` on ``model`` in place: tensors shrink, size attributes follow.

    All or nothing: every new tensor and attribute is computed before anything is
    swapped in, and an error during the swap restores the model exactly.

    Args:
        model: the model the plan was made for (or a freshly built twin).
        plan: from :func:`plan` or ``Plan.load``.

    Returns:
        ``model`` itself.
    """
    if not isinstance(plan, Plan):
        raise ConfigError(f"apply needs a Plan, got {type(plan).__name__}")
    apply_plan(model, plan)
    return model


def prune(model: nn.Module, example_inputs: Any, **options: Any) -> Plan:
    """Trace, plan and apply in one call; returns the plan (keywords as for :func:`plan`).

    Example:
        >>> plan = pk.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    """
    graph = trace(model, example_inputs)
    result = plan(graph, **options)
    apply(model, result)
    return result


# -- inspection --------------------------------------------------------------
@dataclass
class Report:
    """What :func:`inspect_model` found (``str(report)`` is the readable form).

    Attributes:
        model: class name of the model.
        params: number of parameters.
        macs: multiply-accumulates of one forward pass on the example inputs.
        groups: one row per group with parameters: name, size, prunable, members,
            reasons it is blocked and reasons it is unchecked.
        unknown_ops: operators without a rule: op, module, calls.
        notes: assumptions the tracer made.
    """

    model: str
    params: int
    macs: int
    groups: list[dict[str, Any]]
    unknown_ops: list[dict[str, Any]]
    notes: list[str]

    @property
    def prunable(self) -> list[dict[str, Any]]:
        """Rows of the groups that may be pruned."""
        return [g for g in self.groups if g["prunable"]]

    def __str__(self) -> str:
        lines = [f"{self.model}: {self.params:,} parameters, {self.macs:,} MACs",
                 f"{len(self.prunable)} prunable groups of {len(self.groups)}:"]
        for g in self.groups:
            flag = "prunable" if g["prunable"] else "kept"
            line = f"  [{flag}] {g['name']} ({g['size']} units, {len(g['members'])} tensors)"
            if g["blocked"]:
                line += f": {g['blocked'][0]}"
            elif g["unchecked"]:
                line += f" (not checkable by zero-out: {g['unchecked'][0]})"
            lines.append(line)
        if self.unknown_ops:
            lines.append("operators without a rule (their dimensions are kept):")
            lines += [f"  {u['op']} in {u['module'] or '<model>'} ({u['count']} calls)"
                      for u in self.unknown_ops]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def inspect_model(model: nn.Module, example_inputs: Any, *, trivial: bool = False) -> Report:
    """Dry run: the groups, what cannot be pruned and why, params and MACs. Nothing changes.

    Args:
        model: the model.
        example_inputs: as for :func:`trace`.
        trivial: also list groups blocked only because they are model inputs/outputs,
            kernel sizes or unused tensors.

    Example:
        >>> print(pk.inspect_model(model, torch.randn(1, 3, 32, 32)))
    """
    graph = trace(model, example_inputs)
    rows = []
    for g in graph.groups:
        if not trivial and not g.prunable and _trivially_blocked(g):
            continue
        rows.append({"name": g.name, "size": g.size, "prunable": g.prunable,
                     "members": [f"{m.name}:{m.dim}" for m in g.members],
                     "blocked": g.blocked, "unchecked": g.unchecked})
    unknown = [{"op": u.op, "module": u.module, "count": u.count}
               for u in graph.unknown_ops.values()]
    params = sum(p.numel() for p in model.parameters())
    return Report(type(model).__name__, params, _macs(model, example_inputs, graph), rows,
                  unknown, list(graph.notes))


_TRIVIAL = ("size of a model input", "size of a model output", "kernel size", "not used by",
            "rows looked up by index", "spatial size", "integer buffer")


def _trivially_blocked(g: Group) -> bool:
    return g.size <= 1 or all(any(t in r for t in _TRIVIAL) for r in g.blocked)


def _macs(model: nn.Module, inputs: Any, graph: Graph) -> int:
    try:
        from .measure import count_macs
    except ImportError:
        return graph.macs_after({})
    try:
        return int(count_macs(model, inputs).dense)
    except Exception:
        return graph.macs_after({})
