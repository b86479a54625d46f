"""``allocate`` end to end on small real models: budgets met by the pruned network itself,
ratios that ``pk.plan`` reproduces, the model left unchanged, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.allocation import Budget, allocate, apply_allocation, score_after_training
from prunekit.errors import ConfigError
from prunekit.measure import count_macs, count_params

GRID = [0.25, 0.5, 0.75]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32, 24)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3))  # (B, 32)
        return self.fc(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    val = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        labels = model(val).argmax(1)

    def evaluate(net: nn.Module) -> float:  # agreement with the dense model on a held-out batch
        with torch.no_grad():
            return float((net(val).argmax(1) == labels).float().mean())

    return model, x, evaluate


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["uniform", "global", "lamp", "greedy"])
def test_channel_allocation_meets_a_macs_budget(setup, kind, tmp_path):
    model, x, evaluate = setup
    before = _state(model)
    alloc = allocate(model, x, kind=kind, budget={"macs_ratio": 0.5}, evaluate=evaluate,
                     grid=GRID, cache_dir=tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # unchanged
    pruned = Net()
    pruned.load_state_dict(model.state_dict())
    pk.apply(pruned, pk.plan(pk.trace(pruned, x), **alloc.plan_kwargs))
    macs = count_macs(pruned, x).dense
    assert macs == alloc.predicted["macs"] <= 0.5 * alloc.dense["macs"]
    assert count_params(pruned) == alloc.predicted["params"]
    assert set(alloc.ratios) == {"conv1", "conv2", "fc1"}
    json.dumps(alloc.to_dict())


def test_plan_kwargs_reproduce_the_evaluated_network(setup, tmp_path):
    model, x, evaluate = setup
    alloc = allocate(model, x, kind="greedy", budget={"params_ratio": 0.6}, evaluate=evaluate,
                     grid=GRID, cache_dir=tmp_path, round_to=(1, 4))
    pruned = Net()
    pruned.load_state_dict(model.state_dict())
    apply_allocation(pruned, alloc, x)
    assert evaluate(pruned) == alloc.quality
    assert alloc.round_to in (1, 4)


def test_evolutionary_shapes_reproduce_the_evaluated_network(setup):
    """Shape genes give continuous ratios: ``pk.plan`` must still cut exactly the widths the
    search scored, and the cut meets the budget as built."""
    pytest.importorskip("pymoo", reason="pip install pymoo")
    model, x, evaluate = setup
    alloc = allocate(model, x, kind="evolutionary", budget={"macs_ratio": 0.5},
                     evaluate=evaluate, grid=GRID, population=6, generations=3, seed=0,
                     round_to=(1, 4), cache_dir=None)
    assert alloc.history[0]["genes"] == "shape"
    pruned = Net()
    pruned.load_state_dict(model.state_dict())
    apply_allocation(pruned, alloc, x)
    assert evaluate(pruned) == alloc.quality
    assert count_macs(pruned, x).dense == alloc.predicted["macs"] <= 0.5 * alloc.dense["macs"]
    assert all(0 <= r <= GRID[-1] for r in alloc.ratios.values())


def test_a_longer_final_score_picks_among_the_evolutionary_finalists(setup):
    """The search ranks candidates by its cheap score, here one that likes a wide first layer;
    ``final_evaluate``, standing for a longer fine-tuning, prefers even cuts. It scores only
    the finalists (winner, runner-up, uniform at each round_to), each rescaled to the budget,
    once each, and the one it scores best is the cut returned."""
    pytest.importorskip("pymoo", reason="pip install pymoo")
    model, x, _ = setup
    final_calls = []

    def evaluate(net: nn.Module) -> float:  # the more of conv1 kept, the better
        return net.conv1.out_channels / 16 - net.fc1.out_features / 24

    def evenness(net: nn.Module) -> float:  # how alike the widths' kept shares are
        final_calls.append(net)
        shares = [net.conv1.out_channels / 16, net.conv2.out_channels / 32,
                  net.fc1.out_features / 24]
        return -(max(shares) - min(shares))

    options = dict(kind="evolutionary", budget={"macs_ratio": 0.5}, evaluate=evaluate,
                   grid=GRID, population=6, generations=3, seed=0, round_to=(1, 4),
                   cache_dir=None)
    plain = allocate(model, x, **options)
    assert "finalists" not in plain.history[-1]  # a MACs budget keeps the search's winner
    alloc = allocate(model, x, final_evaluate=evenness, **options)
    record = alloc.history[-1]
    assert record["scored_by"] == "evenness"
    rows = record["finalists"]
    names = [r["finalist"] for r in rows]
    assert names[0] == "winner" and names.count("uniform") == 2  # one per round_to choice
    assert len(final_calls) == len(rows)  # each finalist scored once, by the final score
    kept = next(r for r in rows if r["kept"])
    assert kept["quality"] == max(r["quality"] for r in rows) and kept["finalist"] == "uniform"
    assert alloc.round_to == kept["round_to"]
    pruned = Net()
    pruned.load_state_dict(model.state_dict())
    apply_allocation(pruned, alloc, x)
    assert evenness(pruned) == kept["quality"]  # the cut returned is the one kept
    assert count_macs(pruned, x).dense <= 0.5 * alloc.dense["macs"]
    # the search itself is the same: its winner is the one the plain run returned
    assert rows[0]["round_to"] == plain.round_to and any(
        next(h["winner"] for h in plain.history if h.get("winner"))["shape"])
    assert alloc.quality == evaluate(pruned)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "greedy"}, "kind='greedy', genes='shape' has none"),
    ({"kind": "evolutionary", "genes": "grid"}, "genes='grid' has none"),
    ({"kind": "evolutionary", "final_evaluate": 0.5}, "must be a function"),
])
def test_a_final_score_without_finalists_is_refused(setup, kwargs, message):
    model, x, evaluate = setup
    kwargs = {"final_evaluate": evaluate, **kwargs}
    with pytest.raises(ConfigError, match=message):
        allocate(model, x, budget={"macs_ratio": 0.5}, evaluate=evaluate, cache_dir=None,
                 **kwargs)


def test_score_after_training_trains_each_candidate_on_the_same_batches(setup):
    model, x, evaluate = setup
    torch.manual_seed(1)
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(5)]
    seen = []

    def held_out(net: nn.Module) -> float:
        seen.append(net)
        return evaluate(net)

    scored = score_after_training(held_out, iter(data), steps=3, lr=0.1)
    assert scored.__name__ == "held_out_after_3_steps"  # scan caches keep them apart
    a, b = Net(), Net()
    a.load_state_dict(model.state_dict())
    b.load_state_dict(model.state_dict())
    first, second = scored(a), scored(b)
    assert seen == [a, b] and first == second  # the same three batches, in the same order
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.fc.weight, model.fc.weight)  # the candidate itself was trained
    with pytest.raises(ConfigError, match="steps must be a whole number >= 1"):
        score_after_training(held_out, data, steps=0)
    with pytest.raises(ConfigError, match="data gave no batches"):
        score_after_training(held_out, [], steps=2)


def test_latency_budget_with_a_fake_timer(setup, tmp_path):
    model, x, evaluate = setup

    def timer(module, inputs):  # deterministic: milliseconds = parameters / 1000
        return sum(p.numel() for p in module.parameters()) / 1000 + 0.01

    dense_ms = timer(model, x)
    alloc = allocate(model, x, kind="greedy", budget={"latency_ms": 0.5 * dense_ms},
                     evaluate=evaluate, grid=GRID, cache_dir=tmp_path, timer=timer)
    assert alloc.predicted["latency_ms"] <= 0.5 * dense_ms
    assert alloc.dense["latency_ms"] == pytest.approx(dense_ms, rel=0.05)  # a fitted model


def test_evolutionary_saves_its_history(setup, tmp_path):
    pytest.importorskip("pymoo", reason="pip install pymoo")
    model, x, evaluate = setup
    path = tmp_path / "history.json"
    alloc = allocate(model, x, kind="evolutionary", budget={"macs_ratio": 0.6},
                     evaluate=evaluate, grid=GRID, population=4, generations=3, seed=1,
                     cache_dir=None, history_path=path)
    saved = json.loads(path.read_text())
    assert saved["ratios"] == alloc.ratios and saved["kind"] == "evolutionary"
    gens = saved["history"][0]["generations"]
    assert [g["generation"] for g in gens] == [1, 2, 3]
    assert alloc.predicted["macs"] <= 0.6 * alloc.dense["macs"]


def test_hierarchical_on_a_real_model(setup, tmp_path):
    model, x, evaluate = setup
    alloc = allocate(model, x, kind="hierarchical", budget={"params_ratio": 0.7},
                     evaluate=evaluate, grid=GRID, cache_dir=tmp_path)
    assert alloc.predicted["params"] <= 0.7 * alloc.dense["params"]
    assert "blocks" in alloc.history[1]


@pytest.mark.parametrize("kind", ["uniform", "lamp", "greedy"])
def test_mask_allocation_meets_a_sparsity_budget(setup, kind, tmp_path):
    model, x, evaluate = setup
    alloc = allocate(model, x, kind=kind, granularity="mask", budget={"sparsity": 0.6},
                     evaluate=evaluate, grid=[0.2, 0.4, 0.6, 0.8], cache_dir=tmp_path)
    masked = Net()
    masked.load_state_dict(model.state_dict())
    apply_allocation(masked, alloc)
    assert pk.sparsity_of(masked) == pytest.approx(alloc.predicted["sparsity"], abs=1e-3)
    assert alloc.predicted["sparsity"] >= 0.6 - 1e-3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "annealing", "budget": {"macs_ratio": 0.5}}, "unknown allocation kind 'annealing'"),
    ({"kind": "greedy", "budget": {"macs_ratio": 0.5}}, "pass evaluate="),
    ({"kind": "uniform", "budget": {"macs_ratio": 0.01}}, "cannot be met"),
    ({"kind": "uniform", "budget": {"latency": 3}}, "unknown budget key 'latency'"),
    ({"kind": "uniform", "budget": {"macs_ratio": 1.5}}, "fraction in"),
    ({"kind": "uniform", "budget": {"params": -1}}, "positive number"),
    ({"kind": "uniform", "budget": {}}, "at least one limit"),
    ({"kind": "uniform", "budget": {"macs_ratio": 0.5}, "grid": [1.2]}, "grid needs ratios"),
    ({"kind": "uniform", "budget": {"macs_ratio": 0.5}, "granularity": "head"},
     "unknown granularity"),
    ({"kind": "uniform", "budget": {"latency_ms": 1.0}, "granularity": "mask"},
     "masks keep every shape"),
])
def test_bad_inputs_are_clear_errors(setup, kwargs, message):
    model, x, _ = setup
    before = _state(model)
    with pytest.raises(ConfigError, match=message):
        allocate(model, x, cache_dir=None, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_budget_parse_and_violation():
    b = Budget.parse({"latency_ratio": 0.5, "params": 100})
    dense = {"latency_ms": 10.0, "params": 400.0}
    assert b.met({"latency_ms": 5.0, "params": 100.0}, dense)
    assert b.violation({"latency_ms": 6.0, "params": 150.0}, dense) == pytest.approx(0.2 + 0.5)
    assert Budget.parse(b) is b and b.metrics == {"latency_ms", "params"}


def test_one_budget_type_for_plan_and_allocate():
    import prunekit as pk

    assert Budget is pk.Budget  # one class, not two with opposite meanings
    assert pk.Budget("macs", 0.5) == pk.Budget(macs_ratio=0.5) == Budget.parse({"macs_ratio": 0.5})
    assert pk.Budget("params", 0.3).removal == ("params", 0.3)
    assert pk.Budget(params_ratio=0.25).kind == "params"
    assert pk.Budget(latency_ms=2.0).removal is None
    with pytest.raises(ConfigError, match="pk.allocate"):  # plan cannot meet a latency budget
        pk.PlanConfig(budget=pk.Budget(latency_ms=2.0))
    with pytest.raises(ConfigError, match="not both"):
        pk.Budget("macs", 0.5, latency_ms=2.0)
    with pytest.raises(ConfigError, match="unknown budget key 'latency'"):
        pk.Budget(latency=2.0)
    with pytest.raises(ConfigError, match=r"budget macs must be a fraction in \[0, 1\)"):
        pk.Budget("macs", 1.5)
    with pytest.raises(AttributeError, match="frozen"):
        pk.Budget("macs", 0.5).macs_ratio = 0.1
