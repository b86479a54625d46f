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
        costs, network = self.costs(module, inputs)
        return sum(costs) + (REST_MS if network else 0.0)

    def costs(self, module: nn.Module, inputs: torch.Tensor, skip: tuple = ()
              ) -> tuple[list[float], bool]:
        """Each layer's fake cost over one forward pass (layers of the ``skip`` types left
        out) and whether ``module`` is a whole network; counts the call."""
        module, inputs = copy.deepcopy(module).to("meta"), inputs.to("meta")  # shapes only
        total = []
        hooks = [m.register_forward_hook(lambda m, a, o: total.append(layer_cost(m, a[0], o)))
                 for m in module.modules() if not isinstance(m, skip)]
        try:
            with torch.no_grad():
                module.eval()(inputs)
        finally:
            for h in hooks:
                h.remove()
        network = any(True for _ in module.children())
        self.layer_calls += not network
        self.network_calls += network
        return total, network


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
    # the calibration cuts keep multiples of 4, as every candidate width does: on the grid
    assert sp.tables[1].align == {g: 4 for g in sp.tables[1].widths}
    assert sp.tables[1].grid_entries() == len(sp.tables[1].entries)


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


def test_the_dense_rest_is_fitted_once_and_the_cuts_once_per_width_alignment(tmp_path):
    """The dense point of the rest is measured once per network and batch size, so a
    ``latency_ratio`` is the same milliseconds whatever grid or round_to a search uses; the
    calibration cuts keep widths on the candidates' alignment (a runtime may be slow off
    multiples of 8 or 16) and are measured again only for another alignment."""
    from prunekit.allocation.latency import CALIBRATION

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    first = ChannelSpace(model, x)
    first.use_latency(timer=FakeTimer(), cache_dir=tmp_path, grid=[0.0, 0.5])
    same = FakeTimer()  # more round_to choices, widths on the same alignment
    ChannelSpace(model, x, round_to_choices=(1, 2)).use_latency(timer=same, cache_dir=tmp_path,
                                                                 grid=[0.0, 0.5])
    assert same.network_calls == 0  # the fit is read back, not refitted
    again = FakeTimer()
    other = ChannelSpace(model, x, round_to_choices=(1, 2))
    other.use_latency(timer=again, cache_dir=tmp_path, grid=[0.2, 0.4, 0.6, 0.8])
    table = other.tables[1]
    assert 0 < again.network_calls <= len(CALIBRATION)  # the cuts; the dense network is not
    assert other.dense_cost()["latency_ms"] == first.dense_cost()["latency_ms"]
    for counts in table._calibration_counts():
        assert all(w % table.align[g] == 0 or w == other.graph.groups[g].size
                   for g, w in counts.items())


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
    # tightened by the excess (aiming inside the window [0.95, 1.02] x allowed); that cut
    # meets the budget but leaves over 5% of it unused, so the next limit is interpolated
    # between the two predictions: it avoids the slow width, and is kept as the cut that
    # meets the budget and uses most of it
    assert second["limit_ms"] < first["limit_ms"] and not second["chosen"]
    assert second["measured_ms"] < 0.95 * second["allowed_ms"]
    assert second["predicted_ms"] < third["limit_ms"] < first["predicted_ms"]
    assert second["measured_ms"] < third["measured_ms"] <= third["allowed_ms"]
    assert third["chosen"] and alloc.latency["measured_ms"] == third["measured_ms"]
    assert second["allowed_ms"] == pytest.approx(0.44 * timer(model, x), rel=1e-6)
    pruned = copy.deepcopy(model)
    apply_allocation(pruned, alloc, x)
    assert timer(pruned, x) == pytest.approx(third["measured_ms"], rel=1e-6)
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


class FoldingTimer(FakeTimer):
    """A stand-in for a runtime that folds batch norm into the convolutions: layers cost
    40% of the fake eager cost, norms nothing, and a whole network 0.6 ms more."""

    __qualname__ = "FoldingTimer"

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        costs, network = self.costs(module, inputs, skip=(nn.BatchNorm2d,))
        return 0.4 * sum(costs) + (0.6 if network else 0.0)


