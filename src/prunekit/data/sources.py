"""Your own data: image folders, NumPy / CSV arrays, a saved Hugging Face ``datasets``
folder, text files for language modelling, or a Python function that makes the loaders.

Every kind loads into :class:`UserData`: a train and a test loader whose batches are
``(inputs, labels)``. ``inputs`` is a tensor, or a dict of tensors for tokenized text
(``input_ids``, ``attention_mask``...); ``labels`` is an int64 tensor, or None for
unlabelled data. Problems are found before any training, each a :class:`DataError` that
names the folder or file: a folder that does not exist, a split with nothing in it, a
test class the training split does not have, an image that does not decode, a CSV cell
that is not a number.

Example:
    >>> data = load_data({"kind": "image-folder", "root": "flowers", "test": "val",
    ...                   "transforms": [{"resize": 256}, {"center_crop": 224},
    ...                                  {"normalize": "imagenet"}]}, batch_size=32)
    >>> data.num_classes, data.input_shape
    (5, (3, 224, 224))
"""

from __future__ import annotations

import csv
import difflib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .._registry import Registry
from ..errors import ConfigError, DataError
from ..models.sources import import_target

__all__ = [
    "DATA_KINDS",
    "IMAGE_EXTENSIONS",
    "UserData",
    "check_num_classes",
    "list_data_kinds",
    "list_transforms",
    "load_data",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
_SHOWN = 5


@dataclass
class UserData:
    """Loaders over the user's data and what a run needs to know about it.

    Attributes:
        kind: the data kind (``image-folder``, ``arrays``, ``hf-dataset``, ``text``,
            ``python``).
        train: loader of the training split (shuffled), or None when there is none.
        test: loader of the evaluation split (not shuffled).
        num_classes: number of classes when the data is labelled for classification.
        classes: class names in label order, when known (image folders).
        input_shape: shape of one input without the batch dimension, when inputs are
            tensors of a fixed shape.
        labelled: whether batches carry labels.
    """

    kind: str
    train: Any
    test: Any
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    labelled: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def example_inputs(self) -> Any:
        """The inputs of the first test batch: what a trace or a dry run feeds the model."""
        batch = next(iter(self.test), None)
        if batch is None:
            raise DataError("the test split is empty; give data to evaluate on")
        return split_batch(batch)[0]


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a batch; labels None for unlabelled batches."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
    if isinstance(batch, Mapping) and "labels" in batch:
        rest = {k: v for k, v in batch.items() if k != "labels"}
        return rest, batch["labels"]
    return batch, None


DataBuilder = Callable[..., UserData]
DATA_KINDS: Registry[DataBuilder] = Registry("data kind")


def list_data_kinds() -> list[str]:
    """Names accepted as ``kind``: ``arrays``, ``hf-dataset``, ``image-folder``, ``python``,
    ``text``."""
    return DATA_KINDS.names()


def load_data(
    spec: Mapping[str, Any],
    *,
    batch_size: int = 64,
    eval_batch_size: int = 256,
    train_samples: int | None = None,
    test_samples: int | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> UserData:
    """Load the data a recipe's ``data:`` section describes into loaders.

    Args:
        spec: ``{kind: image-folder|arrays|hf-dataset|text, ...}`` or
            ``{python: "module:make_loaders", kwargs: {...}}``; see each kind's builder.
        batch_size, eval_batch_size: of the train and test loaders.
        train_samples, test_samples: keep a seeded random subset of that many examples.
        tokenizer: the Hugging Face folder whose tokenizer reads text, when the spec
            names none (usually the model's folder).
        seed: seed of the shuffle order and of the subsets.

    Raises:
        ConfigError: an unknown kind or key, a wrong value.
        DataError: missing files or folders, empty splits, undecodable images.
    """
    spec = dict(spec)
    if "python" in spec:
        kind = "python"
    elif "kind" in spec:
        kind = spec.pop("kind")
    else:
        raise ConfigError(f"data: give kind: (one of {', '.join(list_data_kinds())}) or "
                          "python: 'module:make_loaders'")
    builder = DATA_KINDS.get(kind)
    check_keys(kind, spec, builder)
    loaders = _Loaders(batch_size, eval_batch_size, train_samples, test_samples, seed)
    return builder(spec, loaders=loaders, tokenizer=tokenizer)


def check_keys(kind: str, spec: Mapping[str, Any], builder: DataBuilder) -> None:
    allowed = getattr(builder, "keys", ())
    for key in spec:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"data: unknown key {key!r} for kind {kind}{hint}; "
                              f"valid keys: {', '.join(allowed)}")


def _keys(*names: str) -> Callable[[DataBuilder], DataBuilder]:
    def mark(fn: DataBuilder) -> DataBuilder:
        fn.keys = names  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass(frozen=True)
class _Loaders:
    """How the builders turn datasets into loaders."""

    batch_size: int
    eval_batch_size: int
    train_samples: int | None
    test_samples: int | None
    seed: int

    def make(self, dataset: Dataset, *, train: bool, collate: Callable | None = None
             ) -> DataLoader:
        limit = self.train_samples if train else self.test_samples
        dataset = _subset(dataset, limit, self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, generator=generator, num_workers=0,
                          collate_fn=collate or _collate)


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[:limit].tolist()))


