"""Dataset lookup, validation and normalization; digits split; seeded loaders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.data import datasets as ds
from prunekit.data import find_fashion_mnist, list_datasets, load_dataset, make_loader
from prunekit.errors import ConfigError, DataError

REAL_FASHION_MNIST = ds.FASHION_MNIST_SYSTEM_DIR


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    """An unsigned-byte IDX file, built by hand from the format description."""
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def make_idx_dataset(
    folder: Path, *, seed: int = 0, n_train: int = 12, n_test: int = 6, gz=(True, False)
) -> dict[str, np.ndarray]:
    """Four tiny IDX files (4x4 images, labels 0..9) in ``folder``; returns the raw arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 4, 4)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 4, 4)),
        "test_labels": np.arange(n_test) % 10,
    }
    for i, (part, stem) in enumerate(ds.IDX_FILES.items()):
        gzipped = gz[i % len(gz)]
        write_idx(folder / (stem + (".gz" if gzipped else "")), arrays[part], gz=gzipped)
    return arrays


@pytest.fixture(autouse=True)
def no_real_places(monkeypatch, tmp_path):
    """No $PRUNEKIT_DATA, and a system folder that does not exist, unless a test sets one."""
    monkeypatch.delenv(ds.ENV_VAR, raising=False)
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system" / "fashion-mnist")


# --- lookup -------------------------------------------------------------------------


def test_data_dir_comes_first(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "arg")
    make_idx_dataset(tmp_path / "env")
    make_idx_dataset(ds.FASHION_MNIST_SYSTEM_DIR)
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    assert find_fashion_mnist(tmp_path / "arg") == tmp_path / "arg"


def test_env_then_env_subfolder_then_system(tmp_path, monkeypatch):
    make_idx_dataset(ds.FASHION_MNIST_SYSTEM_DIR)
    assert find_fashion_mnist() == ds.FASHION_MNIST_SYSTEM_DIR
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    make_idx_dataset(tmp_path / "env" / "fashion-mnist")
    assert find_fashion_mnist() == tmp_path / "env" / "fashion-mnist"
    make_idx_dataset(tmp_path / "env")
    assert find_fashion_mnist() == tmp_path / "env"


def test_data_dir_subfolder_and_fallback(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "arg" / "fashion-mnist")
    assert find_fashion_mnist(tmp_path / "arg") == tmp_path / "arg" / "fashion-mnist"
    make_idx_dataset(tmp_path / "env")
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    assert find_fashion_mnist(tmp_path / "empty") == tmp_path / "env"


def test_data_dir_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "env")
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataError, match="data_dir .*missing does not exist"):
        find_fashion_mnist(tmp_path / "missing")  # never silently another copy


def test_missing_lists_every_place_and_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    partial = tmp_path / "arg"
    partial.mkdir()
    write_idx(partial / "train-images-idx3-ubyte", np.zeros((1, 4, 4)), gz=False)
    with pytest.raises(DataError) as info:
        find_fashion_mnist(partial)
    message = str(info.value)
    for place in (
        partial,
        partial / "fashion-mnist",
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        ds.FASHION_MNIST_SYSTEM_DIR,
    ):
        assert f"{place} (" in message
    assert "missing train-labels-idx1-ubyte[.gz]" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and ds.ENV_VAR in message


def test_missing_without_data_dir_or_env_says_so():
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    assert "--data-dir (not given)" in str(info.value)
    assert f"${ds.ENV_VAR} (not set)" in str(info.value)


def test_generic_idx_dataset_uses_named_subfolder_only(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "env")  # the root itself belongs to no particular dataset
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        load_dataset("kmnist")
    assert str(tmp_path / "env" / "kmnist") in str(info.value)
    assert "apt-get" not in str(info.value)
    make_idx_dataset(tmp_path / "env" / "kmnist")
    splits = load_dataset("kmnist")
    assert splits.name == "kmnist" and splits.input_shape == (1, 4, 4)
    assert load_dataset("mnist", data_dir=tmp_path / "env").name == "mnist"


