"""Datasets by name: Fashion-MNIST and other IDX datasets, scikit-learn's 8x8 digits.

Every dataset loads into a :class:`Splits`: float32 inputs of shape (N, C, H, W)
normalized with the mean and standard deviation of its own training split (one
scalar each, computed at load time, never hard-coded; for Fashion-MNIST they come
out near 0.286 and 0.353), and int64 labels.

Where the IDX files are looked for, in order:

1. ``data_dir`` (the command line's ``--data-dir``), then ``data_dir/<name>/``;
2. ``$PRUNEKIT_DATA`` and ``$PRUNEKIT_DATA/<name>/`` (only the subfolder for the
   generic IDX datasets such as ``mnist`` and ``kmnist``);
3. for Fashion-MNIST only, ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu
   package ``dataset-fashion-mnist``).

A folder qualifies when it holds the four standard files, each plain or gzipped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .._registry import Registry
from ..errors import ConfigError, DataError
from .idx import read_idx

ENV_VAR = "PRUNEKIT_DATA"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# Split part -> standard IDX file name (without the optional ".gz").
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Splits:
    """A dataset's train and test splits.

    Attributes:
        name: registry name, e.g. ``"fashion-mnist"``.
        train: TensorDataset of (inputs (N, C, H, W) float32, labels (N,) int64).
        test: the same for the test split, normalized with the train statistics.
        num_classes: number of classes; labels lie in ``[0, num_classes)``.
        input_shape: ``(C, H, W)`` of one input.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]


DatasetLoader = Callable[..., Splits]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered datasets, e.g. ``["digits", "fashion-mnist", ...]``."""
    return DATASETS.names(pattern)


def load_dataset(
    name: str, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> Splits:
    """Load a registered dataset's train and test splits.

    Args:
        name: one of :func:`list_datasets`.
        data_dir: folder searched first for file-based datasets (see module docs).
        seed: seed of the train/test split for datasets that are split at load time
            (``digits``); file-based datasets come with fixed splits.

    Example:
        >>> splits = load_dataset("digits", seed=0)
        >>> splits.input_shape, splits.num_classes, len(splits.train), len(splits.test)
        ((1, 8, 8), 10, 1347, 450)
    """
    return DATASETS.get(name)(data_dir=data_dir, seed=seed)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A single-process DataLoader whose shuffle order is fixed by ``seed``.

    Two loaders built with the same arguments yield the same batches in the same
    order, which makes training repeatable bit for bit on the CPU.

    Example:
        >>> loader = make_loader(load_dataset("digits").train, batch_size=64, shuffle=True)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise DataError("cannot make a loader for an empty dataset; check the data source")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0
    )


# --- locating IDX files -------------------------------------------------------------


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files.

    Looks in ``data_dir``, ``data_dir/fashion-mnist``, ``$PRUNEKIT_DATA``,
    ``$PRUNEKIT_DATA/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``, in
    that order, and returns the first folder that holds all four files.

    Raises:
        DataError: ``data_dir`` is given but does not exist (never silently replaced by
            another copy); or no folder qualifies: the message lists every place looked
            and how to get the data (``apt-get install dataset-fashion-mnist`` or
            ``--data-dir DIR`` / ``PRUNEKIT_DATA``).
    """
    return find_idx_dir(
        "fashion-mnist",
        data_dir=data_dir,
        env_root=True,
        system_dirs=(FASHION_MNIST_SYSTEM_DIR,),
        install_hint="install it with `apt-get install dataset-fashion-mnist` "
        "(Debian/Ubuntu, as root), or ",
    )


def find_idx_dir(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    env_root: bool = False,
    system_dirs: tuple[Path, ...] = (),
    install_hint: str = "",
) -> Path:
    """The first candidate folder that holds the four standard IDX files of ``name``.

    Args:
        name: dataset name, also the subfolder name looked for.
        data_dir: folder searched first (and its ``name`` subfolder).
        env_root: also search ``$PRUNEKIT_DATA`` itself, not only its subfolder.
        system_dirs: system-wide folders searched last.
        install_hint: start of the way-out sentence of the error.
    """
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(
            f"data_dir {data_dir} does not exist; give the folder that holds the {name} files, "
            f"or leave data_dir / --data-dir out to search ${ENV_VAR} and the system copy"
        )
    candidates = _candidate_dirs(name, data_dir=data_dir, env_root=env_root)
    candidates += [d for d in system_dirs if d not in candidates]
    problems = []
    for folder in candidates:
        problem = _folder_problem(folder)
        if problem is None:
            return folder
        problems.append(f"{folder} ({problem})")
    if data_dir is None:
        problems.insert(0, "--data-dir (not given)")
    if not os.environ.get(ENV_VAR):
        problems.insert(int(data_dir is None), f"${ENV_VAR} (not set)")
    files = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    env_how = f"{ENV_VAR}=DIR" if env_root else f"{ENV_VAR}=PARENT where DIR is PARENT/{name}"
    raise DataError(
        f"dataset {name!r} not found; looked in: {'; '.join(problems)}. To fix it, "
        f"{install_hint}put {files} in a folder DIR and pass `--data-dir DIR` "
        f"(or set {env_how})"
    )