def _collate(samples: list[Any]) -> tuple[Any, Any]:
    """Stack ``(inputs, label)`` samples; a None label gives a None batch of labels."""
    from torch.utils.data import default_collate

    inputs = default_collate([s[0] for s in samples])
    labels = [s[1] for s in samples]
    if any(label is None for label in labels):
        return inputs, None
    return inputs, torch.as_tensor(labels, dtype=torch.int64)


def _path(value: Any, key: str, base: Path | None = None) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"data.{key} must be a path, got {value!r}")
    path = Path(value).expanduser()
    return base / path if base is not None and not path.is_absolute() else path


def check_num_classes(data: UserData, head_classes: int | None) -> None:
    """DataError when labelled data has more classes than the model's head outputs.

    Args:
        data: the loaded data.
        head_classes: output width of the model's classifier (None: no classifier).
    """
    if data.num_classes is None or head_classes is None or data.num_classes == head_classes:
        return
    names = f" ({', '.join(data.classes[:_SHOWN])}...)" if data.classes else ""
    raise DataError(
        f"the data has {data.num_classes} classes{names} but the model's head has "
        f"{head_classes} outputs; set model.num_classes: {data.num_classes} with "
        f"new_head: true to train a new head, or task: agreement to compare with the dense "
        "model's predictions without labels"
    )


# --- image folders -----------------------------------------------------------------------


class ImageFiles(Dataset):
    """Images listed as ``(path, label)``, decoded with Pillow when read.

    Args:
        samples: ``(path, label)`` pairs; label None for unlabelled images.
        transform: applied to the decoded ``PIL.Image``.
        mode: Pillow mode the image is converted to (``"RGB"``, ``"L"``).
    """

    def __init__(self, samples: Sequence[tuple[Path, int | None]], *, transform: Callable,
                 mode: str) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | None]:
        path, label = self.samples[index]
        return self.transform(decode_image(path, self.mode)), label


