"""Axis algebra: the index structure of tensor dimensions, and what couples them.

Every tensor dimension the tracer sees is described by an :class:`Axis`. Axes that
must lose the same indices together are merged (union-find). An axis can be
*refined* into parts, either as a row-major product (``view`` of 64 channels as
4 heads x 16, ``flatten`` of channels x height x width) or as a concatenation
(``cat`` and ``split`` along a dimension). The leaves of these trees are the
units a pruning plan removes: removing index ``i`` of a leaf removes every
position of every dimension whose tree holds that leaf at index ``i``.

Reasons travel with leaves: a *blocked* leaf may not be pruned (an operator with
no rule touched it, it is a model input or output, ...); an *unchecked* leaf may
be pruned but zero-out equivalence cannot hold exactly (a mean or a norm over it);
a *literal* leaf had its size spelled out in Python code (``x.view(-1, 400)``), so a
cut must be tried on a weightless copy before it is trusted.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

_ids = itertools.count()


class Axis:
    """One node of the union-find forest over tensor dimensions."""

    __slots__ = ("id", "size", "parent", "kind", "parts", "blocked", "unchecked", "literal",
                 "siblings")

    def __init__(self, size: int, *, blocked: Iterable[str] = ()) -> None:
        self.id = next(_ids)
        self.size = int(size)
        self.parent: Axis | None = None
        self.kind: str | None = None  # None (leaf), "prod" or "cat"
        self.parts: list[Axis] = []
        self.blocked: list[str] = list(blocked)
        self.unchecked: list[str] = []
        self.literal: list[str] = []
        self.siblings: list[list[Axis]] = []  # the other parts of products it was split into

    def __repr__(self) -> str:
        r = find(self)
        if r.kind:
            return f"{r.kind}[{', '.join(repr(p) for p in r.parts)}]"
        return f"A{r.id}({r.size}{'x' if r.blocked else ''})"


ONE = Axis(1)  # shared by every dimension of size 1


class AxisError(Exception):
    """Two dimensions that must be equal have index structures that cannot be aligned."""


def find(a: Axis) -> Axis:
    """The representative of ``a``'s class (with path compression)."""
    root = a
    while root.parent is not None:
        root = root.parent
    while a.parent is not None and a.parent is not root:
        a.parent, a = root, a.parent
    return root


def new(size: int, reason: str | None = None) -> Axis:
    """A fresh axis; axes not born from a parameter carry a blocking reason."""
    if size == 1:
        return ONE
    return Axis(size, blocked=[reason] if reason else [])


#: How many reasons each list keeps. Unchecked reasons are all kept: verify reads every one
#: to decide how a group can be checked (blocked and literal ones are for people).
_CAP = {"blocked": 8, "literal": 8, "unchecked": None}


def _add_reason(lst: list[str], reason: str, kind: str = "blocked") -> None:
    cap = _CAP[kind]
    if reason not in lst and (cap is None or len(lst) < cap):
        lst.append(reason)


def leaves(a: Axis) -> Iterator[Axis]:
    """Leaf representatives under ``a`` (with repetition for repeated leaves)."""
    r = find(a)
    if r.kind is None:
        if r.size > 1:
            yield r
        return
    for p in r.parts:
        yield from leaves(p)


def mark(a: Axis, reason: str, *, kind: str = "blocked") -> None:
    """Attach a reason (``kind``: "blocked", "unchecked" or "literal") to every leaf under ``a``."""
    for leaf in leaves(a):
        _add_reason(getattr(leaf, kind), reason, kind)


def factors(a: Axis) -> list[Axis]:
    """Row-major product factors of ``a`` (leaves or concatenations), size-1 factors dropped."""
    r = find(a)
    if r.kind == "prod":
        return [f for p in r.parts for f in factors(p)]
    return [r] if r.size > 1 else []


def prod(parts: list[Axis]) -> Axis:
    """An axis that is the row-major product of ``parts``."""
    parts = [p for p in parts if find(p).size > 1]
    if not parts:
        return ONE
    if len(parts) == 1:
        return parts[0]
    a = Axis(_product(find(p).size for p in parts))
    a.kind, a.parts = "prod", parts
    return a


def cat(parts: list[Axis]) -> Axis:
    """An axis that is the concatenation of ``parts`` (size-0 parts dropped)."""
    parts = [p for p in parts if find(p).size > 0]
    if len(parts) == 1:
        return parts[0]
    a = Axis(sum(find(p).size for p in parts))
    a.kind, a.parts = "cat", parts
    return a


