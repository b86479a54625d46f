"""Budgets: what a pruned network may cost (latency, parameters, MACs, bytes, sparsity).

A :class:`Budget` holds one or more limits; an allocation meets it when every limit
holds. Absolute limits (``latency_ms``, ``params``, ``macs``, ``bytes``) are maxima;
``*_ratio`` limits are fractions of the dense network's value (``latency_ratio=0.5``:
at most half the dense latency); ``sparsity`` is the least fraction of prunable
weights (masks) or parameters (channels) removed.

Example:
    >>> Budget.parse({"latency_ratio": 0.5, "params": 200_000})
    Budget(latency_ratio=0.5, params=200000)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

# budget key -> the cost metric it limits
METRIC = {
    "latency_ms": "latency_ms", "latency_ratio": "latency_ms",
    "params": "params", "params_ratio": "params",
    "macs": "macs", "macs_ratio": "macs",
    "bytes": "bytes", "bytes_ratio": "bytes",
    "sparsity": "sparsity",
}


@dataclass(frozen=True)
class Budget:
    """Limits on the pruned network's cost; ``None`` means no limit on that metric.

    Attributes:
        latency_ms: most milliseconds of one forward pass, as the latency table predicts.
        latency_ratio: most fraction of the dense latency, in (0, 1].
        params: most parameters (masks: non-zero parameters).
        params_ratio: most fraction of the dense parameters.
        macs: most multiply-accumulates (masks: effective MACs of non-zero weights).
        macs_ratio: most fraction of the dense MACs.
        bytes: most bytes of the weights (masks: sparse encoding, estimated).
        bytes_ratio: most fraction of the dense bytes.
        sparsity: least fraction of prunable weights (masks) or parameters (channels) removed.
    """

    latency_ms: float | None = None
    latency_ratio: float | None = None
    params: float | None = None
    params_ratio: float | None = None
    macs: float | None = None
    macs_ratio: float | None = None
    bytes: float | None = None
    bytes_ratio: float | None = None
    sparsity: float | None = None

    def __post_init__(self) -> None:
        for key, value in self.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"budget {key} must be a positive number, got {value!r}")
            if (key.endswith("_ratio") and value > 1) or (key == "sparsity" and value >= 1):
                raise ConfigError(f"budget {key} is a fraction in (0, 1], got {value!r}")
        if not self.items():
            raise ConfigError(f"a budget needs at least one limit; valid keys: {', '.join(METRIC)}")

    @classmethod
    def parse(cls, budget: Budget | Mapping[str, Any] | Any) -> Budget:
        """A Budget from itself, a mapping such as ``{"latency_ms": 2.0}``, or a
        ``prunekit.config.Budget("macs", 0.5)`` (half the MACs removed: ``macs_ratio=0.5``)."""
        if isinstance(budget, Budget):
            return budget
        kind, fraction = getattr(budget, "kind", None), getattr(budget, "fraction", None)
        if kind in ("params", "macs") and isinstance(fraction, (int, float)):
            # prunekit.config.Budget: a fraction of params / MACs to *remove*
            return cls(**{f"{kind}_ratio": 1.0 - float(fraction)})
        if not isinstance(budget, Mapping):
            raise ConfigError(f"budget must be a Budget or a mapping like {{'latency_ms': 2.0}}, "
                              f"got {type(budget).__name__}")
        unknown = sorted(set(budget) - set(METRIC))
        if unknown:
            raise ConfigError(f"unknown budget key {', '.join(map(repr, unknown))}; "
                              f"valid keys: {', '.join(METRIC)}")
        return cls(**dict(budget))

    def items(self) -> list[tuple[str, float]]:
        """The limits that are set, as (key, value)."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None]

    @property
    def metrics(self) -> set[str]:
        """Cost metrics this budget needs (``latency_ms``, ``params``, ...)."""
        return {METRIC[k] for k, _ in self.items()}

    def limits(self, dense: Mapping[str, float]) -> dict[str, tuple[str, float]]:
        """Per budget key, ``(metric, bound)`` in absolute units given the dense costs.

        Sparsity is a lower bound; every other bound is an upper one.
        """
        out = {}
        for key, value in self.items():
            metric = METRIC[key]
            out[key] = (metric, value * dense[metric] if key.endswith("_ratio") else value)
        return out

    def violation(self, cost: Mapping[str, float], dense: Mapping[str, float]) -> float:
        """How far ``cost`` is from meeting the budget: 0 when met, else the summed relative
        excess over every limit (a scale-free number a search can minimize)."""
        total = 0.0
        for key, (metric, bound) in self.limits(dense).items():
            if key == "sparsity":
                total += max(0.0, bound - cost[metric])
            else:
                total += max(0.0, cost[metric] / bound - 1.0)
        return total

    def met(self, cost: Mapping[str, float], dense: Mapping[str, float]) -> bool:
        """Whether ``cost`` meets every limit."""
        return self.violation(cost, dense) <= 1e-12

    def to_dict(self) -> dict[str, float]:
        """The limits that are set, for JSON."""
        return dict(self.items())
