"""save_pruned / load_pruned with bad files: ConfigErrors that name the file and the entry,
and a model left as it was."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 4)).eval()


@pytest.fixture
def saved(tmp_path):
    model = _net()
    plan = pk.prune(model, torch.randn(2, 8), ratio=0.5)
    plan_path, weights_path = pk.save_pruned(model, plan, tmp_path / "out")
    return model, plan, plan_path, weights_path


def _unchanged(fresh: nn.Module) -> bool:
    return all((a == b).all() and a.shape == b.shape
               for a, b in zip(fresh.state_dict().values(), _net().state_dict().values(),
                               strict=True))


def test_round_trip_still_works(saved):
    model, _, plan_path, weights_path = saved
    fresh = pk.load_pruned(_net(), plan_path, weights_path)
    x = torch.randn(3, 8)
    torch.testing.assert_close(fresh(x), model(x))


def test_weights_of_another_pruning_are_refused_before_the_model_changes(saved, tmp_path):
    _, _, plan_path, _ = saved
    other = _net()
    other_plan = pk.prune(other, torch.randn(2, 8), ratio=0.25)
    _, other_weights = pk.save_pruned(other, other_plan, tmp_path / "other")
    fresh = _net()
    with pytest.raises(ConfigError, match=r"entry '0\.(weight|bias)' of .*another pruning"):
        pk.load_pruned(fresh, plan_path, other_weights)
    assert _unchanged(fresh)


def test_a_corrupt_weights_file_is_named(saved):
    _, _, plan_path, weights_path = saved
    with open(weights_path, "r+b") as f:
        f.write(b"garbage!")
    fresh = _net()
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        pk.load_pruned(fresh, plan_path, weights_path)
    assert _unchanged(fresh)


@pytest.mark.parametrize("damage", ["index_past_end", "unsorted", "bad_dim", "not_a_list"])
def test_a_damaged_plan_is_named_and_the_model_unchanged(saved, damage):
    _, _, plan_path, weights_path = saved
    with open(plan_path, encoding="utf-8") as f:
        data = json.load(f)
    entry = data["tensors"]["0.weight"]["kept"]
    if damage == "index_past_end":
        entry["0"] = [0, 3, 10, 99]
    elif damage == "unsorted":
        entry["0"] = [5, 6, 0, 2]
    elif damage == "bad_dim":
        entry["7"] = entry.pop("0")
    else:
        data["tensors"]["0.weight"]["kept"] = 5
    with open(plan_path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    fresh = _net()
    with pytest.raises(ConfigError, match="damaged"):
        pk.load_pruned(fresh, plan_path, weights_path)
    assert _unchanged(fresh)


def test_save_into_a_file_is_refused(saved, tmp_path):
    model, plan, plan_path, _ = saved
    with pytest.raises(ConfigError, match="it is a file"):
        pk.save_pruned(model, plan, plan_path)


def test_apply_of_a_damaged_plan_leaves_the_model(saved):
    _, plan, _, _ = saved
    bad = copy.deepcopy(plan)
    bad.tensors["0.weight"].kept[0] = [0, 1, 100]
    fresh = _net()
    with pytest.raises(ConfigError, match=r"tensors\['0\.weight'\]\.kept\[0\]"):
        pk.apply(fresh, bad)
    assert _unchanged(fresh)
