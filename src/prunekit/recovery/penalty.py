"""Sparse training before a structural cut: penalties that push whole groups toward zero.

Train with one of these added to the loss, then cut the groups that ended up
small (channels whose batch-norm scale is near zero, rows whose norm is near
zero): the cut then removes little that the network still uses.

Example:
    >>> penalty = SparsityPenalty(model, kind="bn_scale", strength=1e-4)
    >>> train(model, loader, epochs=10, lr=0.05, loss_fn=penalty.loss())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._registry import Registry
from .._utils import match_any
from ..errors import ConfigError
from ..mask.targets import find_targets

GroupsFn = Callable[[nn.Module, Sequence[str]], list[torch.Tensor]]
_PENALTIES: Registry[GroupsFn] = Registry("penalty")


def list_penalties() -> list[str]:
    """Names accepted by ``SparsityPenalty(kind=...)``: ``bn_scale``, ``group_lasso``."""
    return _PENALTIES.names()


@_PENALTIES.register("bn_scale")
def _bn_scales(model: nn.Module, exclude: Sequence[str]) -> list[torch.Tensor]:
    """Every batch-norm scale on its own: the sum is ``sum |gamma|``.

    Z. Liu et al., "Learning Efficient Convolutional Networks through Network
    Slimming", ICCV 2017.
    """
    return [
        m.weight.reshape(-1, 1)  # (C, 1): one group per channel
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.weight is not None and not match_any(name, exclude)
    ]


@_PENALTIES.register("group_lasso")
def _output_rows(model: nn.Module, exclude: Sequence[str]) -> list[torch.Tensor]:
    """One group per output unit (row of a Linear, filter of a Conv): ``sum ||W_g||_2``.

    W. Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
    """
    return [
        t.weight.movedim(t.spec.out_dim, 0).flatten(1)  # (out, rest)
        for t in find_targets(model)
        if not (match_any(t.module_name, exclude) or match_any(t.name, exclude))
    ]


class SparsityPenalty:
    """``strength * sum_g ||g||_2`` over groups of parameters, added to a loss.

    Args:
        model: the network being trained.
        kind: ``"bn_scale"`` (|gamma| of every batch-norm channel) or
            ``"group_lasso"`` (L2 norm of every output unit of the prunable layers).
        strength: the penalty's weight, >= 0 (1e-5 to 1e-4 is typical).
        exclude: module name patterns left out (e.g. the classifier ``"fc"``).
        groups: instead of ``kind``, a function ``groups(model, exclude)``
            returning 2-D tensors whose rows are the groups (the structural
            engine's coupled groups plug in here).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kind: str = "bn_scale",
        strength: float = 1e-4,
        exclude: Sequence[str] = (),
        groups: GroupsFn | None = None,
    ) -> None:
        if not (isinstance(strength, (int, float)) and strength >= 0):
            raise ConfigError(f"strength must be >= 0, got {strength!r}")
        self.model, self.strength = model, float(strength)
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        self.groups = groups if groups is not None else _PENALTIES.get(kind)
        if not self.groups(model, self.exclude):
            raise ConfigError(
                f"penalty {kind!r} finds no groups in this model (no batch norm for bn_scale?)"
            )

    def __call__(self) -> torch.Tensor:
        """The penalty now: ``strength * sum over groups of the L2 norm of each row``."""
        rows = self.groups(self.model, self.exclude)
        return self.strength * sum(r.norm(dim=1).sum() for r in rows)

    def loss(
        self, base: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A ``loss_fn(logits, labels)``: ``base`` (cross-entropy by default) plus the penalty."""
        base = base or F.cross_entropy

        def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return base(logits, labels) + self()

        return loss_fn
