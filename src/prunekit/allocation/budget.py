"""Budgets: what a pruned network may cost (latency, parameters, MACs, bytes, sparsity).

One :class:`Budget` type serves ``pk.plan`` (remove a fraction of the parameters or MACs),
``pk.allocate`` (limits met by a search, latency included) and recipes. An allocation meets
a budget when every limit holds.

Example:
    >>> Budget.parse({"latency_ratio": 0.5, "params": 200_000})
    Budget(latency_ratio=0.5, params=200000)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._utils import check_fraction
from ..errors import ConfigError

__all__ = ["BUDGET_KINDS", "BUDGET_LIMITS", "Budget"]

#: The costs ``Budget(kind, fraction)`` removes a fraction of.
BUDGET_KINDS = ("params", "macs")

#: Budget keys -> the cost each one limits. Absolute limits (``latency_ms``, ``params``,
#: ``macs``, ``bytes``) are maxima; ``*_ratio`` ones are fractions of the dense network's
#: value; ``sparsity`` is the least fraction of prunable weights or parameters removed.
BUDGET_LIMITS = {
    "latency_ms": "latency_ms", "latency_ratio": "latency_ms",
    "params": "params", "params_ratio": "params",
    "macs": "macs", "macs_ratio": "macs",
    "bytes": "bytes", "bytes_ratio": "bytes",
    "sparsity": "sparsity",
}


class Budget:
    """What a pruned network may cost: one type for ``pk.plan``, ``pk.allocate`` and recipes.

    Two spellings of the same thing:

    - ``Budget("macs", 0.5)``: remove this fraction of the parameters or MACs (``kind`` in
      ``params`` / ``macs``); it is the limit ``macs_ratio=0.5``.
    - ``Budget(latency_ms=2.0, params=200_000)``: limits, every one enforced.
      ``latency_ms``, ``params``, ``macs`` and ``bytes`` are maxima in absolute units;
      ``latency_ratio``, ``params_ratio``, ``macs_ratio``, ``bytes_ratio`` are at most this
      fraction of the dense network's value, in (0, 1]; ``sparsity`` is the least fraction
      of prunable weights (masks) or parameters (channels) removed, in (0, 1).

    ``pk.plan`` meets one parameter or MAC fraction by ranking units; latency, bytes and
    several limits at once are met by ``pk.allocate``'s searches.

    Example:
        >>> Budget("macs", 0.5) == Budget(macs_ratio=0.5)
        True
        >>> Budget.parse({"latency_ratio": 0.5, "params": 200_000})
        Budget(latency_ratio=0.5, params=200000)
    """

    __slots__ = ("_limits", "_removal")

    def __init__(self, kind: str | None = None, fraction: float | None = None, /,
                 **limits: float) -> None:
        removal = None
        if kind is not None or fraction is not None:
            if limits:
                raise ConfigError("a budget is either Budget(kind, fraction) or limits as "
                                  "keywords (Budget(latency_ms=2.0)), not both")
            if kind not in BUDGET_KINDS:
                raise ConfigError(f"unknown target/budget {kind!r}; valid budgets: "
                                  f"{', '.join(BUDGET_KINDS)} (or limits as keywords: "
                                  f"{', '.join(BUDGET_LIMITS)})")
            removal = (kind, check_fraction(f"budget {kind}", fraction))
            limits = {f"{kind}_ratio": 1.0 - removal[1]}
        unknown = sorted(set(limits) - set(BUDGET_LIMITS))
        if unknown:
            raise ConfigError(f"unknown budget key {', '.join(map(repr, unknown))}; "
                              f"valid keys: {', '.join(BUDGET_LIMITS)}")
        for key, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"budget {key} must be a positive number, got {value!r}")
            if (key.endswith("_ratio") and value > 1) or (key == "sparsity" and value >= 1):
                raise ConfigError(f"budget {key} is a fraction in (0, 1], got {value!r}")
        if not limits:
            raise ConfigError("a budget needs at least one limit; valid keys: "
                              f"{', '.join(BUDGET_LIMITS)}")
        order = list(BUDGET_LIMITS)
        object.__setattr__(self, "_limits", dict(sorted(limits.items(),
                                                        key=lambda kv: order.index(kv[0]))))
        object.__setattr__(self, "_removal", removal)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Budget is frozen; make a new one")

    def __getattr__(self, name: str) -> Any:
        if name in BUDGET_LIMITS:
            return self._limits.get(name)
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Budget) and self._limits == other._limits

    def __hash__(self) -> int:
        return hash(tuple(self._limits.items()))

    def __repr__(self) -> str:
        if self._removal is not None:
            return f"Budget({self._removal[0]!r}, {self._removal[1]!r})"
        return f"Budget({', '.join(f'{k}={v!r}' for k, v in self._limits.items())})"

    def __reduce__(self) -> tuple:
        if self._removal is not None:
            return (Budget, self._removal)
        return (_budget_of, (dict(self._limits),))

    # -- the "remove a fraction" view that pk.plan meets ---------------------------------
    @property
    def kind(self) -> str | None:
        """``params`` or ``macs`` when the budget is one fraction of them, else None."""
        removal = self.removal
        return removal[0] if removal else None

    @property
    def fraction(self) -> float | None:
        """The fraction of ``kind`` to remove, when the budget is one such fraction."""
        removal = self.removal
        return removal[1] if removal else None

    @property
    def removal(self) -> tuple[str, float] | None:
        """``(kind, fraction removed)`` when the budget is a single params / MACs ratio."""
        if self._removal is not None:
            return self._removal
        if len(self._limits) == 1:
            ((key, value),) = self._limits.items()
            if key in ("params_ratio", "macs_ratio"):
                return key[: -len("_ratio")], 1.0 - value
        return None

    @classmethod
    def from_mapping(cls, target: Mapping[str, float]) -> Budget:
        """``{"macs": 0.5}`` -> ``Budget("macs", 0.5)`` (the older ``target=`` spelling)."""
        if len(target) != 1:
            raise ConfigError("target takes one entry: {'params': f} or {'macs': f}")
        ((kind, fraction),) = target.items()
        return cls(kind, fraction)

    @classmethod
    def parse(cls, budget: Budget | Mapping[str, Any]) -> Budget:
        """A Budget from itself or from a mapping of limits such as ``{"latency_ms": 2.0}``."""
        if isinstance(budget, Budget):
            return budget
        if not isinstance(budget, Mapping):
            raise ConfigError(f"budget must be a Budget or a mapping like {{'latency_ms': 2.0}}, "
                              f"got {type(budget).__name__}")
        return cls(**{str(k): v for k, v in budget.items()})

    # -- limits, for searches ------------------------------------------------------------
    def items(self) -> list[tuple[str, float]]:
        """The limits that are set, as (key, value)."""
        return list(self._limits.items())

    @property
    def metrics(self) -> set[str]:
        """Cost metrics this budget needs (``latency_ms``, ``params``, ...)."""
        return {BUDGET_LIMITS[k] for k in self._limits}

    def limits(self, dense: Mapping[str, float]) -> dict[str, tuple[str, float]]:
        """Per budget key, ``(metric, bound)`` in absolute units given the dense costs.

        Sparsity is a lower bound; every other bound is an upper one.
        """
        out = {}
        for key, value in self._limits.items():
            metric = BUDGET_LIMITS[key]
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
        return dict(self._limits)


def _budget_of(limits: dict[str, float]) -> Budget:
    return Budget(**limits)
