"""The stages of ``prunekit run`` between the dense baseline and the measurement.

A recipe's ``prune`` section picks a *cut* (masks with :func:`prunekit.sparsify`, or
channels with :func:`prunekit.prune`), its ``schedule`` section a *runner* that decides
when the cut happens, and its ``recovery`` section the *repairs* made right after a
cut and the loss of fine-tuning. Each is looked up by name in a small registry, so a
new schedule kind is one registered function here plus its section in
:mod:`prunekit.run.recipe`. Everything calls the library; nothing here is an algorithm.

Example:
    >>> outcome = prune_and_recover(model, Job(ctx, recipe.prune, teacher=dense, ...))
    >>> outcome.schedule["measured"][-1]
    [1, 0.9]
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from .._registry import Registry
from .._utils import versions
from ..allocation import allocate, apply_allocation
from ..allocation.allocate import DEFAULT_GRID, score_after_training
from ..config import Budget, PlanConfig, SparsifyConfig
from ..data import Splits
from ..data.sources import split_batch
from ..errors import ConfigError
from ..importance import get_criterion
from ..mask import bake, remove_mask
from ..measure import count_macs, count_params
from ..measure.tasks import evaluate_task
from ..oneshot import oneshot
from ..oneshot.blocks import find_blocks
from ..recovery import Distiller, predict, recalibrate_bn, reconstruct, train
from ..recovery.penalty import SparsityPenalty
from ..schedules import (
    Geometric,
    MaskPruning,
    OneShot,
    Pruner,
    Steps,
    Surgery,
    lottery_ticket,
    make_schedule,
    prune_iteratively,
)
from ..sparsify import sparsify, sparsity_of
from ..structured import prune as prune_model
from ..verify import verify
from .plans import classifier_feeders, compose, out_index
from .prepare import Prepared, head_of
from .recipe import PruneConfig, Recipe

__all__ = [
    "CUTS",
    "Context",
    "Job",
    "Outcome",
    "REPAIRS",
    "RUNNERS",
    "RewindKeeper",
    "penalty_loss",
    "preflight",
    "prune_and_recover",
    "train_phase",
]


# --- what a run shares ------------------------------------------------------------------


@dataclass
class Context:
    """What the steps of one run share: the recipe, the output folder, the prepared model,
    data and task (:class:`prunekit.run.prepare.Prepared`), and the dense reference once
    the baseline is ready."""

    recipe: Recipe
    out: Any
    prepared: Prepared
    quiet: bool
    versions: dict[str, str] = field(default_factory=versions)
    reference: nn.Module | None = None

    @property
    def splits(self) -> Splits:
        """A built-in dataset's tensors (reference runs)."""
        return self.prepared.data.splits

    @property
    def val(self) -> Any:
        return self.prepared.data.val

    def say(self, message: str) -> None:
        """A progress line on stderr, unless quiet."""
        if not self.quiet:
            print(f"prunekit: {message}", file=sys.stderr, flush=True)

    def loader(self, split: str, *, train: bool) -> Any:
        """A loader over the ``train``, ``val`` or ``test`` split (None when there is none)."""
        return self.prepared.data.loader(split, train=train)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch over the training split, on each rank (under
        torchrun every rank takes every ``world_size``-th batch)."""
        return _per_rank(self.prepared.data.steps_per_epoch())

    def accuracy(self, model: nn.Module, split: str) -> float:
        """The task's headline score of ``model`` on a split (top-1 accuracy for
        classification; agreement, cosine or perplexity for the other tasks)."""
        if not self.prepared.own:
            y_true, y_pred = predict(model, self.loader(split, train=False))
            return float((y_true == y_pred).mean())
        return float(self.quality(model, split)[self.prepared.task.headline])

    def quality(self, model: nn.Module, split: str = "test") -> dict[str, Any]:
        """The task's metrics of ``model`` on a split, against the dense reference."""
        p = self.prepared
        return evaluate_task(p.task, model, self.loader(split, train=False),
                             reference=self.reference if self.reference is not None else model,
                             num_classes=p.num_classes)


