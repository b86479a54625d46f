"""Sparsity schedules: pure functions ``sparsity_at(step) -> float``.

A schedule says *when* and *how much*: the target sparsity after ``step``
optimizer steps (or, for iterative pruning and lottery tickets, after ``step``
rounds). It knows nothing of how weights are scored or cut. Every schedule is a
frozen dataclass, so it can be compared, printed, serialized (``asdict``) and
plotted; :func:`make_schedule` builds one by its registered name.

Example:
    >>> s = make_schedule("agp", final=0.9, start=0, end=1000, frequency=100)
    >>> [round(s(t), 4) for t in (0, 99, 100, 500, 1000, 5000)]
    [0.0, 0.0, 0.2439, 0.7875, 0.9, 0.9]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

from .._registry import Registry
from ..errors import ConfigError


class Schedule:
    """Base of all schedules: a target sparsity for every step.

    Subclasses implement :meth:`sparsity_at` and :meth:`pruning_steps`; the value
    may change only at a pruning step and is constant between two of them.

    Attributes:
        final: the sparsity the schedule ends at.
        name: the registered name (set by :func:`register_schedule`).
    """

    final: float
    name: str = ""

    def sparsity_at(self, step: int) -> float:
        """Target sparsity after ``step`` steps (``step`` >= 0)."""
        raise NotImplementedError

    def pruning_steps(self) -> list[int]:
        """The steps at which the value may change, ascending; the last reaches ``final``."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.sparsity_at(step)

    @property
    def final_step(self) -> int:
        """The first step at which the schedule is at ``final``."""
        return self.pruning_steps()[-1]

    def curve(self, steps: Iterable[int]) -> list[float]:
        """``sparsity_at`` at each of ``steps``, for plots and reports."""
        return [self.sparsity_at(t) for t in steps]

    def to_dict(self) -> dict:
        """``{"name": <registered name>, **fields}``; :func:`make_schedule` reads it back."""
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]


_SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


def register_schedule(name: str) -> Callable[[type[Schedule]], type[Schedule]]:
    """Class decorator that registers a :class:`Schedule` dataclass under ``name``."""

    def add(cls: type[Schedule]) -> type[Schedule]:
        _SCHEDULES.register(name)(cls)
        cls.name = name
        return cls

    return add


