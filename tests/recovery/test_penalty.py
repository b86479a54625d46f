"""Sparsity penalties: values against a manual sum, gradients, and the pull toward zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.recovery import train
from prunekit.recovery.penalty import SparsityPenalty, list_penalties


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def test_values_equal_the_manual_sums():
    model = convnet()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.0, 1.5]))
    assert SparsityPenalty(model, kind="bn_scale", strength=0.1)().item() == pytest.approx(0.4)
    lasso = SparsityPenalty(model, kind="group_lasso", strength=2.0, exclude=["4"])
    expected = 2.0 * model[0].weight.flatten(1).norm(dim=1).sum()
    torch.testing.assert_close(lasso(), expected)
    assert list_penalties() == ["bn_scale", "group_lasso"]


def test_bn_gradient_is_strength_times_sign():
    model = convnet()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.3, 1.5]))
    SparsityPenalty(model, kind="bn_scale", strength=0.01)().backward()
    torch.testing.assert_close(model[1].weight.grad, torch.tensor([0.01, -0.01, 0.01, 0.01]))


def test_training_with_the_penalty_shrinks_the_scales():
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(4)
    ]
    plain, slim = convnet(), convnet()
    train(plain, data, epochs=5, lr=0.05, quiet=True)
    penalty = SparsityPenalty(slim, kind="bn_scale", strength=0.05)
    train(slim, data, epochs=5, lr=0.05, loss_fn=penalty.loss(), quiet=True)
    assert slim[1].weight.abs().sum() < 0.9 * plain[1].weight.abs().sum()


def test_errors():
    with pytest.raises(ConfigError, match="no groups"):
        SparsityPenalty(nn.Linear(2, 2), kind="bn_scale")
    with pytest.raises(ConfigError, match="unknown penalty .l0."):
        SparsityPenalty(convnet(), kind="l0")
    with pytest.raises(ConfigError, match="strength"):
        SparsityPenalty(convnet(), strength=-1)
