"""The axis algebra: products, concatenations, alignment, masks and reasons."""

from __future__ import annotations

import pytest
import torch

from prunekit.graph import _axes as ax


def _mask(bits: str) -> torch.Tensor:
    return torch.tensor([b == "1" for b in bits])


def _bits(mask: torch.Tensor | None, size: int) -> str:
    return "1" * size if mask is None else "".join("1" if b else "0" for b in mask.tolist())


def test_unified_axes_share_one_class_and_sizes_must_match():
    a, b, c = ax.Axis(4), ax.Axis(4), ax.Axis(5)
    ax.unify(a, b)
    assert ax.find(a) is ax.find(b)
    with pytest.raises(ax.AxisError):
        ax.unify(a, c)


def test_product_keep_mask_is_row_major():
    whole = ax.Axis(6)
    heads, head_dim = ax.split_prod(whole, [2, 3])
    keep = {ax.find(heads): _mask("01")}
    assert _bits(ax.keep_mask(whole, keep), 6) == "000111"
    keep = {ax.find(head_dim): _mask("101")}
    assert _bits(ax.keep_mask(whole, keep), 6) == "101101"


def test_concatenation_keep_mask_and_split_reuse_segments():
    a, b = ax.Axis(2), ax.Axis(3)
    joined = ax.cat([a, b])
    assert _bits(ax.keep_mask(joined, {ax.find(a): _mask("01")}), 5) == "01111"
    pieces = ax.split_cat(joined, [2, 3])
    assert [ax.find(p) for p in pieces] == [ax.find(a), ax.find(b)]
    first, rest = ax.split_cat(joined, [1, 4])  # re-splitting refines the first segment
    assert ax.find(first).size == 1 and ax.find(rest).size == 4


def test_products_of_different_factorizations_align_to_a_common_refinement():
    p = ax.prod([ax.Axis(4), ax.Axis(6)])
    q = ax.prod([ax.Axis(2), ax.Axis(12)])
    ax.unify(p, q)
    sizes = [leaf.size for leaf in ax.leaves(p)]
    assert sizes == [2, 2, 6]
    assert [leaf.size for leaf in ax.leaves(q)] == sizes


def test_concatenation_of_equal_segments_viewed_as_product_couples_segments():
    # channel shuffle: cat([a, b]) viewed as (2, 3) -> both halves index the same units
    a, b = ax.Axis(3), ax.Axis(3)
    joined = ax.cat([a, b])
    groups, per_group = ax.split_prod(joined, [2, 3])
    assert ax.find(a) is ax.find(b) is ax.find(per_group)
    assert ax.find(groups).size == 2


def test_misaligned_structures_raise():
    p = ax.prod([ax.Axis(6), ax.Axis(4)])
    q = ax.prod([ax.Axis(4), ax.Axis(6)])
    with pytest.raises(ax.AxisError):
        ax.unify(p, q)


def test_leaf_index_maps_positions_to_units():
    whole = ax.Axis(6)
    heads, head_dim = ax.split_prod(whole, [2, 3])
    (idx,) = ax.leaf_index(whole, ax.find(heads))
    assert idx.tolist() == [0, 0, 0, 1, 1, 1]
    (idx,) = ax.leaf_index(whole, ax.find(head_dim))
    assert idx.tolist() == [0, 1, 2, 0, 1, 2]
    joined = ax.cat([ax.Axis(2), whole])
    (idx,) = ax.leaf_index(joined, ax.find(head_dim))
    assert idx.tolist() == [-1, -1, 0, 1, 2, 0, 1, 2]


def test_reasons_reach_every_leaf_and_survive_refinement():
    whole = ax.Axis(6)
    ax.mark(whole, "model output")
    parts = ax.split_prod(whole, [2, 3])
    assert all(ax.find(p).blocked == ["model output"] for p in parts)
    a, b = ax.Axis(4), ax.prod([ax.Axis(2), ax.Axis(2)])
    ax.mark(a, "no rule", kind="unchecked")
    ax.unify(a, b)
    assert all(leaf.unchecked == ["no rule"] for leaf in ax.leaves(b))


def test_kept_size_follows_kept_counts():
    a, b = ax.Axis(4), ax.Axis(3)
    p = ax.cat([ax.prod([a, b]), ax.Axis(5)])
    assert ax.kept_size(p, {}) == 17
    assert ax.kept_size(p, {ax.find(a): 2}) == 11


def test_an_axis_cannot_contain_itself():
    a = ax.Axis(4)
    node = ax.Axis(4)
    node.kind, node.parts = "cat", [a]  # a degenerate one-part concatenation around ``a``
    with pytest.raises(ax.AxisError):
        ax.unify(a, node)
