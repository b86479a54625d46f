"""Allocation strategies: per-unit pruning ratios that meet a budget.

Each strategy is registered by name and takes a :class:`SearchContext`; it returns
the ratios (one per unit of the space), the ``round_to`` it chose and its history.

- ``uniform``: one ratio everywhere, the smallest that meets the budget (bisection).
- ``global``: one ranking of all units by importance (``pk.plan(scope="global")`` or
  ``pk.sparsify(scope="global")``), the smallest global ratio that meets the budget.
- ``lamp``: the same over LAMP scores (Lee et al. 2021, "Layer-adaptive Sparsity for
  the Magnitude-based Pruning").
- ``sensitivity``: from a sensitivity scan, each unit takes the largest ratio whose
  quality loss stays under a tolerance; the smallest tolerance that meets the budget
  is found by bisection (Han et al. 2015; Li et al. 2017).
- ``greedy``: from a sensitivity scan, repeatedly cut one more step where the curve is
  flattest per unit of budget gained, until the budget is met (as NetAdapt,
  Yang et al. 2018, does with measured latency).
- ``hierarchical``: a scan and greedy allocation over blocks first, then the greedy
  allocation over the layers inside the blocks it chose.
- ``evolutionary``: a genetic algorithm (pymoo's GA; integer genes, the budget as a
  constraint with feasibility-first selection, Deb 2000) over per-unit ratios and the
  ``round_to`` choice, fitness = quality on a held-out split.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._registry import Registry
from ..errors import ConfigError
from ..sparsify import sparsify
from ..structured import plan
from .budget import Budget
from .sensitivity import scan

Result = tuple[list[float], int, list[dict[str, Any]]]
Strategy = Callable[["SearchContext"], Result]
STRATEGIES: Registry[Strategy] = Registry("allocation kind")
NEEDS_EVALUATE = {"sensitivity", "greedy", "hierarchical", "evolutionary"}


@dataclass
class SearchContext:
    """Everything a strategy may use.

    Attributes:
        space: the units and their costs (``ChannelSpace`` or ``MaskSpace``).
        budget: the limits.
        grid: candidate ratios, ascending, 0 first.
        evaluate: ``evaluate(model) -> quality`` (higher is better) or ``None``.
        seed: seed of random strategies.
        options: strategy options (population, generations, block_depth, cache_dir,
            cache_key, progress).
    """

    space: Any
    budget: Budget
    grid: list[float]
    evaluate: Callable[[Any], float] | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dense = self.space.dense_cost()
        self._quality: dict[tuple, float] = {}

    def under(self, budget: Budget) -> SearchContext:
        """The same search under another budget; candidates already scored keep their
        quality (the space, score and options are the same)."""
        other = SearchContext(self.space, budget, self.grid, self.evaluate, self.seed,
                              self.options)
        other._quality = self._quality
        return other

    @property
    def units(self) -> int:
        return len(self.space.units)

    def violation(self, ratios: Sequence[float], round_to: int) -> float:
        return self.budget.violation(self.space.cost(ratios, round_to), self.dense)

    def slack(self, ratios: Sequence[float], round_to: int) -> float:
        """How far inside the budget an allocation is (summed relative margin): among
        allocations that meet it, the smallest slack prunes least."""
        cost = self.space.cost(ratios, round_to)
        total = 0.0
        for key, (metric, bound) in self.budget.limits(self.dense).items():
            total += (cost[metric] - bound) if key == "sparsity" else (bound - cost[metric]) / bound
        return total

    def exact(self) -> Any:
        """A context in which costs are exact (the space measures off-grid latency widths);
        searches that produce off-grid ratios take their last steps inside it."""
        exact = getattr(self.space, "exact", None)
        return exact() if exact is not None else contextlib.nullcontext()

    def quality(self, ratios: Sequence[float], round_to: int) -> float:
        """Quality of the pruned copy (cached per allocation)."""
        key = (tuple(round(float(r), 6) for r in ratios), round_to)
        if key not in self._quality:
            self._quality[key] = float(self.evaluate(self.space.build(list(ratios), round_to)))
        return self._quality[key]

    def scan(self, sets: dict[str, list[int]] | None = None, round_to: int = 1) -> Any:

        return scan(self.space, self.evaluate, ratios=self.grid, sets=sets, round_to=round_to,
                    cache_dir=self.options.get("cache_dir"),
                    cache_key=self.options.get("cache_key", ""),
                    progress=self.options.get("progress"))

    def log(self, line: str) -> None:
        progress = self.options.get("progress")
        if progress is not None:
            progress(line)


def list_kinds() -> list[str]:
    """Names of the allocation kinds ``allocate`` accepts."""
    return STRATEGIES.names()


# -- one scalar for the whole network ----------------------------------------------------------
def _smallest(ctx: SearchContext, ratios_at: Callable[[float], list[float]], round_to: int,
              top: float, steps: int = 24) -> tuple[float, list[float]] | None:
    """The smallest scalar in [0, top] whose ratios meet the budget (bisection), or None."""
    best = ratios_at(top)
    if ctx.violation(best, round_to) > 0:
        return None
    lo, hi = 0.0, top
    if ctx.violation(ratios_at(0.0), round_to) <= 0:
        return 0.0, ratios_at(0.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        got = ratios_at(mid)
        if ctx.violation(got, round_to) <= 0:
            hi, best = mid, got
        else:
            lo = mid
    return hi, best


def _scalar_search(ctx: SearchContext, ratios_at: Callable[[float, int], list[float]],
                   name: str) -> Result:
    history, found = [], []
    for rt in ctx.space.round_to_choices:
        with ctx.exact():  # a continuous scalar lands between the table's widths
            hit = _smallest(ctx, lambda s, rt=rt: ratios_at(s, rt), rt, ctx.grid[-1])
        if hit is not None:
            found.append((hit[0], rt, hit[1]))
            history.append({"round_to": rt, name: round(hit[0], 6),
                            "cost": ctx.space.cost(hit[1], rt)})
    if not found:
        raise _impossible(ctx)
    s, rt, ratios = min(found, key=lambda f: (ctx.slack(f[2], f[1]), f[0]))
    return [float(r) for r in ratios], rt, history


@STRATEGIES.register("uniform")
def uniform(ctx: SearchContext) -> Result:
    """The same ratio for every unit: the smallest that meets the budget."""
    return _scalar_search(ctx, lambda s, rt: [s] * ctx.units, "ratio")


def _ranked(ctx: SearchContext, lamp: bool) -> Result:
    space = ctx.space
    if space.granularity == "channel":
        return _scalar_search(ctx, lambda s, rt: _channel_ranked(space, s, rt, lamp, ctx.grid[-1]),
                              "global_ratio")
    return _scalar_search(ctx, lambda s, rt: _mask_ranked(space, s, lamp), "global_sparsity")


def _channel_ranked(space: Any, s: float, round_to: int, lamp: bool, cap: float) -> list[float]:
    """Per-group ratios that ``pk.plan(scope="global")`` picks at global ratio ``s``."""
    kw = space.plan_kwargs([0.0] * len(space.units), round_to)
    kw.pop("ratios")
    kw.update(ratio=float(s), scope="global", max_ratio=cap, check=False)
    if lamp:
        kw["criterion"] = "lamp"
    made = plan(space.graph, **kw)
    removed = {g.id: g.removed for g in made.groups}
    return [removed.get(g.id, 0) / g.size for g in space.groups]


def _mask_ranked(space: Any, s: float, lamp: bool) -> list[float]:
    """Per-layer sparsities that ``pk.sparsify(scope="global"|"lamp")`` picks at ``s``."""
    if s <= 0:
        return [0.0] * len(space.units)
    model = copy.deepcopy(space.model)
    per_weight = sparsify(model, sparsity=float(s), criterion=space.criterion,
                             scope="lamp" if lamp else "global", ignore=space.exclude)
    out = []
    for unit, size in zip(space.units, space.sizes, strict=True):
        zeros = sum(v * dict(model.named_parameters())[k].numel()
                    for k, v in per_weight.items() if k.rpartition(".")[0] == unit)
        out.append(zeros / size)
    return out


@STRATEGIES.register("global")
def global_(ctx: SearchContext) -> Result:
    """One importance ranking across units, the smallest global ratio meeting the budget."""
    return _ranked(ctx, lamp=False)


@STRATEGIES.register("lamp")
def lamp(ctx: SearchContext) -> Result:
    """A global ranking of LAMP scores, the smallest global ratio meeting the budget."""
    return _ranked(ctx, lamp=True)


# -- from a sensitivity scan ------------------------------------------------------------------
@STRATEGIES.register("sensitivity")
def sensitivity(ctx: SearchContext) -> Result:
    """Each unit takes the largest ratio whose quality loss is at most a tolerance; the
    smallest tolerance meeting the budget wins (Han et al. 2015, Li et al. 2017)."""
    result = ctx.scan()
    drops = [result.drops(u) for u in result.units]
    tolerances = sorted({d for row in drops for d in row})
    found = []
    for rt in ctx.space.round_to_choices:
        def at(t: float) -> list[float]:
            return [ctx.grid[max(i for i, d in enumerate(row) if d <= t)] for row in drops]

        lo, hi = 0, len(tolerances) - 1
        if ctx.violation(at(tolerances[hi]), rt) > 0:
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if ctx.violation(at(tolerances[mid]), rt) <= 0:
                hi = mid
            else:
                lo = mid + 1
        found.append((tolerances[lo], rt, at(tolerances[lo])))
    if not found:
        raise _impossible(ctx)
    t, rt, ratios = min(found, key=lambda f: (f[0], -f[1]))
    return ratios, rt, [{"scan": result.to_dict(), "tolerance": t, "round_to": rt}]


def _greedy(ctx: SearchContext, drops: list[list[float]],
            expand: Callable[[list[int]], list[float]], round_to: int,
            free: Sequence[int]) -> tuple[list[int], list[dict[str, Any]]]:
    """Raise one variable a grid step at a time, the one losing least quality per unit of
    budget violation removed, until the budget is met."""
    levels = [0] * len(drops)
    top = len(ctx.grid) - 1
    current = ctx.violation(expand(levels), round_to)
    steps: list[dict[str, Any]] = []
    while current > 0:
        options = []
        for v in free:
            if levels[v] >= top:
                continue
            trial = levels.copy()
            trial[v] += 1
            after = ctx.violation(expand(trial), round_to)
            loss = drops[v][levels[v] + 1] - drops[v][levels[v]]
            options.append((current - after, loss, v, after))
        if not options:
            raise _impossible(ctx)
        useful = [o for o in options if o[0] > 1e-12]
        if useful:
            gain, loss, v, after = min(useful, key=lambda o: (o[1] / o[0], -o[0]))
        else:  # no single step helps (latency steps can be flat): take the cheapest one
            gain, loss, v, after = min(options, key=lambda o: (o[1], -o[0]))
        levels[v] += 1
        current = after
        steps.append({"var": v, "level": levels[v], "loss": round(loss, 6),
                      "violation": round(after, 6)})
    return levels, steps


def _best_of_round_to(ctx: SearchContext, run: Callable[[int], tuple[list[float], float, Any]]
                      ) -> Result:
    found, history = [], []
    for rt in ctx.space.round_to_choices:
        try:
            ratios, loss, info = run(rt)
        except ConfigError:
            continue
        found.append((loss, -rt, ratios, rt))
        history.append({"round_to": rt, "predicted_loss": round(loss, 6), **info})
    if not found:
        raise _impossible(ctx)
    loss, _, ratios, rt = min(found, key=lambda f: (f[0], f[1]))
    return ratios, rt, history


@STRATEGIES.register("greedy")
def greedy(ctx: SearchContext) -> Result:
    """Cut where the sensitivity curve is flattest per unit of budget, until the budget is met."""
    result = ctx.scan()
    drops = [result.drops(u) for u in result.units]

    def run(rt: int) -> tuple[list[float], float, Any]:
        levels, steps = _greedy(ctx, drops, lambda lv: [ctx.grid[i] for i in lv], rt,
                                range(ctx.units))
        loss = sum(drops[v][lv] for v, lv in enumerate(levels))
        return [ctx.grid[i] for i in levels], loss, {"steps": steps}

    ratios, rt, history = _best_of_round_to(ctx, run)
    return ratios, rt, [{"scan": result.to_dict()}, *history]


@STRATEGIES.register("hierarchical")
def hierarchical(ctx: SearchContext) -> Result:
    """Blocks first (scan and greedy over whole blocks), then the greedy allocation over
    the units inside the blocks chosen; other blocks stay dense."""
    blocks = ctx.space.blocks(int(ctx.options.get("block_depth", 1)))
    names = list(blocks)
    block_scan = ctx.scan(sets=blocks)
    unit_scan = ctx.scan()
    block_drops = [block_scan.drops(b) for b in names]
    unit_drops = [unit_scan.drops(u) for u in unit_scan.units]

    def spread(levels: list[int]) -> list[float]:
        ratios = [0.0] * ctx.units
        for b, lv in zip(names, levels, strict=True):
            for i in blocks[b]:
                ratios[i] = ctx.grid[lv]
        return ratios

    def run(rt: int) -> tuple[list[float], float, Any]:
        block_levels, block_steps = _greedy(ctx, block_drops, spread, rt, range(len(names)))
        chosen = [i for b, lv in zip(names, block_levels, strict=True) if lv > 0 for i in blocks[b]]
        levels, steps = _greedy(ctx, unit_drops, lambda lv: [ctx.grid[i] for i in lv], rt, chosen)
        loss = sum(unit_drops[v][lv] for v, lv in enumerate(levels))
        info = {"blocks": dict(zip(names, [ctx.grid[lv] for lv in block_levels], strict=True)),
                "block_steps": block_steps, "steps": steps}
        return [ctx.grid[i] for i in levels], loss, info

    ratios, rt, history = _best_of_round_to(ctx, run)
    return ratios, rt, [{"block_scan": block_scan.to_dict(), "scan": unit_scan.to_dict()},
                        *history]


# -- evolutionary ---------------------------------------------------------------------------
GENES = ("shape", "grid")


@STRATEGIES.register("evolutionary")
def evolutionary(ctx: SearchContext) -> Result:
    """A genetic algorithm over per-unit ratios (and the round_to choice).

    pymoo's GA (Blank & Deb 2020, "pymoo: Multi-Objective Optimization in Python"),
    fitness the held-out quality of the pruned copy, with one of two encodings
    (``options["genes"]``):

    - ``"shape"`` (default): real genes ``g`` in [-1, 1] give each unit a share of what is
      kept, ``keep_i = (1 - s) * 2 ** (spread * g_i)``, clipped to ``[1 - cap, 1]``; the
      scalar ``s`` is the smallest that meets the budget (bisection), so every candidate
      spends the whole budget, and ``g = 0`` is exactly the uniform allocation. The first
      individual is that uniform one, so with the GA's elitism the result never scores
      below uniform on the held-out split. (Under a latency budget ``allocate`` keeps that
      promise as measured too: the winner, the runner-up and uniform are each held to the
      budget as measured and rescored, see :func:`finalists`.) Ratios are continuous
      (``cap`` is the grid's largest ratio; ``spread``, default 1, lets a unit keep half to
      twice the uniform share).
    - ``"grid"``: integer genes pick each unit's ratio from the grid (SBX crossover and
      polynomial mutation, rounded), the budget an inequality constraint (feasible beats
      infeasible, then quality; Deb 2000). The first population holds every uniform
      allocation of the grid, so feasible parents exist from the start.
    """
    try:
        import numpy as np
        from pymoo.algorithms.soo.nonconvex.ga import GA
        from pymoo.core.callback import Callback
        from pymoo.core.problem import ElementwiseProblem
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.optimize import minimize
    except ImportError:
        raise ConfigError("kind='evolutionary' needs pymoo: pip install pymoo") from None
    choices = list(ctx.space.round_to_choices)
    n, top = ctx.units, len(ctx.grid) - 1
    pop, gens, genes, spread = evolutionary_options(ctx.options)
    shaped = genes == "shape"
    evaluations: list[dict[str, Any]] = []

    def pick(x: Any) -> int:
        return choices[min(max(int(round(x[n])), 0), len(choices) - 1)] if len(choices) > 1 \
            else choices[0]

    def decode(x: Any) -> tuple[list[float], int]:
        rt = pick(x)
        if shaped:
            return shape_ratios(ctx, x[:n], rt, spread), rt
        return [ctx.grid[min(max(int(round(v)), 0), top)] for v in x[:n]], rt

    class Problem(ElementwiseProblem):
        def __init__(self) -> None:
            extra = [len(choices) - 1] if len(choices) > 1 else []
            lower, upper = ([-1.0] * n, [1.0] * n) if shaped else ([0] * n, [top] * n)
            super().__init__(n_var=n + len(extra), n_obj=1, n_ieq_constr=1,
                             xl=np.array(lower + [0] * len(extra), dtype=float),
                             xu=np.array(upper + extra, dtype=float))

        def _evaluate(self, x: Any, out: dict, *args: Any, **kwargs: Any) -> None:
            ratios, rt = decode(x)
            cost = ctx.space.cost(ratios, rt)
            violation = ctx.budget.violation(cost, ctx.dense)
            quality = ctx.quality(ratios, rt) if violation <= 0 else None
            out["F"] = [-(quality if quality is not None else -1e9)]
            out["G"] = [violation]
            evaluations.append({"ratios": [round(r, 6) for r in ratios], "round_to": rt,
                                "violation": round(violation, 6), "quality": quality,
                                "cost": {k: round(v, 6) for k, v in cost.items()},
                                **({"shape": [round(float(v), 9) for v in x[:n]]}
                                   if shaped else {})})

    generations: list[dict[str, Any]] = []

    class Record(Callback):
        def notify(self, algorithm: Any) -> None:
            opt = algorithm.opt[0]
            feasible = [e for e in evaluations if e["quality"] is not None]
            generations.append({"generation": algorithm.n_gen, "evaluations": len(evaluations),
                                "feasible_so_far": len(feasible),
                                "best_quality": None if opt.CV[0] > 0 else float(-opt.F[0]),
                                "best": [round(r, 6) for r in decode(opt.X)[0]]})
            ctx.log(f"generation {algorithm.n_gen}: best {generations[-1]['best_quality']}")

    rng = np.random.default_rng(ctx.seed)
    extra = [0] if len(choices) > 1 else []
    if shaped:
        # the uniform allocation for every round_to choice, then random shapes
        start = [[0.0] * n + ([float(i)] if extra else []) for i in range(len(choices))][:pop]
        while len(start) < pop:
            start.append(list(rng.uniform(-1.0, 1.0, size=n))
                         + [float(rng.integers(0, len(choices))) for _ in extra])
        operators = {"crossover": SBX(prob=0.9, eta=15.0), "mutation": PM(eta=20.0)}
    else:
        # every uniform level when they fit (evenly spaced ones, the top included, otherwise):
        # the most pruned one meets any budget that can be met, so a feasible parent exists
        levels = sorted({round(i * top / max(1, min(pop, top + 1) - 1))
                         for i in range(min(pop, top + 1))})
        start = [[lv] * n + extra for lv in levels]
        while len(start) < pop:
            start.append(list(rng.integers(0, top + 1, size=n))
                         + [int(rng.integers(0, len(choices))) for _ in extra])
        operators = {"crossover": SBX(prob=0.9, eta=3.0, vtype=float, repair=RoundingRepair()),
                     "mutation": PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair())}
    algorithm = GA(pop_size=pop, sampling=np.array(start, dtype=float),
                   eliminate_duplicates=True, **operators)
    result = minimize(Problem(), algorithm, ("n_gen", gens), seed=ctx.seed, callback=Record(),
                      verbose=False)
    if result.X is None or (result.CV is not None and float(np.min(result.CV)) > 0):
        raise _impossible(ctx)
    with ctx.exact():  # the winner's scale, against measured (not interpolated) widths
        ratios, rt = decode(result.X)
    winner = {"shape": [round(float(v), 9) for v in result.X[:n]], "round_to": rt,
              "spread": spread} if shaped else None
    return ratios, rt, [{"genes": genes, "generations": generations,
                         "evaluations": evaluations, "winner": winner}]


def refit(ctx: SearchContext, history: list[dict[str, Any]]) -> Result | None:
    """A search's result fitted to ``ctx``'s budget without searching again, where its
    history allows: the evolutionary search's winning shape (``genes="shape"``) at the
    scale that spends the new budget. ``None`` for every other search (run it again).

    The shape is what the genetic search chose; the scale only follows the budget, so when
    the measured check moves the limit a few percent, rescaling costs one bisection where a
    new search costs a whole genetic run."""
    winner = next((h.get("winner") for h in history if h.get("winner")), None)
    if winner is None:
        return None
    with ctx.exact():
        ratios = shape_ratios(ctx, winner["shape"], winner["round_to"], winner["spread"])
    if ctx.violation(ratios, winner["round_to"]) > 0:
        raise _impossible(ctx)
    return ratios, winner["round_to"], [{"refit": "the winning shape, rescaled",
                                         "winner": winner}]


def finalists(history: list[dict[str, Any]], round_to_choices: Sequence[int]
              ) -> list[dict[str, Any]]:
    """What an evolutionary search's winner is held against once the budget is measured (or
    scored by a longer score): the best other shape the search scored (``name``
    ``"runner-up"``) and the uniform shape at every ``round_to`` choice (``"uniform"``), each
    a ``winner`` record :func:`refit` rescales. The genetic search ranked them at the
    table's prediction and by its own short score; a shape the table mispredicts, or that
    the short score overrates, can lose its place. Empty for searches without a winning
    shape."""
    record = next((h for h in history if h.get("winner")), None)
    if record is None:
        return []
    winner = record["winner"]
    seen = {(tuple(winner["shape"]), winner["round_to"])}
    scored = sorted((e for e in record["evaluations"]
                     if e["quality"] is not None and "shape" in e), key=lambda e: -e["quality"])
    runner_up = next(((e["shape"], e["round_to"]) for e in scored
                      if (tuple(e["shape"]), e["round_to"]) not in seen), None)
    uniform = [("uniform", [0.0] * len(winner["shape"]), rt) for rt in round_to_choices]
    out = []
    for name, shape, rt in ([("runner-up", *runner_up)] if runner_up else []) + uniform:
        if (tuple(shape), rt) not in seen:
            seen.add((tuple(shape), rt))
            out.append({"name": name, "shape": list(shape), "round_to": rt,
                        "spread": winner["spread"]})
    return out


def evolutionary_options(options: dict[str, Any]) -> tuple[int, int, str, float]:
    """``population``, ``generations``, ``genes`` and ``spread`` from ``options``, checked
    (``allocate`` checks them before it builds a latency table)."""
    pop = int(options.get("population", 16))
    gens = int(options.get("generations", 10))
    genes = options.get("genes") or "shape"
    spread = float(options.get("spread", 1.0))
    if pop < 2 or gens < 1:
        raise ConfigError(f"population must be >= 2 and generations >= 1, got {pop}, {gens}")
    if genes not in GENES:
        raise ConfigError(f"unknown genes {genes!r} for kind='evolutionary'; valid: "
                          f"{', '.join(GENES)}")
    if not 0 < spread <= 4:
        raise ConfigError(f"spread must be in (0, 4] (log2 of how far a unit's share may move "
                          f"from uniform), got {spread}")
    return pop, gens, genes, spread


def shape_ratios(ctx: SearchContext, genes: Sequence[float], round_to: int,
                 spread: float = 1.0) -> list[float]:
    """The allocation a shape stands for: unit ``i`` keeps ``(1 - s) * 2 ** (spread *
    genes[i])`` of its width (clipped to ``[1 - cap, 1]``, ``cap`` the grid's largest ratio),
    with ``s`` the smallest scale that meets the budget; all units at ``cap`` when none does.
    ``genes`` of zeros is the uniform allocation."""
    cap = ctx.grid[-1]

    def at_scale(s: float) -> list[float]:
        keeps = ((1.0 - s) * 2.0 ** (spread * float(v)) for v in genes)
        return [1.0 - min(1.0, max(1.0 - cap, k)) for k in keeps]

    hit = _smallest(ctx, at_scale, round_to, 1.0)
    return hit[1] if hit else at_scale(1.0)


def _impossible(ctx: SearchContext) -> ConfigError:
    """The error for a budget that even the most pruning allowed cannot meet."""
    best = None
    for rt in ctx.space.round_to_choices:
        cost = ctx.space.cost([ctx.grid[-1]] * ctx.units, rt)
        v = ctx.budget.violation(cost, ctx.dense)
        if best is None or v < best[0]:
            best = (v, cost)
    cost = best[1] if best else {}
    reach = ", ".join(_reached(m, cost[m], ctx.dense[m])
                      for m, _ in ctx.budget.limits(ctx.dense).values() if m in cost)
    return ConfigError(f"budget {ctx.budget.to_dict()} cannot be met: cutting every unit by "
                       f"the largest ratio allowed ({ctx.grid[-1]}) reaches {reach}; loosen the "
                       "budget or allow larger ratios (grid / max_ratio)")


def _reached(metric: str, value: float, dense: float) -> str:
    """``latency_ms 0.95 (dense 1.458, 0.6513 of it)``: a metric in its own unit, and as the
    fraction of dense that a ``*_ratio`` budget is compared with."""
    share = f", {_fmt(value / dense)} of it" if dense else ""
    return f"{metric} {_fmt(value)} (dense {_fmt(dense)}{share})"


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) and not math.isnan(v) else str(v)
