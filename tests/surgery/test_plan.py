"""The plan as data: index runs, JSON round trip, subsets, damaged files."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunekit.errors import ConfigError
from prunekit.surgery.plan import (
    GroupCut,
    Plan,
    TensorCut,
    decode_indices,
    decode_ranges,
    encode_indices,
    encode_ranges,
)


@given(st.sets(st.integers(0, 300)))
def test_index_runs_round_trip(indices):
    ordered = sorted(indices)
    runs = encode_ranges(ordered)
    assert decode_ranges(runs) == ordered
    assert len(runs) <= 2 * len(ordered)


@given(st.integers(1, 200), st.data())
def test_indices_round_trip_as_runs_or_bits(size, data):
    indices = sorted(data.draw(st.sets(st.integers(0, size - 1))))
    encoded = encode_indices(indices, size)
    assert decode_indices(encoded) == indices


def test_scattered_indices_become_a_bit_string():
    encoded = encode_indices(list(range(0, 4096, 2)), 4096)
    assert isinstance(encoded, str) and len(encoded) < 800
    with pytest.raises(ConfigError, match="damaged"):
        decode_indices("bits:4096:@@@")


def test_contiguous_indices_encode_compactly():
    assert encode_ranges([0, 1, 2, 3, 8, 9]) == [0, 4, 8, 10]


def _plan() -> Plan:
    kept = [0, 2, 5]
    tensors = {"fc.weight": TensorCut((6, 4), {0: kept}), "fc.bias": TensorCut((6,), {0: kept}),
               "out.weight": TensorCut((3, 6), {1: kept}),
               "ln.weight": TensorCut((4,), {0: [1, 3]})}
    groups = [
        GroupCut(0, "fc.weight:0", 6, kept,
                 {"fc.weight": {0: kept}, "fc.bias": {0: kept}, "out.weight": {1: kept}}),
        GroupCut(1, "ln.weight:0", 4, [1, 3], {"ln.weight": {0: [1, 3]}}, ["layer norm"],
                 {"ln": {"normalized_shape": (2,)}}),
    ]
    return Plan(tensors, {"fc": {"out_features": 3}, "ln": {"normalized_shape": (2,)}},
                {"": {"hidden_size": 2}}, {"tied.weight": "fc.weight"}, groups, {"ratio": 0.5})


def test_json_round_trip(tmp_path):
    plan = _plan()
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.tensors == plan.tensors
    assert loaded.config == plan.config and loaded.aliases == plan.aliases
    assert loaded.attrs["ln"]["normalized_shape"] == [2]  # tuples come back as lists
    assert [g.kept for g in loaded.groups] == [[0, 2, 5], [1, 3]]
    assert loaded.groups[1].unchecked == ["layer norm"]
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["tensors"]["fc.weight"] == {"shape": [6, 4], "kept": {"0": [0, 1, 2, 3, 5, 6]}}


def test_subset_keeps_only_the_chosen_groups():
    sub = _plan().subset({1})
    assert set(sub.tensors) == {"ln.weight"}
    assert sub.attrs == {"ln": {"normalized_shape": (2,)}}
    assert sub.tensors["ln.weight"].new_shape == (2,)


def test_damaged_or_foreign_files_are_config_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="not a prunekit plan"):
        Plan.load(tmp_path / "other.json")
    with pytest.raises(ConfigError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="pairs"):
        decode_ranges([1, 2, 3])


def test_plan_info_is_typed_reads_like_a_dict_and_survives_json(tmp_path):
    import torch
    from torch import nn

    import prunekit as pk

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    plan = pk.prune(model, torch.randn(2, 8), budget=pk.Budget("params", 0.3))
    info = plan.info
    assert isinstance(info, pk.PlanInfo)
    assert info.target == {"params": 0.3} and info["target"] == {"params": 0.3}
    assert info.target_reached == info["target_reached"] >= 0.3
    assert "excluded" not in info and info.get("excluded") is None  # never set: absent
    info["tool_note"] = {"by": "a test"}  # other tools may record their own keys
    plan.save(tmp_path / "plan.json")
    loaded = pk.Plan.load(tmp_path / "plan.json").info
    assert loaded == info and loaded.extra == {"tool_note": {"by": "a test"}}
    assert "tool_note" in loaded and "excluded" not in loaded
    assert json.loads(json.dumps(loaded.to_dict())) == dict(loaded)