def train_phase(
    model: nn.Module,
    ctx: Context,
    phase: Any,
    *,
    desc: str,
    loss_fn: Callable | None = None,
    after_step: Callable[[], None] | None = None,
    distill: Any = None,
) -> int:
    """Train with a recipe's ``train`` or ``finetune`` section on the task's objective
    (distilled from the dense reference when ``distill`` is given); returns the steps."""
    loader = ctx.loader("train", train=True)
    if loader is None:
        if phase.epochs:
            ctx.say(f"{desc}: skipped, the data has no training split")
        return 0
    if phase.epochs:
        ctx.say(f"{desc}: {phase.epochs} epochs of {phase.optimizer}, lr {phase.lr}")
    p = ctx.prepared
    net, batches = p.net(model), p.batches(loader, ctx.reference)
    options = dict(epochs=phase.epochs, lr=phase.lr, optimizer=phase.optimizer,
                   momentum=phase.momentum, weight_decay=phase.weight_decay,
                   schedule=phase.schedule, seed=ctx.recipe.seed, quiet=ctx.quiet, desc=desc,
                   after_step=after_step)
    base = loss_fn or (p.objective.loss if p.own else None)
    if distill is None:
        train(net, batches, loss_fn=base, **options)
    else:
        teacher = p.net(ctx.reference)
        with Distiller(net, teacher, temperature=distill.temperature,
                       alpha=distill.alpha) as distilled:
            train(net, batches, loss_fn=distilled, **options)
    return phase.epochs * _per_rank(len(loader))


