"""Small shared helpers: seeding, name patterns, library versions."""

from __future__ import annotations

import platform
import random
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .errors import ConfigError


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


def resolve_ignore(model: nn.Module, ignore: Any) -> set[str]:
    """Module paths of ``model`` that ``ignore`` names: module objects, qualified module or
    parameter names (a parameter stands for its module) and ``"re:..."`` patterns.

    The one reading of "leave these alone" for masks and channels alike. A module that is
    not part of the model, or a name or pattern that matches nothing, is a ConfigError.
    """
    if isinstance(ignore, (str, nn.Module)):
        ignore = [ignore]
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in reversed(list(named.items()))}
    params = [n for n, _ in model.named_parameters()]
    out: set[str] = set()
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ConfigError(f"ignored module {type(item).__name__} is not part of this "
                                  "model; pass modules of the model or name patterns")
            out.add(by_id[id(item)])
        elif isinstance(item, str):
            hits = {n for n in named if n and name_matches(n, item)}
            hits |= {p.rpartition(".")[0] for p in params if name_matches(p, item)}
            if not hits:
                sample = ", ".join(n for n in list(named)[1:7])
                raise ConfigError(f"ignore pattern {item!r} matches no module or parameter of "
                                  f"the model; names look like: {sample}")
            out.update(hits)
        else:
            raise ConfigError(f"ignore takes modules, names or 're:' patterns, "
                              f"got {type(item).__name__}")
    return out


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the platform's word for it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


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


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)
