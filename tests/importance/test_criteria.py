import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.importance import ParamStats, collect_stats, get_criterion


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model(torch.randn(32, 6))  # give batch norm non-trivial running statistics
    data = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(3)]
    return model, data


def test_gradient_stats_match_manual_mean_and_leave_model_untouched():
    model, data = _setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    w = model[0].weight
    w.grad = torch.full_like(w, 7.0)
    stats = collect_stats(model, {"0.weight": w}, data, needs=("grad",), batches=2)

    model.eval()
    manual = (
        sum(
            torch.autograd.grad(nn.functional.cross_entropy(model(x), y), w)[0] for x, y in data[:2]
        )
        / 2
    )
    model.train()
    torch.testing.assert_close(stats["0.weight"].grad, manual)
    assert model.training
    assert torch.all(w.grad == 7.0)  # the user's gradients are restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # running stats untouched


def test_fisher_is_mean_of_squared_per_sample_gradients():
    model, data = _setup()
    w = model[3].weight
    stats = collect_stats(model, {"w": w}, data, needs=("fisher",), fisher_samples=15)
    model.eval()
    xs = torch.cat([x for x, _ in data])[:15]
    ys = torch.cat([y for _, y in data])[:15]
    manual = (
        sum(
            torch.autograd.grad(
                nn.functional.cross_entropy(model(xs[i : i + 1]), ys[i : i + 1]), w
            )[0]
            ** 2
            for i in range(15)
        )
        / 15
    )
    torch.testing.assert_close(stats["w"].fisher, manual)


def test_criterion_formulas():
    w = torch.tensor([[-2.0, 1.0], [0.5, -0.1]])
    g = torch.tensor([[0.1, -3.0], [1.0, 2.0]])
    f = torch.tensor([[4.0, 1.0], [2.0, 9.0]])
    st = ParamStats(grad=g, fisher=f)
    torch.testing.assert_close(get_criterion("magnitude")(w, st), w.abs())
    torch.testing.assert_close(get_criterion("l2")(w, st), w**2)
    torch.testing.assert_close(get_criterion("gradient")(w, st), g.abs())
    torch.testing.assert_close(get_criterion("taylor")(w, st), (w * g).abs())
    torch.testing.assert_close(get_criterion("obd")(w, st), 0.5 * f * w**2)


def test_random_criterion_is_seeded():
    w = torch.randn(50)
    a = get_criterion("random")(w, ParamStats(generator=torch.Generator().manual_seed(3)))
    b = get_criterion("random")(w, ParamStats(generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, b)


def test_data_driven_criterion_without_data_names_the_fix():
    model, _ = _setup()
    with pytest.raises(ConfigError, match="data="):
        pk.sparsify(model, sparsity=0.5, criterion="taylor")


def test_register_custom_criterion_and_reject_duplicates():
    name = "test_cubed"
    if name not in pk.list_criteria():
        pk.register_criterion(name)(lambda w, s: w.abs() ** 3)
    with pytest.raises(ConfigError, match="already registered"):
        pk.register_criterion(name)(lambda w, s: w)
    model, _ = _setup()
    pk.sparsify(model, sparsity=0.5, criterion=name)
    assert pk.sparsity_of(model) == pytest.approx(0.5, abs=0.02)
    assert set(pk.list_criteria()) >= {"magnitude", "random", "gradient", "taylor", "obd"}
