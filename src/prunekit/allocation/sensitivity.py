"""Sensitivity scan: quality of the network with one layer (or channel group, or block)
pruned at a time, at a range of ratios.

The curves say where pruning is cheap: a flat curve can lose much, a steep one little.
This is the sensitivity analysis of Han et al. 2015 ("Learning both Weights and
Connections for Efficient Neural Networks") and Li et al. 2017 ("Pruning Filters for
Efficient ConvNets", Fig. 2), which drives the ``sensitivity``, ``greedy`` and
``hierarchical`` allocations.

Scans are cached on disk, keyed by the model's weights, the inputs' shapes, the
units, the ratios and the evaluation's name, since they cost one evaluation per unit
and ratio.

Example:
    >>> result = scan(space, evaluate, ratios=[0.2, 0.4, 0.6, 0.8], cache_dir=".cache")
    >>> result.drop("layer1.0.conv1", 0.4)   # quality lost at 40%
    >>> result.plot("sensitivity.png")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_open, write_json
from ..errors import ConfigError
from .latency import interp

Evaluate = Callable[[nn.Module], float]


@dataclass
class SensitivityScan:
    """Quality at each ratio for each unit (or set of units) pruned alone.

    Attributes:
        units: names of the scanned units (or blocks).
        ratios: the ratios, ascending, 0 first.
        dense: quality of the unpruned network.
        quality: unit -> quality at each ratio (``quality[u][0] == dense``).
        key: the cache key the scan was stored under.
    """

    units: list[str]
    ratios: list[float]
    dense: float
    quality: dict[str, list[float]] = field(default_factory=dict)
    key: str = ""

    def drops(self, unit: str) -> list[float]:
        """Quality lost at each ratio, made non-decreasing (a cut never counts as a gain)."""
        out, worst = [], 0.0
        for q in self.quality[unit]:
            worst = max(worst, self.dense - q)
            out.append(worst)
        return out

    def drop(self, unit: str, ratio: float) -> float:
        """Quality lost at ``ratio`` (linear between scanned ratios)."""

        xs = [round(r * 1e6) for r in self.ratios]  # integers for the interpolation helper
        values = dict(zip(xs, self.drops(unit), strict=True))
        return max(0.0, interp(xs, ratio * 1e6, values.__getitem__))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def plot(self, path: str | os.PathLike[str], *, title: str = "Sensitivity") -> str:
        """Draw every unit's quality against its ratio into ``path`` (PNG, SVG, PDF).

        Needs matplotlib (``pip install matplotlib``).
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ConfigError("plotting a sensitivity scan needs matplotlib: "
                              "pip install matplotlib") from None
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for unit in self.units:
            ax.plot(self.ratios, self.quality[unit], marker="o", ms=3, lw=1, label=unit)
        ax.axhline(self.dense, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("pruning ratio of this unit alone")
        ax.set_ylabel("quality (held-out)")
        ax.set_title(title)
        if len(self.units) <= 24:
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()

        with atomic_open(path) as f:
            fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
        plt.close(fig)
        return os.fspath(path)


def scan(space: Any, evaluate: Evaluate, *, ratios: Sequence[float],
         sets: Mapping[str, Sequence[int]] | None = None, round_to: int = 1,
         cache_dir: str | os.PathLike[str] | None = None, cache_key: str = "",
         progress: Callable[[str], None] | None = None) -> SensitivityScan:
    """Evaluate the network with each unit (or each set of units) pruned alone at each ratio.

    Args:
        space: a :class:`~prunekit.allocation.space.ChannelSpace` or ``MaskSpace``.
        evaluate: ``evaluate(model) -> quality`` on a held-out split, higher is better
            (return ``-loss`` for a loss). Never the test set.
        ratios: ratios to scan (0 is added; the dense quality is measured once).
        sets: name -> unit indices pruned together (blocks); default each unit alone.
        round_to: ``round_to`` of the cuts.
        cache_dir: folder of the on-disk cache; ``None`` scans without caching.
        cache_key: names the held-out split and anything else ``evaluate`` depends on
            that the cache cannot see (the function's name is included already).
        progress: called with a line per unit scanned.

    Returns:
        The :class:`SensitivityScan`.
    """
    grid = sorted({0.0, *(float(r) for r in ratios)})
    if any(not 0 <= r < 1 for r in grid):
        raise ConfigError(f"scan ratios must be fractions in [0, 1), got {list(ratios)}")
    sets = dict(sets) if sets is not None else {u: [i] for i, u in enumerate(space.units)}
    key = _key(space, grid, sets, round_to, evaluate, cache_key)
    path = None if cache_dir is None else Path(cache_dir) / "sensitivity" / f"{key}.json"
    if path is not None and path.exists():
        try:
            return SensitivityScan(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry is scanned again
    dense = float(evaluate(space.build([0.0] * len(space.units), round_to)))
    result = SensitivityScan(list(sets), grid, dense, key=key)
    for name, members in sets.items():
        row = [dense]
        for r in grid[1:]:
            ratios_ = [r if i in set(members) else 0.0 for i in range(len(space.units))]
            row.append(float(evaluate(space.build(ratios_, round_to))))
        result.quality[name] = row
        if progress is not None:
            progress(f"scanned {name}: " + ", ".join(f"{q:.4g}" for q in row))
    if path is not None:

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result.to_dict())
    return result


def _key(space: Any, grid: list[float], sets: dict, round_to: int, evaluate: Evaluate,
         cache_key: str) -> str:
    name = f"{getattr(evaluate, '__module__', '')}.{getattr(evaluate, '__qualname__', '')}"
    raw = json.dumps([space.fingerprint(), grid, {k: list(v) for k, v in sets.items()}, round_to,
                      name, cache_key])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]
