import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.compress import (
    bake_sharing,
    decode_compressed,
    encode_compressed,
    load_compressed,
    save_compressed,
    share_weights,
)
from prunekit.errors import ConfigError, DataError
from prunekit.measure import size_bytes


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(_bits(a[k]), _bits(b[k])), k


@pytest.mark.parametrize("case", ["mlp", "conv_bn_relu", "residual", "lstm"])
def test_file_decodes_bit_identical_to_the_shared_model(zoo, case, tmp_path):
    c = zoo(case)
    pk.sparsify(c.model, sparsity=0.8, scope="global")
    share_weights(c.model, bits=4, conv_bits=6)
    path = tmp_path / "m.pkdc"
    nbytes = save_compressed(c.model, path)
    bake_sharing(c.model)
    expected = c.model.state_dict()
    decoded = load_compressed(path)
    _assert_bit_identical(expected, decoded)
    assert nbytes == path.stat().st_size == len(encode_compressed(expected))
    fresh = zoo(case).model
    fresh.load_state_dict(decoded)
    assert torch.equal(fresh(c.inputs), c.model(c.inputs))


def test_shared_layers_are_coded_and_much_smaller_than_sparse(zoo):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    pk.sparsify(model, sparsity=0.9, scope="global")
    share_weights(model, bits=5)
    bake_sharing(model)
    dense, sparse = size_bytes(model), size_bytes(model, encoding="sparse")
    deep = len(encode_compressed(model))
    assert deep < sparse / 3 < dense / 10
    # 6,200 non-zeros: at most 5 index bits + 8 gap bits each, plus tables and biases
    assert deep < 6200 * 13 / 8 + 2000


def test_unshared_weights_round_trip_too():
    torch.manual_seed(0)
    state = {
        "w": torch.randn(50, 40),  # 2,000 distinct values: still coded (<= 2**16)
        "few": torch.tensor([0.0, -0.0, 1.5, 1.5] * 40),
        "half": torch.randn(10, 10).half(),
        "steps": torch.arange(100),  # integer: stored in the sparse part
        "tiny": torch.ones(3),
    }
    out = decode_compressed(encode_compressed(state))
    assert torch.equal(out["few"], state["few"])  # -0.0 comes back as +0.0 (equal)
    for k in ("w", "half", "steps", "tiny"):
        assert out[k].dtype == state[k].dtype and torch.equal(out[k], state[k])


def test_an_untouched_model_is_not_changed_by_saving(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    share_weights(model, bits=3)
    before = model[0].weight.detach().clone()
    save_compressed(model, tmp_path / "m.pkdc")
    assert torch.equal(model[0].weight, before)  # still shared and usable
    assert hasattr(model[0], "parametrizations")


def test_corrupt_or_foreign_files_are_data_errors(tmp_path):
    good = encode_compressed(nn.Linear(64, 64).state_dict())
    cases = {"foreign": b"not a file at all", "truncated": good[: len(good) // 2]}
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(DataError, match=name):
            load_compressed(path)
    with pytest.raises(DataError, match="cannot read"):
        load_compressed(tmp_path / "missing.pkdc")


def test_bad_values_are_config_errors_and_nothing_is_written(tmp_path):
    with pytest.raises(ConfigError, match="not a tensor"):
        save_compressed({"a": [1, 2]}, tmp_path / "x.pkdc")
    with pytest.raises(ConfigError, match="meta device"):
        save_compressed({"a": torch.empty(4, device="meta")}, tmp_path / "x.pkdc")
    assert os.listdir(tmp_path) == []
