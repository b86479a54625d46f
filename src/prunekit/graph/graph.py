"""The traced graph: parameters' dimensions, their coupling groups, and why some cannot be cut."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import _axes as ax
from ._axes import Axis


@dataclass(frozen=True)
class Member:
    """One parameter or buffer dimension that a group cuts.

    Attributes:
        name: qualified name of the tensor (the first name of a tied tensor).
        dim: the dimension that loses indices.
        is_param: whether it is an ``nn.Parameter`` (else a buffer).
    """

    name: str
    dim: int
    is_param: bool = True

    @property
    def module(self) -> str:
        """Qualified name of the module that owns the tensor."""
        return self.name.rpartition(".")[0]


@dataclass
class Group:
    """A set of coupled dimensions that lose the same units together.

    Attributes:
        id: position in ``graph.groups``.
        size: number of units (indices) of the group.
        members: every parameter/buffer dimension cut with it.
        leaf: the axis class behind the group (internal).
        part: which part of its first producer's dimension the group is: ``"whole"``,
            ``"slice"`` (a contiguous run), ``"outer"`` (the block index when the dimension
            is blocks of units: heads, channel groups), ``"inner"`` (the unit inside each
            block) or ``"part"`` (any other subset).
        part_shape: the slice (``"0:4"``) or the blocks (``"4x8"``: 4 blocks of 8) for
            slices and factors, else ``""``.
    """

    id: int
    size: int
    members: list[Member]
    leaf: Axis = field(repr=False)
    extra_blocked: list[str] = field(default_factory=list, repr=False)
    label: str = ""
    part: str = "whole"
    part_shape: str = ""

    @property
    def blocked(self) -> list[str]:
        """Reasons this group may not be pruned (empty when it may)."""
        return [*ax.find(self.leaf).blocked, *self.extra_blocked]

    @property
    def unchecked(self) -> list[str]:
        """Reasons zero-out equivalence cannot hold exactly for this group."""
        return list(ax.find(self.leaf).unchecked)

    @property
    def literal(self) -> list[str]:
        """Places where the code spells out this group's size (a cut must be dry-run)."""
        return list(ax.find(self.leaf).literal)

    @property
    def prunable(self) -> bool:
        """Whether units of this group may be removed."""
        return not self.blocked and self.size > 1 and any(m.is_param for m in self.members)

    @property
    def name(self) -> str:
        """A readable, unique name: the first producer's tensor and dimension, and which part.

        ``"conv1.weight:0"`` is the whole dimension 0; ``"a.weight:0[0:4]"`` a slice of it;
        ``"q.weight:0[4x8]"`` the outer factor when the dimension is 4 blocks of 8
        (attention heads, channel groups); ``"k.weight:0[4x8]/2"`` the inner one.
        """
        return self.label

    @property
    def modules(self) -> list[str]:
        """Qualified names of the modules whose tensors this group cuts (in order, unique)."""
        return list(dict.fromkeys(m.module for m in self.members))


@dataclass
class Binding:
    """A module attribute whose value is the kept size of axes, e.g. ``conv.groups``.

    With ``as_tuple`` the value is the tuple of the axes' sizes (``normalized_shape``).
    """

    module: str
    attr: str
    axes: list[Axis]
    as_tuple: bool = False


@dataclass
class HeadSplit:
    """A view inside ``module`` that splits one axis into factors (heads x head_dim)."""

    module: str
    whole: Axis
    parts: list[Axis]


@dataclass
class ViewCall:
    """A size-taking call in the model's Python code (``x.view(B, L, 3, self.h, -1)``).

    Attributes:
        op: the function's name (``view``, ``reshape``, ``__getitem__`` ...).
        module: the module whose code made the call.
        outs: axes of each tensor it returned; ``None`` where the tracer did not follow it
            (inside a module-level rule).
    """

    op: str
    module: str
    outs: list[tuple[Axis, ...] | None] | None


@dataclass
class UnknownOp:
    """An operator without a rule: the dimensions it touched were made unprunable."""

    op: str
    module: str
    count: int = 1


