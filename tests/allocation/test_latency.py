"""The per-layer latency table: predictions checked against a deterministic fake timer
(exact), the on-disk cache, and one real measurement with a wide tolerance (slow)."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from torch import nn

from prunekit.allocation.space import ChannelSpace

GRID = [0.0, 0.5, 0.75]
REST_MS = 0.3  # what the fake network costs beyond its timed layers


class SmallNet(nn.Module):
    """Stem, a residual block, a depthwise-separable block and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.c1 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(24)
        self.c2 = nn.Conv2d(24, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
        self.pw = nn.Conv2d(16, 32, 1, bias=False)
        self.b3 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32, 20)
        self.fc = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        x = torch.relu(self.b3(self.pw(self.dw(x))))
        x = x.mean(dim=(2, 3))  # (B, 32)
        return self.fc(torch.relu(self.fc1(x)))


def layer_cost(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> float:
    """A deterministic 'latency' of one layer: MACs for conv/linear, elements for norms."""
    if isinstance(module, nn.Conv2d):
        k = math.prod(module.kernel_size)
        return module.in_channels // module.groups * module.out_channels * k * out[0, 0].numel() \
            * out.shape[0] * 1e-6
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * out.numel() / out.shape[-1] * 1e-6
    if isinstance(module, nn.BatchNorm2d):
        return out.numel() * 1e-7
    return 0.0


class FakeTimer:
    """Sums layer costs over a forward pass; a whole network costs REST_MS more."""

    __qualname__ = "FakeTimer"

    def __init__(self) -> None:
        self.layer_calls = 0
        self.network_calls = 0

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        module, inputs = copy.deepcopy(module).to("meta"), inputs.to("meta")  # shapes only
        total = []
        hooks = [m.register_forward_hook(lambda m, a, o: total.append(layer_cost(m, a[0], o)))
                 for m in module.modules()]
        try:
            with torch.no_grad():
                module.eval()(inputs)
        finally:
            for h in hooks:
                h.remove()
        network = any(True for _ in module.children())
        self.layer_calls += not network
        self.network_calls += network
        return sum(total) + (REST_MS if network else 0.0)


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return ChannelSpace(SmallNet().eval(), torch.randn(1, 3, 16, 16), round_to_choices=(1, 4))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_table_predicts_the_fake_latency_exactly(space, tmp_path, batch_size):
    timer = FakeTimer()
    space.use_latency(batch_size=batch_size, timer=timer, cache_dir=tmp_path, grid=GRID)
    table = space.tables[batch_size]
    assert all(rest == pytest.approx(REST_MS, abs=1e-9) for _, rest in table.rest)
    assert len(table.rest) == 6  # dense and five uniform cuts, down to 5% of every width
    x = torch.randn(batch_size, 3, 16, 16)
    rng = random.Random(0)
    for _ in range(3):  # off-grid ratios too: the table interpolates between widths
        ratios = [rng.choice([0.0, 0.1, 0.25, 0.4, 0.5, 0.66, 0.75]) for _ in space.units]
        for rt in (1, 4):
            predicted = space.cost(ratios, rt)["latency_ms"]
            assert predicted == pytest.approx(timer(space.build(ratios, rt), x), rel=1e-9)
    assert space.dense_cost()["latency_ms"] == pytest.approx(timer(space.model, x), rel=1e-9)


def test_table_is_measured_once_and_cached_on_disk(space, tmp_path):
    first = FakeTimer()
    space.use_latency(timer=first, cache_dir=tmp_path, grid=GRID)
    assert first.layer_calls == space.tables[1].measured > 0
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1
    fit = space.tables[1].rest
    again = FakeTimer()
    space.use_latency(timer=again, cache_dir=tmp_path, grid=GRID)
    assert again.layer_calls == 0 and space.tables[1].measured == 0
    # the fitted rest of this network is cached too: the same prediction, nothing timed
    assert again.network_calls == 0 and space.tables[1].rest == fit
    # another batch size needs new entries
    space.use_latency(batch_size=2, timer=again, cache_dir=tmp_path, grid=GRID)
    assert again.layer_calls > 0


def test_identical_layers_are_timed_once(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    sp = ChannelSpace(net, torch.randn(1, 3, 8, 8))
    timer = FakeTimer()
    sp.use_latency(timer=timer, cache_dir=None, grid=[0.0, 0.5])
    # conv 2 and 3 share a configuration: widths {4, 8} x {4, 8} timed once for both
    keys = [k for k in sp.tables[1].entries if k.startswith("Conv2d|k(3, 3)|s(1, 1)")]
    assert len(keys) == len(set(keys))
    assert timer.layer_calls == sp.tables[1].measured == len(sp.tables[1].entries)
    # without calibration cuts (measured on demand) the entries are exactly the grid's
    from prunekit.allocation.latency import LatencyTable

    bare = LatencyTable(sp.graph, widths=sp.tables[1].widths, timer=FakeTimer())
    assert bare.grid_entries() == len(bare.entries) == sp.tables[1].grid_entries()
    assert sp.tables[1].grid_entries() < len(sp.tables[1].entries)


@pytest.mark.slow
def test_table_predicts_measured_latency_roughly():
    from prunekit.measure import measure_latency
    from prunekit.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", input_shape=(1, 28, 28), num_classes=10).eval()
    x = torch.randn(1, 1, 28, 28)
    sp = ChannelSpace(model, x)
    sp.use_latency(threads=1, cache_dir=None, grid=GRID)
    for ratios in ([0.5] * len(sp.units), [0.0, 0.75] * (len(sp.units) // 2)):
        predicted = sp.cost(ratios)["latency_ms"]
        # the fastest run, as the table's entries: other jobs on the machine only add time
        measured = measure_latency(sp.build(ratios), x, threads=1, runs=100).min_ms
        assert abs(predicted - measured) / measured < 0.5


def test_cpu_clock_timer():
    from prunekit.allocation.latency import measured_timer
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match="threads=1"):
        measured_timer(threads=2, clock="cpu")
    with pytest.raises(ConfigError, match="clock must be"):
        measured_timer(clock="gpu")
    timer = measured_timer(clock="cpu", runs=3, warmup=1)
    net = nn.Linear(64, 64)
    assert timer(net, torch.randn(8, 64)) > 0 and net.training  # train flag restored


class OddWidthTimer(FakeTimer):
    """The fake cost, plus a slow kernel for any convolution with an odd output width: a
    cost that interpolating between even widths cannot see."""

    __qualname__ = "OddWidthTimer"

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        odd = sum(0.05 for m in module.modules()
                  if isinstance(m, nn.Conv2d) and m.out_channels % 2)
        return super().__call__(module, inputs) + odd


def test_exact_measures_off_grid_widths_instead_of_interpolating(tmp_path):
    torch.manual_seed(0)
    sp = ChannelSpace(SmallNet().eval(), torch.randn(1, 3, 16, 16))
    timer = OddWidthTimer()
    sp.use_latency(timer=timer, cache_dir=tmp_path, grid=[0.0, 0.5, 0.75])
    table = sp.tables[1]
    ratios = [0.3] * len(sp.units)  # off the grid, odd widths (16 -> 11, 24 -> 17, ...)
    x = torch.randn(1, 3, 16, 16)
    truth = timer(sp.build(ratios), x)
    interpolated = sp.cost(ratios)["latency_ms"]
    assert interpolated < truth - 0.1  # the slow odd-width kernels are missed
    before = table.measured
    with sp.exact():
        assert sp.cost(ratios)["latency_ms"] == pytest.approx(truth, rel=1e-9)
    assert table.measured > before and not table.on_demand
    # measured once: the entries stay, and the cache on disk has them
    assert sp.cost(ratios)["latency_ms"] == pytest.approx(truth, rel=1e-9)
    calls = timer.layer_calls
    with sp.exact():
        sp.cost(ratios)
    assert timer.layer_calls == calls


def test_uniform_meets_a_latency_budget_as_built(tmp_path):
    """A continuous ratio lands between the table's widths: uniform's bisection runs on
    measured widths, so the network as built (not just as interpolated) meets the budget."""
    from prunekit.allocation import allocate

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    timer = OddWidthTimer()
    dense = timer(model, x)
    alloc = allocate(model, x, kind="uniform", budget={"latency_ms": 0.7 * dense},
                     grid=[0.25, 0.5, 0.75], cache_dir=tmp_path, timer=timer, measure=0)
    pruned = copy.deepcopy(model)
    from prunekit.allocation import apply_allocation

    apply_allocation(pruned, alloc, x)
    assert timer(pruned, x) == pytest.approx(alloc.predicted["latency_ms"], rel=1e-9)
    assert timer(pruned, x) <= 0.7 * dense + 1e-9


def test_the_fitted_rest_does_not_depend_on_the_candidate_widths(tmp_path):
    """The rest is fitted once per network and batch size on fixed uniform cuts, so a
    ``latency_ratio`` is the same milliseconds whatever grid or round_to a search uses."""
    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    first = ChannelSpace(model, x)
    first.use_latency(timer=FakeTimer(), cache_dir=tmp_path, grid=[0.0, 0.5])
    again = FakeTimer()
    other = ChannelSpace(model, x, round_to_choices=(4, 8))
    other.use_latency(timer=again, cache_dir=tmp_path, grid=[0.2, 0.4, 0.6, 0.8])
    assert again.network_calls == 0  # the fit is read back, not refitted
    assert other.tables[1].rest == first.tables[1].rest
    assert other.dense_cost()["latency_ms"] == first.dense_cost()["latency_ms"]


class SlowWidthTimer(FakeTimer):
    """The fake cost, plus 0.5 ms for a whole network with a 9-channel convolution: a cost
    no layer shows alone, so the table cannot predict it (a stand-in for what differs
    between timing layers alone and the network as a whole)."""

    __qualname__ = "SlowWidthTimer"

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        whole = any(True for _ in module.children())
        slow = whole and any(isinstance(m, nn.Conv2d) and m.out_channels == 9
                             for m in module.modules())
        return super().__call__(module, inputs) + (0.5 if slow else 0.0)


def test_a_cut_over_its_latency_budget_as_measured_is_searched_again(tmp_path):
    from prunekit.allocation import allocate, apply_allocation

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    timer = SlowWidthTimer()
    options = dict(kind="uniform", budget={"latency_ratio": 0.44}, grid=[0.25, 0.5, 0.75, 0.9],
                   cache_dir=tmp_path, timer=timer)
    trusted = allocate(model, x, measure=0, **options)
    (only,) = trusted.latency["checks"]
    assert only["measured_ms"] > only["allowed_ms"] and only["chosen"]  # as predicted, met
    alloc = allocate(model, x, **options)
    first, second, third = alloc.latency["checks"]
    assert first["measured_ms"] == only["measured_ms"] and not first["chosen"]
    # tightened by the excess; that cut meets the budget but leaves over 5% of it unused,
    # so the limit is loosened again, which lands on the slow width: the second is kept
    assert second["limit_ms"] < first["limit_ms"] and second["chosen"]
    assert second["measured_ms"] < 0.95 * second["allowed_ms"] and not third["chosen"]
    assert third["limit_ms"] > second["limit_ms"]
    assert third["measured_ms"] > third["allowed_ms"]
    assert alloc.latency["measured_ms"] == second["measured_ms"] <= second["allowed_ms"]
    assert second["allowed_ms"] == pytest.approx(0.44 * timer(model, x), rel=1e-6)
    pruned = copy.deepcopy(model)
    apply_allocation(pruned, alloc, x)
    assert timer(pruned, x) == pytest.approx(second["measured_ms"], rel=1e-6)
    assert alloc.budget == {"latency_ratio": 0.44}  # the user's budget, not the tightened one
    with pytest.raises(Exception, match="measure must be a whole number"):
        allocate(model, x, measure=-1, **options)


def test_the_rest_is_interpolated_between_calibration_cuts_and_held_beyond(space, tmp_path):
    space.use_latency(timer=FakeTimer(), cache_dir=None, grid=GRID)
    table = space.tables[1]
    table.rest = [(0.1, 1.0), (0.5, 2.0), (1.0, 2.5)]
    assert table.rest_ms(0.3) == pytest.approx(1.5)
    assert table.rest_ms(0.75) == pytest.approx(2.25)
    assert table.rest_ms(0.01) == 1.0 and table.rest_ms(1.2) == 2.5  # no extrapolation