def decode_image(path: Path, mode: str) -> Any:
    """The image at ``path`` fully decoded and converted to ``mode``; DataError naming the
    file when it does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"image {path} does not decode ({err}); remove or replace the "
                        "file") from None


def _class_dirs(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), for every subfolder of ``folder``."""
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[sub.name] = sorted(
            p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return classes


def _find_split(root: Path, name: Any, key: str, defaults: Sequence[str]) -> Path | None:
    if name is None:
        return next((root / d for d in defaults if (root / d).is_dir()), None)
    folder = _path(name, key, root)
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "none"
        raise DataError(f"data.{key}: folder {folder} does not exist (folders in {root}: "
                        f"{found}); set data.{key} to one of them")
    return folder


def _scan_split(folder: Path, classes: Sequence[str] | None) -> tuple[list, list[str]]:
    found = _class_dirs(folder)
    if not found:
        raise DataError(f"{folder} has no class subfolders; lay images out as "
                        f"{folder}/<class name>/<image file> (torchvision ImageFolder layout)")
    names = list(classes) if classes is not None else list(found)
    extra = [c for c in found if c not in names]
    if extra:
        raise DataError(f"{folder} has classes the training split does not have "
                        f"({', '.join(extra[:_SHOWN])}); every class needs training images")
    index = {c: i for i, c in enumerate(names)}
    samples = [(p, index[c]) for c, files in found.items() for p in files]
    if not samples:
        raise DataError(f"split {folder} is empty: no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return samples, names


def _check_images(samples: Iterable[tuple[Path, Any]], mode: str) -> None:
    for path, _ in samples:
        decode_image(path, mode)


@DATA_KINDS.register("image-folder")
@_keys("root", "train", "test", "transforms", "train_transforms", "channels", "check_images")
def _image_folder(spec: Mapping[str, Any], *, loaders: _Loaders, tokenizer: Any = None
                  ) -> UserData:
    """Images in ``root/<split>/<class>/<file>`` (torchvision's ImageFolder layout).

    Keys: ``root`` (required); ``train`` (default ``train``; ``null`` for none) and
    ``test`` (default the first of ``test``, ``val``, ``validation``); ``transforms``
    for evaluation and ``train_transforms`` for training (default: ``transforms``), each a
    list of names from :func:`list_transforms`; ``channels`` 3 (RGB) or 1 (grey);
    ``check_images`` (default true) decodes every image once before anything runs.
    """
    root = _path(spec.get("root"), "root")
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist; give the folder that holds the "
                        "train/ and test/ (or val/) subfolders")
    train_dir = (None if "train" in spec and spec["train"] is None
                 else _find_split(root, spec.get("train", "train"), "train", ()))
    test_dir = _find_split(root, spec.get("test"), "test", ("test", "val", "validation"))
    if test_dir is None:
        raise DataError(f"{root} has no test/, val/ or validation/ folder; set data.test to "
                        "the folder of evaluation images")
    mode = {3: "RGB", 1: "L"}.get(spec.get("channels", 3))
    if mode is None:
        raise ConfigError(f"data.channels must be 3 (RGB) or 1 (grey), got {spec['channels']!r}")
    train_samples, names = _scan_split(train_dir, None) if train_dir else ([], None)
    test_samples, names = _scan_split(test_dir, names)
    if spec.get("check_images", True):
        _check_images([*train_samples, *test_samples], mode)
    evaluate = build_transforms(spec.get("transforms", ()), key="transforms")
    training = (build_transforms(spec["train_transforms"], key="train_transforms")
                if "train_transforms" in spec else evaluate)
    test = ImageFiles(test_samples, transform=evaluate, mode=mode)
    train = ImageFiles(train_samples, transform=training, mode=mode) if train_dir else None
    return UserData(
        kind="image-folder",
        train=loaders.make(train, train=True) if train is not None else None,
        test=loaders.make(test, train=False),
        num_classes=len(names),
        classes=tuple(names),
        input_shape=tuple(test[0][0].shape),
    )


# transforms: name -> builder(argument) -> callable on a PIL image or a tensor.
_PIL_TRANSFORMS: Registry[Callable[[Any], Callable]] = Registry("image transform")
_TENSOR_TRANSFORMS: Registry[Callable[[Any], Callable]] = Registry("image transform")


def list_transforms() -> list[str]:
    """Transform names a data section may list, e.g. ``resize``, ``normalize``."""
    return sorted([*_PIL_TRANSFORMS.names(), *_TENSOR_TRANSFORMS.names(), "to_tensor"])


def build_transforms(items: Any, *, key: str = "transforms") -> Callable:
    """Compose named transforms: PIL ones in the order given, then ``to_tensor``, then
    tensor ones (``normalize``) in the order given.

    Each item is a name (``horizontal_flip``) or a one-key mapping
    (``{resize: 256}``, ``{normalize: imagenet}``, ``{normalize: {mean: [...], std: [...]}}``).
    """
    from torchvision import transforms as T

    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"data.{key} must be a list such as [{{resize: 256}}, "
                          f"{{center_crop: 224}}, {{normalize: imagenet}}], got {items!r}")
    pil, tensor = [], []
    for item in items:
        name, arg = _transform_item(item, key)
        if name == "to_tensor":
            continue
        if name in _PIL_TRANSFORMS:
            pil.append(_PIL_TRANSFORMS.get(name)(arg))
        elif name in _TENSOR_TRANSFORMS:
            tensor.append(_TENSOR_TRANSFORMS.get(name)(arg))
        else:
            close = difflib.get_close_matches(name, list_transforms(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"data.{key}: unknown transform {name!r}{hint}; valid: "
                              f"{', '.join(list_transforms())}")
    return T.Compose([*pil, T.ToTensor(), *tensor])


def _transform_item(item: Any, key: str) -> tuple[str, Any]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, Mapping) and len(item) == 1:
        return next(iter(item.items()))
    raise ConfigError(f"data.{key}: each item is a name or a one-key mapping such as "
                      f"{{resize: 256}}, got {item!r}")