def test_a_budget_in_another_runtime_is_held_in_it_for_layers_and_networks(tmp_path):
    """The table, the dense network and every cut are timed in the runtime: its layers, not
    eager PyTorch's, decide where to cut, and the budget is its milliseconds."""
    from prunekit.allocation import allocate, apply_allocation

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    timer = FoldingTimer()
    space = ChannelSpace(model, x)
    space.use_latency(timer=timer, cache_dir=tmp_path, grid=GRID, runtime="onnxruntime")
    table = space.tables[1]
    assert table.layers and not any(isinstance(layer.module, nn.BatchNorm2d)
                                    for layer in table.layers)  # folded: no entry
    assert space.dense_cost()["latency_ms"] == pytest.approx(timer(model, x), rel=1e-9)
    ratios = [0.5, 0.0, 0.75][:len(space.units)] + [0.25] * (len(space.units) - 3)
    assert space.cost(ratios, 1)["latency_ms"] == pytest.approx(
        timer(space.build(ratios, 1), x), rel=1e-6)

    alloc = allocate(model, x, kind="uniform", budget={"latency_ratio": 0.6},
                     grid=[0.1 * i for i in range(1, 10)], cache_dir=tmp_path,
                     timer=timer, clock="cpu", runtime="onnxruntime")
    dense = timer(model, x)
    first, *_ = checks = alloc.latency["checks"]
    assert alloc.latency["runtime"] == "onnxruntime"
    assert alloc.dense["latency_ms"] == pytest.approx(dense, rel=1e-9)
    assert all(c["measured_dense_ms"] == pytest.approx(dense, rel=1e-6) for c in checks)
    assert first["allowed_ms"] == pytest.approx(0.6 * dense, rel=1e-6)
    assert first["limit_ms"] == pytest.approx(0.6 * dense, rel=1e-5)  # the same units
    chosen = next(c for c in checks if c["chosen"])
    assert alloc.latency["met"] and chosen["measured_ms"] <= chosen["allowed_ms"] * 1.02
    pruned = copy.deepcopy(model)
    apply_allocation(pruned, alloc, x)
    assert timer(pruned, x) == pytest.approx(chosen["measured_ms"], rel=1e-6)
    assert alloc.latency["measured_ms"] == chosen["measured_ms"]

    in_ms = allocate(model, x, kind="uniform", budget={"latency_ms": 0.6 * dense},
                     grid=[0.1 * i for i in range(1, 10)], cache_dir=tmp_path,
                     timer=timer, clock="cpu", runtime="onnxruntime")
    assert in_ms.latency["checks"][0]["limit_ms"] == pytest.approx(0.6 * dense, rel=1e-6)
    assert in_ms.ratios == alloc.ratios


def test_each_runtime_keeps_its_own_table(tmp_path):
    """One cache folder, two runtimes: entries measured in one are never read in the other."""
    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    eager, folding = FakeTimer(), FoldingTimer()
    ChannelSpace(model, x).use_latency(timer=eager, cache_dir=tmp_path, grid=GRID)
    ChannelSpace(model, x).use_latency(timer=folding, cache_dir=tmp_path, grid=GRID,
                                       runtime="onnxruntime")
    assert eager.layer_calls > 0 and folding.layer_calls > 0
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2


@pytest.mark.parametrize(("options", "message"), [
    ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'"),
    ({"runtime": "onnxruntime", "budget": {"macs_ratio": 0.5}}, "has none: add latency_ms"),
])
def test_bad_runtime_options_are_clear_errors(tmp_path, options, message):
    from prunekit.allocation import allocate
    from prunekit.errors import ConfigError

    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    with pytest.raises(ConfigError, match=message):
        allocate(model, x, **{"kind": "uniform", "budget": {"latency_ratio": 0.5},
                              "timer": FakeTimer(), "cache_dir": tmp_path, **options})


@pytest.mark.slow
def test_a_latency_budget_in_onnxruntime_end_to_end(tmp_path):
    """Real timing: the dense network and each cut are exported and timed in onnxruntime."""
    pytest.importorskip("onnxruntime")
    from prunekit.allocation import allocate

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 32, 32)
    alloc = allocate(model, x, kind="uniform", budget={"latency_ratio": 0.7}, clock="cpu",
                     cache_dir=tmp_path, runtime="onnxruntime", measure=1)
    checks = alloc.latency["checks"]
    assert 1 <= len(checks) <= 2 and sum(c["chosen"] for c in checks) == 1
    assert all(c["measured_dense_ms"] > 0 and c["allowed_ms"] > 0 for c in checks)


