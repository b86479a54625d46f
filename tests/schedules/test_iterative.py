"""Iterative pruning (rounds, accuracy floor with restore) and lottery tickets (rewinding)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.mask import get_mask
from prunekit.schedules import Geometric, Steps, lottery_ticket, prune_iteratively


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


DATA = [
    (torch.randn(10, 6, generator=torch.Generator().manual_seed(i)), torch.arange(10) % 3)
    for i in range(3)
]


def sgd(model: nn.Module, after_step=lambda: None, steps: int = 3) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in DATA[:steps]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        after_step()


def fake_accuracy(model: nn.Module) -> float:
    """A stand-in 'accuracy' that falls as sparsity rises: 1 - sparsity^2."""
    return 1.0 - pk.sparsity_of(model) ** 2


def test_rounds_follow_the_schedule_and_finetune_after_each_cut():
    model = net()
    tuned = []
    history = prune_iteratively(
        model,
        Steps(sparsities=(0.5, 0.75, 0.9)),
        finetune=lambda m: tuned.append(pk.sparsity_of(m)) or sgd(m),
        evaluate=fake_accuracy,
    )
    assert [r.round for r in history] == [0, 1, 2, 3]
    assert [r.target for r in history] == [0.0, 0.5, 0.75, 0.9]
    assert tuned == pytest.approx([0.5, 0.75, 0.9], abs=1 / 108)
    assert [r.sparsity for r in history] == pytest.approx([0, 0.5, 0.75, 0.9], abs=1 / 108)
    assert history[2].accuracy == pytest.approx(1 - history[2].sparsity ** 2)
    assert all(r.kept for r in history)


def test_floor_restores_the_last_good_round_exactly():
    model = net()
    states = []

    def finetune(m):
        sgd(m)
        states.append({k: v.clone() for k, v in m.state_dict().items()})

    history = prune_iteratively(
        model,
        Geometric(final=0.95, rate=0.5, start=1),
        finetune=finetune,
        evaluate=fake_accuracy,
        floor=1 - 0.8**2,  # 50% and 75% pass, 87.5% does not
        scope="global",
    )
    assert [(r.round, r.kept) for r in history] == [(0, True), (1, True), (2, True), (3, False)]
    assert history[-1].accuracy < 1 - 0.8**2 <= history[-2].accuracy
    good = states[1]  # after round 2's fine-tune
    assert set(model.state_dict()) == set(good)
    for key, value in model.state_dict().items():
        assert torch.equal(value, good[key]), key
    assert pk.sparsity_of(model) == pytest.approx(0.75, abs=1 / 108)


def test_floor_undoes_a_structural_cut_shapes_sizes_and_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    x, seen = torch.randn(4, 6), []
    scores = iter([0.9, 0.8, 0.1])  # the second cut falls below the floor

    def evaluate(m):
        seen.append((m[0].weight.shape, m[0].out_features, m(x).detach().clone()))
        return next(scores)

    history = prune_iteratively(model, Steps(sparsities=(0.25, 0.5), start=1),
                                finetune=sgd, evaluate=evaluate, floor=0.5,
                                method=lambda m, amount: pk.prune(m, x, ratio=amount))
    assert [r.kept for r in history] == [True, True, False]
    shape, features, out = seen[1]  # the state after round 1
    assert seen[2][0] != shape  # round 2 did cut further
    assert model[0].weight.shape == shape and model[0].out_features == features
    assert torch.equal(model(x), out)


def test_floor_needs_evaluate_and_a_dense_model_below_floor_is_left_alone():
    with pytest.raises(ConfigError, match="floor needs evaluate"):
        prune_iteratively(net(), Steps(sparsities=(0.5,)), finetune=sgd, floor=0.5)
    model = net()
    history = prune_iteratively(
        model, Steps(sparsities=(0.5,)), finetune=sgd, evaluate=lambda m: 0.1, floor=0.5
    )
    assert len(history) == 1 and get_mask(model[0], "weight") is None


def test_lottery_ticket_rewinds_survivors_to_the_kept_weights():
    model = net()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    starts = []

    def train(m, after_step):
        starts.append({k: v.clone() for k, v in m.state_dict().items()})
        sgd(m, after_step)

    history = lottery_ticket(model, train=train, sparsity=0.8, rate=0.5, evaluate=fake_accuracy)
    rounds = Geometric(final=0.8, rate=0.5).rounds
    assert len(starts) == rounds + 1 and [r.round for r in history] == list(range(rounds + 1))
    assert history[-1].sparsity == pytest.approx(0.8, abs=1 / 108)
    previous = torch.ones_like(init["0.weight"], dtype=torch.bool)
    for start in starts[1:]:
        mask = start["0.weight_mask"]
        assert torch.equal(start["0.weight"], init["0.weight"] * mask)  # rewound, masked
        assert torch.equal(start["0.bias"], init["0.bias"])
        assert not torch.any(mask & ~previous)  # masks only shrink
        previous = mask


def test_lottery_ticket_late_rewinding_uses_the_weights_after_k_steps():
    model = net()
    kept, starts = {}, []

    def train(m, after_step):
        starts.append({k: v.clone() for k, v in m.state_dict().items()})

        def hook():
            after_step()
            kept.setdefault(len(kept) + 1, m[2].weight.detach().clone())

        sgd(m, hook if not kept else after_step)

    lottery_ticket(model, train=train, sparsity=0.5, rate=0.5, rewind=2)
    assert torch.equal(starts[1]["2.weight"], kept[2] * starts[1]["2.weight_mask"])
    with pytest.raises(ConfigError, match="rewind=7 but training made only 3"):
        lottery_ticket(net(), train=lambda m, cb: sgd(m, cb), sparsity=0.5, rewind=7)
