"""The dry-run exclusion loop of structured planning.

A plan is run on a weightless copy of the model; groups whose cut breaks the forward pass
(sizes baked into the code, or read from another tensor's shape) are found by bisection and
left out, together with their analogues in repeated blocks.
"""

from __future__ import annotations

import re
import weakref

from torch import nn

from ..graph import Graph, Group
from .build import build_plan
from .dryrun import DryRunner, find_failing
from .plan import Plan

_RUNNERS: dict[int, tuple[weakref.ref, DryRunner]] = {}


def _runner(graph: Graph) -> DryRunner:
    """The dry runner of ``graph``'s model, built once per graph and kept beside it (not on
    it: planning leaves its input unchanged); dropped when the graph is collected."""
    key = id(graph)
    entry = _RUNNERS.get(key)
    if entry is None or entry[0]() is not graph:
        runner = DryRunner(graph.model, graph.example_inputs, graph.output_shapes,
                           real_seconds=graph.trace_seconds)
        _RUNNERS[key] = (weakref.ref(graph, lambda _: _RUNNERS.pop(key, None)), runner)
        return runner
    return entry[1]


def _signature(graph: Graph, g: Group) -> tuple:
    """A group's structure with layer indices blanked: repeated blocks share signatures."""
    blank = re.compile(r"(^|\.)\d+(?=\.)")
    return (g.part, g.part_shape,
            *sorted(blank.sub(r"\1#", f"{m.name}:{m.dim}") for m in g.members))


def analogues(graph: Graph, groups: list[Group], bad: dict[int, str],
               excluded: dict[int, str], where: str | None) -> dict[int, str]:
    """Groups like the failing ones: the same structure in another layer, or a size spelled
    out by the same operator in another module of the same class."""
    failing = {_signature(graph, graph.groups[gid]): graph.groups[gid].name for gid in bad}
    code = {(*key, graph.groups[gid].part): graph.groups[gid].name for gid in bad
            for key in _literal_sites(graph, graph.groups[gid], where)}
    out = {}
    for g in groups:
        if g.id in excluded or g.id in bad:
            continue
        name = failing.get(_signature(graph, g)) or next(
            (code[(*k, g.part)] for k in _literal_sites(graph, g, None)
             if (*k, g.part) in code), None)
        if name is not None:
            out[g.id] = f"same code as {name}, which fails: {bad[_id(graph, name)]}"
    return out


def _literal_sites(graph: Graph, g: Group, where: str | None) -> set[tuple[str, str]]:
    """(operator, module class) of the places that spell out the group's size (inside
    ``where`` when given); containers and the model itself are too generic to count."""
    out = set()
    for reason in g.literal:
        path = getattr(reason, "module", None)
        if not path or (where is not None and not _inside(path, where)):
            continue
        module = graph.model.get_submodule(path)
        if type(module) not in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
            out.add((reason.op, type(module).__qualname__))
    return out


def _id(graph: Graph, name: str) -> int:
    return next(g.id for g in graph.groups if g.name == name)


def _inside(path: str | None, where: str) -> bool:
    return path is not None and (path == where or path.startswith(where + ".") or not where)


def failing_groups(graph: Graph, result: Plan, kept) -> tuple[dict[int, str], str | None]:
    """Groups of ``result`` whose cut breaks the dry run of ``graph``'s model (each with the
    error), found by bisection, and the module where the run failed."""
    runner = _runner(graph)
    if not kept or runner.error(result) is None:
        return {}, None
    ids = sorted(kept)

    def fails(sub: list[int]) -> str | None:
        return runner.error(build_plan(graph, {g: kept[g] for g in sub}))

    where = runner.last_module
    if where is not None:  # suspects: groups whose size the failing module spells out
        suspects = [i for i in ids if any(_inside(getattr(r, "module", None), where)
                                          for r in graph.groups[i].literal)]
        msg = fails(suspects) if suspects else None
        if msg:
            found = {suspects[0]: msg} if len(suspects) == 1 else find_failing(suspects, fails)
            return found, where
        near = sorted(graph.groups_in_module(where) & set(ids))
        if near and len(near) < len(ids) and fails(near):
            return find_failing(near, fails), where
    return find_failing(ids, fails), where
