"""User data: image folders, arrays (npz / npy / csv), saved HF datasets, text files,
python make_loaders; each error names the folder or file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.data.sources import (
    UserData,
    check_num_classes,
    list_data_kinds,
    list_transforms,
    load_data,
)
from prunekit.errors import ConfigError, DataError

pytest.importorskip("torchvision", reason="pip install torchvision")
Image = pytest.importorskip("PIL.Image", reason="pip install pillow")


def make_image_folder(root: Path, *, classes=("cat", "dog", "fox"), per_class: int = 2,
                      splits=("train", "val"), size=(20, 16)) -> Path:
    """root/<split>/<class>/<i>.png with random RGB images."""
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_kinds_and_transforms_are_listed() -> None:
    assert list_data_kinds() == ["arrays", "hf-dataset", "image-folder", "python", "text"]
    assert {"resize", "center_crop", "normalize", "to_tensor"} <= set(list_transforms())


def test_image_folder(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    data = load_data({"kind": "image-folder", "root": str(root),
                      "transforms": [{"resize": 12}, {"center_crop": 10},
                                     {"normalize": "imagenet"}]},
                     batch_size=4, eval_batch_size=6)
    assert data.classes == ("cat", "dog", "fox") and data.num_classes == 3
    assert data.input_shape == (3, 10, 10) and data.labelled
    inputs, labels = next(iter(data.test))
    assert inputs.shape == (6, 3, 10, 10) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    # normalize: the first pixel is (value/255 - mean) / std of the image resized and cropped
    from torchvision.transforms import functional as TF

    image = Image.open(root / "val" / "cat" / "0.png").convert("RGB")
    expected = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(image, 12), 10)),
                            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(inputs[0], expected)
    assert len(data.train.dataset) == 6 and data.example_inputs().shape == (6, 3, 10, 10)


def test_image_folder_grey_and_subsets(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "test"))
    data = load_data({"kind": "image-folder", "root": str(root), "channels": 1},
                     train_samples=5, test_samples=3, seed=1)
    assert data.input_shape == (1, 16, 20)
    assert len(data.train.dataset) == 5 and len(data.test.dataset) == 3


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root .*missing does not exist"):
        load_data({"kind": "image-folder", "root": str(tmp_path / "missing")})
    root = make_image_folder(tmp_path / "imgs")
    with pytest.raises(DataError,
                       match=r"folder .*tst does not exist \(folders in .*: train, val\)"):
        load_data({"kind": "image-folder", "root": str(root), "test": "tst"})
    (root / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="split .*empty is empty"):
        load_data({"kind": "image-folder", "root": str(root), "test": "empty"})
    (root / "odd" / "wolf").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "odd" / "wolf" / "a.png")
    with pytest.raises(DataError, match="classes the training split does not have \\(wolf\\)"):
        load_data({"kind": "image-folder", "root": str(root), "test": "odd"})
    with pytest.raises(ConfigError, match="unknown transform 'resise'.*did you mean 'resize'"):
        load_data({"kind": "image-folder", "root": str(root), "transforms": [{"resise": 8}]})
    with pytest.raises(ConfigError, match="transform resize needs a size"):
        load_data({"kind": "image-folder", "root": str(root), "transforms": [{"resize": -1}]})
    with pytest.raises(ConfigError, match="unknown key 'roots'.*did you mean 'root'"):
        load_data({"kind": "image-folder", "roots": str(root)})
    with pytest.raises(ConfigError, match="unknown data kind 'images'"):
        load_data({"kind": "images", "root": str(root)})


def test_undecodable_image_is_named_before_anything_runs(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    bad = root / "val" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=f"image {bad} does not decode"):
        load_data({"kind": "image-folder", "root": str(root)})
    data = load_data({"kind": "image-folder", "root": str(root), "check_images": False})
    with pytest.raises(DataError, match="broken.png does not decode"):
        list(data.test)  # unchecked, the loader still names the file


def test_class_count_against_the_head(tmp_path: Path) -> None:
    data = load_data({"kind": "image-folder", "root": str(make_image_folder(tmp_path / "i"))})
    check_num_classes(data, 3)
    check_num_classes(data, None)
    with pytest.raises(DataError, match="3 classes \\(cat, dog, fox...\\) but the model's head "
                                        "has 1000 outputs.*new_head: true.*task: agreement"):
        check_num_classes(data, 1000)


def test_arrays_npz_npy_and_unlabelled(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3, 4, 4)).astype(np.float32), rng.integers(0, 4, 10)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.save(tmp_path / "tx.npy", x[:5])
    np.save(tmp_path / "ty.npy", y[:5])
    data = load_data({"kind": "arrays", "train": str(tmp_path / "train.npz"),
                      "test": {"inputs": str(tmp_path / "tx.npy"),
                               "labels": str(tmp_path / "ty.npy")}}, eval_batch_size=5)
    assert data.num_classes == int(y.max()) + 1 and data.input_shape == (3, 4, 4)
    inputs, labels = next(iter(data.test))
    assert torch.equal(inputs, torch.from_numpy(x[:5])) and labels.tolist() == y[:5].tolist()
    unlabelled = load_data({"kind": "arrays", "test": {"inputs": str(tmp_path / "tx.npy")}})
    assert not unlabelled.labelled and unlabelled.num_classes is None
    assert next(iter(unlabelled.test))[1] is None
    with pytest.raises(DataError, match="labels go up to .* but data.num_classes is 2"):
        load_data({"kind": "arrays", "test": str(tmp_path / "train.npz"), "num_classes": 2})


def test_arrays_csv(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,1\n")
    data = load_data({"kind": "arrays", "test": str(tmp_path / "t.csv")})
    inputs, labels = next(iter(data.test))
    assert inputs.tolist() == [[1, 2], [3, 4], [5, 6]] and labels.tolist() == [0, 1, 1]
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    with pytest.raises(DataError, match="bad.csv line 3, column 'b': 'x' is not a number"):
        load_data({"kind": "arrays", "test": str(tmp_path / "bad.csv")})
    with pytest.raises(DataError, match="has no column 'target'"):
        load_data({"kind": "arrays", "test": str(tmp_path / "t.csv"), "label_column": "target"})
    (tmp_path / "empty.csv").write_text("a,b,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load_data({"kind": "arrays", "test": str(tmp_path / "empty.csv")})
    with pytest.raises(DataError, match="does not exist"):
        load_data({"kind": "arrays", "test": str(tmp_path / "nope.csv")})


def test_text_files_for_language_modelling(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("hello world " * 20)
    (tmp_path / "test.txt").write_text("abcdefghij" * 3)
    data = load_data({"kind": "text", "train": str(tmp_path / "train.txt"),
                      "test": str(tmp_path / "test.txt"), "seq_len": 8, "tokenizer": "bytes"},
                     eval_batch_size=2)
    ids, labels = next(iter(data.test))
    assert labels is None and ids.shape == (2, 8)
    assert ids[0].tolist() == list(b"abcdefgh") and ids[1].tolist() == list(b"ijabcdef")
    assert len(data.test.dataset) == 3 and data.input_shape == (8,) and not data.labelled
    with pytest.raises(DataError, match="fewer than one block of seq_len 64"):
        load_data({"kind": "text", "test": str(tmp_path / "test.txt"), "seq_len": 64,
                   "tokenizer": "bytes"})
    with pytest.raises(ConfigError, match="text needs a tokenizer"):
        load_data({"kind": "text", "test": str(tmp_path / "test.txt")})


def _tiny_tokenizer(folder: Path) -> Path:
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]
    (folder / "vocab.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    return folder


def test_saved_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="pip install datasets")
    pytest.importorskip("transformers", reason="pip install transformers")
    tok = _tiny_tokenizer(tmp_path / "tok")
    texts = {"text": ["good film", "bad film", "very good film", "very bad"],
             "label": [1, 0, 1, 0]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(texts),
                          "test": datasets.Dataset.from_dict(texts)}).save_to_disk(
        str(tmp_path / "ds"))
    data = load_data({"kind": "hf-dataset", "path": str(tmp_path / "ds")}, tokenizer=tok,
                     eval_batch_size=4)
    inputs, labels = next(iter(data.test))
    assert labels.tolist() == [1, 0, 1, 0] and data.num_classes == 2
    assert inputs["input_ids"].tolist()[0] == [2, 5, 7, 3, 0]  # [CLS] good film [SEP] [PAD]
    assert inputs["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0]
    with pytest.raises(DataError, match="has no column 'sentence'"):
        load_data({"kind": "hf-dataset", "path": str(tmp_path / "ds"),
                   "text_column": "sentence"}, tokenizer=tok)
    with pytest.raises(DataError, match="has no split 'dev' \\(splits: train, test\\)"):
        load_data({"kind": "hf-dataset", "path": str(tmp_path / "ds"), "test": "dev"},
                  tokenizer=tok)
    with pytest.raises(DataError, match="does not exist"):
        load_data({"kind": "hf-dataset", "path": str(tmp_path / "nope")}, tokenizer=tok)


def test_python_make_loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_data.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        def make_loaders(n=8):
            ds = TensorDataset(torch.randn(n, 5), torch.arange(n) % 2)
            return {"train": DataLoader(ds, batch_size=4), "test": DataLoader(ds, batch_size=4),
                    "num_classes": 2}
        def unlabelled():
            return None, DataLoader(TensorDataset(torch.randn(4, 5)), batch_size=2)
        def empty():
            return None, []
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_data({"python": "my_data:make_loaders", "kwargs": {"n": 12}})
    assert isinstance(data, UserData) and data.num_classes == 2 and data.input_shape == (5,)
    assert data.labelled and len(data.train.dataset) == 12
    plain = load_data({"python": "my_data:unlabelled"})
    assert not plain.labelled and plain.train is None
    with pytest.raises(DataError, match="test loader of my_data:empty is empty"):
        load_data({"python": "my_data:empty"})
    with pytest.raises(ConfigError, match="give kind:"):
        load_data({"root": "x"})
