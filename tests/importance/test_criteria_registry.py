"""Every registered criterion through both verbs, and group criteria that rank units rightly.

The matrix reads the registry when the tests are collected, as timm's tests read
``list_models()``: a criterion registered in the library is tested here without a line
changed. A criterion either works with a verb or is refused with a ConfigError that names
it and says which verb takes it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError

CRITERIA = pk.list_criteria()
MASK = set(pk.list_criteria(kind="mask"))  # score single weights: pk.sparsify
GROUP = set(pk.list_criteria(kind="group"))  # score channel groups: pk.plan
BY_SIZE = {"magnitude", "l1", "l2"}  # |w|, |w|, w^2: single weights ranked alike


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny networks, one thread (see conftest's ``one_thread``)."""


def mlp_bn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12),
                          nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)  # distinct scales for bn_scale
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(8, 6, generator=torch.Generator().manual_seed(1))


MODELS = ["mlp_bn", "conv_bn_relu"]


def build(name: str, zoo) -> tuple[nn.Module, torch.Tensor, list]:
    """Model, example inputs and calibration batches ``(inputs, targets)``."""
    if name == "mlp_bn":
        model, x = mlp_bn()
    else:
        case = zoo(name)
        model, x = case.model, case.inputs
    g = torch.Generator().manual_seed(2)
    data = [(x + 0.1 * torch.randn(x.shape, generator=g), torch.randint(0, 3, (len(x),),
                                                                           generator=g))
            for _ in range(2)]
    return model, x, data


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_sparsify_with_every_criterion(criterion, model_name, zoo):
    model, x, data = build(model_name, zoo)
    if criterion not in MASK:
        with pytest.raises(ConfigError, match=rf"criterion '{criterion}'.*pk\.plan"):
            pk.sparsify(model, sparsity=0.5, criterion=criterion, data=data)
        assert pk.sparsity_of(model) == 0.0
        return
    pk.sparsify(model, sparsity=0.5, criterion=criterion, scope="layer", data=data,
                fisher_samples=4)
    for w in prunable_weights(model):  # layer scope: every layer at the target
        assert int((w == 0).sum()) == w.numel() // 2
    assert pk.sparsity_of(model) == 0.5
    assert torch.isfinite(model(x)).all()
    again, _, _ = build(model_name, zoo)
    pk.sparsify(again, sparsity=0.5, criterion=criterion, scope="layer", data=data,
                fisher_samples=4)
    for a, b in zip(prunable_weights(model), prunable_weights(again), strict=True):
        assert torch.equal(a == 0, b == 0), "the same inputs give the same mask"
    by_size, _, _ = build(model_name, zoo)
    pk.sparsify(by_size, sparsity=0.5, criterion="magnitude", scope="layer")
    same = [torch.equal(a == 0, b == 0)
            for a, b in zip(prunable_weights(model), prunable_weights(by_size), strict=True)]
    if criterion in BY_SIZE:
        assert all(same)
    else:  # the criterion is used, not replaced by magnitude
        assert not all(same)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_plan_with_every_criterion(criterion, model_name, zoo):
    model, x, data = build(model_name, zoo)
    graph = pk.trace(model, x)
    if criterion not in GROUP:
        with pytest.raises(ConfigError, match=rf"criterion '{criterion}'.*pk\.sparsify"):
            pk.plan(graph, ratio=0.5, criterion=criterion, data=data)
        return
    widths = {n: m.weight.shape[0] for n, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d))}
    plan = pk.plan(graph, ratio=0.5, criterion=criterion, data=data)
    original = copy.deepcopy(model)
    pk.apply(model, plan)
    last = list(widths)[-1]  # the classifier's outputs are the model's outputs
    for name, width in widths.items():
        want = width if name == last else width // 2
        assert model.get_submodule(name).weight.shape[0] == want, name
    assert pk.verify(original, model, plan, x).ok


# --- ranking: a model whose answer is known --------------------------------------------

WEAK = [1, 3, 4, 6]
STRONG = [0, 2, 5, 7]


def known_mlp() -> nn.Module:
    """Linear-ReLU-Linear whose hidden units 1, 3, 4, 6 have weights 100 times smaller.

    Inputs and the strong units' weights are positive, so every strong unit is active on
    every example (a dead unit would score 0 under gradient criteria).
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.5)
        model[0].bias.fill_(0.5)
        model[2].weight.uniform_(-1.5, 1.5)
        scale = torch.ones(8)
        scale[WEAK] = 0.01
        model[0].weight.mul_(scale[:, None])  # (out, in): rows are units
        model[0].bias.mul_(scale)
        model[2].weight.mul_(scale[None, :])  # (out, in): columns are units
    return model.eval()


RANKED = [c for c in CRITERIA if c in GROUP and c != "random"]  # random ignores the weights


@pytest.mark.parametrize("criterion", RANKED)
def test_group_criteria_remove_exactly_the_weak_units(criterion):
    model = known_mlp()
    g = torch.Generator().manual_seed(3)
    data = [(torch.rand(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(2)]
    original = copy.deepcopy(model)
    plan = pk.plan(pk.trace(model, data[0][0]), ratio=0.5, criterion=criterion, data=data)
    pk.apply(model, plan)
    assert torch.equal(model[0].weight, original[0].weight[STRONG])
    assert torch.equal(model[2].weight, original[2].weight[:, STRONG])


def test_random_criterion_ignores_the_weights():
    kept = set()
    for seed in range(4):
        model = known_mlp()
        original = copy.deepcopy(model)
        pk.prune(model, torch.rand(2, 4), ratio=0.5, criterion="random", seed=seed)
        rows = [int(i) for i in range(8)
                if any(torch.equal(original[0].weight[i], r) for r in model[0].weight)]
        kept.add(tuple(rows))
    assert kept != {tuple(STRONG)}  # some seed keeps a weak unit
