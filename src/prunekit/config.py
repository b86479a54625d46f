"""Typed, frozen configs of the verbs: one object says how a cut is made.

Each verb takes its config (``pk.sparsify(model, SparsifyConfig(...))``,
``pk.plan(graph, PlanConfig(...))``), the way torchao's ``quantize_(model, config)`` does;
keyword calls (``pk.sparsify(model, sparsity=0.9)``) are a thin layer that builds the config.
Schedules (:class:`prunekit.Pruner`) and the recipe schema build the same objects, so an
option is spelled, validated and defaulted in one place.

The shared vocabulary:

- **amount**: how much is cut. For masks, a :class:`~prunekit.allocation.Rule`
  (``sparsity``, ``threshold``, ``percentile``, ``std``) or an :class:`NM` pattern; for
  channels, a ``ratio`` or a :class:`Budget` (a fraction of params or MACs to remove).
- **criterion**: a name of the one criteria registry (:func:`prunekit.list_criteria`).
- **scope**: ``layer`` (each layer / group on its own), ``global`` (one ranking) or
  ``lamp`` (one ranking of LAMP-normalized scores). Same names for masks and channels.
- **ignore**: what is left alone: module objects (keyword layer only), qualified module or
  parameter names, and ``"re:..."`` patterns. A name that matches nothing is an error.
- **calibration**: how much data the data-driven criteria read (:class:`Calibration`).

Configs hold names and numbers only (never modules or data), so they serialize.

Example:
    >>> cfg = SparsifyConfig(amount=Rule("sparsity", 0.9), scope="global")
    >>> pk.sparsify(model, cfg)
    >>> pk.plan(graph, PlanConfig(budget=Budget("macs", 0.5), round_to=8))
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ._defaults import DEFAULT_CALIBRATION_BATCHES, DEFAULT_FISHER_SAMPLES
from ._utils import check_fraction, name_matches, resolve_ignore
from .allocation.budget import BUDGET_KINDS, BUDGET_LIMITS, Budget
from .allocation.nm import parse_pattern
from .allocation.rules import Rule, list_scopes
from .errors import ConfigError
from .importance.criteria import get_criterion, list_criteria

__all__ = [
    "BUDGET_KINDS",
    "BUDGET_LIMITS",
    "CHECKS",
    "Budget",
    "Calibration",
    "NM",
    "PlanConfig",
    "Rule",
    "SparsifyConfig",
    "check_fraction",
]

#: When ``pk.plan`` dry-runs a plan: always, only when a size is written in the code, never.
CHECKS = ("always", "auto", "never")


@dataclass(frozen=True)
class NM:
    """Keep ``n`` of every ``m`` consecutive input weights (``NM.parse("2:4")``)."""

    n: int
    m: int

    def __post_init__(self) -> None:
        parse_pattern(str(self))  # 0 < n < m, integers

    @classmethod
    def parse(cls, pattern: str) -> NM:
        """``"2:4"`` -> ``NM(2, 4)``; anything else is a ConfigError."""
        return cls(*parse_pattern(pattern))

    @property
    def sparsity(self) -> float:
        """The fraction of weights the pattern zeroes."""
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Calibration:
    """How much data the data-driven criteria read.

    Attributes:
        batches: ``(inputs, targets)`` batches for mean gradients (gradient, taylor).
        fisher_samples: single samples for the Fisher diagonal (obd / fisher).
    """

    batches: int = DEFAULT_CALIBRATION_BATCHES
    fisher_samples: int = DEFAULT_FISHER_SAMPLES

    def __post_init__(self) -> None:
        for name in ("batches", "fisher_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"calibration {name} must be a positive integer, got {value!r}")


def _check_names(ignore: Any) -> tuple[str, ...]:
    items = [ignore] if isinstance(ignore, str) else list(ignore)
    bad = [type(i).__name__ for i in items if not isinstance(i, str)]
    if bad:
        raise ConfigError(f"a config's ignore holds names or 're:' patterns, got {bad[0]}; "
                          "pass modules through the keyword form (ignore=[model.fc])")
    return tuple(items)


def _check_registered(kind: str, value: str, names: list[str]) -> None:
    if value not in names:
        raise ConfigError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(names)}")


@dataclass(frozen=True)
class SparsifyConfig:
    """Options of :func:`prunekit.sparsify` (masks: shapes stay).

    Attributes:
        amount: a :class:`Rule` (sparsity / threshold / percentile / std) or an :class:`NM`.
        criterion: a name from :func:`prunekit.list_criteria`.
        scope: ``layer``, ``global``, ``lamp`` or ``row`` (each output row on its own);
            None: the criterion's own (``row`` for ``wanda``), else ``layer``.
        granularity: ``weight`` or ``neuron`` (whole rows / filters, shapes kept).
        ignore: module or parameter names / ``re:`` patterns left dense.
        protect_output: leave the last prunable layer (the classifier) dense.
        calibration: data budget of data-driven criteria.
        seed: seed of the ``random`` criterion.
        skip_indivisible: with an N:M pattern, leave dense (with a warning naming them) the
            layers whose input size is not a multiple of M (a first conv over 3 channels,
            depthwise convs) instead of refusing the call.
    """

    amount: Rule | NM
    criterion: str = "magnitude"
    scope: str | None = None
    granularity: str = "weight"
    ignore: tuple[str, ...] = ()
    protect_output: bool = False
    calibration: Calibration = field(default_factory=Calibration)
    seed: int = 0
    skip_indivisible: bool = False

    def __post_init__(self) -> None:
        # the granularity registry lives with the verb that uses it, and sparsify imports
        # this module
        from .sparsify import list_granularities

        if not isinstance(self.amount, (Rule, NM)):
            raise ConfigError(f"amount must be a Rule or an NM pattern, got {self.amount!r}")
        _check_registered("criterion", self.criterion, list_criteria())
        if self.scope is None:
            object.__setattr__(self, "scope", get_criterion(self.criterion).scope or "layer")
        _check_registered("scope", self.scope, list_scopes())
        _check_registered("granularity", self.granularity, list_granularities("mask"))
        if self.scope == "row" and self.granularity != "weight":
            raise ConfigError("scope='row' ranks the weights of each output row; "
                              "use granularity='weight'")
        if isinstance(self.amount, NM) and self.granularity != "weight":
            raise ConfigError("an N:M pattern works on single weights; use granularity='weight'")
        object.__setattr__(self, "ignore", _check_names(self.ignore))

    @classmethod
    def from_keywords(cls, *, sparsity: float | None = None, threshold: float | None = None,
                      percentile: float | None = None, std_k: float | None = None,
                      pattern: str | None = None, batches: int = DEFAULT_CALIBRATION_BATCHES,
                      fisher_samples: int = DEFAULT_FISHER_SAMPLES, **options: Any,
                      ) -> SparsifyConfig:
        """The config of a keyword call: exactly one of the five ways to say how much."""
        amount = amount_of(sparsity=sparsity, threshold=threshold, percentile=percentile,
                           std_k=std_k, pattern=pattern)
        return cls(amount=amount, calibration=Calibration(batches, fisher_samples), **options)

    def replace(self, **changes: Any) -> SparsifyConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def amount_of(*, sparsity=None, threshold=None, percentile=None, std_k=None,
              pattern=None) -> Rule | NM:
    """The one amount among the keyword spellings; zero or several is a ConfigError."""
    given = {k: v for k, v in dict(sparsity=sparsity, threshold=threshold,
                                   percentile=percentile, std=std_k).items() if v is not None}
    if pattern is not None:
        if given:
            raise ConfigError(f"pattern={pattern!r} fixes the sparsity itself; "
                              f"drop {', '.join(given)}")
        return pattern if isinstance(pattern, NM) else NM.parse(pattern)
    if len(given) != 1:
        raise ConfigError("give exactly one of sparsity, threshold, percentile, std_k or pattern"
                          + (f" (got {', '.join(given)})" if given else ""))
    ((kind, value),) = given.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{kind} must be a number, got {value!r}")
    return Rule(kind, float(value))


@dataclass(frozen=True)
class PlanConfig:
    """Options of :func:`prunekit.plan` (channels, heads, neurons: shapes shrink).

    Attributes:
        ratio: fraction of units removed from each group (0.5 when neither ``ratio`` nor
            ``budget`` is given); with a global scope, the fraction of all units.
        ratios: per-group ratio by module name pattern; the first match wins.
        budget: instead of a ratio, a :class:`Budget` of one fraction of the parameters
            or MACs to remove (``Budget("macs", 0.5)``, or ``Budget(macs_ratio=0.5)``).
        criterion: a name from :func:`prunekit.list_criteria`.
        scope: ``layer``, ``global`` (ranked across groups, scores divided by their group's
            mean so that layers of different scale compare) or ``lamp`` (ranked across groups
            on LAMP-normalized scores).
        max_ratio: with a global scope or a budget, the most any one group loses.
        round_to: kept units per group are a multiple of this (8 or 16 suit hardware).
        ignore: module names / ``re:`` patterns whose outputs keep their size.
        calibration: data budget of data-driven criteria.
        seed: seed of the ``random`` criterion.
        check: dry-run the plan on a weightless copy: ``always``, ``auto`` (only when a
            cut size is written in the code) or ``never``.
    """

    ratio: float | None = None
    ratios: tuple[tuple[str, float], ...] = ()
    budget: Budget | None = None
    criterion: str = "l2"
    scope: str = "layer"
    max_ratio: float = 0.9
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    calibration: Calibration = field(default_factory=Calibration)
    seed: int = 0
    check: str = "always"

    def __post_init__(self) -> None:
        ratios = self.ratios.items() if isinstance(self.ratios, Mapping) else self.ratios
        object.__setattr__(self, "ratios", tuple((str(k), check_fraction(f"ratios[{k!r}]", v))
                                                 for k, v in ratios))
        if self.budget is not None and (self.ratio is not None or self.ratios):
            raise ConfigError("give either ratio/ratios or a budget (target), not both")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise ConfigError(f"budget must be a Budget, got {self.budget!r}")
        if self.budget is not None and self.budget.removal is None:
            raise ConfigError(f"pk.plan meets one fraction of the parameters or MACs "
                              f"(Budget('macs', 0.5)); {self.budget!r} needs a search: use "
                              "pk.allocate(model, inputs, kind='greedy', budget=...)")
        if self.ratio is None and self.budget is None:
            object.__setattr__(self, "ratio", 0.5)
        if self.ratio is not None:
            object.__setattr__(self, "ratio", check_fraction("ratio", self.ratio))
        check_fraction("max_ratio", self.max_ratio)
        _check_registered("criterion", self.criterion, list_criteria())
        _check_registered("scope", self.scope, list_scopes())
        if self.scope == "row":
            raise ConfigError("scope='row' ranks single weights within a row; channels are "
                              "ranked per group ('layer'), across groups ('global') or by "
                              "LAMP ('lamp')")
        if self.check not in CHECKS:
            raise ConfigError(f"check must be one of {', '.join(CHECKS)}, got {self.check!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) \
                or self.round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {self.round_to!r}")
        object.__setattr__(self, "ignore", _check_names(self.ignore))

    @classmethod
    def from_keywords(cls, *, target: Mapping[str, float] | None = None,
                      check: bool | str = "always",
                      batches: int = DEFAULT_CALIBRATION_BATCHES,
                      fisher_samples: int = DEFAULT_FISHER_SAMPLES,
                      ratios: Mapping[str, float] | None = None, **options: Any) -> PlanConfig:
        """The config of a keyword call (``target={"macs": f}`` and ``check=True`` are the
        older spellings of ``budget`` and ``check="always"``)."""
        budget = options.pop("budget", None)
        if target:
            budget = Budget.from_mapping(target)
        check = {True: "always", False: "never"}.get(check, check) \
            if isinstance(check, bool) else check
        return cls(budget=budget, check=check, ratios=tuple((ratios or {}).items()),
                   calibration=Calibration(batches, fisher_samples), **options)

    def ratio_of(self, module_names: Iterable[str]) -> float:
        """The ratio of a group whose producers are ``module_names`` (first pattern wins)."""
        names = list(module_names)
        for pattern, r in self.ratios:
            if any(name_matches(m, pattern) for m in names):
                return r
        return float(self.ratio if self.ratio is not None else 0.5)

    def replace(self, **changes: Any) -> PlanConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def split_ignore(model: nn.Module, ignore: Any) -> tuple[str, ...]:
    """Keyword-layer ``ignore``: modules become their names (configs hold names only).

    A module that is not part of ``model`` or a name that matches nothing is a ConfigError.
    """
    resolve_ignore(model, ignore)  # validates every item against the model
    items = [ignore] if isinstance(ignore, (str, nn.Module)) else list(ignore)
    named = {id(m): n for n, m in reversed(list(model.named_modules()))}
    names = tuple(named[id(i)] if isinstance(i, nn.Module) else i for i in items)
    return names


def as_items(items: Any) -> list:
    """One name (or module) or several, as a list."""
    return [items] if isinstance(items, (str, nn.Module)) else list(items)


def fold_exclude(options: dict[str, Any], where: str) -> None:
    """The older ``exclude=`` keyword folded into ``ignore`` (with a deprecation warning)."""
    if "exclude" in options:
        deprecated(f"{where}(exclude=...)", "ignore=...")
        options["ignore"] = (*as_items(options.pop("exclude")),
                             *as_items(options.pop("ignore", ())))


def deprecated(old: str, new: str) -> None:
    """Warn once per call site that keyword ``old`` is now ``new``."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)