def test_fit_to_measured_interpolates_when_the_runtime_is_not_proportional_to_the_table():
    """A runtime whose ms grow as the square of the table's: scaling by allowed / measured
    alone would swing around the budget; interpolating between the cuts measured below and
    above it lands inside the window [0.95, 1.02] x allowed."""
    from prunekit.allocation.allocate import fit_to_measured

    def search(limit):
        return limit  # a continuous search: the cut is its own predicted ms

    def measure(cut):
        return 0.2 * cut ** 2

    cut, checks = fit_to_measured(search, measure, limit=2.0, allowed=1.0, attempts=4,
                                  predict=lambda c: c)
    assert 0.95 <= measure(cut) <= 1.02 and checks[-1]["chosen"]
    assert len(checks) <= 4
    assert [c["predicted_ms"] for c in checks][:1] == [2.0]


def test_bad_evolutionary_options_are_refused_before_any_timing(tmp_path):
    from prunekit.allocation import allocate
    from prunekit.errors import ConfigError

    timer = FakeTimer()
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    for bad, message in [({"genes": "bits"}, "unknown genes 'bits'"),
                         ({"spread": 9}, "spread must be in"),
                         ({"population": 1}, "population must be >= 2")]:
        with pytest.raises(ConfigError, match=message):
            allocate(model, x, kind="evolutionary", budget={"latency_ratio": 0.5},
                     evaluate=lambda m: 0.0, timer=timer, cache_dir=tmp_path, **bad)
    assert timer.layer_calls == timer.network_calls == 0


def test_a_budget_no_cut_meets_as_measured_is_returned_with_a_warning(tmp_path):
    from prunekit.allocation import allocate

    class Slowing(FakeTimer):  # 10 ms more per network once the table is calibrated
        __qualname__ = "Slowing"
        slow = False

        def __call__(self, module, inputs):
            whole = any(True for _ in module.children())
            return super().__call__(module, inputs) + (10.0 if self.slow and whole else 0.0)

    timer = Slowing()
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    space = ChannelSpace(model, x)
    space.use_latency(timer=timer, cache_dir=tmp_path, grid=[0.25, 0.5, 0.75],
                      runtime="onnxruntime")
    budget = 0.7 * space.dense_cost()["latency_ms"]
    timer.slow = True  # the table is calibrated (and cached on disk); then networks slow down
    with pytest.warns(UserWarning, match="no cut met the latency budget.*loosen the budget"):
        alloc = allocate(model, x, kind="uniform", budget={"latency_ms": budget},
                         grid=[0.25, 0.5, 0.75], cache_dir=tmp_path, timer=timer,
                         runtime="onnxruntime")
    assert not alloc.latency["met"]
    assert alloc.latency["measured_ms"] > 10.0


def test_a_machine_that_slows_down_while_allocate_runs_does_not_move_a_share_budget(tmp_path):
    """Every whole network is timed 4% slower than the one before (a machine warming up,
    another job starting). Each cut is timed between two timings of the dense network, so
    its share of dense stays what it is: the same cut as on a steady machine, measured at
    the same share. Timed against a dense network measured once, at the start, the cuts
    would look ever slower and the search would cut deeper."""
    from prunekit.allocation import allocate

    class Drifting(FakeTimer):
        __qualname__ = "Drifting"
        drift, on = 1.0, False

        def __call__(self, module, inputs):
            ms = super().__call__(module, inputs)
            if self.on and any(True for _ in module.children()):
                self.drift *= 1.04
                ms *= self.drift
            return ms

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    steady, drifting = FakeTimer(), Drifting()
    space = ChannelSpace(model, x)
    space.use_latency(timer=drifting, cache_dir=tmp_path, grid=[0.25, 0.5, 0.75])
    drifting.on = True  # once the table is on disk: allocate reads it, then measures
    options = dict(kind="uniform", budget={"latency_ratio": 0.6}, grid=[0.25, 0.5, 0.75],
                   cache_dir=tmp_path)
    expected = allocate(model, x, timer=steady, **options)  # a separate table (other timer)
    alloc = allocate(model, x, timer=drifting, **options)
    assert drifting.drift > 1.08  # large against the budget's 2% tolerance
    assert alloc.ratios == pytest.approx(expected.ratios, abs=0.02)
    for check, steady_check in zip(alloc.latency["checks"], expected.latency["checks"],
                                   strict=True):
        share = check["measured_ms"] / check["measured_dense_ms"]
        assert share == pytest.approx(steady_check["measured_ms"]
                                      / steady_check["measured_dense_ms"], rel=0.01)
    assert alloc.latency["met"]


