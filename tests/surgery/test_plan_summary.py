"""A plan says what it leaves whole and why (no silent partial pruning)."""

from __future__ import annotations

import torch
from tests.graph.test_wrong_cuts import LiteralHeads

import prunekit as pk


def test_summary_names_groups_left_whole_with_the_reason():
    torch.manual_seed(0)
    plan = pk.prune(LiteralHeads(), torch.randn(2, 5, 8), ratio=0.5)
    assert "1 prunable groups left whole" in repr(plan)
    (name, why), = plan.left_whole.items()
    assert name.startswith("qkv.weight") and "regroup" in why
    text = plan.summary()
    assert f"left whole {name}" in text and "cut inp.weight:0: 16 of 32 units kept" in text


def test_summary_of_a_plan_that_cuts_everything_it_may():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    plan = pk.prune(model, torch.randn(2, 4), ratio=0.5)
    assert plan.left_whole == {} and "left whole" not in repr(plan)
    assert plan.summary().splitlines()[1] == "  cut 0.weight:0: 4 of 8 units kept"
