"""Sensitivity scans: one unit at a time, cached by model and ratios, plotted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.allocation import SensitivityScan, scan
from prunekit.allocation.space import ChannelSpace, MaskSpace


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                          nn.Linear(12, 3)).eval()
    return model, torch.randn(1, 8)


class Counting:
    """Quality = output agreement with the dense model; counts its calls."""

    def __init__(self, model):
        self.x = torch.randn(64, 8)
        with torch.no_grad():
            self.ref = model(self.x)
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        with torch.no_grad():
            return -float((model(self.x) - self.ref).pow(2).mean())


def test_channel_scan_prunes_one_group_at_a_time(net, tmp_path):
    model, x = net
    space = ChannelSpace(model, x)
    evaluate = Counting(model)
    result = scan(space, evaluate, ratios=[0.5, 0.25], cache_dir=tmp_path)
    assert result.units == space.units == ["0", "2"] and result.ratios == [0.0, 0.25, 0.5]
    assert evaluate.calls == 1 + 2 * 2
    for unit in result.units:
        q = result.quality[unit]
        assert q[0] == result.dense == pytest.approx(0.0)
        assert q[2] < 0  # cutting half a layer changes the outputs
        assert result.drops(unit) == sorted(result.drops(unit))
        assert result.drop(unit, 0.375) == pytest.approx(
            (result.drops(unit)[1] + result.drops(unit)[2]) / 2)
    # cached: the same scan again evaluates nothing; other ratios scan again
    again = scan(space, evaluate, ratios=[0.25, 0.5], cache_dir=tmp_path)
    assert again == result and evaluate.calls == 5
    scan(space, evaluate, ratios=[0.75], cache_dir=tmp_path)
    assert evaluate.calls == 5 + 1 + 2


def test_cache_is_keyed_by_the_weights(net, tmp_path):
    model, x = net
    evaluate = Counting(model)
    scan(ChannelSpace(model, x), evaluate, ratios=[0.5], cache_dir=tmp_path)
    other = nn.Sequential(*[m for m in model]).eval()
    other = type(model)(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear)
                          else m for m in other]).eval()
    calls = evaluate.calls
    scan(ChannelSpace(other, x), evaluate, ratios=[0.5], cache_dir=tmp_path)
    assert evaluate.calls > calls


def test_mask_scan_and_plot(net, tmp_path):
    pytest.importorskip("matplotlib", reason="pip install matplotlib")
    model, x = net
    space = MaskSpace(model, x)
    result = scan(space, Counting(model), ratios=[0.5, 0.9])
    assert result.units == ["0", "2", "4"] and all(result.quality[u][1] < 0 for u in result.units)
    path = result.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000 and path.endswith("curves.png")
    assert isinstance(SensitivityScan(**result.to_dict()), SensitivityScan)
