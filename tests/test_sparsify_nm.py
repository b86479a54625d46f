"""N:M patterns on layers whose input size is not a multiple of M: named, or skipped on request."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.Flatten(), nn.Linear(8, 4))


def test_indivisible_layers_are_named():
    model = _net()
    with pytest.raises(ConfigError, match=r"0\.weight \(3 inputs\), 2\.weight \(1 inputs\)"):
        pk.sparsify(model, pattern="2:4")
    assert pk.sparsity_of(model) == 0.0  # nothing was masked


def test_skip_indivisible_leaves_them_dense_and_says_so():
    model = _net()
    with pytest.warns(UserWarning, match=r"left dense .*0\.weight"):
        result = pk.sparsify(model, pattern="2:4", skip_indivisible=True)
    assert set(result) == {"4.weight"} and result["4.weight"] == pytest.approx(0.5)
