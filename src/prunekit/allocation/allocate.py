"""``allocate``: per-unit pruning ratios that meet a budget, chosen by a named strategy.

Example:
    >>> alloc = pk.allocate(model, x, kind="greedy", budget={"latency_ratio": 0.5},
    ...                     evaluate=lambda m: accuracy(m, val_loader))
    >>> graph = pk.trace(model, x)
    >>> pk.apply(model, pk.plan(graph, **alloc.plan_kwargs))
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from torch import nn

from .._io import write_json
from ..errors import ConfigError
from ..structured import apply, plan, trace
from .budget import Budget
from .latency import default_cache_dir
from .search import (
    NEEDS_EVALUATE,
    STRATEGIES,
    SearchContext,
    evolutionary_options,
    finalists,
    refit,
)
from .space import ChannelSpace, MaskSpace, mask_layers

DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
GRANULARITIES = ("channel", "mask")


@dataclass
class Allocation:
    """The outcome of :func:`allocate`.

    Attributes:
        kind: the strategy that chose the ratios.
        granularity: ``"channel"`` (use with ``pk.plan``) or ``"mask"`` (``pk.sparsify``).
        ratios: unit name -> ratio (channel: module whose output group is cut; mask: layer).
        round_to: kept units per group are a multiple of this (channels).
        criterion: importance criterion the ratios were chosen for.
        ignore: modules left out (channels: ``ignore``; masks: ``exclude``).
        budget: the limits that were met.
        dense: costs of the dense network (params, macs, bytes, sparsity, latency_ms).
        predicted: the same costs predicted for the allocation.
        quality: held-out quality of the pruned copy (before any fine-tuning), if evaluated.
        history: what the strategy did (scans, greedy steps, generations, evaluations).
        latency: how latency was measured (batch_size, threads, clock, runtime), when it
            was, and the cut as measured whole (``measured_ms``, ``measured_dense_ms``,
            ``met``: whether it is within the budget and its tolerance, ``checks``: every
            measurement, and the limit of each search). When no cut meets the budget as
            measured, the fastest is returned with ``met`` False and a warning.
    """

    kind: str
    granularity: str
    ratios: dict[str, float]
    round_to: int
    criterion: str
    ignore: list[str]
    budget: dict[str, float]
    dense: dict[str, float]
    predicted: dict[str, float]
    quality: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_kwargs(self) -> dict[str, Any]:
        """Keywords for ``pk.plan(graph, **plan_kwargs)`` (channels): every searched group
        is named, any other group keeps its size."""
        if self.granularity != "channel":
            raise ConfigError("plan_kwargs is for channel allocations; apply a mask allocation "
                              "with prunekit.allocation.apply_allocation")
        return {"ratio": 0.0, "ratios": dict(self.ratios), "round_to": self.round_to,
                "criterion": self.criterion, "ignore": list(self.ignore)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the allocation and its history as JSON (atomically)."""

        write_json(path, self.to_dict())