def _per_rank(batches: int) -> int:
    """Batches each rank takes of ``batches`` (all of them in a single process)."""
    if dist.is_available() and dist.is_initialized():
        return max(1, batches // dist.get_world_size())
    return batches


def mask_config(prune: PruneConfig, *, seed: int, criterion: str | None = None
                ) -> SparsifyConfig:
    """The :class:`~prunekit.config.SparsifyConfig` a mask prune section spells."""
    return prune.sparsify_config(seed=seed, criterion=criterion)


def plan_config(prune: PruneConfig, model: nn.Module, example: Any, *, seed: int,
                criterion: str | None = None, heads: tuple[str, ...] = ()) -> PlanConfig:
    """The :class:`~prunekit.config.PlanConfig` a channel prune section spells (with
    ``heads`` kept whole, and the classifier's feeders ignored under ``protect_output``)."""
    ignore = list(heads)
    if prune.protect_output:
        ignore += classifier_feeders(model, example)
    return prune.plan_config(seed=seed, criterion=criterion, ignore=tuple(ignore))


def penalty_loss(model: nn.Module, recipe: Recipe, base: Callable | None = None
                 ) -> Callable | None:
    """The recipe's sparsity penalty as a ``loss_fn``: ``base`` (the task's loss;
    cross-entropy by default) plus the penalty."""

    p = recipe.penalty
    if p is None:
        return None
    return SparsityPenalty(model, kind=p.kind, strength=p.strength,
                           exclude=p.exclude).loss(base)


class RewindKeeper:
    """Keeps the baseline's weights after ``step`` optimizer steps (lottery rewinding).

    Pass it as the baseline training's ``after_step``; step 0 is the initialization.
    """

    def __init__(self, model: nn.Module, step: int) -> None:
        self.model, self.step, self.count = model, step, 0
        self.state = _copy_state(model) if step == 0 else None

    def __call__(self) -> None:
        self.count += 1
        if self.count == self.step:
            self.state = _copy_state(self.model)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Job:
    """One point of a run: a prune section and what its schedule needs.

    Attributes:
        ctx: the run's context.
        prune: this point's prune section (its amount may come from a sweep).
        teacher: the dense baseline, never changed (distillation, reconstruction).
        example: a few training inputs, (N, C, H, W), for tracing and verification.
        rewind: lottery tickets: the baseline's weights at the rewind step.
    """

    ctx: Context
    prune: PruneConfig
    teacher: nn.Module
    example: torch.Tensor
    rewind: dict[str, torch.Tensor] | None = None

    @property
    def recipe(self) -> Recipe:
        return self.ctx.recipe


@dataclass
class Outcome:
    """What a schedule did, as plain data for ``metrics.json`` and the report.

    Attributes:
        schedule: the schedule as data (``curve``: ``Schedule.to_dict()``, ``unit``:
            ``step`` or ``round``, ``steps``: how many were run, ``quantity``: what is
            measured, ``measured``: ``[x, value]`` pairs at the cuts).
        rounds: per round (iterative, lottery): target, measured, accuracy, kept.
        cuts: structured cuts: groups cut, params and MACs before and after, verify.
        recovery: what each repair did, one entry per cut.
        oneshot: a ``prune.method`` cut (pk.oneshot): method, sparsity, time, peak memory,
            calibration batches, per-layer sparsity.
        plan: the structured plan from the dense network to the pruned one.
    """

    schedule: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    cuts: list[dict[str, Any]] = field(default_factory=list)
    recovery: list[dict[str, Any]] = field(default_factory=list)
    allocation: dict[str, Any] = field(default_factory=dict)
    oneshot: dict[str, Any] = field(default_factory=dict)
    plan: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able part (the plan is saved on its own as ``plan.json``)."""
        out: dict[str, Any] = {"schedule": self.schedule}
        for key in ("rounds", "cuts", "recovery", "allocation", "oneshot"):
            if any(getattr(self, key)):  # recovery holds one (maybe empty) entry per cut
                out[key] = getattr(self, key)
        return out


# --- cuts: how the prune section removes weights ----------------------------------------


class Cut(Protocol):
    """A prune section made callable: ``cut(model, amount)`` brings the model to a
    cumulative amount (a :class:`prunekit.schedules.PruneMethod`); :meth:`once` cuts
    the section's own amount; :meth:`measure` is the quantity schedules plot."""

    quantity: str
    final: float | None
    log: list[float]
    before: nn.Module | None

    def __call__(self, model: nn.Module, amount: float) -> Any: ...

    def once(self, model: nn.Module) -> None: ...

    def measure(self, model: nn.Module) -> float: ...

    def finish(self, model: nn.Module) -> None: ...

    def undo(self) -> None: ...

    def out_index(self, model: nn.Module) -> dict[str, list[int]]: ...


CUTS: Registry[Callable[[nn.Module, Job], Cut]] = Registry("granularity")


class MaskCut:
    """Masks with :func:`prunekit.sparsify` (granularity ``weight`` or ``neuron``)."""

    quantity = "sparsity"

    def __init__(self, model: nn.Module, job: Job, *, keep_before: bool = False) -> None:
        p, ctx = job.prune, job.ctx
        self.prune, self.keep_before = p, keep_before
        self.final = p.sparsity
        self.config = mask_config(p, seed=ctx.recipe.seed)
        self.oneshot = p.oneshot_config(quiet=ctx.quiet) if p.method else None
        self.data = ctx.loader("train", train=True)
        self.log: list[float] = []
        self.oneshot_result: dict[str, Any] = {}
        self.before: nn.Module | None = None

    def __call__(self, model: nn.Module, amount: float) -> None:
        self._keep(model)
        MaskPruning(self.config, data=self.data)(model, amount)
        self.log.append(self.measure(model))

    def once(self, model: nn.Module) -> None:
        self._keep(model)
        if self.oneshot is not None:
            self._oneshot(model)
        else:
            sparsify(model, self.config, data=self.data)
        self.log.append(self.measure(model))

    def _oneshot(self, model: nn.Module) -> None:
        """``prune.method``: pk.oneshot, block by block, on batches of the training split."""
        if self.data is None:
            raise ConfigError(f"prune.method {self.prune.method!r} calibrates on the training "
                              "split, and the data has none; give the data a train split")
        batches = [split_batch(b)[0] for b in
                   itertools.islice(self.data, self.prune.calibration_batches)]
        result = oneshot(model, batches, self.oneshot)
        self.oneshot_result = {"method": self.oneshot.method, "sparsity": result.sparsity,
                               "seconds": round(result.seconds, 2),
                               "peak_rss_bytes": result.peak_rss_bytes,
                               "calibration_batches": len(batches), "blocks": result.blocks,
                               "layers": result.layer_sparsity}

    def allocated(self, model: nn.Module, allocation: Any) -> None:
        """Masks with the per-layer sparsities an allocation chose."""
        self._keep(model)
        apply_allocation(model, allocation)
        self.log.append(self.measure(model))
        self.final = self.log[-1]

    def measure(self, model: nn.Module) -> float:
        return sparsity_of(model)

    def finish(self, model: nn.Module) -> None:
        bake(model)

    def undo(self) -> None:
        """Forget the last cut (the library restored the model's masks and weights)."""
        self.log.pop()

    def out_index(self, model: nn.Module) -> dict[str, list[int]]:
        return {}

    def _keep(self, model: nn.Module) -> None:
        self.before = copy.deepcopy(model) if self.keep_before else None


class ChannelCut:
    """Channels removed with :func:`prunekit.prune`; every cut verified with
    :func:`prunekit.verify`, and successive cuts composed into one plan."""

    quantity = "params removed"

    def __init__(self, model: nn.Module, job: Job, *, keep_before: bool = False) -> None:
        p, ctx = job.prune, job.ctx
        self.key, self.final = p.amount
        self.example, self.keep_before = job.example, keep_before
        self.config = plan_config(p, model, job.example, seed=ctx.recipe.seed,
                                  heads=_heads(ctx))
        self.data = ctx.loader("train", train=True)
        self.dense = self._cost(model)
        self.done = 0.0
        self.plan: Any = None
        self.last: Any = None
        self.cuts: list[dict[str, Any]] = []
        self.log: list[float] = []
        self.before: nn.Module | None = None
        self._earlier: list[tuple[Any, Any, float]] = []  # (plan, last, done) before each cut

    def __call__(self, model: nn.Module, amount: float) -> None:
        self._cut(model, self.config.replace(**self._step(self._cost(model), amount)), amount)

    def allocated(self, model: nn.Module, allocation: Any) -> None:
        """Cut once with the per-group ratios an allocation chose."""
        config = self.config.replace(ratio=0.0, ratios=tuple(allocation.ratios.items()),
                                     budget=None, round_to=allocation.round_to)
        self._cut(model, config, None)
        self.final = self.done = self.log[-1]

    def _cut(self, model: nn.Module, config: PlanConfig, amount: float | None) -> None:
        self._earlier.append((self.plan, self.last, self.done))
        before = copy.deepcopy(model)
        start = self._cost(model)
        plan = prune_model(model, self.example, config, data=self.data)
        result = verify(before, model, plan, self.example)
        self.cuts.append(self._summary(plan, start, self._cost(model), result))
        self.plan = plan if self.plan is None else compose(self.plan, plan)
        self.last, self.done = plan, amount
        self.before = before if self.keep_before else None
        self.log.append(self.measure(model))

    def once(self, model: nn.Module) -> None:
        self(model, self.final)

    def measure(self, model: nn.Module) -> float:
        return 1.0 - self._cost(model)["params"] / self.dense["params"]

    def finish(self, model: nn.Module) -> None:
        return None

    def undo(self) -> None:
        """Forget the last cut (the library put the channels back): its plan, log and summary."""
        self.plan, self.last, self.done = self._earlier.pop()
        self.cuts.pop()
        self.log.pop()

    def out_index(self, model: nn.Module) -> dict[str, list[int]]:
        return out_index(model, self.last)

    def _step(self, now: dict[str, int], amount: float) -> dict[str, Any]:
        """This cut's options: what is left to remove, as a fraction of the current model."""
        if self.key == "ratio":
            return {"ratio": 1.0 - (1.0 - amount) / (1.0 - self.done)}
        left = now[self.key] / self.dense[self.key]  # fraction of the dense cost still there
        return {"budget": Budget(self.key, max(0.0, 1.0 - (1.0 - amount) / left))}

    def _cost(self, model: nn.Module) -> dict[str, int]:
        one = head_of(self.example, 1)
        return {"params": count_params(model), "macs": count_macs(model, one).dense}

    def _summary(self, plan: Any, start: dict, end: dict, result: Any) -> dict[str, Any]:
        cut = [g for g in plan.groups if g.removed]
        return {
            "groups_cut": len(cut),
            "units_removed": plan.removed_units,
            "params_before": start["params"],
            "params_after": end["params"],
            "macs_before": start["macs"],
            "macs_after": end["macs"],
            "groups": [{"name": g.name, "size": g.size, "kept": len(g.kept)} for g in cut],
            "left_whole": plan.left_whole,
            "verify": {"ok": bool(result.ok), "max_abs_diff": float(result.max_abs_diff),
                       "message": result.message},
        }


def _heads(ctx: Context) -> tuple[str, ...]:
    """Output layers a channel cut keeps whole: your own model's heads (a reference
    network's classifier keeps its outputs anyway)."""
    return ctx.prepared.heads if ctx.prepared.own else ()


CUTS.register("weight")(MaskCut)
CUTS.register("neuron")(MaskCut)
CUTS.register("channel")(ChannelCut)


def make_cut(model: nn.Module, job: Job) -> Cut:
    """The cut of the job's prune section; it keeps the pre-cut model when a repair needs it."""
    keep = job.recipe.recovery.reconstruct is not None
    return CUTS.get(job.prune.granularity)(model, job, keep_before=keep)


# --- repairs right after a cut, and the fine-tuning loss -------------------------------------


Repair = Callable[[nn.Module, Job, Cut, Any], Any]
REPAIRS: dict[str, Repair] = {}  # in the order they run


def _repair(name: str) -> Callable[[Repair], Repair]:
    def add(fn: Repair) -> Repair:
        REPAIRS[name] = fn
        return fn

    return add


@_repair("reconstruct")
def _reconstruct(model: nn.Module, job: Job, cut: Cut, config: Any) -> dict[str, Any]:
    """Least-squares reconstruction of every layer against the model before the cut."""

    errors = reconstruct(
        model,
        cut.before,
        job.ctx.loader("train", train=True),
        batches=config.batches,
        ridge=config.ridge,
        out_index=cut.out_index(model),
    )
    cut.before = None

    def mean(key: str) -> float:
        return sum(e[key] for e in errors.values()) / max(len(errors), 1)

    return {"layers": len(errors), "error_before": mean("before"), "error_after": mean("after")}


@_repair("bn_recalibration")
def _recalibrate(model: nn.Module, job: Job, cut: Cut, config: Any) -> dict[str, Any]:
    """Batch-norm statistics recomputed on training batches."""

    loader = job.ctx.loader("train", train=True)
    return {"layers": recalibrate_bn(model, loader, batches=config.batches, mode=config.mode)}


def repair(model: nn.Module, job: Job, cut: Cut) -> dict[str, Any]:
    """Run the recipe's repairs (reconstruct, then BN recalibration) after a cut."""
    done = {}
    for name, fn in REPAIRS.items():
        config = getattr(job.recipe.recovery, name)
        if config is not None:
            job.ctx.say(f"recovery: {name.replace('_', ' ')}")
            done[name] = fn(model, job, cut, config)
    return done


def finetune(
    model: nn.Module, job: Job, *, after_step: Callable[[], None] | None = None,
    desc: str = "fine-tune",
) -> int:
    """The ``finetune`` section, distilled from the dense baseline when the recipe asks;
    returns the steps."""
    return train_phase(model, job.ctx, job.recipe.finetune, desc=desc, after_step=after_step,
                       distill=job.recipe.recovery.distill)


# --- schedules: when the cut happens ----------------------------------------------------------


Runner = Callable[[nn.Module, Job], tuple[Outcome, Cut]]
RUNNERS: Registry[Runner] = Registry("schedule kind")


def prune_and_recover(model: nn.Module, job: Job) -> Outcome:
    """Cut, repair and fine-tune ``model`` in place as the recipe's schedule says."""
    kind = job.recipe.schedule.kind
    job.ctx.say(f"pruning: {_describe_amount(job.prune)}, schedule {kind}")
    outcome, cut = RUNNERS.get(kind)(model, job)
    cut.finish(model)
    outcome.cuts = getattr(cut, "cuts", [])
    outcome.oneshot = getattr(cut, "oneshot_result", {})
    outcome.plan = getattr(cut, "plan", None)
    return outcome


def _describe_amount(prune: PruneConfig) -> str:
    key, value = prune.amount
    if prune.method is not None:
        return f"{key} {value}, {prune.method} block by block (pk.oneshot)"
    return f"{key} {value}, {prune.criterion}, {prune.scope}, {prune.granularity}"


def _trace(curve: Any, steps: int, measured: list, *, unit: str, quantity: str) -> dict:
    """The schedule as data for metrics.json and the plot (JSON types only)."""
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in curve.to_dict().items()}
    return {"curve": data, "unit": unit, "steps": steps, "quantity": quantity,
            "measured": measured}


