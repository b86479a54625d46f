"""Least-squares reconstruction: exact recovery on noise-free layers, zeros kept, less error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.mask import attach_mask, get_mask
from prunekit.recovery.reconstruct import reconstruct


def inputs(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def wrap(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(layer)


def test_linear_layer_is_recovered_exactly():
    torch.manual_seed(0)
    original, model = wrap(nn.Linear(6, 4)), wrap(nn.Linear(6, 4))
    errors = reconstruct(model, original, inputs((16, 6)), ridge=0.0)
    torch.testing.assert_close(model[0].weight, original[0].weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(model[0].bias, original[0].bias, atol=1e-5, rtol=0)
    assert errors["0"]["before"] > 0.1 and errors["0"]["after"] < 1e-10


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_layer_is_recovered_exactly(groups):
    torch.manual_seed(0)
    make = lambda: nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=groups)  # noqa: E731
    original, model = wrap(make()), wrap(make())
    reconstruct(model, original, inputs((3, 4, 7, 7)), ridge=0.0)
    torch.testing.assert_close(model[0].weight, original[0].weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(model[0].bias, original[0].bias, atol=1e-5, rtol=0)


def test_masked_layer_keeps_its_zeros_and_recovers_a_masked_truth():
    torch.manual_seed(0)
    truth = nn.Linear(8, 5)
    keep = torch.rand(5, 8) > 0.5
    with torch.no_grad():
        truth.weight.mul_(keep)
    model = wrap(nn.Linear(8, 5))
    attach_mask(model[0], "weight", keep)
    reconstruct(model, wrap(truth), inputs((20, 8)), ridge=0.0, chunk=2)
    torch.testing.assert_close(model[0].weight, truth.weight, atol=1e-5, rtol=0)
    assert torch.all(model[0].weight[~keep] == 0)
    assert torch.equal(get_mask(model[0], "weight"), keep)


def test_masked_rows_are_the_least_squares_solution_over_kept_inputs():
    torch.manual_seed(1)
    original = wrap(nn.Linear(7, 3, bias=False))
    model = copy.deepcopy(original)
    pk.sparsify(model, sparsity=0.6)
    xs = inputs((30, 7), n=2)
    reconstruct(model, original, xs, ridge=0.0)
    x = torch.cat(xs).double()
    y = original(torch.cat(xs)).detach().double()
    keep = get_mask(model[0], "weight")
    for i in range(3):
        cols = keep[i].nonzero().flatten()
        expected = torch.linalg.lstsq(x[:, cols], y[:, i : i + 1]).solution.flatten()
        torch.testing.assert_close(model[0].weight[i, cols].double(), expected, atol=1e-5, rtol=0)


def test_pruned_net_gets_closer_to_the_original_layer_by_layer():
    torch.manual_seed(0)
    original = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )
    model = copy.deepcopy(original)
    pk.sparsify(model, sparsity=0.7)
    xs = inputs((64, 1, 6, 6), n=8)
    test = torch.randn(64, 1, 6, 6)

    def gap():
        with torch.no_grad():
            return float((model(test) - original(test)).pow(2).mean())

    before = gap()
    errors = reconstruct(model, original, xs, batches=8, ridge=1e-3)
    assert list(errors) == ["0", "3", "5"]  # forward order
    assert all(e["after"] < e["before"] for e in errors.values())
    assert gap() < 0.5 * before
    assert pk.sparsity_of(model) == pytest.approx(0.7, abs=0.01)


def test_cut_outputs_use_out_index():
    torch.manual_seed(0)
    original = wrap(nn.Linear(5, 4))
    model = wrap(nn.Linear(5, 2))
    reconstruct(model, original, inputs((12, 5)), ridge=0.0, out_index={"0": [1, 3]})
    torch.testing.assert_close(model[0].weight, original[0].weight[[1, 3]], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="pass out_index"):
        reconstruct(model, original, inputs((12, 5)))


def test_bad_arguments_leave_the_model_alone():
    model, original = wrap(nn.Linear(3, 3)), wrap(nn.Linear(3, 3))
    before = model[0].weight.clone()
    with pytest.raises(ConfigError, match="'fc' is not found in the model"):
        reconstruct(model, original, inputs((4, 3)), layers=["fc"])
    with pytest.raises(ConfigError, match="ridge"):
        reconstruct(model, original, inputs((4, 3)), ridge=-1.0)
    assert torch.equal(model[0].weight, before)