def allocate(
    model: nn.Module,
    example_inputs: Any,
    *,
    kind: str = "greedy",
    budget: Budget | Mapping[str, float],
    evaluate: Callable[[nn.Module], float] | None = None,
    final_evaluate: Callable[[nn.Module], float] | None = None,
    granularity: str = "channel",
    criterion: str | None = None,
    ignore: Sequence[str] = (),
    grid: Sequence[float] = DEFAULT_GRID,
    round_to: int | Sequence[int] = 1,
    batch_size: int = 1,
    threads: int = 1,
    clock: str = "wall",
    seed: int = 0,
    population: int = 16,
    generations: int = 10,
    genes: str = "shape",
    spread: float = 1.0,
    block_depth: int = 1,
    measure: int = 2,
    tolerance: float = 0.02,
    runtime: str = "eager",
    cache_dir: str | os.PathLike[str] | None = "default",
    cache_key: str = "",
    history_path: str | os.PathLike[str] | None = None,
    timer: Callable[[nn.Module, Any], float] | None = None,
    plan_options: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Allocation:
    """Choose how much to prune each channel group (or layer) so the network meets a budget.

    The model is not changed: candidates are built on copies.

    Args:
        model: the dense, trained network.
        example_inputs: inputs of one forward pass (batch 1 is best; timing resizes it).
        kind: ``uniform``, ``global``, ``lamp``, ``sensitivity``, ``greedy``,
            ``hierarchical`` or ``evolutionary`` (see :func:`list_kinds`).
        budget: a :class:`Budget` or a mapping such as ``{"latency_ms": 2.0}``,
            ``{"latency_ratio": 0.5}``, ``{"macs_ratio": 0.3, "params": 1e5}``,
            ``{"sparsity": 0.8}``. Latency is predicted by a per-layer table measured
            on this machine at ``batch_size`` with ``threads`` threads.
        evaluate: ``evaluate(model) -> quality`` on a held-out split, higher is better
            (``-loss`` for a loss); needed by sensitivity, greedy, hierarchical and
            evolutionary. Never pass the test set.
        final_evaluate: for ``kind="evolutionary"`` (``genes="shape"``), a costlier, more
            faithful score that picks among the search's finalists: its winner, its
            runner-up and the uniform shape at every ``round_to`` choice, each rescaled to
            the budget (and, for a latency budget, held to it as measured). The genetic
            search ranks many candidates by ``evaluate``, which must be cheap; this one
            scores only the three or four finalists, so it can train each for as long as
            the fine-tuning will (e.g. :func:`score_after_training` with an epoch of
            steps). The history ends with ``{"finalists": [...]}``: each finalist's score
            and which was kept. Default: the finalists of a measured latency budget are
            compared by ``evaluate``, and other budgets keep the search's winner.
        granularity: ``"channel"`` (structured, through ``pk.plan``) or ``"mask"``
            (unstructured, through ``pk.sparsify``; no latency budgets).
        criterion: importance within a unit (default ``l2`` for channels, ``magnitude``
            for masks).
        ignore: module name patterns to keep (channels: ``pk.plan``'s ``ignore``; masks:
            ``pk.sparsify``'s ``exclude``).
        grid: candidate ratios per unit (the searches pick from these; the largest is the
            most any unit loses, also for uniform/global/lamp).
        round_to: one value, or several for the search to choose from (channels).
        batch_size: batch the latency budget is for.
        threads: threads the latency is measured with.
        clock: ``"wall"`` (wall-clock, fastest of the runs) or ``"cpu"`` (the thread's CPU
            time with ``threads=1``: an idle core's latency even on a busy machine).
        seed: seed of the evolutionary search.
        population: evolutionary population size.
        generations: evolutionary generations.
        genes: evolutionary encoding: ``"shape"`` (each unit's share of what is kept,
            every candidate scaled to spend the whole budget; uniform is the first
            individual) or ``"grid"`` (each unit's ratio picked from ``grid``).
        spread: for ``genes="shape"``, how far (log2) a unit's kept share may move from
            the uniform one: 1 allows half to twice.
        block_depth: hierarchical blocks are units grouped by this many name parts.
        measure: for a latency budget, the chosen cut is built and measured whole (with the
            dense network for ``latency_ratio``); while it measures more than ``tolerance``
            over its budget or more than 5% under it, the search runs again, at most
            ``measure`` more times, under a limit :func:`fit_to_measured` derives from the
            cuts measured so far (an evolutionary search with ``genes="shape"`` is not run
            again: its winning shape is rescaled to the new limit); the cut kept meets the
            budget as measured and uses most of it. That search's winner is then held
            against its runner-up and the uniform shape, each held to the budget the same
            way, and the best held-out score among those that meet it is kept (the history
            ends with ``{"finalists": [...]}``). 0 trusts the table's prediction (each cut is
            measured once, and not searched again).
        tolerance: relative excess over a latency limit that a measurement may show (timing
            noise); 0.02 is 2%.
        runtime: where the latency budget holds: ``"eager"`` (PyTorch as it is),
            ``"torchscript"`` or ``"onnxruntime"`` (:func:`prunekit.export.runtimes.compiled`).
            The per-layer table, the dense network and each chosen cut are all timed
            in it, so the search ranks layers by what they cost there.
        cache_dir: folder for the latency table and sensitivity scans; ``"default"`` is
            ``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``; ``None`` caches nothing.
        cache_key: names the held-out split for the scan cache.
        history_path: where to write the allocation with its history (JSON).
        timer: ``timer(module, inputs) -> ms`` instead of measuring (tests): it stands
            for ``runtime``, for layers and whole networks alike.
        plan_options: more keywords for ``pk.plan`` (``data``, ``loss_fn`` for taylor).
        progress: called with one line per step (scan rows, generations).

    Returns:
        An :class:`Allocation`; for channels ``pk.plan(pk.trace(model, x), **alloc.plan_kwargs)``.

    Raises:
        ConfigError: an unknown kind or granularity, a bad budget or grid, a kind that needs
            ``evaluate`` without it, ``final_evaluate`` for a search without finalists, a
            latency budget for masks, or a budget that cannot be met.
    """
    strategy = STRATEGIES.get(kind)
    spec = Budget.parse(budget)
    grid_ = _check_grid(grid)
    if kind in NEEDS_EVALUATE and evaluate is None:
        raise ConfigError(f"kind={kind!r} measures quality: pass evaluate=fn(model) -> score on a "
                          "held-out split, or use kind='uniform', 'global' or 'lamp'")
    if final_evaluate is not None and not callable(final_evaluate):
        raise ConfigError(f"final_evaluate must be a function fn(model) -> score, got "
                          f"{final_evaluate!r}")
    if final_evaluate is not None and (kind != "evolutionary" or genes != "shape"):
        raise ConfigError(
            "final_evaluate=fn(model) -> score picks among an evolutionary search's finalists "
            f"(kind='evolutionary', genes='shape'); kind={kind!r}, genes={genes!r} has none")
    from ..export.runtimes import RUNTIMES

    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if runtime != "eager" and "latency_ms" not in spec.metrics:
        raise ConfigError(f"runtime={runtime!r} says where a latency budget holds; the budget "
                          f"{spec.to_dict()} has none: add latency_ms or latency_ratio, or drop "
                          "runtime")
    if int(measure) != measure or measure < 0 or not 0 <= tolerance < 1:
        raise ConfigError(f"measure must be a whole number >= 0 and tolerance in [0, 1), got "
                          f"{measure!r}, {tolerance!r}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"allocate needs an nn.Module, got {type(model).__name__}")
    options = {"population": population, "generations": generations, "genes": genes,
               "spread": spread, "block_depth": block_depth}
    if kind == "evolutionary":
        evolutionary_options(options)  # refused before a latency table is measured
    cache = _cache_dir(cache_dir)
    space = _space(model, example_inputs, granularity, criterion, ignore, round_to, plan_options)
    if "latency_ms" in spec.metrics and granularity == "channel":
        space.use_latency(batch_size=batch_size, threads=threads, timer=timer, clock=clock,
                          cache_dir=cache, grid=grid_, runtime=runtime)
    space.check_metrics(spec.metrics)
    options |= {"cache_dir": cache, "cache_key": cache_key, "progress": progress}
    ctx = SearchContext(space, spec, grid_, evaluate, seed, options)
    # what picks among the finalists: the search's own (cached) score, or final_evaluate
    judge = ctx if final_evaluate is None else replace(ctx, evaluate=final_evaluate)
    latency: dict[str, Any] = {}
    if "latency_ms" in spec.metrics and space.granularity == "channel":
        latency = {"batch_size": batch_size, "threads": threads, "clock": clock,
                   "runtime": runtime}
        ctx, ratios, rt, history, latency["checks"] = _measured(
            strategy, ctx, int(measure), float(tolerance), judge,
            hold_finalists=measure > 0 or final_evaluate is not None)
        chosen = next(c for c in latency["checks"] if c["chosen"])
        latency.update({k: chosen[k] for k in ("measured_ms", "measured_dense_ms") if k in chosen})
        latency["met"] = chosen["met"]
        if not latency["met"]:
            warnings.warn(
                f"prunekit: no cut met the latency budget {spec.to_dict()} as measured in "
                f"{runtime}: the fastest measured {chosen['measured_ms']:.4g} ms against "
                f"{chosen['allowed_ms']:.4g} ms allowed (alloc.latency['checks'] has every "
                "search); loosen the budget, allow larger ratios (grid), or raise measure",
                stacklevel=2)
    else:
        ratios, rt, history = strategy(ctx)
        if final_evaluate is not None:
            ratios, rt, history = _finalists_as_predicted(ctx, (ratios, rt, history), judge)
    alloc = Allocation(kind, space.granularity, space.ratios_dict(ratios), rt, space.criterion,
                       list(ignore), spec.to_dict(), ctx.dense, space.cost(ratios, rt),
                       ctx.quality(ratios, rt) if evaluate is not None else None, history,
                       latency)
    if history_path is not None:
        alloc.save(history_path)
    return alloc


UNUSED = 0.05  # a latency cut measuring this much under its budget is searched again

Cut = TypeVar("Cut")


def fit_to_measured(search: Callable[[float], Cut], measure: Callable[[Cut], float], *,
                    limit: float, allowed: float, attempts: int = 2,
                    tolerance: float = 0.02,
                    predict: Callable[[Cut], float] | None = None,
                    ) -> tuple[Cut, list[dict[str, Any]]]:
    """A cut that meets a latency budget as measured, not only as predicted.

    ``search(limit)`` makes a cut under a predicted limit (ms); ``measure(cut)`` times it
    whole. While the cut measures more than ``tolerance`` over ``allowed`` (or more than
    ``UNUSED`` under it), the search runs again, at most ``attempts`` more times (a search
    that finds nothing under the new limit ends it), aiming at the middle of that window:
    under the limit scaled by target / measured, or, with ``predict(cut)`` (a cut's
    predicted ms), under the prediction interpolated between the two cuts measured closest
    below and above the target once there are both (a whole network's ms need not be
    proportional to the table's prediction: fixed costs stay as the layers shrink).
    Returns the cut that meets the budget as measured and uses most of it (else the fastest
    one) and one check per search: ``search``, ``limit_ms``, ``measured_ms``,
    ``allowed_ms``, ``met`` (within ``tolerance`` of ``allowed``), ``chosen`` (and
    ``predicted_ms`` with ``predict``)."""
    target = allowed * (1 + (tolerance - UNUSED) / 2)
    tried: list[tuple[float, Cut]] = []
    points: list[tuple[float, float]] = []  # (predicted, measured)
    checks: list[dict[str, Any]] = []
    cut = search(limit)
    for attempt in range(attempts + 1):
        measured = measure(cut)
        tried.append((measured, cut))
        check = {"search": attempt, "limit_ms": round(limit, 6),
                 "measured_ms": round(measured, 6), "allowed_ms": round(allowed, 6),
                 "met": measured <= allowed * (1 + tolerance)}
        if predict is not None:
            points.append((predict(cut), measured))
            check["predicted_ms"] = round(points[-1][0], 6)
        checks.append(check)
        if (check["met"] and measured >= allowed * (1 - UNUSED)) or attempt == attempts:
            break
        limit = _next_limit(points, limit * target / measured, target)
        try:
            cut = search(limit)
        except ConfigError as e:  # nothing meets the new limit as predicted
            check["searched_again"] = f"no cut meets {limit:.4g} ms as predicted: {e}"
            break
    met = [t for t, c in zip(tried, checks, strict=True) if c["met"]]
    best = max(met, key=lambda t: t[0]) if met else min(tried, key=lambda t: t[0])
    for check, t in zip(checks, tried, strict=True):
        check["chosen"] = t is best
    return best[1], checks


def _next_limit(points: list[tuple[float, float]], scaled: float, target: float) -> float:
    """The predicted ms to search under next: interpolated between the (predicted,
    measured) points closest below and above ``target`` when both exist, else the last
    point's prediction scaled by target / measured (``scaled`` without points)."""
    if not points:
        return scaled
    below = [p for p in points if p[1] < target]
    above = [p for p in points if p[1] > target]
    if below and above:
        (p0, m0), (p1, m1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
        if p1 != p0:
            return p0 + (target - m0) * (p1 - p0) / (m1 - m0)
    predicted, measured = points[-1]
    return predicted * target / measured


def paired_ms(time_ms: Callable[[nn.Module], float], pruned: nn.Module,
              dense: nn.Module) -> tuple[float, float]:
    """``(pruned ms, dense ms)``, timed in the order dense, pruned, pruned, dense and each the
    mean of its two timings: a machine that speeds up or slows down meanwhile moves both
    alike, so their ratio (a cut's share of dense, what a ``latency_ratio`` budget judges)
    keeps only the timing noise. ``time_ms(model)`` times one network, e.g.
    :meth:`LatencyTable.network_ms`."""
    before = time_ms(dense)
    ms = (time_ms(pruned) + time_ms(pruned)) / 2
    return ms, (before + time_ms(dense)) / 2


def fit_share_to_measured(search: Callable[[float], Cut], build: Callable[[Cut], nn.Module],
                          time_ms: Callable[[nn.Module], float], dense: nn.Module, *,
                          share: float, limit: float, attempts: int = 2,
                          tolerance: float = 0.02,
                          predict: Callable[[Cut], float] | None = None,
                          ) -> tuple[Cut, list[dict[str, Any]]]:
    """:func:`fit_to_measured` for a budget that is a share of the dense network's latency
    (``latency_ratio``): each cut, ``build(cut)``, is timed paired with ``dense``
    (:func:`paired_ms`) and judged by its share of it. The checks report milliseconds:
    ``measured_ms``, ``measured_dense_ms`` and ``allowed_ms`` (``share`` of that dense)."""
    timings: list[tuple[float, float]] = []

    def measure(cut: Cut) -> float:
        timings.append(paired_ms(time_ms, build(cut), dense))
        return timings[-1][0] / timings[-1][1]

    cut, checks = fit_to_measured(search, measure, limit=limit, allowed=share,
                                  attempts=attempts, tolerance=tolerance, predict=predict)
    for check, (ms, dense_ms) in zip(checks, timings, strict=True):
        check.update(measured_ms=round(ms, 6), measured_dense_ms=round(dense_ms, 6),
                     allowed_ms=round(share * dense_ms, 6))
    return cut, checks


def _best_finalist(held: list[tuple[tuple, list[dict[str, Any]] | None, str]],
                   judge: SearchContext) -> tuple[tuple, list[dict[str, Any]] | None]:
    """The finalist ``judge`` scores best (:meth:`SearchContext.quality`, its ``evaluate``)
    among those that meet the budget. ``held`` is ``(cut, checks, name)`` per finalist, the
    winner first: ``cut`` is ``(ctx, ratios, round_to, history)``, ``checks`` what holding
    it to the measured budget found (None when the budget is held as predicted). Returns
    the kept cut, its history ending with ``{"finalists": [...], "scored_by": ...}`` (each
    finalist's round_to, score and, when measured, ms and whether it met the budget), and
    its checks."""
    rows = []
    for (_, ratios, rt, _), checks, name in held:
        row: dict[str, Any] = {"finalist": name, "round_to": rt}
        if checks is not None:
            chosen = next(c for c in checks if c["chosen"])
            row |= {"met": chosen["met"], "measured_ms": chosen["measured_ms"]}
        row["quality"] = judge.quality(ratios, rt) if row.get("met", True) else None
        rows.append(row)
    # the best quality that meets the budget; on a tie the earlier finalist (the winner first)
    best = max(range(len(held)), key=lambda i: (rows[i]["quality"] is not None,
                                                rows[i]["quality"] or 0.0, -i))
    for i, row in enumerate(rows):
        row["kept"] = i == best
    cut, checks, _ = held[best]
    record = {"finalists": rows,
              "scored_by": getattr(judge.evaluate, "__name__", type(judge.evaluate).__name__)}
    return (*cut[:3], [*cut[3], record]), checks


def _hold_finalists(shapes: list[dict[str, Any]], hold: Callable[[dict[str, Any]], tuple]
                    ) -> list[tuple]:
    """``(cut, checks, name)`` for each of the search's other :func:`~.search.finalists`
    (``shapes``) that ``hold(shape) -> (cut, checks)`` fits to the budget (a shape no cut
    of which meets it, as predicted, is left out)."""
    held = []
    for shape in shapes:
        try:
            held.append((*hold(shape), shape["name"]))
        except ConfigError:  # no cut of this shape meets the budget as predicted
            continue
    return held


def _finalists_as_predicted(ctx: SearchContext, found: tuple, judge: SearchContext) -> tuple:
    """An evolutionary search's result ``(ratios, round_to, history)`` against its other
    finalists, each rescaled to ``ctx``'s budget as predicted, picked by ``judge``."""
    ratios, rt, history = found

    def hold(shape: dict[str, Any]) -> tuple:
        other = refit(ctx, [{"winner": shape}])
        return (ctx, other[0], other[1], [*history, *other[2]]), None

    held = [((ctx, ratios, rt, history), None, "winner"),
            *_hold_finalists(finalists(history, ctx.space.round_to_choices), hold)]
    (_, *kept), _ = _best_finalist(held, judge)
    return tuple(kept)


def _measured(strategy: Any, ctx: SearchContext, attempts: int, tolerance: float,
              judge: SearchContext, *, hold_finalists: bool) -> tuple:
    """``strategy`` run under the budget's latency limit, then held to it as measured
    (:func:`fit_to_measured`; the table predicts parts, and the whole network can cost
    more, or less, than its parts). The searches after the first run under a latency limit
    in ms; the budget's other limits stay. Whole networks are timed with the table's timer,
    in its runtime; for ``latency_ratio`` each cut is judged by its share of the dense
    network's ms, timed paired (:func:`paired_ms`). With ``hold_finalists``, an evolutionary
    winner is held against its other :func:`~.search.finalists`, each held to the budget
    the same way, and the one ``judge`` scores best among those that meet it is kept.

    Returns the context of the chosen search, its ratios, round_to, history and the checks."""
    space, spec = ctx.space, ctx.budget
    table = space.tables[space.latency_options["batch_size"]]
    key, (_, bound) = next((k, v) for k, v in spec.limits(ctx.dense).items()
                           if v[0] == "latency_ms")
    share = spec.to_dict()[key] if key == "latency_ratio" else None
    others = {k: v for k, v in spec.to_dict().items() if k != key}
    first: list[dict[str, Any]] = []  # the first search's history

    def under(limit: float) -> SearchContext:
        return ctx if limit == bound else ctx.under(
            Budget.parse({**others, "latency_ms": limit}))

    def rescaled(limit: float, history: list[dict[str, Any]]) -> tuple | None:
        """The winning shape in ``history`` rescaled to ``limit`` (None without one)."""
        run = under(limit)
        found = refit(run, history)
        return None if found is None else (run, found[0], found[1], [*first, *found[2]])

    def search(limit: float) -> tuple:
        # after the first search, the evolutionary shape is rescaled, not searched again
        if first and (cut := rescaled(limit, first)) is not None:
            return cut
        run = under(limit)
        found = strategy(run)
        if not first:
            first.extend(found[2])
        return (run, *found)

    def predict(cut: tuple) -> float:
        return space.cost(cut[1], cut[2])["latency_ms"]

    def fit(search: Callable[[float], tuple]) -> tuple[tuple, list[dict[str, Any]]]:
        if share is None:
            return fit_to_measured(
                search, lambda cut: table.network_ms(space.build(cut[1], cut[2])),
                limit=bound, allowed=bound, attempts=attempts, tolerance=tolerance,
                predict=predict)
        return fit_share_to_measured(
            search, lambda cut: space.build(cut[1], cut[2]), table.network_ms, space.model,
            share=share, limit=bound, attempts=attempts, tolerance=tolerance, predict=predict)

    cut, checks = fit(search)
    shapes = finalists(first, space.round_to_choices) if hold_finalists else []
    if shapes:
        others = _hold_finalists(shapes, lambda shape: fit(
            lambda limit: rescaled(limit, [{"winner": shape}])))
        cut, checks = _best_finalist([(cut, checks, "winner"), *others], judge)
    return (*cut, checks)


def score_after_training(
    evaluate: Callable[[nn.Module], float],
    data: Any,
    *,
    steps: int = 20,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    loss_fn: Callable[..., Any] | None = None,
    seed: int = 0,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> Callable[[nn.Module], float]:
    """``evaluate`` after a short fine-tuning: a search's score that ranks cuts the way the
    accuracy after recovery does.

    Each candidate is trained for ``steps`` optimizer steps on the first ``steps`` batches
    of ``data`` (taken once, so every candidate sees the same batches in the same order),
    then scored by ``evaluate``. Without it, a held-out score right after the cut (with or
    without batch-norm recalibration) hardly ranks deep cuts: the rank correlations with
    the accuracy after fine-tuning are measured in docs/allocation.md ("Which score to
    search on").

    Args:
        evaluate: ``evaluate(model) -> quality`` on a held-out split, higher is better.
        data: ``(inputs, labels)`` batches from the training split (never the held-out one).
        steps: optimizer steps per candidate, >= 1.
        lr, momentum, weight_decay, loss_fn, seed: as :func:`prunekit.recovery.train`
            (SGD, cosine schedule over the steps).
        wrap: what the training loop calls instead of the candidate (e.g. a module that
            picks the logits out of a model's output); the candidate itself is scored.

    Returns:
        ``scored(model) -> quality``; it trains the candidate in place (``allocate`` passes
        copies). Its name says the steps, so cached sensitivity scans keep them apart.
    """
    from ..recovery import train

    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}")
    batches = list(itertools.islice(iter(data), int(steps)))
    if not batches:
        raise ConfigError("score_after_training: data gave no batches; pass training batches "
                          "of (inputs, labels)")

    def scored(model: nn.Module) -> float:
        train(wrap(model) if wrap is not None else model, batches, epochs=1, lr=lr,
              momentum=momentum, weight_decay=weight_decay, loss_fn=loss_fn, seed=seed,
              quiet=True)
        return evaluate(model)

    scored.__name__ = f"{getattr(evaluate, '__name__', 'evaluate')}_after_{len(batches)}_steps"
    return scored


def apply_allocation(model: nn.Module, allocation: Allocation, example_inputs: Any = None) -> Any:
    """Prune ``model`` in place as ``allocation`` says: channels through ``pk.plan`` /
    ``pk.apply`` (returns the plan; needs ``example_inputs``), masks through
    ``pk.sparsify`` (returns per-weight sparsities)."""
    if allocation.granularity == "channel":
        if example_inputs is None:
            raise ConfigError("a channel allocation needs example_inputs to trace the model")
        made = plan(trace(model, example_inputs), **allocation.plan_kwargs)
        apply(model, made)
        return made

    return mask_layers(model, allocation.ratios, criterion=allocation.criterion,
                       exclude=allocation.ignore)


def _space(model, example_inputs, granularity, criterion, ignore, round_to, plan_options) -> Any:

    if granularity == "channel":
        return ChannelSpace(model, example_inputs, criterion=criterion or "l2", ignore=ignore,
                            round_to_choices=round_to, plan_options=plan_options)
    if round_to not in (1, (1,), [1]):
        raise ConfigError("round_to is for channel allocations; masks keep every shape")
    return MaskSpace(model, example_inputs, criterion=criterion or "magnitude", exclude=ignore)


def _check_grid(grid: Sequence[float]) -> list[float]:
    try:
        values = sorted({0.0, *(float(r) for r in grid)})
    except (TypeError, ValueError):
        raise ConfigError(f"grid must be a list of ratios in [0, 1), got {grid!r}") from None
    if len(values) < 2 or any(not 0 <= r < 1 for r in values):
        raise ConfigError(f"grid needs ratios in (0, 1), like {list(DEFAULT_GRID)}; got {grid!r}")
    return values


def _cache_dir(cache_dir: Any) -> Any:
    if cache_dir == "default":

        return default_cache_dir()
    return cache_dir