@RUNNERS.register("oneshot")
def _oneshot(model: nn.Module, job: Job) -> tuple[Outcome, Cut]:
    """Cut once, repair, fine-tune."""

    allocation = allocate_for(model, job)
    cut = make_cut(model, job)
    if allocation is None:
        cut.once(model)
    else:
        cut.allocated(model, allocation)
    outcome = Outcome(recovery=[repair(model, job, cut)],
                      allocation={} if allocation is None else _allocation_summary(allocation))
    steps = finetune(model, job)
    final = cut.final if cut.final is not None else cut.log[-1]
    outcome.schedule = _trace(OneShot(final=final), steps, [[0, cut.log[-1]]], unit="step",
                              quantity=cut.quantity)
    return outcome, cut


def allocate_for(model: nn.Module, job: Job) -> Any:
    """The recipe's ``allocate`` section carried out on the dense model (None without one):
    candidates judged on the validation split; the allocation and its history are written
    to ``allocation.json`` in the run folder."""
    a, ctx, p = job.recipe.allocate, job.ctx, job.prune
    if a is None:
        return None
    ignore = plan_config(p, model, job.example, seed=0, heads=_heads(ctx)).ignore \
        if p.structured else tuple(p.exclude or ())
    ctx.say(f"allocating with {a.kind} under {a.budget}")
    return allocate(
        model, head_of(job.example, 1), kind=a.kind, budget=a.budget,
        evaluate=_allocation_score(job, "finetune_steps") if a.needs_evaluate else None,
        final_evaluate=_allocation_score(job, "final_steps") if a.final_steps else None,
        granularity="channel" if p.structured else "mask", criterion=p.criterion,
        ignore=ignore, grid=a.grid or DEFAULT_GRID, round_to=a.round_to,
        batch_size=a.batch_size, threads=a.threads, clock=a.clock, seed=ctx.recipe.seed,
        population=a.population, generations=a.generations, genes=a.genes,
        spread=a.spread, block_depth=a.block_depth, measure=a.measure, runtime=a.runtime,
        history_path=ctx.out / "allocation.json", progress=ctx.say)