def _product(sizes: Iterable[int]) -> int:
    out = 1
    for s in sizes:
        out *= s
    return out


def _refine(leaf: Axis, kind: str, sizes: list[int]) -> list[Axis]:
    """Turn a leaf representative into a product or concatenation of new leaves."""
    parts = [Axis(s) if s != 1 else (ONE if kind == "prod" else Axis(1)) for s in sizes]
    for p in parts:
        if p is not ONE:
            p.blocked, p.unchecked = list(leaf.blocked), list(leaf.unchecked)
            p.literal = list(leaf.literal)
    if kind == "prod":
        real = [p for p in parts if p is not ONE]
        for p in real:
            p.siblings.append(real)
    leaf.kind, leaf.parts = kind, parts
    leaf.blocked, leaf.unchecked, leaf.literal = [], [], []
    return parts


def split_prod(a: Axis, sizes: list[int]) -> list[Axis]:
    """Refine ``a`` as the product of axes of ``sizes`` (row-major); returns those axes."""
    r = find(a)
    sizes = [s for s in sizes if s != 1] or [1]
    if len(sizes) == 1:
        return [r]
    if r.kind is None:
        return _refine(r, "prod", sizes)
    target = Axis(r.size)
    parts = _refine(target, "prod", sizes)
    unify(target, r)
    return [find(p) for p in parts]


def split_cat(a: Axis, sizes: list[int]) -> list[Axis]:
    """Refine ``a`` as the concatenation of axes of ``sizes``; returns those axes."""
    r = find(a)
    sizes = [s for s in sizes if s > 0]
    if len(sizes) == 1:
        return [r]
    if r.kind is None:
        return _refine(r, "cat", sizes)
    if r.kind == "cat" and [find(p).size for p in r.parts] == sizes:
        return [find(p) for p in r.parts]
    target = Axis(r.size)
    parts = _refine(target, "cat", sizes)
    unify(target, r)
    return [find(p) for p in parts]


def _contains(a: Axis, leaf: Axis) -> bool:
    r = find(a)
    if r is leaf:
        return True
    return any(_contains(p, leaf) for p in r.parts)


def _link(child: Axis, root: Axis) -> None:
    """Make ``root`` represent ``child``'s class, moving reasons down to leaves."""
    if child.kind is None and root.kind is not None:
        for reason in child.blocked:
            mark(root, reason)
        for kind in ("unchecked", "literal"):
            for reason in getattr(child, kind):
                mark(root, reason, kind=kind)
    elif child.kind is None and root.kind is None:
        for reason in child.blocked:
            _add_reason(root.blocked, reason)
        for kind in ("unchecked", "literal"):
            for reason in getattr(child, kind):
                _add_reason(getattr(root, kind), reason, kind)
        root.siblings.extend(child.siblings)
    child.parent = root


def unify(a: Axis, b: Axis) -> None:
    """Declare that ``a`` and ``b`` index the same units (same size, same structure).

    Raises:
        AxisError: sizes differ, or the two structures cannot be aligned.
    """
    ra, rb = find(a), find(b)
    if ra is rb or ra.size == 1 and rb.size == 1:
        return
    if ra.size != rb.size:
        raise AxisError(f"sizes {ra.size} and {rb.size} differ")
    if ra.kind is None or rb.kind is None:
        leaf, other = (ra, rb) if ra.kind is None else (rb, ra)
        if other.kind is not None and _contains(other, leaf):
            raise AxisError("an axis cannot contain itself")
        _link(leaf, other)
        return
    fa, fb = factors(ra), factors(rb)
    if len(fa) > 1 and len(fb) > 1:
        _unify_factor_lists(fa, fb)
    elif len(fa) > 1:
        _unify_prod_cat(ra, fb[0])
    elif len(fb) > 1:
        _unify_prod_cat(rb, fa[0])
    else:
        _unify_segments(fa[0], fb[0])
    ra, rb = find(ra), find(rb)
    if ra is not rb:
        rb.parent = ra  # the structures are aligned now: ra's stands for both


