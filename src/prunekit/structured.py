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

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._log import log
from ._utils import resolve_ignore
from .allocation.channels import (
    _allocate,
    _candidates,
    _one_factor_per_dim,
    _Options,
    _producers,
    _unit_rounding,
)
from .allocation.rules import lamp_scores
from .config import PlanConfig, split_ignore
from .errors import ConfigError
from .export import load_pruned, save_pruned
from .graph import Graph, Group
from .graph import trace as _trace
from .graph.reasons import TRIVIAL_KINDS, kind_of
from .importance.group import group_importance
from .measure import count_macs
from .surgery import Plan, apply_plan
from .surgery.build import build_plan
from .surgery.exclusion import analogues, failing_groups
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
    if not isinstance(model, nn.Module):
        raise ConfigError(f"trace needs an nn.Module, got {type(model).__name__}")
    if log.isEnabledFor(logging.INFO):  # counting is skipped when nobody listens
        log.info("tracing %s (%s parameters)", type(model).__name__,
                 f"{sum(p.numel() for p in model.parameters()):,}")
    graph = _trace(model, example_inputs)
    log.info("traced in %.1f s: %d groups, %d prunable", graph.trace_seconds,
             len(graph.groups), len(graph.prunable_groups))
    return graph


# -- planning ------------------------------------------------------------------------------------
def plan(
    graph: Graph,
    config: PlanConfig | None = None,
    *,
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    **options: Any,
) -> Plan:
    """Decide which units of each group to remove. The graph is not changed.

    Args:
        graph: from :func:`trace`.
        config: a :class:`~prunekit.config.PlanConfig`; or its fields as keywords:
            ``ratio`` (fraction of units removed from each group, default 0.5; with
            ``scope="global"`` the fraction of all units), ``ratios`` (per-group ratio by
            module name pattern, ``{"re:layer4\\..*": 0.7}``), ``budget`` (a
            :class:`~prunekit.Budget`; ``target={"macs": f}`` is the older
            spelling), ``criterion`` (any name of :func:`prunekit.list_criteria`),
            ``scope`` (``layer``, ``global``, ``lamp``), ``max_ratio``, ``round_to``,
            ``ignore`` (modules, names or ``re:`` patterns whose own outputs keep their
            size; their inputs may still shrink with the layer that feeds them),
            ``batches`` / ``fisher_samples`` (calibration), ``seed``, ``check``
            (``"always"``, the default: dry-run the plan on a weightless copy and leave out
            groups whose cut breaks the forward pass, since code can take a size from
            another tensor's shape, which no trace sees; ``"auto"``: only when a cut size
            is spelled out in the code; ``"never"``; ``True`` / ``False`` are accepted).
        data: ``(inputs, targets)`` batches for data-driven criteria (``taylor``, ``obd`` ...).
        loss_fn: loss for those criteria (cross-entropy by default).

    Returns:
        The :class:`Plan`; ``plan.info.excluded`` names the groups the dry run left out
        (:class:`PlanInfo` says how the plan was made).

    Example:
        >>> plan = pk.plan(graph, ratio=0.5, criterion="l2", round_to=8)
        >>> plan = pk.plan(graph, PlanConfig(budget=Budget("macs", 0.5), scope="global"))
    """
    if not isinstance(graph, Graph):
        raise ConfigError(f"plan needs the Graph that pk.trace returns, got {type(graph).__name__}")
    config = _plan_config(graph.model, config, options)
    ignored = resolve_ignore(graph.model, config.ignore)
    candidates, skipped = _one_factor_per_dim(graph, _candidates(graph, ignored))
    if not candidates and (config.ratio or config.budget):
        raise ConfigError(_nothing_to_prune(graph, ignored))
    log.info("scoring %d candidate groups by %s", len(candidates), config.criterion)
    scores = group_importance(graph, candidates, criterion=config.criterion, data=data,
                              loss_fn=loss_fn, batches=config.calibration.batches,
                              seed=config.seed)
    if config.scope == "lamp":
        scores = {gid: lamp_scores(s) for gid, s in scores.items()}
    options_ = _Options.of(config, _producers(graph, candidates),
                           _unit_rounding(graph, candidates, config.round_to))
    info = {"criterion": config.criterion, "ratio": config.ratio, "scope": config.scope,
            "round_to": config.round_to,
            "target": {config.budget.kind: config.budget.fraction} if config.budget else {},
            "model": type(graph.model).__name__, "ignored": sorted(ignored),
            **({"skipped": skipped} if skipped else {})}
    excluded: dict[int, str] = {}
    while True:
        groups = [g for g in candidates if g.id not in excluded]
        kept, reached = _allocate(graph, groups, scores, options_)
        result = build_plan(graph, kept, info={**info, **reached})
        if not (config.check == "always"
                or config.check == "auto" and any(graph.groups[g].literal for g in kept)):
            break
        log.info("dry run of the plan (%d groups cut)", len(kept))
        bad, where = failing_groups(graph, result, kept)
        if not bad:
            break
        log.info("dry run: %d groups fail and are left whole", len(bad))
        excluded.update(bad)
        excluded.update(analogues(graph, groups, bad, excluded, where))
    if excluded:
        result.info.excluded = {graph.groups[g].name: why for g, why in excluded.items()}
    return result


def _plan_config(model: nn.Module, config: PlanConfig | None, options: dict) -> PlanConfig:
    """The config of a call: the one given, or the one its keywords spell."""
    if config is None:
        if "ignore" in options:
            options["ignore"] = split_ignore(model, options["ignore"])
        return PlanConfig.from_keywords(**options)
    if options:
        raise ConfigError(f"give a PlanConfig or keywords, not both (got {', '.join(options)})")
    if not isinstance(config, PlanConfig):
        raise ConfigError(f"config must be a PlanConfig, got {type(config).__name__}")
    return config


def _nothing_to_prune(graph: Graph, ignored: set[str]) -> str:
    """Why no group can be cut, naming operators without rules when there are any."""
    if graph.unknown_ops:
        ops = ", ".join(f"{u.op} in {u.module or '<model>'}" for u in graph.unknown_ops.values())
        return (f"nothing can be pruned: operators without a rule ({ops}) keep the dimensions "
                "they touch; run pk.inspect_model to see every group, or register a rule with "
                "prunekit.graph.register_op")
    why = "ignored modules cover every group" if ignored and graph.prunable_groups else \
        "every group is a model input/output or is otherwise blocked"
    flow = next((n for n in graph.notes if n.startswith("data-dependent control flow")), None)
    if flow and not graph.prunable_groups:
        why += f" ({flow})"
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
    log.debug("slicing %d tensors", len(plan.tensors))
    apply_plan(model, plan)
    return model


def prune(model: nn.Module, example_inputs: Any, config: PlanConfig | None = None,
          **options: Any) -> Plan:
    """Trace, plan and apply in one call; returns the plan (config or keywords as for
    :func:`plan`, and ``data`` / ``loss_fn``).

    Example:
        >>> plan = pk.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    """
    graph = trace(model, example_inputs)
    result = plan(graph, config, **options)
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


def _trivially_blocked(g: Group) -> bool:
    return g.size <= 1 or all(kind_of(r) in TRIVIAL_KINDS for r in g.blocked)


def _macs(model: nn.Module, inputs: Any, graph: Graph) -> int:
    try:
        return int(count_macs(model, inputs).dense)
    except Exception:
        return graph.macs_after({})
