"""Small shared helpers: seeding, name patterns, library versions."""

from __future__ import annotations

import platform
import random
import re
from collections.abc import Iterable

import numpy as np
import torch

from ._version import __version__


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def name_matches(name: str, pattern: str) -> bool:
    """Whether a qualified module name matches a pattern.

    ``"re:layer[0-9]+\\.conv2"`` is a regular expression that must match the whole
    name; anything else is an exact name, or a prefix that ends at a dot
    (``"features"`` matches ``"features.0"``).
    """
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.startswith(pattern + ".")


def match_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches at least one of ``patterns`` (see :func:`name_matches`)."""
    return any(name_matches(name, p) for p in patterns)


def versions() -> dict[str, str]:
    """Versions of Python, prunekit and its main dependencies, for run records."""
    out = {
        "python": platform.python_version(),
        "prunekit": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    # Read from package metadata: importing torchvision just for its version costs seconds.
    for key, dist in (("torchvision", "torchvision"), ("sklearn", "scikit-learn"),
                      ("safetensors", "safetensors"), ("pydantic", "pydantic"),
                      ("yaml", "PyYAML")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:  # optional: leave it out
            pass
    out["machine"] = f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads"
    return out