def _size(arg: Any, name: str) -> Any:
    ok = isinstance(arg, int) and arg > 0 or (
        isinstance(arg, (list, tuple)) and len(arg) == 2 and all(
            isinstance(a, int) and a > 0 for a in arg))
    if not ok or isinstance(arg, bool):
        raise ConfigError(f"transform {name} needs a size: a positive integer or [height, "
                          f"width], got {arg!r}")
    return arg if isinstance(arg, int) else tuple(arg)


def _register_pil() -> None:
    def sized(name: str, attr: str) -> None:
        def build(arg: Any) -> Callable:
            from torchvision import transforms as T

            return getattr(T, attr)(_size(arg, name))

        _PIL_TRANSFORMS.register(name)(build)

    for name, attr in (("resize", "Resize"), ("center_crop", "CenterCrop"),
                       ("random_crop", "RandomCrop"), ("random_resized_crop", "RandomResizedCrop")):
        sized(name, attr)


_register_pil()


@_PIL_TRANSFORMS.register("horizontal_flip")
def _flip(arg: Any) -> Callable:
    from torchvision import transforms as T

    return T.RandomHorizontalFlip(0.5 if arg is None else float(arg))


@_TENSOR_TRANSFORMS.register("normalize")
def _normalize(arg: Any) -> Callable:
    from torchvision import transforms as T

    if arg == "imagenet":
        return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if isinstance(arg, Mapping) and set(arg) == {"mean", "std"}:
        return T.Normalize(arg["mean"], arg["std"])
    raise ConfigError(f"transform normalize takes imagenet or {{mean: [...], std: [...]}}, "
                      f"got {arg!r}")


# --- arrays ------------------------------------------------------------------------------

_INPUT_KEYS = ("inputs", "x", "X", "data", "features")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "target", "label")


@DATA_KINDS.register("arrays")
@_keys("train", "test", "label_column", "num_classes")
def _arrays(spec: Mapping[str, Any], *, loaders: _Loaders, tokenizer: Any = None) -> UserData:
    """NumPy or CSV arrays. Each split is a ``.npz`` file (inputs under ``inputs`` / ``x``,
    labels under ``labels`` / ``y``), a ``.csv`` file with a header (labels in the
    ``label_column``, default ``label``; every other column a feature), or
    ``{inputs: X.npy, labels: Y.npy}``. Leaving labels out makes unlabelled data.
    ``num_classes`` defaults to the largest label plus one.
    """
    if "test" not in spec:
        raise ConfigError("data: kind arrays needs test: (and usually train:)")
    column = spec.get("label_column", "label")
    test = _read_split(spec["test"], "test", column)
    train = _read_split(spec["train"], "train", column) if spec.get("train") is not None else None
    if train is not None and train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(f"train inputs are {train[0].shape[1:]} per example but test inputs "
                        f"are {test[0].shape[1:]}; the files do not belong together")
    labelled = test[1] is not None and (train is None or train[1] is not None)
    num_classes = _label_count(spec.get("num_classes"), [s for s in (train, test) if s],
                               labelled)
    return UserData(
        kind="arrays",
        train=loaders.make(_tensors(*train, labelled), train=True) if train else None,
        test=loaders.make(_tensors(*test, labelled), train=False),
        num_classes=num_classes,
        input_shape=tuple(test[0].shape[1:]),
        labelled=labelled,
    )


def _tensors(x: np.ndarray, y: np.ndarray | None, labelled: bool) -> Dataset:
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if labelled:
        return TensorDataset(inputs, torch.from_numpy(y.astype(np.int64)))
    return _Unlabelled(inputs)


class _Unlabelled(Dataset):
    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, None]:
        return self.inputs[index], None