def _allocation_score(job: Job, key: str) -> Callable[[nn.Module], float]:
    """Validation accuracy of a candidate, after the training steps ``allocate.<key>`` asks
    for (``finetune_steps`` for the search's candidates, ``final_steps`` for its finalists)."""
    ctx, steps = job.ctx, getattr(job.recipe.allocate, key)

    def val_accuracy(m: nn.Module) -> float:
        return ctx.accuracy(m, "val")

    if not steps:
        return val_accuracy
    p, loader = ctx.prepared, ctx.loader("train", train=True)
    if loader is None:
        raise ConfigError(f"allocate.{key} trains each candidate on the training split, "
                          f"and the data has none; set {key}: 0")
    return score_after_training(val_accuracy, p.batches(loader, ctx.reference),
                                steps=steps, lr=job.recipe.finetune.lr,
                                loss_fn=p.objective.loss if p.own else None,
                                seed=job.recipe.seed, wrap=p.net)


def _allocation_summary(allocation: Any) -> dict[str, Any]:
    return {"kind": allocation.kind, "budget": allocation.budget, "ratios": allocation.ratios,
            "round_to": allocation.round_to, "predicted": allocation.predicted,
            "dense": allocation.dense, "quality": allocation.quality,
            "steps": len(allocation.history),
            "latency": {k: v for k, v in allocation.latency.items() if k != "checks"}}


