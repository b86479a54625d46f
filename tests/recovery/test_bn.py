"""BN recalibration: exact statistics of the data at each BN input; the cumulative average."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.recovery.bn import list_bn_modes, recalibrate_bn


def tiny(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2)
    )


def data(n_batches=4, size=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (3 * torch.randn(size, 3, generator=g) + 1, torch.zeros(size)) for _ in range(n_batches)
    ]


def test_exact_mode_equals_the_true_statistics_layer_by_layer():
    model = tiny()
    model[1].running_mean.fill_(5.0)  # stale statistics of "the original"
    model.train()
    batches = data()
    assert recalibrate_bn(model, batches) == 2
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        h1 = model[0](x)  # what bn1 sees
        mean1, var1 = h1.mean(0), h1.var(0, unbiased=True)
        h2 = model[3](
            torch.relu(
                (h1 - mean1) / torch.sqrt(var1 + model[1].eps) * model[1].weight + model[1].bias
            )
        )
    torch.testing.assert_close(model[1].running_mean, mean1)
    torch.testing.assert_close(model[1].running_var, var1)
    torch.testing.assert_close(model[4].running_mean, h2.mean(0))
    torch.testing.assert_close(model[4].running_var, h2.var(0, unbiased=True))
    assert model.training and all(m.training for m in model)  # modes restored
    assert int(model[1].num_batches_tracked) == 4


def test_exact_mode_on_conv_batch_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    x = torch.randn(6, 1, 5, 5)
    recalibrate_bn(model, [x[:3], x[3:]])
    with torch.no_grad():
        h = model[0](x).transpose(0, 1).reshape(3, -1)  # (C, N*H*W)
    torch.testing.assert_close(model[1].running_mean, h.mean(1))
    torch.testing.assert_close(model[1].running_var, h.var(1, unbiased=True))


def test_cumulative_mode_is_the_average_of_batch_statistics():
    model = tiny()
    model.eval()
    batches = data()
    recalibrate_bn(model, batches, mode="cumulative", batches=3)
    with torch.no_grad():
        hs = [model[0](b[0]) for b in batches[:3]]
    torch.testing.assert_close(model[1].running_mean, torch.stack([h.mean(0) for h in hs]).mean(0))
    torch.testing.assert_close(
        model[1].running_var, torch.stack([h.var(0, unbiased=True) for h in hs]).mean(0)
    )
    assert model[1].momentum == 0.1 and not model.training


def test_parameters_untouched_and_errors():
    model = tiny()
    params = {k: v.clone() for k, v in model.named_parameters()}
    recalibrate_bn(model, data())
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    assert recalibrate_bn(nn.Linear(2, 2), data()) == 0
    assert list_bn_modes() == ["cumulative", "exact"]
    with pytest.raises(ConfigError, match="valid bn recalibration modes: cumulative, exact"):
        recalibrate_bn(model, data(), mode="ema")
    with pytest.raises(DataError, match="empty"):
        recalibrate_bn(model, [])
    with pytest.raises(ConfigError, match="batches"):
        recalibrate_bn(model, data(), batches=0)