def _candidate_dirs(
    name: str, *, data_dir: str | os.PathLike[str] | None, env_root: bool
) -> list[Path]:
    """Folders to search, in order, without duplicates."""
    found: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        found += [root, root / name]
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        found += [root, root / name] if env_root else [root / name]
    return list(dict.fromkeys(found))


def _idx_path(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists first."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` does not hold the four IDX files, or None when it does."""
    if not folder.is_dir():
        return "no such folder"
    missing = [stem for stem in IDX_FILES.values() if _idx_path(folder, stem) is None]
    if len(missing) == len(IDX_FILES):
        return "none of the four IDX files"
    if missing:
        return "missing " + ", ".join(f"{stem}[.gz]" for stem in missing)
    return None


# --- building splits ----------------------------------------------------------------


def load_idx_splits(name: str, folder: Path, *, num_classes: int = 10) -> Splits:
    """Read and validate the four IDX files in ``folder`` into normalized splits."""
    paths = {part: _idx_path(folder, stem) for part, stem in IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        raise DataError(f"dataset {name!r}: {folder} is {_folder_problem(folder)}")
    arrays = {part: read_idx(path) for part, path in paths.items()}
    for split in ("train", "test"):
        _check_split(arrays, paths, split, num_classes)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"dataset {name!r}: train images in {paths['train_images']} are "
            f"{arrays['train_images'].shape[1:]} but test images in {paths['test_images']} "
            f"are {arrays['test_images'].shape[1:]}; the files come from different datasets"
        )
    return make_splits(
        name,
        x_train=_unit_float(arrays["train_images"])[:, None],  # (N, 1, H, W)
        y_train=arrays["train_labels"],
        x_test=_unit_float(arrays["test_images"])[:, None],  # (N, 1, H, W)
        y_test=arrays["test_labels"],
        num_classes=num_classes,
    )


def _check_split(
    arrays: dict[str, np.ndarray], paths: dict[str, Path | None], split: str, num_classes: int
) -> None:
    """Images are (N, H, W), labels (N,) integers in [0, num_classes)."""
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
    if images.ndim != 3:
        raise DataError(f"{image_path} holds shape {images.shape}, expected images (N, H, W)")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{label_path} holds {labels.dtype} of shape {labels.shape}, expected labels (N,)"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} "
            "labels; the files do not belong together"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{label_path} has labels in [{labels.min()}, {labels.max()}], outside "
            f"[0, {num_classes - 1}]; the file is corrupt or from another dataset"
        )


def _unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels scaled to [0, 1]; other dtypes converted as they are."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32)


def make_splits(
    name: str,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
) -> Splits:
    """Normalize inputs (N, C, H, W) with the train set's mean and std; wrap as Splits."""
    mean = float(x_train.mean(dtype=np.float64))
    std = float(x_train.std(dtype=np.float64)) or 1.0

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        inputs = torch.from_numpy(((x - mean) / std).astype(np.float32))
        return TensorDataset(inputs, torch.from_numpy(y.astype(np.int64)))

    return Splits(
        name=name,
        train=tensors(x_train, y_train),
        test=tensors(x_test, y_test),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
    )


# --- registered datasets ------------------------------------------------------------


@DATASETS.register("fashion-mnist")
def _fashion_mnist(*, data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Splits:
    """Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey images, 10 classes.

    H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
    Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.
    """
    return load_idx_splits("fashion-mnist", find_fashion_mnist(data_dir))


def _generic_idx(
    name: str, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> Splits:
    """An MNIST-format dataset the user has, found in ``data_dir`` or ``$PRUNEKIT_DATA/<name>``."""
    return load_idx_splits(name, find_idx_dir(name, data_dir=data_dir))


for _name in ("mnist", "kmnist"):
    DATASETS.register(_name)(functools.partial(_generic_idx, _name))


@DATASETS.register("digits")
def _digits(*, data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Splits:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), shipped in its wheel.

    Split 75/25, stratified by class, with ``random_state=seed``; pixels (0..16)
    scaled to [0, 1] before normalization. ``data_dir`` is not used.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=0.25, stratify=bunch.target, random_state=seed
    )
    return make_splits(
        "digits", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=10
    )
