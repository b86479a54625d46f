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

import copy
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._utils import name_matches
from .errors import ConfigError
from .graph import Graph, Group
from .surgery import Plan, apply_plan
from .surgery.build import build_plan

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

_SCOPES = ("layer", "global")
_TARGETS = ("params", "macs")


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


def _check_args(graph, ratio, ratios, scope, max_ratio, target, round_to, check) -> float:
    if not isinstance(graph, Graph):
        raise ConfigError(f"plan needs the Graph that pk.trace returns, got {type(graph).__name__}")
    if target and (ratio is not None or ratios):
        raise ConfigError("give either ratio/ratios or target, not both")
    ratio = 0.5 if ratio is None else ratio
    for name, r in [("ratio", ratio), ("max_ratio", max_ratio), *(ratios or {}).items()]:
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConfigError(f"{name} must be a fraction in [0, 1), got {r!r}")
    if scope not in _SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; valid scopes: {', '.join(_SCOPES)}")
    for key, f in (target or {}).items():
        if key not in _TARGETS:
            raise ConfigError(f"unknown target {key!r}; valid targets: {', '.join(_TARGETS)}")
        if not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ConfigError(f"target {key} must be a fraction in [0, 1), got {f!r}")
    if target and len(target) != 1:
        raise ConfigError("target takes one entry: {'params': f} or {'macs': f}")
    if check not in (True, False, "auto"):
        raise ConfigError(f"check must be True, False or 'auto', got {check!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    return float(ratio)


def _resolve_ignore(model: nn.Module, ignore: Iterable[nn.Module | str]) -> set[str]:
    """Module paths to ignore; a module or pattern not in the model is an error."""
    if isinstance(ignore, (str, nn.Module)):
        ignore = [ignore]
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in reversed(list(named.items()))}
    out: set[str] = set()
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ConfigError(f"ignored module {type(item).__name__} is not part of this "
                                  "model; pass modules of the traced model or name patterns")
            out.add(by_id[id(item)])
        elif isinstance(item, str):
            hits = [n for n in named if n and name_matches(n, item)]
            if not hits:
                raise ConfigError(f"ignore pattern {item!r} matches no module of the model; "
                                  "check the name (see model.named_modules())")
            out.update(hits)
        else:
            raise ConfigError(f"ignore takes modules or name patterns, got {type(item).__name__}")
    return out


def _is_input_dim(model: nn.Module, name: str, dim: int) -> bool:
    """Whether ``dim`` of tensor ``name`` is an input side (a consumer's columns)."""
    from .surgery.surgeons import input_dims

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
    from .graph import _axes as ax

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
    from .graph import _axes as ax

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
    from .graph import _axes as ax

    out = {}
    for g in groups:
        span = min((int((idx == 0).sum()) for m in g.members
                    for idx in ax.leaf_index(graph.param_axes[m.name][m.dim], ax.find(g.leaf))),
                   default=1)
        out[g.id] = round_to // math.gcd(round_to, max(1, span))
    return out


