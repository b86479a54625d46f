"""The criteria registry: per-weight importance scores.

A criterion maps a weight tensor (and, for data-driven criteria, statistics
gathered on calibration data) to a non-negative score of the same shape; higher
means more important. Coarser units (neurons, N:M blocks, channel groups) are
scored by summing the scores of their weights.

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


@dataclass(frozen=True)
class Criterion:
    """A registered scoring function, the statistics it needs ("grad", "fisher",
    "act_norm") and the scope its scores are meant to be compared in (None: any)."""

    name: str
    fn: ScoreFn
    needs: tuple[str, ...] = ()
    scope: str | None = None

    def __call__(self, weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
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
        _CRITERIA.register(name)(Criterion(name, fn, tuple(needs), scope))
        return fn

    return add


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name`` (unknown names list the valid ones)."""
    return _CRITERIA.get(name)


def list_criteria(pattern: str = "*") -> list[str]:
    """Names of the registered criteria, optionally filtered (``"l*"``)."""
    return _CRITERIA.names(pattern)


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