def test_paired_ms_cancels_a_steady_drift():
    """A machine 5% slower at every call: timed dense, pruned, pruned, dense, the two means
    keep the steady ratio exactly; timing dense once first would show the pruned network
    7.5% slower than it is."""
    from prunekit.allocation import paired_ms

    dense, pruned = nn.Linear(4, 4), nn.Linear(4, 2)
    steady = {dense: 2.0, pruned: 1.0}
    calls: list[nn.Module] = []

    def drifting(model: nn.Module) -> float:
        calls.append(model)
        return steady[model] * (1 + 0.05 * (len(calls) - 1))

    ms, dense_ms = paired_ms(drifting, pruned, dense)
    assert calls == [dense, pruned, pruned, dense]
    assert ms / dense_ms == pytest.approx(0.5)
    assert ms == pytest.approx(1.0 * (1.05 + 1.10) / 2)


def test_an_evolutionary_search_held_to_a_measured_budget_runs_once_and_rescales_its_winner(
        tmp_path):
    """Whole networks measure 12% over what the table predicts, so the first cut misses a
    budget in ms and the limit moves: the winning shape is rescaled to it (one bisection),
    not searched again (a whole genetic run)."""
    from prunekit.allocation import allocate
    from prunekit.allocation.budget import Budget
    from prunekit.allocation.search import SearchContext, shape_ratios

    class Heavier(FakeTimer):
        __qualname__ = "Heavier"
        on = False

        def __call__(self, module, inputs):
            ms = super().__call__(module, inputs)
            return ms * 1.12 if self.on and any(True for _ in module.children()) else ms

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    timer = Heavier()
    space = ChannelSpace(model, x)
    grid = [0.2, 0.4, 0.6, 0.8]
    space.use_latency(timer=timer, cache_dir=tmp_path, grid=grid)
    timer.on = True
    scored = []

    def evaluate(m):
        scored.append(1)
        return -sum(p.numel() for p in m.parameters()) * 1e-6 + random.Random(len(scored)).random()

    budget = {"latency_ms": 0.6 * space.dense_cost()["latency_ms"]}
    options = dict(kind="evolutionary", budget=budget, grid=grid, cache_dir=tmp_path,
                   timer=timer, population=6, generations=3)
    with pytest.warns(UserWarning, match="no cut met the latency budget"):  # 12% over
        trusted = allocate(model, x, evaluate=evaluate, measure=0, **options)
    one_search = len(scored)
    scored.clear()
    alloc = allocate(model, x, evaluate=evaluate, **options)
    checks = alloc.latency["checks"]
    assert len(checks) >= 2 and checks[1]["limit_ms"] < checks[0]["limit_ms"]
    # one genetic run; then each finalist held to the budget is rescaled and scored once
    finalists = alloc.history[-1]["finalists"]
    assert finalists[0]["finalist"] == "winner" and sum(f["kept"] for f in finalists) == 1
    assert len(scored) <= one_search + len(finalists)
    assert sum("generations" in h for h in alloc.history) == 1  # the genetic run's history
    refits = [h for h in alloc.history if "refit" in h]
    assert len(refits) == 1  # the kept cut: a shape rescaled to the limit its checks chose
    winner = refits[0]["winner"]
    kept = next(f["finalist"] for f in finalists if f["kept"])
    # the shape rescaled is the kept finalist's: the search's own winner, or one finalists()
    # named (the uniform one all zeros)
    assert winner.get("name", "winner") == kept
    if kept == "winner":
        assert winner == next(h["winner"] for h in trusted.history if "winner" in h)
    if kept == "uniform":
        assert not any(winner["shape"])
    chosen = next(c for c in checks if c["chosen"])
    ctx = SearchContext(space, Budget.parse({"latency_ms": chosen["limit_ms"]}),
                        [0.0, *grid])
    expected = shape_ratios(ctx, winner["shape"], winner["round_to"], winner["spread"])
    assert list(alloc.ratios.values()) == pytest.approx(expected, abs=1e-6)
    assert alloc.latency["met"]


