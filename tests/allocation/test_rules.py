import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.allocation import Rule, lamp_scores, nm_keep, parse_pattern, select
from prunekit.errors import ConfigError


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), s=st.floats(0, 0.999), seed=st.integers(0, 10_000))
def test_sparsity_rule_prunes_exact_count(n, s, seed):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    pruned = Rule("sparsity", s).prune(scores)
    k = int(round(s * n))
    assert int(pruned.sum()) == k
    if 0 < k < n:  # the pruned are the lowest
        assert scores[pruned].max() <= scores[~pruned].min()


def test_already_pruned_units_stay_pruned_and_count():
    scores = torch.tensor([float("-inf"), float("-inf"), 0.1, 0.5, 0.9])
    assert Rule("sparsity", 0.2).prune(scores).tolist() == [True, True, False, False, False]
    assert Rule("sparsity", 0.6).prune(scores).tolist() == [True, True, True, False, False]
    assert Rule("threshold", 0.0).prune(scores).tolist()[:2] == [True, True]


def test_threshold_percentile_std_rules():
    scores = torch.arange(100, dtype=torch.float32)
    assert Rule("threshold", 10.0).prune(scores).sum() == 10
    assert Rule("percentile", 25.0).prune(scores).sum() == int(
        (scores < np.percentile(scores, 25)).sum()
    )
    cut = scores.double().mean() + 0.5 * scores.double().std(unbiased=False)
    assert Rule("std", 0.5).prune(scores).sum() == int((scores.double() < cut).sum())
    assert Rule("std", -0.5).prune(scores).sum() < Rule("std", 0.5).prune(scores).sum()


@pytest.mark.parametrize(
    "kind,value",
    [
        ("sparsity", 1.0),
        ("sparsity", -0.1),
        ("percentile", 100),
        ("sparsity", float("nan")),
        ("bogus", 0.5),
    ],
)
def test_bad_rules_are_rejected(kind, value):
    with pytest.raises(ConfigError):
        Rule(kind, value)


def test_global_ranks_across_layers_layer_scope_is_uniform():
    scores = {"a": torch.linspace(0, 1, 100), "b": torch.linspace(5, 6, 100)}
    glob = select(scores, Rule("sparsity", 0.5), scope="global")
    assert glob["a"].all() and not glob["b"].any()
    layer = select(scores, Rule("sparsity", 0.5), scope="layer")
    assert layer["a"].sum() == layer["b"].sum() == 50


def test_lamp_scores_match_definition_and_never_empty_a_layer():
    s = torch.tensor([3.0, 1.0, 2.0])
    # sorted squares 1,4,9: 1/(1+4+9), 4/(4+9), 9/9
    expected = torch.tensor([1.0, 1 / 14, 4 / 13], dtype=torch.float64)
    torch.testing.assert_close(lamp_scores(s), expected)
    scores = {"small": torch.rand(50) * 1e-3, "big": torch.rand(5000)}
    lamp = select(scores, Rule("sparsity", 0.99), scope="lamp")
    assert not lamp["small"].all()  # the largest unit of every layer survives
    assert select(scores, Rule("sparsity", 0.99), scope="global")["small"].all()


def test_unknown_scope_lists_valid():
    with pytest.raises(ConfigError, match="global"):
        select({"a": torch.rand(3)}, Rule("sparsity", 0.5), scope="everywhere")


def test_nm_keep_keeps_best_n_of_each_block():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 4.0, 3.0, 2.0, 1.0]])
    keep = nm_keep(scores, 2, 4, dim=1)
    assert keep.tolist() == [[False, True, True, False, True, True, False, False]]
    conv = torch.rand(6, 8, 3, 3)
    keep = nm_keep(conv, 2, 4, dim=1)
    blocks = keep.movedim(1, -1).reshape(6, 3, 3, 2, 4)  # (out, kh, kw, in/4, 4)
    assert (blocks.sum(-1) == 2).all()


def test_parse_pattern():
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern(" 4 : 8 ") == (4, 8)
    for bad in ("4:2", "2-4", "0:4", "x"):
        with pytest.raises(ConfigError):
            parse_pattern(bad)