@RUNNERS.register("gradual")
def _gradual(model: nn.Module, job: Job) -> tuple[Outcome, Cut]:
    """AGP / polynomial during fine-tuning, through :class:`prunekit.Pruner`."""

    s, spe = job.recipe.schedule, job.ctx.steps_per_epoch()
    start = round(s.start * spe)
    options = dict(final=job.prune.sparsity, initial=s.initial, start=start,
                   end=max(round(s.end * spe), start + 1), frequency=s.frequency)
    if s.exponent is not None and s.curve == "polynomial":
        options["exponent"] = s.exponent
    curve = make_schedule(s.curve, **options)
    cut = make_cut(model, job)
    pruner = Pruner(model, curve, method=cut)
    measured = [[0, cut.measure(model)]]

    def after_step() -> None:
        reached = pruner.sparsity
        pruner.step()
        if pruner.sparsity != reached:
            measured.append([pruner.step_count, cut.log[-1]])

    steps = finetune(model, job, after_step=after_step)
    return Outcome(schedule=_trace(curve, steps, measured, unit="step",
                                   quantity=cut.quantity)), cut


def _round_targets(final: float, rounds: int, spacing: str) -> list[float]:
    """Cumulative targets of iterative rounds, the last exactly ``final``."""
    if spacing == "linear":
        values = [final * k / rounds for k in range(1, rounds)]
    else:  # the same fraction of what is left, each round
        values = [1.0 - (1.0 - final) ** (k / rounds) for k in range(1, rounds)]
    return [*values, final]