def _read_split(value: Any, split: str, column: str | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(value, Mapping):
        unknown = set(value) - {"inputs", "labels"}
        if unknown or "inputs" not in value:
            raise ConfigError(f"data.{split} as a mapping takes inputs: FILE.npy and "
                              f"optionally labels: FILE.npy, got keys {sorted(value)}")
        x = _load_npy(_path(value["inputs"], f"{split}.inputs"))
        y = _load_npy(_path(value["labels"], f"{split}.labels")) if "labels" in value else None
    else:
        path = _path(value, split)
        if not path.is_file():
            raise DataError(f"data.{split}: file {path} does not exist")
        readers = {".npz": _read_npz, ".csv": lambda p: _read_csv(p, column)}
        if path.suffix not in readers:
            raise ConfigError(f"data.{split}: {path} is not .npz or .csv; for .npy files give "
                              f"{{inputs: X.npy, labels: Y.npy}}")
        x, y = readers[path.suffix](path)
    return _checked_split(x, y, split)


def _checked_split(x: np.ndarray, y: np.ndarray | None, split: str
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    if len(x) == 0:
        raise DataError(f"data.{split} is empty: it holds no examples")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"data.{split}: {len(x)} inputs but labels of shape {y.shape}; "
                            "give one integer label per example")
        if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0) or y.dtype.kind not in "iuf":
            raise DataError(f"data.{split}: labels must be integer class indices")
        if y.min() < 0:
            raise DataError(f"data.{split}: labels must be >= 0, found {y.min()}")
    return x, y


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{path} is not a plain NumPy array file ({err})") from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as err:
        raise DataError(f"{path} is not a plain NumPy .npz archive ({err})") from None
    x_key = next((k for k in _INPUT_KEYS if k in arrays), None)
    if x_key is None:
        raise DataError(f"{path} has no inputs array (looked for {', '.join(_INPUT_KEYS)}; "
                        f"found {', '.join(arrays) or 'none'})")
    y_key = next((k for k in _LABEL_KEYS if k in arrays), None)
    return arrays[x_key], (arrays[y_key] if y_key else None)


def _read_csv(path: Path, column: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DataError(f"{path} has no data rows; the first row is the header")
    header, body = rows[0], rows[1:]
    label_at = header.index(column) if column is not None and column in header else None
    if column is not None and label_at is None and "label" != column:
        raise DataError(f"{path} has no column {column!r} (columns: {', '.join(header)})")
    values = np.empty((len(body), len(header)), dtype=np.float64)
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path} line {line} has {len(row)} cells, the header {len(header)}")
        for col, cell in enumerate(row):
            try:
                values[line - 2, col] = float(cell)
            except ValueError:
                raise DataError(f"{path} line {line}, column {header[col]!r}: {cell!r} is not "
                                "a number") from None
    if label_at is None:
        return values.astype(np.float32), None
    features = np.delete(values, label_at, axis=1).astype(np.float32)  # (N, columns - 1)
    return features, values[:, label_at]


def _label_count(given: Any, splits: Sequence[tuple[np.ndarray, Any]], labelled: bool
                 ) -> int | None:
    if not labelled:
        return None
    high = max(int(y.max()) for _, y in splits)
    if given is None:
        return high + 1
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise ConfigError(f"data.num_classes must be a positive integer, got {given!r}")
    if high >= given:
        raise DataError(f"labels go up to {high} but data.num_classes is {given}; labels must "
                        f"lie in [0, {given - 1}]")
    return given


# --- Hugging Face datasets ---------------------------------------------------------------


def _load_tokenizer(tokenizer: Any, key: str) -> Any:
    if tokenizer is None:
        raise ConfigError(f"data.{key}: text needs a tokenizer; give data.tokenizer: FOLDER "
                          "(a Hugging Face folder), or load the model from a folder")
    gguf = None
    if isinstance(tokenizer, tuple):  # (folder, GGUF file): the model's, read from the file
        tokenizer, gguf = tokenizer
    folder = Path(tokenizer).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.tokenizer: {folder} is not a folder holding a tokenizer")
    from transformers import AutoTokenizer

    if gguf is not None:
        return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    return AutoTokenizer.from_pretrained(str(folder))


class _Tokenized(Dataset):
    def __init__(self, features: list[dict[str, list[int]]], labels: list[int] | None) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[dict[str, list[int]], int | None]:
        return self.features[index], None if self.labels is None else self.labels[index]