def _keep_count(n: int, ratio: float, round_to: int) -> int:
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
        out[g.id] = _keep_count(g.size, gr, options.unit_round.get(g.id, options.round_to))
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
    return {gid: _keep_count(sizes[gid], removed[gid] / sizes[gid],
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


def _runner(graph: Graph):
    from .surgery.dryrun import DryRunner

    runner = getattr(graph, "_dry_runner", None)
    if runner is None:
        runner = DryRunner(graph.model, graph.example_inputs, graph.output_shapes,
                           real_seconds=graph.trace_seconds)
        graph._dry_runner = runner
    return runner


def _signature(graph: Graph, g: Group) -> tuple:
    """A group's structure with layer indices blanked: repeated blocks share signatures."""
    blank = re.compile(r"(^|\.)\d+(?=\.)")
    label = g.name.partition("[")[2]
    return (label, *sorted(blank.sub(r"\1#", f"{m.name}:{m.dim}") for m in g.members))


def _analogues(graph: Graph, groups: list[Group], bad: dict[int, str],
               excluded: dict[int, str], where: str | None) -> dict[int, str]:
    """Groups like the failing ones: the same structure in another layer, or a size spelled
    out by the same operator in another module of the same class."""
    failing = {_signature(graph, graph.groups[gid]): graph.groups[gid].name for gid in bad}
    code = {(*key, _category(graph.groups[gid])): graph.groups[gid].name for gid in bad
            for key in _literal_sites(graph, graph.groups[gid], where)}
    out = {}
    for g in groups:
        if g.id in excluded or g.id in bad:
            continue
        name = failing.get(_signature(graph, g)) or next(
            (code[(*k, _category(g))] for k in _literal_sites(graph, g, None)
             if (*k, _category(g)) in code), None)
        if name is not None:
            out[g.id] = f"same code as {name}, which fails: {bad[_id(graph, name)]}"
    return out


def _category(g: Group) -> str:
    """What part of its dimension a group is: whole, slice, outer or inner factor, other."""
    label = g.name.partition("[")[2]
    if not label:
        return "whole"
    if ":" in label:
        return "slice"
    if label.startswith("part"):
        return "part"
    return "inner" if "/" in label else "outer"


def _literal_sites(graph: Graph, g: Group, where: str | None) -> set[tuple[str, str]]:
    """(operator, module class) of the places that spell out the group's size (inside
    ``where`` when given); containers and the model itself are too generic to count."""
    out = set()
    for reason in g.literal:
        match = re.search(r"\((\w+) in (\S*)\)$", reason)
        if match is None or match.group(2) == "<model>":
            continue
        path = match.group(2)
        if where is not None and not _inside(path, where):
            continue
        module = graph.model.get_submodule(path)
        if type(module) not in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
            out.add((match.group(1), type(module).__qualname__))
    return out


def _id(graph: Graph, name: str) -> int:
    return next(g.id for g in graph.groups if g.name == name)


def _literal_module(reason: str) -> str | None:
    """The module named in a "size written in the code (op in module)" reason."""
    match = re.search(r" in (\S*)\)$", reason)
    return None if match is None else ("" if match.group(1) == "<model>" else match.group(1))


def _inside(path: str | None, where: str) -> bool:
    return path is not None and (path == where or path.startswith(where + ".") or not where)


def _failing_groups(graph, runner, result: Plan, kept) -> tuple[dict[int, str], str | None]:
    from .surgery.dryrun import find_failing

    if not kept or runner.error(result) is None:
        return {}, None
    ids = sorted(kept)

    def fails(sub: list[int]) -> str | None:
        return runner.error(build_plan(graph, {g: kept[g] for g in sub}))

    where = runner.last_module
    if where is not None:  # suspects: groups whose size the failing module spells out
        suspects = [i for i in ids if any(_inside(_literal_module(r), where)
                                          for r in graph.groups[i].literal)]
        msg = fails(suspects) if suspects else None
        if msg:
            found = {suspects[0]: msg} if len(suspects) == 1 else find_failing(suspects, fails)
            return found, where
        near = sorted(graph.groups_in_module(where) & set(ids))
        if near and len(near) < len(ids) and fails(near):
            return find_failing(near, fails), where
    return find_failing(ids, fails), where


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


def save_pruned(model: nn.Module, plan: Plan, directory: str | os.PathLike[str]) -> tuple[str, str]:
    """Write ``plan.json`` and ``weights.safetensors`` (tied tensors once) into ``directory``.

    Returns:
        The paths of the plan and of the weights.
    """
    from ._io import save_safetensors

    os.makedirs(directory, exist_ok=True)
    plan_path = os.path.join(directory, "plan.json")
    weights_path = os.path.join(directory, "weights.safetensors")
    state = model.state_dict()
    for alias in plan.aliases:
        state.pop(alias, None)
    plan.save(plan_path)
    save_safetensors(weights_path, state, metadata={"format": "prunekit"})
    return plan_path, weights_path


def load_pruned(
    model: nn.Module,
    plan: Plan | str | os.PathLike[str],
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Rebuild a pruned model: replay ``plan`` on a freshly built ``model``, then load weights.

    No pickled objects are read: the plan is JSON and the weights safetensors.

    Args:
        model: a freshly constructed instance of the original architecture.
        plan: a :class:`Plan` or the path of its JSON file.
        weights: a safetensors file (or a state dict) of the pruned model; every
            tensor must be present (tied tensors may appear once).

    Returns:
        ``model``, pruned and loaded.
    """
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    apply(model, plan)
    if weights is None:
        return model
    state = dict(weights) if isinstance(weights, Mapping) else _read_safetensors(weights)
    own = model.state_dict()
    expected = set(own)
    missing = sorted(expected - set(state) - set(plan.aliases))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(f"weights do not match the pruned model (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}); pass the weights saved with this plan")
    on_meta = any(t.device.type == "meta" for t in model.parameters())
    # safetensors keeps no per-module versions; modules that check theirs while loading
    # (torchvision's MNASNet) get those of the freshly built model, which the weights match.
    state = OrderedDict(state)
    state._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=False, assign=on_meta)
    return model


def _read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise ConfigError(f"weights file {os.fspath(path)!r} does not exist")
    return load_file(os.fspath(path))


# -- verification ------------------------------------------------------------
@dataclass
class VerifyResult:
    """Outcome of :func:`verify`.

    Attributes:
        ok: zero-out equivalence held for every checked group (within tolerance).
        max_abs_diff: largest absolute difference between the outputs.
        checked: names of groups checked by zero-out equivalence.
        unchecked: group name -> why exact equivalence cannot hold (these groups were
            cut structurally in the reference as well, so they are not checked).
        failed: names of groups whose cut changes the outputs.
        message: one sentence for people.
    """

    ok: bool
    max_abs_diff: float
    checked: list[str] = field(default_factory=list)
    unchecked: dict[str, list[str]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return self.message


def verify(
    original: nn.Module,
    pruned: nn.Module,
    plan: Plan,
    example_inputs: Any,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    locate: bool = True,
) -> VerifyResult:
    """Check a structural cut by zero-out equivalence.

    A copy of ``original`` gets the removed units zeroed (every tensor slice of every
    cut group: producers, norms and what they feed); its outputs must equal
    ``pruned``'s. Groups whose equivalence cannot hold exactly (a norm or mean over
    the cut dimension) are cut structurally in the copy too and reported as unchecked.

    Args:
        original: the model before pruning (not changed).
        pruned: the pruned model.
        plan: the plan that was applied.
        example_inputs: inputs for both models.
        atol: absolute tolerance; rtol: relative tolerance (to the output scale).
        locate: on a mismatch, find the groups responsible (one extra run per group).

    Returns:
        A :class:`VerifyResult` (truthy when the check passed).
    """
    cut = [g for g in plan.groups if g.removed]
    unchecked = {g.name: list(g.unchecked) for g in cut if g.unchecked}
    structural = {g.id for g in cut if g.unchecked}
    expected = _outputs(pruned, example_inputs)
    while True:
        checked = [g for g in cut if g.id not in structural]
        reference = _reference(original, plan, structural, checked)
        try:
            got = _outputs(reference, example_inputs)
            break
        except Exception as e:  # sizes in the code tie some checked groups to structural ones
            tied = _tied_groups(e, reference, checked)
            for g in tied:
                structural.add(g.id)
                unchecked[g.name] = [f"cut together with groups normalized over their cut "
                                     f"({type(e).__name__} without it)"]
    diff, scale = _difference(got, expected)
    ok = diff <= atol + rtol * scale
    failed: list[str] = []
    if not ok and locate:
        failed = _locate(original, plan, example_inputs, checked, structural, atol, rtol)
    if ok:
        msg = f"zero-out equivalence holds for {len(checked)} groups (max |diff| {diff:.2e})"
    else:
        msg = (f"outputs differ by {diff:.2e} (> {atol + rtol * scale:.2e})"
               + (f"; groups responsible: {', '.join(failed)}" if failed else ""))
    if unchecked:
        msg += f"; {len(unchecked)} groups not checkable by zero-out (normalized over the cut)"
    return VerifyResult(ok, diff, [g.name for g in checked], unchecked, failed, msg)


def _reference(original: nn.Module, plan: Plan, structural: set[int], zero: list) -> nn.Module:
    """A copy of ``original`` with ``structural`` groups cut and ``zero`` groups zeroed."""
    ref = copy.deepcopy(original)
    everything = structural >= {g.id for g in plan.groups if g.removed}
    sub = plan if everything else plan.subset(structural)
    if structural:
        apply_plan(ref, sub)
    tensors = dict(ref.named_parameters())
    tensors.update(dict(ref.named_buffers()))
    with torch.no_grad():
        for g in zero:
            for name, dims in g.members.items():
                t = tensors[name]
                for d, kept in dims.items():
                    kept = _remap(sub, name, d, kept)
                    if t.device.type == "meta":
                        raise ConfigError("verify needs real weights; the model is on the meta "
                                          "device")
                    mask = torch.ones(t.shape[d], dtype=torch.bool, device=t.device)
                    mask[kept] = False
                    if name.endswith("running_var"):
                        continue
                    t.index_fill_(d, torch.nonzero(mask).flatten(), 0)
    return ref


def _remap(sub: Plan, name: str, dim: int, kept: list[int]) -> list[int]:
    """Positions of the original tensor mapped into a tensor already cut by ``sub``."""
    cut = sub.tensors.get(name)
    if cut is None or dim not in cut.kept:
        return kept
    where = {old: new for new, old in enumerate(cut.kept[dim])}
    keep_set = set(kept)
    # positions removed by ``sub`` are gone; the others keep their relative order
    return [where[p] for p in cut.kept[dim] if p in keep_set]


def _outputs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    from .graph._tracer import _tracing_state, flatten_tensors, run_model

    with _tracing_state(model):
        return [t.detach().float() for t in flatten_tensors(run_model(model, inputs))
                if t.is_floating_point()]


def _tied_groups(error: Exception, model: nn.Module, checked: list) -> list:
    """Checked groups whose tensors live in the module where ``error`` was raised (else all)."""
    paths = {id(m): n for n, m in model.named_modules()}
    where, tb = None, error.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in paths:
            where = paths[id(obj)]
        tb = tb.tb_next
    if not checked:
        raise error
    if where is None or not where:
        return checked
    prefix = f"{where}." if where else ""
    near = [g for g in checked if any(n.startswith(prefix) for n in g.members)]
    return near or checked


def _compare(a: nn.Module, b: nn.Module, inputs: Any) -> tuple[float, float]:
    return _difference(_outputs(a, inputs), _outputs(b, inputs))


def _difference(out_a: list[torch.Tensor], out_b: list[torch.Tensor]) -> tuple[float, float]:
    if [t.shape for t in out_a] != [t.shape for t in out_b]:
        return math.inf, 0.0
    diff = max((float((x - y).abs().max()) for x, y in zip(out_a, out_b, strict=True)
                if x.numel()), default=0.0)
    scale = max((float(x.abs().max()) for x in out_a if x.numel()), default=0.0)
    return diff, scale


def _locate(original, plan: Plan, inputs, checked, structural, atol, rtol) -> list[str]:
    failed = []
    for g in checked:
        cut_model = copy.deepcopy(original)
        apply_plan(cut_model, plan.subset(structural | {g.id}))
        diff, scale = _compare(_reference(original, plan, structural, [g]), cut_model, inputs)
        if diff > atol + rtol * scale:
            failed.append(g.name)
    return failed


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
