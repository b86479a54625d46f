"""compare_latency: both networks warmed, runs interleaved, spread reported, speed-ups that the
MACs cannot explain flagged. No wall-clock time is asserted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.measure import compare_latency
from prunekit.measure.cost import unexplained_speedup


class Logged(nn.Module):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return self.fc(x)


def test_both_are_warmed_then_timed_in_alternating_rounds():
    log: list[str] = []
    cmp = compare_latency(Logged("a", log), Logged("b", log), torch.randn(2, 4), threads=1,
                          warmup=2, runs=6, rounds=3, count=False)
    assert "".join(log) == "aabb" + "aabb" + "bbaa" + "aabb"
    assert cmp.before.runs == cmp.after.runs == 6
    assert cmp.macs_ratio is None and not cmp.unexplained
    assert cmp.spread >= 0 and "spread" in str(cmp)


def test_masked_network_has_a_macs_ratio_of_one():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    masked = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    masked.load_state_dict(dense.state_dict())
    pk.sparsify(masked, sparsity=0.9)
    cmp = compare_latency(dense, masked, torch.randn(8, 16), threads=1, warmup=1, runs=4,
                          rounds=2)
    assert cmp.macs_ratio == pytest.approx(1.0)


@pytest.mark.parametrize(("speedup", "ratio", "spread", "flag"), [
    (160.0, 1.0, 0.1, True),   # the quick start's masked model: shapes did not change
    (1.9, 2.0, 0.05, False),   # half the MACs, a bit under twice as fast
    (3.0, 2.0, 0.05, True),
    (2.6, 2.0, 0.1, False),    # within the slack once the spread is counted
    (50.0, None, 0.0, False),  # nothing to compare with
])
def test_unexplained_speedup(speedup, ratio, spread, flag):
    assert unexplained_speedup(speedup, ratio, spread) is flag