def _pad_collate(tok: Any) -> Callable[[list[Any]], tuple[Any, Any]]:
    def collate(samples: list[Any]) -> tuple[dict[str, torch.Tensor], Any]:
        inputs = dict(tok.pad([s[0] for s in samples], return_tensors="pt"))
        labels = [s[1] for s in samples]
        if any(label is None for label in labels):
            return inputs, None
        return inputs, torch.as_tensor(labels, dtype=torch.int64)

    return collate


@DATA_KINDS.register("hf-dataset")
@_keys("path", "train", "test", "text_column", "text_pair_column", "label_column",
       "max_length", "tokenizer")
def _hf_dataset(spec: Mapping[str, Any], *, loaders: _Loaders, tokenizer: Any = None
                ) -> UserData:
    """A Hugging Face ``datasets.DatasetDict`` saved with ``save_to_disk``.

    Keys: ``path`` (required); ``train`` / ``test`` split names (defaults ``train`` and
    the first of ``test``, ``validation``); ``text_column`` (``text``) and optionally
    ``text_pair_column``; ``label_column`` (default ``label`` when present; ``null``
    for unlabelled); ``max_length`` (128); ``tokenizer`` (default the model's folder).
    """
    path = _path(spec.get("path"), "path")
    if not path.is_dir():
        raise DataError(f"data.path {path} does not exist; give the folder written by "
                        "DatasetDict.save_to_disk")
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"data.path {path} is not a saved datasets folder ({err})") from None
    if not isinstance(saved, datasets.DatasetDict):
        saved = datasets.DatasetDict({"test": saved})
    tok = _load_tokenizer(spec.get("tokenizer", tokenizer), "path")
    test_name = spec.get("test") or next((s for s in ("test", "validation") if s in saved), None)
    train_name = spec.get("train", "train" if "train" in saved else None)
    for key, name in (("test", test_name), ("train", train_name)):
        if name is not None and name not in saved:
            raise DataError(f"data.{key}: {path} has no split {name!r} (splits: "
                            f"{', '.join(saved)})")
    if test_name is None:
        raise DataError(f"{path} has no test or validation split; set data.test")
    options = _text_options(spec, saved[test_name])
    test = _tokenize(saved[test_name], tok, options, f"{path}:{test_name}")
    train = _tokenize(saved[train_name], tok, options, f"{path}:{train_name}") if train_name \
        else None
    collate = _pad_collate(tok)
    labelled = options["label"] is not None
    labels = [*(train.labels or [] if train else []), *(test.labels or [])]
    return UserData(
        kind="hf-dataset",
        train=loaders.make(train, train=True, collate=collate) if train else None,
        test=loaders.make(test, train=False, collate=collate),
        num_classes=(max(labels) + 1) if labelled else None,
        labelled=labelled,
        extra={"tokenizer": tok},
    )


def _text_options(spec: Mapping[str, Any], split: Any) -> dict[str, Any]:
    text = spec.get("text_column", "text")
    for column in (text, spec.get("text_pair_column")):
        if column is not None and column not in split.column_names:
            raise DataError(f"the dataset has no column {column!r} (columns: "
                            f"{', '.join(split.column_names)}); set data.text_column")
    label = spec.get("label_column", "label" if "label" in split.column_names else None)
    if label is not None and label not in split.column_names:
        raise DataError(f"the dataset has no label column {label!r} (columns: "
                        f"{', '.join(split.column_names)}); set data.label_column (null: none)")
    max_length = spec.get("max_length", 128)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"data.max_length must be an integer >= 2, got {max_length!r}")
    return {"text": text, "pair": spec.get("text_pair_column"), "label": label,
            "max_length": max_length}


def _tokenize(split: Any, tok: Any, options: Mapping[str, Any], where: str) -> _Tokenized:
    if len(split) == 0:
        raise DataError(f"split {where} is empty")
    texts = [str(t) for t in split[options["text"]]]
    pairs = [str(t) for t in split[options["pair"]]] if options["pair"] else None
    encoded = tok(texts, pairs, truncation=True, max_length=options["max_length"])
    features = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]
    labels = None
    if options["label"] is not None:
        labels = [int(v) for v in split[options["label"]]]
        if min(labels) < 0:
            raise DataError(f"split {where}: labels must be >= 0 (found {min(labels)})")
    return _Tokenized(features, labels)