def list_schedules(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`make_schedule`: ``agp``, ``geometric``, ``oneshot``, ...."""
    return _SCHEDULES.names(pattern)


def make_schedule(name: str, **options: object) -> Schedule:
    """Build the schedule registered as ``name`` with keyword ``options``.

    An unknown option is a ConfigError that lists the valid ones.

    Example:
        >>> round(make_schedule("polynomial", final=0.8, end=10, exponent=2)(5), 6)
        0.6
    """
    cls = _SCHEDULES.get(name)
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"schedule {name!r} has no option {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    try:
        return cls(**options)
    except TypeError as err:  # a required option is missing
        raise ConfigError(f"schedule {name!r}: {err}; valid options: {', '.join(valid)}") from None


def _check_sparsity(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ConfigError(f"{name} must be a sparsity in [0, 1), got {value!r}")


def _check_step(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@register_schedule("oneshot")
@dataclass(frozen=True)
class OneShot(Schedule):
    """All at once: 0 before step ``at``, ``final`` from step ``at`` on.

    With ``at=0`` (the default) the schedule is constant: the model is at
    ``final`` from the start, i.e. static one-shot pruning after training.

    Example:
        >>> OneShot(final=0.9, at=5).curve([0, 4, 5, 100])
        [0.0, 0.0, 0.9, 0.9]
    """

    final: float
    at: int = 0

    def __post_init__(self) -> None:
        _check_sparsity("final", self.final)
        _check_step("at", self.at)

    def sparsity_at(self, step: int) -> float:
        return self.final if step >= self.at else 0.0

    def pruning_steps(self) -> list[int]:
        return [self.at]


@register_schedule("polynomial")
@dataclass(frozen=True)
class Polynomial(Schedule):
    """Polynomial decay of the remaining density, in ``n`` equal steps.

    For pruning steps ``t_k = start + k * frequency`` (k = 0, 1, ...) up to ``end``::

        s_t = s_f + (s_i - s_f) * (1 - (t_k - t_0) / (end - t_0)) ** exponent

    where ``t_k`` is the last pruning step at or before ``t``. Before ``start``
    nothing is pruned (0.0); at and after ``end`` the value is ``final``. When
    ``end - start`` is not a multiple of ``frequency``, ``end`` itself is the last
    pruning step. ``exponent=3`` is the gradual pruning of Zhu & Gupta (see
    :class:`AGP`); ``exponent=1`` grows the sparsity linearly.

    M. Zhu and S. Gupta, "To prune, or not to prune: exploring the efficacy of
    pruning for model compression", ICLR workshop 2018 (arXiv:1710.01878).

    Example:
        >>> Polynomial(final=0.8, end=10, exponent=1).curve([0, 5, 10])
        [0.0, 0.4, 0.8]
    """

    final: float
    end: int
    initial: float = 0.0
    start: int = 0
    frequency: int = 1
    exponent: float = 3.0

    def __post_init__(self) -> None:
        _check_sparsity("final", self.final)
        _check_sparsity("initial", self.initial)
        _check_step("start", self.start)
        _check_step("frequency", self.frequency, minimum=1)
        _check_step("end", self.end)
        if self.end <= self.start:
            raise ConfigError(f"end ({self.end}) must come after start ({self.start})")
        if self.initial > self.final:
            raise ConfigError(f"initial ({self.initial}) must not exceed final ({self.final})")
        if not (isinstance(self.exponent, (int, float)) and self.exponent > 0):
            raise ConfigError(f"exponent must be > 0, got {self.exponent!r}")

    def sparsity_at(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.final
        last = self.start + (step - self.start) // self.frequency * self.frequency
        progress = (last - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** self.exponent

    def pruning_steps(self) -> list[int]:
        return [*range(self.start, self.end, self.frequency), self.end]


@register_schedule("agp")
@dataclass(frozen=True)
class AGP(Polynomial):
    """Automated gradual pruning: :class:`Polynomial` with the cubic exponent.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt)) ** 3`` for
    ``t in {t_0, t_0 + dt, ..., t_0 + n * dt}`` (Zhu & Gupta 2017, eq. 1): prune
    fast while the network is redundant, slowly as it approaches the target.

    Example:
        >>> AGP(final=0.9, end=100, frequency=10)(50)
        0.7875
    """

    exponent: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.exponent != 3.0:
            raise ConfigError("agp is cubic by definition; use 'polynomial' for another exponent")


@register_schedule("geometric")
@dataclass(frozen=True)
class Geometric(Schedule):
    """Prune a fixed fraction ``rate`` of the remaining weights every ``frequency`` steps.

    ``s_k = min(final, 1 - (1 - rate) ** k)`` after ``k`` pruning steps
    (``t_k = start + (k - 1) * frequency``), the per-round rate of iterative
    magnitude pruning in Han et al. 2015 and the lottery ticket experiments
    (Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, p = 20%).
    With steps counted in rounds, round 1 is the first cut.

    Example:
        >>> [round(v, 3) for v in Geometric(final=0.5, rate=0.2, start=1).curve(range(5))]
        [0.0, 0.2, 0.36, 0.488, 0.5]
    """

    final: float
    rate: float = 0.2
    start: int = 0
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_sparsity("final", self.final)
        _check_step("start", self.start)
        _check_step("frequency", self.frequency, minimum=1)
        if not (isinstance(self.rate, (int, float)) and 0.0 < self.rate < 1.0):
            raise ConfigError(f"rate must be in (0, 1), got {self.rate!r}; 0.2 prunes 20% a round")

    @property
    def rounds(self) -> int:
        """Pruning steps needed to reach ``final``."""
        if self.final == 0:
            return 1
        rounds = math.ceil(math.log1p(-self.final) / math.log1p(-self.rate) - 1e-9)
        return max(rounds, 1)

    def sparsity_at(self, step: int) -> float:
        if step < self.start:
            return 0.0
        done = min((step - self.start) // self.frequency + 1, self.rounds)
        return min(self.final, 1.0 - (1.0 - self.rate) ** done)

    def pruning_steps(self) -> list[int]:
        return [self.start + k * self.frequency for k in range(self.rounds)]


@register_schedule("steps")
@dataclass(frozen=True)
class Steps(Schedule):
    """An explicit list of sparsities, one per pruning step: ``sparsities[k]`` from ``t_k`` on.

    ``t_k = start + k * frequency``; 0 before ``start``. For hand-picked rounds of
    iterative pruning (e.g. 0.5, 0.75, 0.9).

    Example:
        >>> Steps(sparsities=(0.5, 0.75, 0.9), start=1).curve(range(5))
        [0.0, 0.5, 0.75, 0.9, 0.9]
    """

    sparsities: tuple[float, ...]
    start: int = 0
    frequency: int = 1

    def __post_init__(self) -> None:
        values = tuple(self.sparsities)
        object.__setattr__(self, "sparsities", values)
        if not values:
            raise ConfigError("sparsities must list at least one value")
        for v in values:
            _check_sparsity("each of sparsities", v)
        if any(b < a for a, b in zip(values, values[1:], strict=False)):
            raise ConfigError(f"sparsities must not decrease, got {list(values)}")
        _check_step("start", self.start)
        _check_step("frequency", self.frequency, minimum=1)

    @property
    def final(self) -> float:  # type: ignore[override]
        return self.sparsities[-1]

    def sparsity_at(self, step: int) -> float:
        if step < self.start:
            return 0.0
        k = min((step - self.start) // self.frequency, len(self.sparsities) - 1)
        return self.sparsities[k]

    def pruning_steps(self) -> list[int]:
        return [self.start + k * self.frequency for k in range(len(self.sparsities))]