def test_a_winner_the_table_mispredicts_loses_to_uniform_once_both_are_measured(tmp_path):
    """A machine on which a network whose blocks are cut unevenly (c1 and pw keep shares
    more than 0.1 apart) runs 60% slower than its layers add up to, which no lone-layer
    timing shows. The genetic search ranks shapes at the table's prediction and picks an
    uneven one; held to the budget as measured it must shrink far below uniform's size.
    The finalists (the winner, the runner-up, uniform), each held to the measured budget,
    are compared on the held-out score: the uniform shape is kept, and meets the budget."""
    from prunekit.allocation import allocate

    class Uneven(FakeTimer):
        __qualname__ = "Uneven"
        on = False

        def __call__(self, module, inputs):
            ms = super().__call__(module, inputs)
            if self.on and hasattr(module, "pw"):
                if abs(module.c1.out_channels / 24 - module.pw.out_channels / 32) > 0.1:
                    ms *= 1.6
            return ms

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    timer = Uneven()
    grid = [0.2, 0.4, 0.6, 0.8]
    ChannelSpace(model, x).use_latency(timer=timer, cache_dir=tmp_path, grid=grid)
    timer.on = True

    def evaluate(m):  # the more weights kept, the better
        return sum(p.numel() for p in m.parameters()) * 1e-4

    options = dict(kind="evolutionary", budget={"latency_ratio": 0.6}, grid=grid,
                   cache_dir=tmp_path, timer=timer, population=8, generations=3,
                   evaluate=evaluate)
    with pytest.warns(UserWarning, match="no cut met the latency budget"):
        trusted = allocate(model, x, measure=0, **options)  # the table's choice, measured once
    winner = next(h["winner"] for h in trusted.history if h.get("winner"))
    assert any(winner["shape"])  # the search's winner is not the uniform shape
    alloc = allocate(model, x, **options)
    rows = alloc.history[-1]["finalists"]
    assert [r["finalist"] for r in rows][:2] == ["winner", "runner-up"]
    assert {r["finalist"] for r in rows} >= {"winner", "uniform"}
    kept = next(r for r in rows if r["kept"])
    assert kept["finalist"] == "uniform" and kept["met"] and alloc.latency["met"]
    # held to the measured budget alone, the winner keeps less (or misses the budget)
    assert rows[0]["quality"] is None or rows[0]["quality"] < kept["quality"]
    others = [r["quality"] for r in rows if not r["kept"] and r["quality"] is not None]
    assert all(kept["quality"] >= q for q in others)
    assert alloc.quality == pytest.approx(kept["quality"])
    # the cut returned is the uniform one: every unit cut alike (up to rounding)
    assert max(alloc.ratios.values()) - min(alloc.ratios.values()) < 0.1


@pytest.mark.parametrize("measure", [0, 1])
def test_a_final_score_picks_among_finalists_each_held_to_the_measured_budget(tmp_path,
                                                                               measure):
    """The search's cheap score likes a wide c1; ``final_evaluate`` (a longer fine-tuning in
    use) likes even cuts. Each finalist is held to the latency budget as measured (with
    ``measure=0`` too: timed once, not searched again), scored once by the final score, and
    the uniform one is kept."""
    from prunekit.allocation import allocate

    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    timer = FakeTimer()
    final_calls = []

    def evaluate(m):
        return m.c1.out_channels / 24 - m.pw.out_channels / 32

    def evenness(m):
        final_calls.append(1)
        return -abs(m.c1.out_channels / 24 - m.pw.out_channels / 32)

    alloc = allocate(model, x, kind="evolutionary", budget={"latency_ratio": 0.6},
                     grid=[0.2, 0.4, 0.6, 0.8], cache_dir=tmp_path, timer=timer,
                     population=6, generations=3, evaluate=evaluate, final_evaluate=evenness,
                     measure=measure)
    rows = alloc.history[-1]["finalists"]
    assert rows[0]["finalist"] == "winner" and "uniform" in [r["finalist"] for r in rows]
    assert all(r["met"] and r["measured_ms"] > 0 for r in rows)
    assert len(final_calls) == len(rows)
    kept = next(r for r in rows if r["kept"])
    assert kept["finalist"] == "uniform" and kept["quality"] > rows[0]["quality"]
    assert max(alloc.ratios.values()) - min(alloc.ratios.values()) < 0.1
    assert alloc.latency["met"]