# --- loading and validation ---------------------------------------------------------


@pytest.mark.parametrize("gz", [(True,), (False,), (True, False)])
def test_load_normalizes_with_train_statistics(tmp_path, gz):
    raw = make_idx_dataset(tmp_path / "d", gz=gz)
    splits = load_dataset("fashion-mnist", data_dir=tmp_path / "d")
    x_train, y_train = splits.train.tensors
    x_test, y_test = splits.test.tensors
    assert x_train.shape == (12, 1, 4, 4) and x_test.shape == (6, 1, 4, 4)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    unit = raw["train_images"] / 255.0
    mean, std = unit.mean(), unit.std()
    expected_test = (raw["test_images"] / 255.0 - mean) / std
    np.testing.assert_allclose(x_test[:, 0].numpy(), expected_test, rtol=1e-5, atol=1e-6)
    assert abs(float(x_train.mean())) < 1e-5 and abs(float(x_train.std(correction=0)) - 1) < 1e-5
    np.testing.assert_array_equal(y_test.numpy(), raw["test_labels"])
    assert splits.num_classes == 10 and splits.input_shape == (1, 4, 4)


def test_count_mismatch_names_both_files(tmp_path):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5), gz=True)  # replaces 6 labels
    with pytest.raises(DataError, match="6 images but .* 5 labels") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert "t10k-images-idx3-ubyte" in str(info.value)


def test_label_out_of_range_names_file(tmp_path):
    make_idx_dataset(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(12, 10), gz=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz has labels in \[10, 10\]"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_images_with_wrong_rank_are_rejected(tmp_path):
    make_idx_dataset(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 16)), gz=False)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte holds shape \(12, 16\)"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_test_labels():
    from prunekit.data import read_idx

    labels = read_idx(REAL_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,)
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))


# --- digits -------------------------------------------------------------------------


def test_digits_split_is_stratified_normalized_and_seeded():
    from sklearn.datasets import load_digits

    target = load_digits().target
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert a.train.tensors[0].shape == (1347, 1, 8, 8) and a.test.tensors[0].shape == (450, 1, 8, 8)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    all_labels = torch.cat([a.train.tensors[1], a.test.tensors[1]]).numpy()
    np.testing.assert_array_equal(np.bincount(all_labels), np.bincount(target))
    test_share = np.bincount(a.test.tensors[1].numpy()) / np.bincount(target)
    assert np.all(np.abs(test_share - 0.25) < 0.02)
    assert abs(float(a.train.tensors[0].mean())) < 1e-5
    assert abs(float(a.train.tensors[0].std(correction=0)) - 1) < 1e-4
    for x, y in zip(a.train.tensors, b.train.tensors, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.train.tensors[1], c.train.tensors[1])


def test_registry_lists_and_rejects():
    assert {"digits", "fashion-mnist", "mnist", "kmnist"} <= set(list_datasets())
    with pytest.raises(ConfigError, match="valid datasets: .*digits"):
        load_dataset("cifar-1000")


# --- loaders ------------------------------------------------------------------------


def test_make_loader_order_depends_only_on_seed():
    data = torch.utils.data.TensorDataset(torch.arange(50).float(), torch.arange(50))

    def order(seed):
        return torch.cat([y for _, y in make_loader(data, batch_size=8, shuffle=True, seed=seed)])

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == list(range(50))
    plain = make_loader(data, batch_size=8, shuffle=False)
    assert torch.equal(torch.cat([y for _, y in plain]), torch.arange(50))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_make_loader_rejects_bad_batch_size(bad):
    data = torch.utils.data.TensorDataset(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(data, batch_size=bad, shuffle=False)


def test_make_loader_rejects_empty_dataset():
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 4), torch.zeros(0))
    with pytest.raises(DataError, match="empty dataset"):
        make_loader(empty, batch_size=4, shuffle=True)
