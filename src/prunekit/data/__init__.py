"""Datasets: IDX files (Fashion-MNIST, MNIST, KMNIST), scikit-learn's digits, loaders.

Example:
    >>> from prunekit.data import load_dataset, make_loader
    >>> splits = load_dataset("digits", seed=0)
    >>> loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0)
"""

from __future__ import annotations

from .datasets import DATASETS as DATASETS
from .datasets import Splits as Splits
from .datasets import find_fashion_mnist as find_fashion_mnist
from .datasets import list_datasets as list_datasets
from .datasets import load_dataset as load_dataset
from .datasets import make_loader as make_loader
from .idx import read_idx as read_idx

__all__ = [
    "DATASETS",
    "Splits",
    "find_fashion_mnist",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "read_idx",
]