class Graph:
    """Result of :func:`prunekit.trace`: tensors' dimensions as axes, grouped.

    Attributes:
        model: the traced model.
        example_inputs: the inputs the model was traced with.
        groups: every group of coupled parameter dimensions (prunable or not).
        param_axes: qualified tensor name -> axis of each dimension.
        aliases: extra names of tied tensors -> the first name.
        unknown_ops: operators that had no rule, with where they ran.
        notes: other things the tracer had to assume (faked data-dependent values).
    """

    def __init__(self, model: nn.Module, example_inputs: Any) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.param_axes: dict[str, tuple[Axis, ...]] = {}
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.is_param: dict[str, bool] = {}
        self.aliases: dict[str, str] = {}
        self.bindings: list[Binding] = []
        self.head_splits: list[HeadSplit] = []
        self.view_calls: list[ViewCall] = []
        self.macs_terms: list[tuple[int, list[Axis]]] = []
        self.unknown_ops: dict[tuple[str, str], UnknownOp] = {}
        self.notes: list[str] = []
        self.output_shapes: list[tuple[int, ...]] = []
        self.module_axes: dict[str, list[Axis]] = {}
        self.trace_seconds = 0.0
        self.groups: list[Group] = []

    # -- building ------------------------------------------------------------------
    def finalize(self) -> None:
        """Collect groups: one per leaf axis class that some tensor dimension holds."""
        by_leaf: dict[Axis, list[Member]] = {}
        for name, axes in self.param_axes.items():
            for dim, a in enumerate(axes):
                for leaf in dict.fromkeys(ax.leaves(a)):
                    by_leaf.setdefault(leaf, []).append(Member(name, dim, self.is_param[name]))
        self.groups = [
            Group(i, leaf.size, members, leaf) for i, (leaf, members) in enumerate(by_leaf.items())
        ]
        seen: dict[str, int] = {}
        for g in self.groups:
            label = self._label(g)
            seen[label] = seen.get(label, 0) + 1
            g.label = label if seen[label] == 1 else f"{label}#{seen[label]}"

    def _label(self, g: Group) -> str:
        """Name ``g`` after its first producer and set which part of that dimension it is."""
        m = next((m for m in g.members if m.dim == 0 and m.name.endswith("weight")), g.members[0])
        a = self.param_axes[m.name][m.dim]
        base = f"{m.name}:{m.dim}"
        size = ax.find(a).size
        idx = ax.leaf_index(a, ax.find(g.leaf))[0]
        hit = torch.nonzero(idx >= 0).flatten()
        g.part, g.part_shape = _part(idx, hit, size, g.size)
        if g.part == "whole":
            return base
        if g.part == "slice":
            return f"{base}[{g.part_shape}]"
        if g.part == "outer":
            return f"{base}[{g.part_shape}]"  # blocks (heads, channel groups)
        if g.part == "inner":
            return f"{base}[{g.part_shape}]/{g.size}"
        return f"{base}[part of {g.size}]"

    def groups_in_module(self, path: str) -> set[int]:
        """Ids of groups whose units pass through operators run inside module ``path``."""
        inside = [a for p, axes in self.module_axes.items()
                  if p == path or p.startswith(path + ".") or not path for a in axes]
        leaves = {leaf for a in inside for leaf in ax.leaves(a)}
        return {g.id for g in self.groups if ax.find(g.leaf) in leaves}

    # -- queries ----------------------------------------------------------------------
    @property
    def prunable_groups(self) -> list[Group]:
        """Groups whose units may be removed."""
        return [g for g in self.groups if g.prunable]

    def group_of(self, name: str, dim: int = 0) -> list[Group]:
        """Groups that cut dimension ``dim`` of tensor ``name`` (an alias works too)."""
        name = self.aliases.get(name, name)
        leaves = set(ax.leaves(self.param_axes[name][dim]))
        return [g for g in self.groups if g.leaf in leaves]

    def keep_masks(self, kept: dict[int, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
        """Per tensor and dimension, the boolean mask of kept positions.

        Args:
            kept: group id -> boolean mask over the group's units.
        """
        keep = {ax.find(self.groups[gid].leaf): m for gid, m in kept.items()}
        out: dict[str, dict[int, torch.Tensor]] = {}
        for name, axes in self.param_axes.items():
            for dim, a in enumerate(axes):
                mask = ax.keep_mask(a, keep)
                if mask is not None and not bool(mask.all()):
                    out.setdefault(name, {})[dim] = mask
        return out

    def kept_size(self, a: Axis, counts: dict[int, int]) -> int:
        """Size of axis ``a`` when group ``gid`` keeps ``counts[gid]`` units."""
        return ax.kept_size(a, {ax.find(self.groups[g].leaf): c for g, c in counts.items()})

    def predicted_views(self, counts: dict[int, int]) -> list[tuple[str, str, list | None]]:
        """Per size-taking call of :attr:`view_calls`: its name, module and the output shapes
        a cut keeping ``counts[gid]`` units of each group must give (``None``: not followed).

        A pruned model whose ``view`` returns another shape than predicted regroups what it
        splits (heads re-split into narrower heads, an interleave permuted): its shapes can
        still be valid, so only this comparison sees it.
        """
        keep = {ax.find(self.groups[g].leaf): c for g, c in counts.items()}
        return [(v.op, v.module, None if v.outs is None else
                 [None if axes is None else tuple(ax.kept_size(a, keep) for a in axes)
                  for axes in v.outs])
                for v in self.view_calls]

    def params_after(self, counts: dict[int, int]) -> int:
        """Number of parameters once each group keeps ``counts[gid]`` units."""
        keep = {ax.find(self.groups[g].leaf): c for g, c in counts.items()}
        total = 0
        for name, axes in self.param_axes.items():
            if self.is_param[name]:
                n = 1
                for a in axes:
                    n *= ax.kept_size(a, keep)
                total += n
        return total

    def macs_after(self, counts: dict[int, int]) -> int:
        """Multiply-accumulates of matmuls/convolutions once groups keep ``counts`` units."""
        keep = {ax.find(self.groups[g].leaf): c for g, c in counts.items()}
        total = 0
        for macs, axes in self.macs_terms:
            scale = 1.0
            for a in axes:
                size = ax.find(a).size
                if size > 1:
                    scale *= ax.kept_size(a, keep) / size
            total += round(macs * scale)
        return total

    def __repr__(self) -> str:
        n = len(self.prunable_groups)
        return f"Graph({type(self.model).__name__}: {len(self.groups)} groups, {n} prunable)"


def _part(idx: torch.Tensor, hit: torch.Tensor, size: int, units: int) -> tuple[str, str]:
    """Which part of a dimension of ``size`` a group of ``units`` is, from the group's index
    in each position of the dimension (``idx``, -1 where it is absent; ``hit`` where present)."""
    if len(hit) == size and bool((idx == torch.arange(size)).all()):
        return "whole", ""
    start, stop = int(hit[0]), int(hit[-1]) + 1
    if stop - start == len(hit) == units and bool((idx[start:stop] == torch.arange(units)).all()):
        return "slice", f"{start}:{stop}"
    pos = torch.arange(size)
    if len(hit) == size and bool((idx == pos // (size // units)).all()):
        return "outer", f"{units}x{size // units}"
    if len(hit) == size and bool((idx == pos % units).all()):
        return "inner", f"{size // units}x{units}"
    return "part", ""
