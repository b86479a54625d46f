"""Allocation strategies on a toy space whose optimum is known by brute force."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from prunekit.allocation.budget import Budget
from prunekit.allocation.search import STRATEGIES, SearchContext, list_kinds
from prunekit.errors import ConfigError

GRID = [0.0, 0.2, 0.4, 0.6, 0.8]


class ToySpace:
    """Units with known sizes and sensitivities: quality = -sum(w * r^2), params linear."""

    granularity = "toy"
    round_to_choices = (1,)

    def __init__(self, units, sizes, weights):
        self.units, self.sizes, self.weights = list(units), list(sizes), list(weights)
        self.builds = 0

    def dense_cost(self):
        return {"params": float(sum(self.sizes)), "sparsity": 0.0}

    def cost(self, ratios, round_to=1):
        kept = sum(n * (1 - r) for n, r in zip(self.sizes, ratios, strict=True))
        return {"params": kept, "sparsity": 1 - kept / sum(self.sizes)}

    def build(self, ratios, round_to=1):
        self.builds += 1
        return list(ratios)

    def ratios_dict(self, ratios):
        return dict(zip(self.units, ratios, strict=True))

    def blocks(self, depth):
        out = {}
        for i, u in enumerate(self.units):
            out.setdefault(u.split(".")[0], []).append(i)
        return out

    def fingerprint(self):
        return repr((self.units, self.sizes, self.weights))


def quality_of(space):
    def evaluate(ratios):
        return -sum(w * r * r for w, r in zip(space.weights, ratios, strict=True))
    return evaluate


def context(space, budget, **options):
    return SearchContext(space, Budget.parse(budget), GRID, quality_of(space), 0, options)


def brute_force(space, budget):
    ctx = context(space, budget)
    best = None
    for combo in itertools.product(GRID, repeat=len(space.units)):
        if ctx.violation(combo, 1) <= 0:
            q = quality_of(space)(combo)
            if best is None or q > best[0]:
                best = (q, list(combo))
    return best


def toy():
    return ToySpace(["a.x", "a.y", "b.x", "b.y", "c.x"], [100, 300, 200, 50, 150],
                    [5.0, 1.0, 2.0, 0.5, 8.0])


def test_every_kind_is_registered():
    assert set(list_kinds()) == {"uniform", "global", "lamp", "sensitivity", "greedy",
                                 "hierarchical", "evolutionary"}


def test_evolutionary_finds_the_known_optimum():
    pytest.importorskip("pymoo", reason="pip install pymoo")
    space, budget = toy(), {"params_ratio": 0.55}
    best_q, best = brute_force(space, budget)
    ctx = context(space, budget, population=24, generations=40, genes="grid")
    ratios, rt, history = STRATEGIES.get("evolutionary")(ctx)
    assert ratios == best
    assert quality_of(space)(ratios) == pytest.approx(best_q)
    gens = history[0]["generations"]
    assert len(gens) == 40 and gens[-1]["best"] == best
    json.dumps(history)  # the history is plain JSON
    # seeded: the same run again gives the same history
    again = STRATEGIES.get("evolutionary")(context(toy(), budget, population=24, generations=40,
                                                           genes="grid"))
    assert again[2] == history


def _continuous_optimum(space, kept, cap):
    """max -sum(w r^2) s.t. sum(n r) = (1 - kept) sum(n), r <= cap: r = min(cap, lam n / w)."""
    lo, hi, target = 0.0, 1e3, (1 - kept) * sum(space.sizes)
    for _ in range(200):
        lam = (lo + hi) / 2
        r = [min(cap, lam * n / w) for n, w in zip(space.sizes, space.weights, strict=True)]
        lo, hi = (lam, hi) if sum(n * x for n, x in zip(space.sizes, r, strict=True)) < target \
            else (lo, lam)
    return quality_of(space)(r)


def test_evolutionary_shapes_spend_the_budget_and_near_the_optimum():
    pytest.importorskip("pymoo", reason="pip install pymoo")
    space, budget = toy(), {"params_ratio": 0.55}
    ctx = context(space, budget, population=16, generations=30)
    ratios, _, history = STRATEGIES.get("evolutionary")(ctx)
    # every candidate is scaled onto the budget, so the winner spends all of it
    assert ctx.violation(ratios, 1) <= 0
    assert space.cost(ratios)["params"] == pytest.approx(0.55 * sum(space.sizes), rel=1e-4)
    uniform, _, _ = STRATEGIES.get("uniform")(context(toy(), budget))
    optimum = _continuous_optimum(space, 0.55, GRID[-1])
    got = quality_of(space)(ratios)
    assert got > quality_of(space)(uniform) + 1.0       # far better than one ratio everywhere
    assert got >= optimum * 1.05                          # within 5% of the continuous optimum
    # the first individual is the uniform allocation itself
    first = history[0]["evaluations"][0]["ratios"]
    assert first == pytest.approx(uniform, abs=1e-5)
    assert history[0]["genes"] == "shape"
    again = STRATEGIES.get("evolutionary")(context(toy(), budget, population=16, generations=30))
    assert again[2] == history


def test_evolutionary_never_scores_below_uniform():
    """Elitism from a uniform first individual: on any quality function, the search ends at
    least where uniform is, even when every other shape is worse."""
    pytest.importorskip("pymoo", reason="pip install pymoo")
    space = toy()
    ctx = SearchContext(space, Budget.parse({"params_ratio": 0.6}), GRID,
                        lambda r: -max(r) + min(r), 0, {"population": 6, "generations": 3})
    ratios, _, _ = STRATEGIES.get("evolutionary")(ctx)
    assert max(ratios) - min(ratios) == pytest.approx(0.0, abs=1e-6)


def test_evolutionary_bad_options():
    pytest.importorskip("pymoo", reason="pip install pymoo")
    with pytest.raises(ConfigError, match="unknown genes 'bits'.*shape, grid"):
        STRATEGIES.get("evolutionary")(context(toy(), {"params_ratio": 0.6}, genes="bits"))
    with pytest.raises(ConfigError, match="spread must be in"):
        STRATEGIES.get("evolutionary")(context(toy(), {"params_ratio": 0.6}, spread=0))


@pytest.mark.parametrize("kind", ["uniform", "sensitivity", "greedy", "hierarchical"])
def test_strategies_meet_the_budget(kind):
    space = toy()
    ctx = context(space, {"params_ratio": 0.6})
    ratios, _, _ = STRATEGIES.get(kind)(ctx)
    assert ctx.violation(ratios, 1) == 0
    assert all(r in GRID for r in ratios) or kind == "uniform"


def test_uniform_is_the_smallest_ratio_meeting_the_budget():
    ctx = context(toy(), {"sparsity": 0.37})
    ratios, _, _ = STRATEGIES.get("uniform")(ctx)
    assert len(set(ratios)) == 1 and ratios[0] == pytest.approx(0.37, abs=1e-6)


def test_greedy_cuts_the_flattest_curves_first():
    space = ToySpace(["a", "b", "c"], [100, 100, 100], [0.0, 1.0, 10.0])
    ctx = context(space, {"params_ratio": 0.6})
    ratios, _, history = STRATEGIES.get("greedy")(ctx)
    # 40% of the parameters must go: all from the insensitive unit first, then the next one
    assert ratios == [0.8, 0.4, 0.0]
    assert history[1]["steps"][0]["var"] == 0


def test_greedy_matches_brute_force_on_a_convex_toy():
    space = ToySpace(["a", "b", "c"], [100, 100, 100], [1.0, 2.0, 4.0])
    budget = {"params_ratio": 0.6}
    ratios, _, _ = STRATEGIES.get("greedy")(context(space, budget))
    assert ratios == brute_force(space, budget)[1]


def test_hierarchical_prunes_only_inside_the_blocks_it_chose():
    space = ToySpace(["a.x", "a.y", "b.x", "b.y"], [100, 100, 100, 100], [0.1, 0.2, 9.0, 8.0])
    ctx = context(space, {"params_ratio": 0.7})
    ratios, _, history = STRATEGIES.get("hierarchical")(ctx)
    assert ratios[2:] == [0.0, 0.0] and sum(ratios[:2]) >= 1.2 - 1e-9
    assert history[1]["blocks"]["b"] == 0.0 and history[1]["blocks"]["a"] > 0


def test_sensitivity_threshold_keeps_sensitive_units():
    space = ToySpace(["a", "b"], [100, 100], [0.0, 100.0])
    ratios, _, _ = STRATEGIES.get("sensitivity")(context(space, {"params_ratio": 0.6}))
    assert ratios == [0.8, 0.0]


@pytest.mark.parametrize("kind", ["uniform", "greedy", "sensitivity", "hierarchical"])
def test_impossible_budget_is_a_clear_error(kind):
    ctx = context(toy(), {"params_ratio": 0.1})  # at most 80% can go
    with pytest.raises(ConfigError, match="cannot be met.*loosen the budget") as err:
        STRATEGIES.get(kind)(ctx)
    # the metric in its own unit, and as the fraction of dense the ratio is compared with
    assert re.search(r"reaches params [\d.]+ \(dense [\d.]+, 0\.2 of it\)", str(err.value))


def test_impossible_budget_evolutionary():
    pytest.importorskip("pymoo", reason="pip install pymoo")
    with pytest.raises(ConfigError, match="cannot be met"):
        STRATEGIES.get("evolutionary")(context(toy(), {"params_ratio": 0.1}, population=6,
                                                generations=2))


def test_scan_is_cached_on_disk(tmp_path):
    space = toy()
    ctx = context(space, {"params_ratio": 0.6}, cache_dir=tmp_path)
    STRATEGIES.get("greedy")(ctx)
    first = space.builds
    assert first == 1 + len(space.units) * (len(GRID) - 1)
    STRATEGIES.get("greedy")(context(space, {"params_ratio": 0.6}, cache_dir=tmp_path))
    assert space.builds == first  # read back, nothing evaluated
    assert len(list((tmp_path / "sensitivity").glob("*.json"))) == 1
