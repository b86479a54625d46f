import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.measure import load_sparse, save_sparse, size_bytes


def sparse(shape, density, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g)
    keep = torch.rand(shape, generator=g) < density
    return torch.where(keep, values, torch.zeros(())).to(dtype)  # +0.0, not values * keep


def assert_bitwise_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def encodings_in(path):
    with safe_open(str(path), framework="pt") as f:
        index = json.loads(f.metadata()["prunekit.sparse"])["tensors"]
    return {name: entry["encoding"] for name, entry in index.items()}


def test_round_trip_is_bitwise_exact_for_every_kind_of_tensor(tmp_path):
    nan = torch.tensor(float("nan"))
    edge = torch.tensor([0.0, 0.0, nan, float("inf"), 0.0, 0.0, 0.0, 0.0, 0.0, -1.5])
    state = {
        "dense": torch.randn(7, 5),
        "sparse90": sparse((64, 33), 0.1),
        "int": sparse((50, 7), 0.1, torch.int64) + (torch.arange(350).reshape(50, 7) % 17 == 0),
        "bool": torch.rand(100) < 0.05,
        "bf16": sparse((40, 10), 0.1, torch.bfloat16),
        "nan_inf": edge,
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(3.0),
        "transposed": sparse((30, 20), 0.1).t(),  # not contiguous
    }
    path = tmp_path / "w.safetensors"
    save_sparse(state, path)
    loaded = load_sparse(path)
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert_bitwise_equal(loaded[name], tensor)
    kinds = encodings_in(path)
    assert kinds["dense"] == "dense" and kinds["empty"] == "dense"
    sparse_names = ("sparse90", "int", "bool", "bf16", "nan_inf", "transposed")
    assert {kinds[n] for n in sparse_names} == {"bitmask"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_negative_zero_counts_as_zero_and_comes_back_as_positive_zero(tmp_path, dtype):
    # weight * mask leaves -0.0 wherever a negative weight is masked: those must compress
    weights = torch.linspace(-1, 1, 2000).to(dtype)
    pruned = weights * (torch.arange(2000) % 10 == 0).to(dtype)
    assert (torch.signbit(pruned) & (pruned == 0)).sum() > 500
    path = tmp_path / "w.safetensors"
    save_sparse({"w": pruned}, path)
    loaded = load_sparse(path)["w"]
    assert_bitwise_equal(loaded, torch.where(pruned == 0, torch.zeros_like(pruned), pruned))
    assert torch.equal(loaded, pruned)
    assert path.stat().st_size < 0.5 * size_bytes({"w": pruned})


def test_tied_tensors_are_stored_once_and_come_back_tied(tmp_path):
    shared = sparse((20, 10), 0.1)
    path = tmp_path / "w.safetensors"
    save_sparse({"embed.weight": shared, "head.weight": shared}, path)
    loaded = load_sparse(path)
    assert loaded["embed.weight"] is loaded["head.weight"]
    assert_bitwise_equal(loaded["head.weight"], shared)
    assert encodings_in(path)["head.weight"] == "alias"


def test_sparse_file_of_a_90_percent_sparse_model_is_under_a_fifth_of_dense(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) < 0.1)
    path = tmp_path / "w.safetensors"
    save_sparse(model.state_dict(), path)
    dense = size_bytes(model, encoding="dense")
    assert path.stat().st_size == size_bytes(model, encoding="sparse")
    assert path.stat().st_size < 0.2 * dense
    save_sparse(model.state_dict(), path, metadata={"run": "test"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["run"] == "test"
    restored = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    restored.load_state_dict(load_sparse(path))
    pairs = zip(model.parameters(), restored.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_file_that_is_not_safetensors_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(DataError, match="garbage.safetensors"):
        load_sparse(path)


def test_a_truncated_sparse_file_is_a_data_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_sparse({"w": sparse((50, 50), 0.1)}, path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="w.safetensors"):
        load_sparse(path)


def test_plain_safetensors_without_index_is_a_data_error(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(DataError, match=r"plain\.safetensors.*no prunekit sparse index"):
        load_sparse(path)


def test_index_that_disagrees_with_the_tensors_is_a_data_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    index = {"format": "prunekit-sparse", "version": 1,
             "tensors": {"w": {"encoding": "bitmask", "shape": [4], "dtype": "float32", "nnz": 1}}}
    parts = {"w::bitmask": torch.tensor([255], dtype=torch.uint8), "w::values": torch.ones(1)}
    save_file(parts, str(path), metadata={"prunekit.sparse": json.dumps(index)})
    with pytest.raises(DataError, match=r"bad\.safetensors.*values of tensor 'w'"):
        load_sparse(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nowhere.safetensors"):
        load_sparse(tmp_path / "nowhere.safetensors")


def test_bad_state_dict_is_a_config_error_and_writes_nothing(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(ConfigError, match="'step' is a int"):
        save_sparse({"w": torch.zeros(3), "step": 3}, path)
    with pytest.raises(ConfigError, match="reserved"):
        save_sparse({"w": torch.zeros(3)}, path, metadata={"prunekit.sparse": "x"})
    assert list(tmp_path.iterdir()) == []