@RUNNERS.register("iterative")
def _iterative(model: nn.Module, job: Job) -> tuple[Outcome, Cut]:
    """Rounds of cut, repair, fine-tune via :func:`prunekit.schedules.prune_iteratively`."""

    s, ctx = job.recipe.schedule, job.ctx
    cut = make_cut(model, job)
    curve = Steps(sparsities=tuple(_round_targets(cut.final, s.rounds, s.spacing)), start=1)
    outcome = Outcome()
    split = "val" if s.floor is not None else "test"

    def finetune_round(m: nn.Module) -> None:
        outcome.recovery.append(repair(m, job, cut))
        finetune(m, job, desc=f"fine-tune, round {len(cut.log)} of {s.rounds}")

    history = prune_iteratively(model, curve, finetune=finetune_round, floor=s.floor,
                                evaluate=lambda m: ctx.accuracy(m, split), method=cut)
    outcome.rounds = [_round_row(r.to_dict(), cut, split) for r in history]
    if not history[-1].kept:  # the model is back at the last round above the floor
        cut.undo()
    measured = [[r["round"], r["measured"]] for r in outcome.rounds[1:]]
    outcome.schedule = _trace(curve, s.rounds, measured, unit="round", quantity=cut.quantity)
    return outcome, cut


def _round_row(row: dict[str, Any], cut: Cut, split: str) -> dict[str, Any]:
    """A library Round as a report row: the cut's own measure, and which split was scored."""
    number = row["round"]
    measured = cut.log[number - 1] if number else 0.0
    return {**row, "measured": measured, "quantity": cut.quantity, "split": split}


@RUNNERS.register("lottery")
def _lottery(model: nn.Module, job: Job) -> tuple[Outcome, Cut]:
    """Iterative magnitude pruning with rewinding via :func:`prunekit.schedules.lottery_ticket`.

    The dense training of round 0 is the baseline the pipeline already trained: it is
    replayed (the survivors' weights after ``rewind`` steps were kept while training it),
    so every point of a sweep starts from the same ticket search.
    """

    s, ctx = job.recipe.schedule, job.ctx
    cut = make_cut(model, job)
    trained = _copy_state(model)
    model.load_state_dict(job.rewind)
    rounds = {"done": 0}

    def train_round(m: nn.Module, after_step: Callable[[], None]) -> None:
        if rounds["done"] == 0:  # round 0 is the baseline: replay its first steps
            for _ in range(s.rewind):
                after_step()
            m.load_state_dict(trained)
        else:
            train_phase(m, ctx, job.recipe.train, desc=f"lottery round {rounds['done']}",
                        after_step=after_step)
        rounds["done"] += 1

    history = lottery_ticket(model, train=train_round, sparsity=cut.final, rate=s.rate,
                             rewind=s.rewind, evaluate=lambda m: ctx.accuracy(m, "test"),
                             method=cut)
    outcome = Outcome(rounds=[_round_row(r.to_dict(), cut, "test") for r in history])
    finetune(model, job)
    curve = Geometric(final=cut.final, rate=s.rate, start=1)
    measured = [[r["round"], r["measured"]] for r in outcome.rounds[1:]]
    outcome.schedule = _trace(curve, curve.rounds, measured, unit="round", quantity=cut.quantity)
    return outcome, cut


