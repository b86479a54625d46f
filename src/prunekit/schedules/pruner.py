"""Pruning inside your own training loop: a schedule says when and how much, a method cuts.

Example:
    >>> pruner = pk.Pruner(model, pk.make_schedule("agp", final=0.9, end=2000, frequency=100),
    ...                    criterion="magnitude", scope="lamp")
    >>> for inputs, labels in loader:
    ...     loss = loss_fn(model(inputs), labels)
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     pruner.step()
    >>> torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, "ckpt.pt")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn

from ..config import NM, Rule, SparsifyConfig, fold_exclude
from ..errors import ConfigError
from ..mask import enforce
from ..sparsify import sparsify
from ._state import broadcast_masks, masks_of, set_masks, unwrap
from .curves import Schedule, make_schedule


class PruneMethod(Protocol):
    """Brings a model to a target sparsity in place; weights pruned earlier stay pruned.

    Structural methods plug in here too: ``method(model, 0.5)`` may remove half the
    channels instead of masking half the weights.
    """

    def __call__(self, model: nn.Module, sparsity: float) -> Any: ...


class MaskPruning:
    """The default method: :func:`prunekit.sparsify` with fixed options, called with a sparsity.

    With ``pattern="N:M"`` a schedule value ``s`` keeps ``round(M * (1 - s))`` of
    every ``M`` weights, never fewer than ``N``: the schedule's ``final`` should be
    ``1 - N / M`` (0.5 for 2:4), and the pattern tightens from M:M down to N:M.

    Args:
        config: a :class:`~prunekit.config.SparsifyConfig` (its amount is replaced by the
            schedule's value at each cut); or its fields as keywords (criterion, scope,
            granularity, ignore, protect_output, batches, fisher_samples, seed).
        data, loss_fn: as in :func:`prunekit.sparsify`. For
            exactly repeatable (resumable) runs with a data-driven criterion, pass
            ``data`` as a fixed list of batches, not a shuffling loader.
        pattern: ``"N:M"`` for gradual N:M sparsity (see above).

    Example:
        >>> method = MaskPruning(criterion="magnitude", scope="lamp")
        >>> method(model, 0.8)  # per-layer sparsities after the cut
    """

    def __init__(
        self,
        config: SparsifyConfig | None = None,
        *,
        data: Iterable | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            pattern = options.pop("pattern", None)
            fold_exclude(options, "MaskPruning")
            amount = {"pattern": pattern} if pattern is not None else {"sparsity": 0.0}
            config = SparsifyConfig.from_keywords(**amount, **options)
        elif options:
            raise ConfigError(f"give a SparsifyConfig or keywords, not both ({', '.join(options)})")
        self.config = config
        self.nm = config.amount if isinstance(config.amount, NM) else None
        self.data, self.loss_fn = data, loss_fn

    def __call__(self, model: nn.Module, sparsity: float) -> dict[str, float]:
        if self.nm is None:
            amount: Rule | NM = Rule("sparsity", sparsity)
        else:
            n, m = self.nm.n, self.nm.m
            keep = max(n, min(m, round(m * (1.0 - sparsity))))
            if keep == m:
                return {}
            amount = NM(keep, m)
        return sparsify(model, self.config.replace(amount=amount), data=self.data,
                        loss_fn=self.loss_fn)

    def check(self, schedule: Schedule) -> None:
        """ConfigError when ``schedule`` cannot reach this method's N:M pattern."""
        if self.nm is not None and schedule.final < self.nm.sparsity - 1e-9:
            n, m = self.nm.n, self.nm.m
            raise ConfigError(
                f"pattern {n}:{m} needs the schedule to end at sparsity {1 - n / m:g}, "
                f"but it ends at {schedule.final:g}; set final={1 - n / m:g}"
            )


class Pruner:
    """Prunes a model as its training goes, following a schedule; resumable like an optimizer.

    Call :meth:`step` after every optimizer step. After ``k`` calls the model is
    at the schedule's sparsity for step ``k``; step 0 is applied when the pruner
    is made (as a learning-rate scheduler sets the first rate), so a ``oneshot``
    schedule prunes at once. The cut itself is the ``method``'s
    (:class:`MaskPruning` by default, built from the keyword ``options``).

    Under ``torch.distributed`` the masks are broadcast from rank 0 after every
    cut, so every rank holds the same masks even when a data-driven criterion saw
    different batches on each rank. A DistributedDataParallel-wrapped model is
    unwrapped.

    Args:
        model: the network, pruned in place.
        schedule: a :class:`Schedule`, or its dict form ``{"name": "agp", ...}``.
        method: how to cut; when None, ``MaskPruning(**options)``.
        **options: options of :class:`MaskPruning` (criterion, scope, exclude, ...).

    Example:
        >>> pruner = Pruner(model, make_schedule("agp", final=0.9, end=1000, frequency=50),
        ...                 scope="global")
        >>> train(model, loader, epochs=3, lr=0.05, after_step=pruner.step)
        >>> pruner.sparsity
        0.9
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | dict,
        *,
        method: PruneMethod | None = None,
        **options: Any,
    ) -> None:
        if isinstance(schedule, dict):
            schedule = make_schedule(**schedule)
        if not isinstance(schedule, Schedule):
            raise ConfigError(
                f"schedule must be a Schedule (see prunekit.schedules.make_schedule), "
                f"got {type(schedule).__name__}"
            )
        if method is not None and options:
            raise ConfigError(
                f"give either method or the options of MaskPruning ({', '.join(options)}), not both"
            )
        self.model = unwrap(model)
        self.schedule = schedule
        self.method = method if method is not None else MaskPruning(**options)
        if isinstance(self.method, MaskPruning):
            self.method.check(schedule)
        self.step_count = 0
        self._applied = 0.0
        self._apply()

    @property
    def sparsity(self) -> float:
        """The schedule's target sparsity that the model is at now."""
        return self._applied

    def step(self) -> None:
        """Advance one step; cut when the schedule's target has risen.

        Masked weights are re-zeroed every step: an optimizer whose momentum
        predates a cut would otherwise move them until the next forward pass.
        """
        self.step_count += 1
        self._apply()
        enforce(self.model)

    def state_dict(self) -> dict[str, Any]:
        """Step counter, applied target, schedule and masks (plain tensors and numbers)."""
        return {
            "step": self.step_count,
            "sparsity": self._applied,
            "schedule": self.schedule.to_dict(),
            "masks": masks_of(self.model),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the step counter and the masks come back (weights are the model's).

        Load the pruner's state first, then the model's state dict: the masks it
        attaches make the model accept the ``*_mask`` entries of a saved state dict.

        Raises:
            ConfigError: the state was saved with another schedule, or its masks do
                not fit this model.
        """
        saved = dict(state["schedule"])
        if _normalized(saved) != _normalized(self.schedule.to_dict()):
            raise ConfigError(
                f"this state was saved with schedule {saved}, but the pruner has "
                f"{self.schedule.to_dict()}; build the Pruner with the saved schedule"
            )
        set_masks(self.model, state["masks"])
        self.step_count = int(state["step"])
        self._applied = float(state["sparsity"])

    def _apply(self) -> None:
        target = self.schedule.sparsity_at(self.step_count)
        if target <= self._applied:
            return
        self.method(self.model, target)
        broadcast_masks(self.model)
        self._applied = target


def _normalized(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
