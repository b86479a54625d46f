"""Several structured cuts as one plan.

A network cut several times (an iterative run, or query heads and then whole groups)
has one plan per cut, each made on the network the previous one left. :func:`compose`
folds them into one plan that maps the original network straight to the final one, so
that ``plan.json`` replays on a freshly built model with ``pk.load_pruned`` like the plan
of a single cut.

Example:
    >>> first = pk.prune(model, x, ratio=0.25)
    >>> second = pk.prune(model, x, ratio=0.25)
    >>> pk.load_pruned(fresh, compose(first, second), model.state_dict())
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .plan import GroupCut, Plan, TensorCut

__all__ = ["compose"]


def compose(first: Plan, second: Plan) -> Plan:
    """One plan doing ``first`` then ``second`` (made on the network ``first`` left).

    Kept indices are mapped back to the original tensors; attributes take the last
    value and are checked against the first plan's ``before`` values on replay. The
    groups of ``second`` are listed after those of ``first``, their members' indices
    mapped to the original tensors (their ``size`` and ``kept`` stay those of the
    second cut).
    """
    tensors = dict(first.tensors)
    for name, cut in second.tensors.items():
        tensors[name] = _then(first.tensors.get(name), cut)
    offset = 1 + max((g.id for g in first.groups), default=-1)
    groups = [*first.groups, *(_mapped(g, first, offset) for g in second.groups)]
    cuts = [*first.info.get("cuts", [first.info]), second.info]
    return Plan(
        tensors=tensors,
        attrs=_merged(first.attrs, second.attrs),
        config=_merged(first.config, second.config),
        aliases={**first.aliases, **second.aliases},
        groups=groups,
        info={**second.info, "cuts": cuts},
        before=_merged(second.before, first.before),
    )


def _then(first: TensorCut | None, second: TensorCut) -> TensorCut:
    """The cut of one tensor by ``first`` (None: untouched) and then ``second``."""
    if first is None:
        return TensorCut(tuple(second.shape), {d: list(k) for d, k in second.kept.items()})
    kept = {d: list(k) for d, k in first.kept.items()}
    for d, idx in second.kept.items():
        kept[d] = [first.kept[d][i] for i in idx] if d in first.kept else list(idx)
    return TensorCut(tuple(first.shape), kept)


def _mapped(group: GroupCut, first: Plan, offset: int) -> GroupCut:
    """``group`` of a later plan with its members' indices in the original tensors."""
    members = {}
    for name, dims in group.members.items():
        earlier = first.tensors.get(name)
        members[name] = {
            d: [earlier.kept[d][i] for i in k] if earlier and d in earlier.kept else list(k)
            for d, k in dims.items()
        }
    return GroupCut(group.id + offset, group.name, group.size, list(group.kept), members,
                    list(group.unchecked), dict(group.attrs))


def _merged(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per-module dicts merged; ``b``'s values win."""
    return {m: {**a.get(m, {}), **b.get(m, {})} for m in dict.fromkeys([*a, *b])}