@RUNNERS.register("surgery")
def _surgery(model: nn.Module, job: Job) -> tuple[Outcome, Cut]:
    """Dynamic network surgery during fine-tuning, settled at the target, then frozen."""

    s, p, ctx = job.recipe.schedule, job.prune, job.ctx
    cut = make_cut(model, job)
    surgery = Surgery(model, sparsity=p.sparsity, margin=s.margin, gamma=s.gamma, power=s.power,
                      frequency=s.frequency, ignore=p.exclude or (),
                      protect_output=p.protect_output, seed=ctx.recipe.seed)
    total = job.recipe.finetune.epochs * ctx.steps_per_epoch()
    stop = total if s.stop is None else max(1, round(s.stop * ctx.steps_per_epoch()))
    every = max(1, total // 200)
    measured = [[0, surgery.sparsity]]
    state = {"settled": False}

    def after_step() -> None:
        if state["settled"]:
            return
        surgery.step()
        if surgery.step_count % every == 0:
            measured.append([surgery.step_count, surgery.sparsity])
        if surgery.step_count >= stop:
            _settle(model, surgery, cut)
            state["settled"] = True
            measured.append([surgery.step_count, cut.log[-1]])

    steps = finetune(model, job, after_step=after_step)
    if not state["settled"]:
        _settle(model, surgery, cut)
        measured.append([steps, cut.log[-1]])
    curve = OneShot(final=p.sparsity)
    return Outcome(schedule=_trace(curve, steps, measured, unit="step",
                                   quantity=cut.quantity)), cut


def _settle(model: nn.Module, surgery: Any, cut: MaskCut) -> None:
    """End the surgery at exactly the target: per layer, keep the largest weights
    (spliced ones included, with the values surgery kept for them), then freeze."""

    shadows = surgery.shadows
    surgery.finish()
    with torch.no_grad():
        for t in surgery.targets:
            remove_mask(t.module, t.spec.param)
            t.weight.copy_(shadows[t.name])
    cut.once(model)


# --- checks before any training -------------------------------------------------------------


def preflight(model: nn.Module, ctx: Context, example: torch.Tensor) -> None:
    """Try every setting that depends on the model on throwaway copies, so a recipe that
    does not fit fails before training, with the model untouched.

    Raises:
        ConfigError: prune settings that do not fit (an exclude or ignore pattern that
            matches nothing, an N:M pattern that does not divide a layer, nothing left to
            cut), a penalty without groups, BN recalibration without batch norm, a rewind
            step past the baseline's training.
    """
    recipe = ctx.recipe
    points = recipe.points()
    _check_criterion_data(ctx)
    for prune in points if not points[-1].structured else points[-1:]:
        _try_cut(model, prune, example, _heads(ctx))
    if recipe.penalty is not None:
        penalty_loss(copy.deepcopy(model), recipe)
    if recipe.recovery.bn_recalibration is not None and not _has_batch_norm(model):
        raise ConfigError(
            f"recovery.bn_recalibration: model {ctx.prepared.label!r} has no batch norm to "
            "recalibrate; drop it"
        )
    if recipe.recovery.bn_recalibration is not None and ctx.prepared.data.keyword_inputs:
        raise ConfigError("recovery.bn_recalibration feeds the model tensors, but this data "
                          "gives keyword inputs (tokenized text); drop it")
    _check_rewind(ctx)


def _check_criterion_data(ctx: Context) -> None:
    """A data-driven criterion reads (inputs, labels) batches and calls ``model(inputs)``:
    gradients and Fisher need labels for a cross-entropy, activation norms need tensor
    inputs. Say so before anything runs, rather than fail in the middle of the cut."""
    p, prepared = ctx.recipe.prune, ctx.prepared
    if p.method is not None or not prepared.own:
        return
    needs = set(get_criterion(p.criterion).needs)
    keyword = prepared.data.keyword_inputs
    task = prepared.task.name
    way_out = ("use a criterion that needs no data (magnitude, l1, l2, random, lamp, "
               "bn_scale)")
    if needs & {"grad", "fisher"} and (task != "classification" or keyword):
        why = "keyword inputs (tokenized text)" if keyword else f"task {task!r}, no labels"
        raise ConfigError(f"prune.criterion {p.criterion!r} takes gradients of a "
                          f"cross-entropy on labelled (inputs, labels) batches; this data gives "
                          f"{why}: {way_out}")
    if "act_norm" in needs and keyword:
        raise ConfigError(f"prune.criterion {p.criterion!r} reads each layer's input on "
                          f"tensor batches; this data gives keyword inputs (tokenized text): "
                          f"{way_out}, or prune.method: wanda for a language model")


def _try_cut(model: nn.Module, prune: PruneConfig, example: Any,
             heads: tuple[str, ...] = ()) -> None:
    """The cut on a copy, with a criterion that needs no data (the name was checked already)."""

    if prune.method is not None:  # pk.oneshot needs repeated blocks; nothing to try on a copy
        try:
            find_blocks(model, prune.oneshot_config(quiet=True).blocks)
        except ConfigError as err:
            raise ConfigError(f"prune.method {prune.method!r} does not fit the model: {err}") \
                from None
        return
    trial = copy.deepcopy(model)
    try:
        if prune.structured:
            prune_model(trial, example, plan_config(prune, trial, example, seed=0, criterion="l2",
                                                    heads=heads))
        else:
            sparsify(trial, mask_config(prune, seed=0, criterion="magnitude"))
    except ConfigError as err:
        raise ConfigError(f"prune settings do not fit the model: {err}") from None


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _check_rewind(ctx: Context) -> None:
    s = ctx.recipe.schedule
    if s.kind != "lottery":
        return
    steps = ctx.recipe.train.epochs * ctx.steps_per_epoch()
    if s.rewind > steps:
        raise ConfigError(
            f"schedule.rewind is step {s.rewind} but the baseline trains {steps} steps; "
            "rewind to an earlier step"
        )


def rewind_keeper(model: nn.Module, recipe: Recipe) -> RewindKeeper | None:
    """What the baseline training must keep for the schedule (lottery: the rewind weights)."""
    keepers = {"lottery": lambda: RewindKeeper(model, recipe.schedule.rewind)}
    make = keepers.get(recipe.schedule.kind)
    return make() if make is not None else None