def _unify_factor_lists(fa: list[Axis], fb: list[Axis]) -> None:
    fa, fb = list(fa), list(fb)
    i = j = 0
    while i < len(fa) and j < len(fb):
        x, y = find(fa[i]), find(fb[j])
        if x.size == y.size:
            unify(x, y)
            i, j = i + 1, j + 1
        elif x.size < y.size:
            fb[j : j + 1] = _split_front(y, x.size)
        else:
            fa[i : i + 1] = _split_front(x, y.size)
    if i != len(fa) or j != len(fb):
        raise AxisError("products of different sizes")


def _split_front(a: Axis, size: int) -> list[Axis]:
    """Split ``a`` into a leading factor of ``size`` and the rest (row-major)."""
    if a.size % size:
        raise AxisError(f"cannot split {a.size} into a leading factor of {size}")
    return split_prod(a, [size, a.size // size])


def _unify_segments(ca: Axis, cb: Axis) -> None:
    """Two concatenations (or a concatenation and a product, via ``split_cat``)."""
    sa = [find(p) for p in find(ca).parts]
    sb = [find(p) for p in find(cb).parts]
    i = j = 0
    while i < len(sa) and j < len(sb):
        x, y = find(sa[i]), find(sb[j])
        if x.size == y.size:
            unify(x, y)
            i, j = i + 1, j + 1
        elif x.size < y.size:
            sb[j : j + 1] = split_cat(y, [x.size, y.size - x.size])
        else:
            sa[i : i + 1] = split_cat(x, [y.size, x.size - y.size])


def _unify_prod_cat(p: Axis, c: Axis) -> None:
    """A product ``F1 x rest`` equal to a concatenation ``S1 | S2 | ...``.

    Works when every segment is a multiple of ``rest``: ``F1`` becomes a
    concatenation of pieces ``A_i`` and each segment ``S_i`` equals ``A_i x rest``.
    """
    fs = factors(p)
    rest = _product(f.size for f in fs[1:])
    segs = [find(s) for s in find(c).parts]
    if any(s.size % rest for s in segs):
        raise AxisError("a concatenation does not line up with a product")
    pieces = split_cat(fs[0], [s.size // rest for s in segs])
    for seg, piece in zip(segs, pieces, strict=True):
        unify(seg, prod([piece, *fs[1:]]))


def keep_mask(a: Axis, keep: dict[Axis, torch.Tensor]) -> torch.Tensor | None:
    """Boolean mask of the positions of ``a`` that survive; ``None`` when all do.

    Args:
        a: the axis of one tensor dimension.
        keep: leaf representative -> boolean mask over that leaf's indices.
    """
    r = find(a)
    if r.kind is None:
        return keep.get(r)
    masks = [keep_mask(p, keep) for p in r.parts]
    if all(m is None for m in masks):
        return None
    full = [m if m is not None else torch.ones(find(p).size, dtype=torch.bool)
            for m, p in zip(masks, r.parts, strict=True)]
    if r.kind == "cat":
        return torch.cat(full)
    out = full[0]
    for m in full[1:]:
        out = (out[:, None] & m[None, :]).reshape(-1)  # row-major outer product
    return out


def kept_size(a: Axis, keep_counts: dict[Axis, int]) -> int:
    """Size of ``a`` once the leaves in ``keep_counts`` are cut to those counts."""
    r = find(a)
    if r.kind is None:
        return keep_counts.get(r, r.size)
    sizes = [kept_size(p, keep_counts) for p in r.parts]
    return sum(sizes) if r.kind == "cat" else _product(sizes)


def leaf_index(a: Axis, leaf: Axis) -> list[torch.Tensor]:
    """For each occurrence of ``leaf`` under ``a``: the leaf index at every position (-1: none)."""
    r = find(a)
    if r is leaf:
        return [torch.arange(r.size)]
    if r.kind is None:
        return []
    out: list[torch.Tensor] = []
    if r.kind == "cat":
        offset = 0
        for p in r.parts:
            size = find(p).size
            for idx in leaf_index(p, leaf):
                full = torch.full((r.size,), -1, dtype=torch.long)
                full[offset : offset + size] = idx
                out.append(full)
            offset += size
        return out
    sizes = [find(p).size for p in r.parts]
    for k, p in enumerate(r.parts):
        outer, inner = _product(sizes[:k]), _product(sizes[k + 1 :])
        for idx in leaf_index(p, leaf):
            # (outer, size_k, inner) -> flat positions, carrying idx along dim 1
            grid = idx.view(1, -1, 1).expand(outer, -1, inner)
            out.append(grid.reshape(-1))
    return out
