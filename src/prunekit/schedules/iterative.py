"""Rounds of prune-then-retrain: iterative pruning and lottery tickets.

Both take the training as a callable you write (usually one line around
:func:`prunekit.recovery.train`), so they work with any loop, loss or optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..mask.targets import find_targets
from ._state import restore, snapshot, unwrap, zero_fraction
from .curves import Geometric, Schedule
from .pruner import MaskPruning, PruneMethod

Finetune = Callable[[nn.Module], Any]
Evaluate = Callable[[nn.Module], float]
TrainFn = Callable[[nn.Module, Callable[[], None]], Any]


@dataclass(frozen=True)
class Round:
    """One round of an iterative run.

    Attributes:
        round: 0 for the starting (dense) model, then 1, 2, ...
        target: the schedule's sparsity for this round.
        sparsity: measured fraction of zero weights over the prunable weights.
        accuracy: what ``evaluate`` returned (None without ``evaluate``).
        kept: False for a round undone because it fell below the accuracy floor.
    """

    round: int
    target: float
    sparsity: float
    accuracy: float | None
    kept: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune_iteratively(
    model: nn.Module,
    schedule: Schedule,
    *,
    finetune: Finetune,
    evaluate: Evaluate | None = None,
    floor: float | None = None,
    method: PruneMethod | None = None,
    **options: Any,
) -> list[Round]:
    """Prune a step, fine-tune, repeat: one round per pruning step of ``schedule``.

    Round ``k`` cuts the model to ``schedule.sparsity_at(t_k)`` (weights pruned in
    earlier rounds stay pruned) and calls ``finetune(model)``. With a ``floor``,
    each round is evaluated and the first round whose accuracy drops below the
    floor is undone: the weights, buffers and masks of the last round at or above
    it come back, and the run stops there. Han et al. 2015 ("Learning both
    Weights and Connections") prune LeNet and AlexNet this way.

    Args:
        model: the trained network, pruned in place.
        schedule: the target per round, e.g. ``Steps(sparsities=(0.5, 0.8, 0.9))``
            or ``Geometric(final=0.95, rate=0.5)``; its steps count rounds.
        finetune: ``finetune(model)`` retrains in place after each cut.
        evaluate: ``evaluate(model) -> accuracy``; required with ``floor``.
        floor: stop at the last round whose accuracy is ``>= floor``.
        method: how to cut (default :class:`MaskPruning` from ``options``).
        **options: options of :class:`MaskPruning` (criterion, scope, ...).

    Returns:
        One :class:`Round` per evaluated state: round 0 (before any cut), then
        each round run, the undone one (if any) last with ``kept=False``.

    Example:
        >>> history = prune_iteratively(
        ...     model, Steps(sparsities=(0.5, 0.75, 0.9, 0.95)),
        ...     finetune=lambda m: train(m, loader, epochs=1, lr=0.01),
        ...     evaluate=lambda m: evaluate_accuracy(m, test_loader), floor=0.88)
    """
    if floor is not None and evaluate is None:
        raise ConfigError("floor needs evaluate=<fn(model) -> accuracy> to measure each round")
    cut = _method(method, options, schedule)
    model = unwrap(model)
    history = [_record(model, 0, 0.0, evaluate)]
    if floor is not None and history[0].accuracy < floor:
        return history
    best = snapshot(model) if floor is not None else None
    done = 0.0
    for number, step in enumerate(schedule.pruning_steps(), start=1):
        target = schedule.sparsity_at(step)
        if target <= done:
            continue
        cut(model, target)
        finetune(model)
        done = target
        history.append(_record(model, number, target, evaluate))
        if floor is None:
            continue
        if history[-1].accuracy < floor:
            history[-1] = Round(**{**history[-1].to_dict(), "kept": False})
            restore(model, best)
            break
        best = snapshot(model)
    return history


def lottery_ticket(
    model: nn.Module,
    *,
    train: TrainFn,
    sparsity: float,
    rate: float = 0.2,
    rewind: int = 0,
    evaluate: Evaluate | None = None,
    method: PruneMethod | None = None,
    **options: Any,
) -> list[Round]:
    """Iterative magnitude pruning with weight rewinding: find a winning ticket.

    1. Keep the weights after ``rewind`` optimizer steps (0 = the initialization)
       while training the dense ``model`` once.
    2. Each round, prune ``rate`` of the remaining weights (magnitude by default),
       set the surviving weights back to the kept ones, masks held, and train again.
    3. Stop when ``sparsity`` is reached; the model ends trained at that sparsity.

    J. Frankle and M. Carbin, "The Lottery Ticket Hypothesis: Finding Sparse,
    Trainable Neural Networks", ICLR 2019 (``rewind=0``); J. Frankle, G. K.
    Dziugaite, D. Roy, M. Carbin, "Linear Mode Connectivity and the Lottery Ticket
    Hypothesis", ICML 2020 (rewinding to an early iteration k > 0). Each round
    calls ``train`` in full: the weights are rewound, the learning-rate schedule
    and optimizer state start afresh.

    Args:
        model: an untrained (freshly initialized) network, pruned and trained in place.
        train: ``train(model, after_step)`` trains in place and calls
            ``after_step()`` after every optimizer step, e.g.
            ``lambda m, cb: pk.recovery.train(m, loader, epochs=5, lr=0.1, after_step=cb)``.
        sparsity: the target, in [0, 1).
        rate: fraction of the remaining weights pruned per round (p = 0.2 in the paper).
        rewind: the optimizer step whose weights the survivors return to.
        evaluate: ``evaluate(model) -> accuracy`` after each training.
        method: how to cut (default :class:`MaskPruning` from ``options``).
        **options: options of :class:`MaskPruning` (criterion, scope, ...).

    Returns:
        Round 0 (dense, trained) and one :class:`Round` per pruning round.
    """
    schedule = Geometric(final=sparsity, rate=rate, start=1)
    if isinstance(rewind, bool) or not isinstance(rewind, int) or rewind < 0:
        raise ConfigError(f"rewind must be an optimizer step >= 0, got {rewind!r}")
    cut = _method(method, options, schedule)
    model = unwrap(model)
    kept = _train_keeping(model, train, rewind)
    history = [_record(model, 0, 0.0, evaluate)]
    for number in range(1, schedule.rounds + 1):
        target = schedule.sparsity_at(number)
        cut(model, target)
        restore(model, kept, keep_masks=True)
        train(model, _noop)
        history.append(_record(model, number, target, evaluate))
    return history


def _train_keeping(model: nn.Module, train: TrainFn, rewind: int):
    """Train ``model`` once; return a snapshot of it after ``rewind`` optimizer steps."""
    state: dict[str, Any] = {"steps": 0, "snap": snapshot(model) if rewind == 0 else None}

    def after_step() -> None:
        state["steps"] += 1
        if state["steps"] == rewind:
            state["snap"] = snapshot(model)

    train(model, after_step)
    if state["snap"] is None:
        raise ConfigError(
            f"rewind={rewind} but training made only {state['steps']} optimizer steps "
            "(or never called after_step); rewind to an earlier step"
        )
    return state["snap"]


def _method(method: PruneMethod | None, options: dict, schedule: Schedule) -> PruneMethod:
    if method is not None and options:
        raise ConfigError(
            f"give either method or the options of MaskPruning ({', '.join(options)}), not both"
        )
    if method is not None:
        return method
    mask_method = MaskPruning(**options)
    mask_method.check(schedule)
    return mask_method


def _record(model: nn.Module, number: int, target: float, evaluate: Evaluate | None) -> Round:
    sparsity = zero_fraction(t.weight for t in find_targets(model))
    accuracy = None if evaluate is None else float(evaluate(model))
    return Round(number, target, sparsity, accuracy)


def _noop() -> None:
    return None
