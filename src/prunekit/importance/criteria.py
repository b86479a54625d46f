"""The one criteria registry, for masks and channels alike.

A criterion maps a weight tensor (and, for data-driven criteria, statistics
gathered on calibration data) to a non-negative score of the same shape; higher
means more important. Coarser units (neurons, N:M blocks, channel groups) are
scored by summing the scores of their weights. A criterion may also offer a
*group-level reduction*: a function that scores the units of channel groups
directly (``bn_scale`` reads only the norms' scales, ``wanda`` / ``flap`` read the
consumers' inputs); ``pk.plan`` uses it where it exists. A criterion with only a
group reduction works with ``pk.plan`` and is refused by ``pk.sparsify``.

Registering your own takes one decorated function::

    @pk.register_criterion("abs_cubed")
    def abs_cubed(weight, stats):
        return weight.abs() ** 3
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._registry import Registry
from ..errors import ConfigError


@dataclass
class ParamStats:
    """Calibration statistics of one weight tensor (same shape as the weight).

    Attributes:
        grad: mean gradient of the loss over the calibration data.
        fisher: mean of squared per-sample gradients (diagonal of the empirical Fisher).
        act_norm: L2 norm over calibration tokens of the input feature each weight
            multiplies, broadcast to the weight's shape (Wanda).
        generator: random generator for stochastic criteria.
    """

    grad: torch.Tensor | None = None
    fisher: torch.Tensor | None = None
    act_norm: torch.Tensor | None = None
    generator: torch.Generator | None = None


ScoreFn = Callable[[torch.Tensor, ParamStats], torch.Tensor]
#: ``fn(graph, groups, *, data, loss_fn, batches, generator) -> {group id: unit scores}``
GroupScoreFn = Callable[..., dict]


@dataclass(frozen=True)
class Criterion:
    """A registered scoring function, the statistics it needs ("grad", "fisher",
    "act_norm") and the scope its scores are meant to be compared in (None: any)."""

    name: str
    fn: ScoreFn | None
    needs: tuple[str, ...] = ()
    scope: str | None = None
    group: GroupScoreFn | None = None

    @property
    def per_weight(self) -> bool:
        """Whether single weights can be scored (masks); else only whole groups."""
        return self.fn is not None

    def __call__(self, weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
        if self.fn is None:
            raise ConfigError(
                f"criterion {self.name!r} scores whole channel groups only; use it with "
                f"pk.plan / pk.prune, or pick one of {', '.join(list_criteria(kind='mask'))} "
                "for masks"
            )
        for need in self.needs:
            if getattr(stats, need) is None:
                raise ConfigError(
                    f"criterion {self.name!r} needs calibration data ({need}); "
                    "pass data=<loader or list of (inputs, targets) batches>"
                )
        return self.fn(weight.detach(), stats)


_CRITERIA: Registry[Criterion] = Registry("criterion")
_VALID_NEEDS = ("grad", "fisher", "act_norm")


def register_criterion(
    name: str, *, needs: Sequence[str] = (), scope: str | None = None
) -> Callable[[ScoreFn], ScoreFn]:
    """Register ``fn(weight, stats) -> scores`` under ``name``.

    Args:
        name: the name used in ``criterion=`` and in recipes.
        needs: statistics to gather first: ``"grad"``, ``"fisher"`` and/or ``"act_norm"``.
        scope: the scope ``sparsify`` uses when the caller names none (``"row"``:
            compare within each output row, as Wanda does).
    """
    bad = [n for n in needs if n not in _VALID_NEEDS]
    if bad:
        raise ConfigError(f"unknown needs {bad}; valid: {', '.join(_VALID_NEEDS)}")

    def add(fn: ScoreFn) -> ScoreFn:
        old = _CRITERIA.get(name) if name in _CRITERIA else None
        if old is not None and old.fn is not None:
            raise ConfigError(f"criterion {name!r} is already registered; pick another name")
        entry = Criterion(name, fn, tuple(needs), scope, None if old is None else old.group)
        _set(name, entry, replace=old is not None)
        return fn

    return add


def register_group_criterion(name: str) -> Callable[[GroupScoreFn], GroupScoreFn]:
    """Register a group-level reduction under ``name`` (beside, or instead of, a per-weight
    score of the same name): ``fn(graph, groups, *, data, loss_fn, batches, generator)``
    returns ``{group id: 1-D unit scores}``; :func:`prunekit.plan` calls it.
    """

    def add(fn: GroupScoreFn) -> GroupScoreFn:
        old = _CRITERIA.get(name) if name in _CRITERIA else None
        if old is not None and old.group is not None:
            raise ConfigError(f"criterion {name!r} already has a group reduction")
        entry = Criterion(name, None, (), None, fn) if old is None else \
            Criterion(old.name, old.fn, old.needs, old.scope, fn)
        _set(name, entry, replace=old is not None)
        return fn

    return add


def _set(name: str, entry: Criterion, *, replace: bool) -> None:
    if replace:
        _CRITERIA.replace(name, entry)
    else:
        _CRITERIA.register(name)(entry)


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name`` (unknown names list the valid ones)."""
    return _CRITERIA.get(name)


def list_criteria(pattern: str = "*", *, kind: str = "all") -> list[str]:
    """Names of the registered criteria, optionally filtered (``"l*"``).

    Args:
        pattern: shell-style filter on the names.
        kind: ``"all"``; ``"mask"``: those that score single weights (``pk.sparsify``);
            ``"group"``: those that score channel groups (``pk.plan``: every criterion,
            per-weight ones summed over each unit's slices).
    """
    if kind not in ("all", "mask", "group"):
        raise ConfigError(f"unknown criterion kind {kind!r}; valid: all, mask, group")
    names = _CRITERIA.names(pattern)
    if kind == "mask":
        return [n for n in names if _CRITERIA.get(n).per_weight]
    return names


@register_criterion("magnitude")
@register_criterion("l1")
def magnitude(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """|w| (Han et al. 2015, "Learning both Weights and Connections")."""
    return weight.abs()


@register_criterion("l2")
def l2(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """w^2: ranks single weights like magnitude; sums to squared L2 norms over units."""
    return weight.pow(2)


@register_criterion("random")
def random(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """Uniform random scores: the baseline every criterion must beat."""
    return torch.rand(weight.shape, generator=stats.generator).to(weight.device)


@register_criterion("gradient", needs=("grad",))
def gradient(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """|dL/dw|, the mean gradient magnitude on calibration data."""
    return stats.grad.abs()


@register_criterion("taylor", needs=("grad",))
def taylor(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """|w * dL/dw|: first-order Taylor estimate of the loss change when w is removed.

    Molchanov et al. 2017/2019, "Importance Estimation for Neural Network Pruning".
    """
    return (weight * stats.grad).abs()


@register_criterion("obd", needs=("fisher",))
@register_criterion("fisher", needs=("fisher",))
def obd(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """0.5 * F_ii * w^2: second-order saliency of Optimal Brain Damage (LeCun et al. 1990).

    The Hessian diagonal is approximated by the diagonal of the empirical Fisher,
    the mean of squared per-sample gradients.
    """
    return 0.5 * stats.fisher * weight.pow(2)