# --- text files for language modelling ---------------------------------------------------


class ByteTokenizer:
    """Bytes of UTF-8 text as token ids (vocabulary 256): for tiny models and tests."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def _files(value: Any, key: str) -> list[Path]:
    items = value if isinstance(value, (list, tuple)) else [value]
    paths: list[Path] = []
    for item in items:
        path = _path(item, key)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"data.{key}: {path} does not exist")
    if not paths:
        raise DataError(f"data.{key}: no text files in {value!r}")
    return paths


def _token_blocks(paths: list[Path], tok: Any, seq_len: int, max_tokens: int | None,
                  key: str) -> torch.Tensor:
    ids: list[int] = []
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        ids += tok.encode(text) if isinstance(tok, ByteTokenizer) else tok(
            text, add_special_tokens=False)["input_ids"]
        if max_tokens is not None and len(ids) >= max_tokens:
            ids = ids[:max_tokens]
            break
    blocks = len(ids) // seq_len
    if blocks == 0:
        raise DataError(f"data.{key}: {len(ids)} tokens, fewer than one block of seq_len "
                        f"{seq_len}; give more text or a smaller seq_len")
    return torch.tensor(ids[: blocks * seq_len], dtype=torch.int64).view(blocks, seq_len)


@DATA_KINDS.register("text")
@_keys("train", "test", "seq_len", "tokenizer", "max_tokens")
def _text(spec: Mapping[str, Any], *, loaders: _Loaders, tokenizer: Any = None) -> UserData:
    """Plain text files for language modelling, cut into blocks of ``seq_len`` token ids.

    Keys: ``test`` and ``train`` (a file, a folder of files, or a list of them);
    ``seq_len`` (128); ``tokenizer`` (a Hugging Face folder, default the model's folder,
    or ``bytes`` for UTF-8 bytes); ``max_tokens`` per split. Batches are
    ``(ids (B, seq_len), None)``: the next-token targets are the ids themselves.
    """
    if "test" not in spec:
        raise ConfigError("data: kind text needs test: (a file or folder of text)")
    seq_len = spec.get("seq_len", 128)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"data.seq_len must be an integer >= 2, got {seq_len!r}")
    max_tokens = spec.get("max_tokens")
    name = spec.get("tokenizer", tokenizer)
    tok = ByteTokenizer() if name == "bytes" else _load_tokenizer(name, "tokenizer")
    blocks = {key: _token_blocks(_files(spec[key], key), tok, seq_len, max_tokens, key)
              for key in ("train", "test") if spec.get(key) is not None}
    make = {key: loaders.make(_Unlabelled(b), train=key == "train") for key, b in blocks.items()}
    return UserData(kind="text", train=make.get("train"), test=make["test"], labelled=False,
                    input_shape=(seq_len,), extra={"tokenizer": tok})


# --- a Python function -------------------------------------------------------------------


@DATA_KINDS.register("python")
@_keys("python", "kwargs")
def _python(spec: Mapping[str, Any], *, loaders: _Loaders, tokenizer: Any = None) -> UserData:
    """``module:make_loaders(**kwargs)`` returns ``(train, test)`` loaders or a dict with
    ``train``, ``test`` and optionally ``num_classes``; batches are ``(inputs, labels)``
    or ``(inputs,)``."""

    made = import_target(spec["python"], key="data.python")(**dict(spec.get("kwargs") or {}))
    if isinstance(made, Mapping):
        train, test, num_classes = made.get("train"), made.get("test"), made.get("num_classes")
    elif isinstance(made, (tuple, list)) and len(made) == 2:
        (train, test), num_classes = made, None
    else:
        raise ConfigError(f"data.python: {spec['python']} must return (train, test) loaders "
                          f"or a dict with train and test, got {type(made).__name__}")
    if test is None:
        raise ConfigError(f"data.python: {spec['python']} returned no test loader")
    first = next(iter(test), None)
    if first is None:
        raise DataError(f"data.python: the test loader of {spec['python']} is empty")
    inputs, labels = split_batch(first)
    return UserData(kind="python", train=train, test=test, num_classes=num_classes,
                    labelled=labels is not None,
                    input_shape=tuple(inputs.shape[1:]) if torch.is_tensor(inputs) else None)
