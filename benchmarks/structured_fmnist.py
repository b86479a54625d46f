"""Structured pruning on Fashion-MNIST: ResNet-20 and the small VGG at 2x and 3x fewer MACs.

prunekit against Torch-Pruning (DepGraph). One baseline per model (seed 0) is shared by
every method and seed; every method gets the same fine-tuning budget. Methods:

- ``tp-l2``: Torch-Pruning's pruner with group L2 magnitude importance
  (``GroupMagnitudeImportance(p=2)``, driven as in ``zoolib.peers``), the classifier
  ``fc`` ignored, one uniform ratio bisected until the counted MACs are at most dense / k,
  then fine-tuning with cross-entropy;
- ``pk-l2``: ``pk.prune(..., target={"macs": 1 - 1/k}, criterion="l2", ignore=[fc])``
  (uniform ratio searched by prunekit), the same fine-tuning: the engines side by side;
- ``pk-kd``: prunekit's method: one of ``VARIANTS`` (criterion and allocation) chosen per
  point by the accuracy after the cut and batch-norm recalibration on 5,000 training
  images held out of every training run (EagleEye's proxy), then batch-norm
  recalibration and fine-tuning with distillation from the baseline;
- ``tp-kd`` (ablation, not in the default run): Torch-Pruning's cut with pk-kd's recovery.

Seeds change the fine-tuning data order and augmentation. Training runs on the GPU when
there is one, with the whole data set on it; pruning runs on the CPU. Each finished row is
printed as a JSON line and appended to ``--rows`` at once, so a run killed half way keeps
its rows (``--resume`` skips the points already there). Latency is measured separately,
on an idle CPU, from the architectures recorded in the rows (``--latency``).

Writes docs/benchmarks.md (section "structured-fmnist"), docs/img/structured_fmnist.png
and docs/data/structured_fmnist.json.

    # training: ~12 min on one H100 with 8 jobs (baselines ~5 of them); on a CPU, hours
    PYTHONPATH=src:benchmarks python3 benchmarks/structured_fmnist.py --data-dir DIR \\
        --device cuda --jobs 8            # add --resume to go on after an interruption
    # then CPU latency of the recorded architectures, on an idle machine (~5 min)
    .venv/bin/python benchmarks/structured_fmnist.py --latency \\
        --report-from runs/structured_fmnist.rows.jsonl
    .venv/bin/python benchmarks/structured_fmnist.py --report-from runs/*.jsonl   # report only
    .venv/bin/python benchmarks/structured_fmnist.py --quick --device cpu \\
        --rows /tmp/sf.jsonl --docs /tmp/sf/benchmarks.md --json /tmp/sf/sf.json  # ~2 min

Tuning without the test set: ``--validation`` holds out a further 5,000 training images
and reports accuracy on them instead of the test set.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    TensorBatches,
    interleaved_medians,
    machine,
    read_rows,
    versions_line,
    write_section,
)
from torch import nn
from torch.utils.data import TensorDataset

import prunekit as pk
from prunekit._io import save_safetensors, write_json
from prunekit.data import load_dataset
from prunekit.measure import count_macs, count_params
from prunekit.models import build_model
from prunekit.recovery import evaluate_accuracy, recalibrate_bn, train
from prunekit.recovery.distill import Distiller

MODELS = ["resnet20", "vgg-small"]
TARGETS = [2, 3]  # MAC reductions: pruned MACs <= dense / k
SEEDS = [0, 1, 2]
INPUT_SHAPE, CLASSES = (1, 28, 28), 10
BASELINE = dict(epochs=30, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")
FINETUNE = dict(epochs=10, lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine")
KD = dict(temperature=4.0, alpha=0.7)
BATCH = 128
PAD = 2  # random-crop padding (pixels)
HOLDOUT = 5000  # training images held out of all training: pk-kd's choice is made on them
CALIB_BATCHES = 20  # batches of BATCH training images for batch-norm recalibration
BN_MODE = "cumulative"  # one pass ("exact" takes one pass per batch norm)
TP_BISECT_STEPS = 20
MAIN, PEER = "pk-kd", "tp-l2"
# pk-kd's candidate cuts (pk.prune options besides the target); one is chosen per point.
VARIANTS: dict[str, dict] = {
    "layer-l2": dict(criterion="l2", scope="layer"),
    "global-l2": dict(criterion="l2", scope="global", max_ratio=0.75),
    "global-lamp": dict(criterion="lamp", scope="global", max_ratio=0.75),
    "global-taylor": dict(criterion="taylor", scope="global", max_ratio=0.75),
}
QUICK = dict(train=2000, holdout=500, test=2000)


# --- data -----------------------------------------------------------------------------------


@dataclass
class Data:
    """Training, held-out (pk-kd's choice) and evaluation splits, on ``device``."""

    train: TensorDataset
    holdout: TensorDataset
    test: TensorDataset
    pad_value: float  # a background pixel, normalized
    device: torch.device


_DATA: dict[tuple, Data] = {}


def get_data(args) -> Data:
    """The splits of this run, loaded once per process."""
    key = (args.data_dir, args.quick, args.validation, args.device)
    if key not in _DATA:
        _DATA[key] = _load(args)
    return _DATA[key]


def _load(args) -> Data:
    splits = load_dataset("fashion-mnist", data_dir=args.data_dir)
    x, y = splits.train.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    hold, rest = order[:HOLDOUT], order[HOLDOUT:]
    test = splits.test.tensors
    if args.validation:  # evaluate on further held-out training images, never the test set
        test, rest = (x[rest[:HOLDOUT]], y[rest[:HOLDOUT]]), rest[HOLDOUT:]
    if args.quick:
        hold, rest = hold[: QUICK["holdout"]], rest[: QUICK["train"]]
        test = tuple(t[: QUICK["test"]] for t in test)
    device = torch.device(args.device)

    def on(*tensors) -> TensorDataset:
        return TensorDataset(*(t.to(device) for t in tensors))

    return Data(on(x[rest], y[rest]), on(x[hold], y[hold]), on(*test), float(x.min()), device)


def augment(x: torch.Tensor, generator: torch.Generator, *, value: float) -> torch.Tensor:
    """Random crops (padding PAD, filled with ``value``) and horizontal flips, per image.

    The random numbers come from the CPU ``generator``; the work happens on ``x``'s device.
    """
    b, _, h, w = x.shape
    shifts = torch.randint(0, 2 * PAD + 1, (2, b), generator=generator).to(x.device)  # (2, B)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)  # (B,)
    padded = F.pad(x, (PAD,) * 4, value=value).permute(0, 2, 3, 1)  # (B, H+2P, W+2P, C)
    rows = shifts[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = shifts[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # reversed columns: a mirror image
    batch = torch.arange(b, device=x.device)[:, None, None]  # (B, 1, 1)
    out = padded[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


class Augmented(TensorBatches):
    """Seeded shuffled batches with :func:`augment` applied (same generator)."""

    def __init__(self, dataset, *, seed: int, pad_value: float) -> None:
        super().__init__(dataset, batch_size=BATCH, seed=seed)
        self.pad_value = pad_value

    def __iter__(self):
        for x, y in super().__iter__():
            yield augment(x, self.generator, value=self.pad_value), y


def calibration(data: Data, *, seed: int, batches: int = CALIB_BATCHES) -> list[tuple]:
    """``batches`` fixed batches of (unaugmented) training images."""
    loader = TensorBatches(data.train, batch_size=BATCH, seed=seed)
    return [batch for _, batch in zip(range(batches), loader, strict=False)]


def example() -> torch.Tensor:
    return torch.zeros(1, *INPUT_SHAPE)  # (1, C, H, W)


# --- baseline -------------------------------------------------------------------------------


def baseline(model_name: str, data: Data, args) -> nn.Module:
    """The shared seed-0 baseline, trained once and cached as safetensors."""
    cfg = dict(BASELINE)
    tag = f"n{len(data.train.tensors[1])}" + ("-val" if args.validation else "")
    name = f"{model_name}-fmnist-aug-e{cfg['epochs']}-lr{cfg['lr']}-{tag}-s0.safetensors"
    cache = Path(args.cache) / name
    torch.manual_seed(0)
    model = build_model(model_name, input_shape=INPUT_SHAPE, num_classes=CLASSES)
    if cache.exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(cache))
        return model.to(data.device)
    model.to(data.device)
    loader = Augmented(data.train, seed=0, pad_value=data.pad_value)
    train(model, loader, seed=0, quiet=True, device=data.device, **cfg)
    save_safetensors(cache, model.state_dict())
    return model


def finetune(model: nn.Module, data: Data, *, seed: int, loss_fn=None) -> None:
    """The budget every method gets: FINETUNE over the augmented training set."""
    loader = Augmented(data.train, seed=1000 + seed, pad_value=data.pad_value)
    train(model, loader, seed=seed, quiet=True, loss_fn=loss_fn, device=data.device, **FINETUNE)


# --- methods: each prunes a copy of the baseline to 1/k of its MACs and fine-tunes it ----------


def macs_of(model: nn.Module) -> int:
    return count_macs(model, example()).dense


def tp_cut(base: nn.Module, k: float) -> tuple[nn.Module, dict]:
    """Torch-Pruning at the smallest uniform ratio whose counted MACs are <= dense / k."""
    from zoolib.peers import prune_with_torch_pruning

    cpu = copy.deepcopy(base).cpu().eval()
    goal = macs_of(cpu) / k

    def cut(ratio: float) -> nn.Module:
        model = copy.deepcopy(cpu)
        return prune_with_torch_pruning(model, example(), ratio=ratio, ignore=["fc"])

    lo, hi, best = 0.0, 0.95, None
    for _ in range(TP_BISECT_STEPS):
        mid = (lo + hi) / 2
        model = cut(mid)
        if macs_of(model) <= goal:
            hi, best = mid, model
        else:
            lo = mid
    return best if best is not None else cut(hi), {"ratio": round(hi, 5)}


def pk_cut(base: nn.Module, k: float, data: Data, variant: dict) -> tuple[nn.Module, dict]:
    """prunekit's cut of a CPU copy to ``1 - 1/k`` of the MACs removed, with ``variant``."""
    model = copy.deepcopy(base).cpu().eval()
    options = dict(variant)
    if options["criterion"] == "taylor":
        options["data"] = [(x.cpu(), y.cpu()) for x, y in calibration(data, seed=99, batches=4)]
    plan = pk.prune(model, example(), target={"macs": 1 - 1 / k}, ignore=[model.fc], **options)
    return model, {"ratio": plan.info.get("ratio_found"), "target_reached": plan.info.get(
        "target_reached")}


def recover_kd(model: nn.Module, base: nn.Module, data: Data, *, seed: int) -> None:
    """Batch-norm recalibration, then fine-tuning with distillation from the baseline."""
    recalibrate_bn(model, calibration(data, seed=2000 + seed), mode=BN_MODE)
    teacher = copy.deepcopy(base).eval()
    with Distiller(model, teacher, **KD) as loss_fn:
        finetune(model, data, seed=seed, loss_fn=loss_fn)


def tp_l2(base, *, k, data, seed, args) -> tuple[nn.Module, dict]:
    model, info = tp_cut(base, k)
    finetune(model.to(data.device), data, seed=seed)
    return model, info


def pk_l2(base, *, k, data, seed, args) -> tuple[nn.Module, dict]:
    model, info = pk_cut(base, k, data, VARIANTS["layer-l2"])
    finetune(model.to(data.device), data, seed=seed)
    return model, info


def pk_kd(base, *, k, data, seed, args) -> tuple[nn.Module, dict]:
    variant, scores = choose_variant(base, k, data, args.pk_variant)
    model, info = pk_cut(base, k, data, VARIANTS[variant])
    recover_kd(model.to(data.device), base, data, seed=seed)
    return model, dict(info, variant=variant, selection=scores)


def tp_kd(base, *, k, data, seed, args) -> tuple[nn.Module, dict]:
    model, info = tp_cut(base, k)
    recover_kd(model.to(data.device), base, data, seed=seed)
    return model, info


def choose_variant(base, k, data: Data, forced: str) -> tuple[str, dict[str, float]]:
    """The variant whose cut, after batch-norm recalibration, is most accurate on the
    held-out training images (Li et al., "EagleEye", ECCV 2020); no test image is used."""
    if forced != "auto":
        return forced, {}
    held = TensorBatches(data.holdout, batch_size=1000, seed=0, shuffle=False)
    calib = calibration(data, seed=99)
    scores = {}
    for name, variant in VARIANTS.items():
        model, _ = pk_cut(base, k, data, variant)
        model.to(data.device)
        recalibrate_bn(model, calib, mode=BN_MODE)
        scores[name] = round(evaluate_accuracy(model, held), 5)
    return max(scores, key=scores.get), scores


METHODS: dict[str, Callable] = {"tp-l2": tp_l2, "pk-l2": pk_l2, "pk-kd": pk_kd, "tp-kd": tp_kd}


# --- jobs (run in worker processes) -----------------------------------------------------------


def configure(args) -> None:
    """Apply command-line settings in this (worker) process."""
    torch.set_num_threads(args.threads)
    BASELINE.update(epochs=args.baseline_epochs, lr=args.baseline_lr)
    FINETUNE.update(epochs=args.finetune_epochs, lr=args.lr)
    KD.update(temperature=args.kd_temperature, alpha=args.kd_alpha)
    if args.quick:
        BASELINE["epochs"], FINETUNE["epochs"] = 1, 1


def setting(args) -> str:
    """What makes rows comparable: budgets, data and evaluation split."""
    n = QUICK["train"] if args.quick else "all"
    return (f"b{BASELINE['epochs']}@{BASELINE['lr']}-f{FINETUNE['epochs']}@{FINETUNE['lr']}"
            f"-kd{KD['temperature']}/{KD['alpha']}-n{n}-{'val' if args.validation else 'test'}")


def apply_setting(text: str) -> None:
    """Set the budgets from a row's ``setting`` (the report describes the rows, not argv)."""
    m = re.fullmatch(r"b(\d+)@([\d.e-]+)-f(\d+)@([\d.e-]+)-kd([\d.]+)/([\d.]+)-.*", text)
    if m is None:
        raise SystemExit(f"cannot read the setting {text!r} of these rows")
    BASELINE.update(epochs=int(m[1]), lr=float(m[2]))
    FINETUNE.update(epochs=int(m[3]), lr=float(m[4]))
    KD.update(temperature=float(m[5]), alpha=float(m[6]))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def baseline_job(model_name: str, args) -> dict:
    """Train (or load) one model's baseline; its 'dense' row."""
    configure(args)
    data = get_data(args)
    t0 = time.perf_counter()
    base = baseline(model_name, data, args)
    row = describe(base, data, model=model_name, method="dense", k=1, seed=0, dense=None,
                   seconds=time.perf_counter() - t0, info={})
    row.update(setting=setting(args), host=machine(), versions=versions(),
               command=" ".join(sys.argv[1:]))
    return row


def point_job(model_name: str, method: str, k: int, seed: int, dense: dict, args) -> dict:
    configure(args)
    data = get_data(args)
    base = baseline(model_name, data, args)
    t0 = time.perf_counter()
    model, info = METHODS[method](base, k=k, data=data, seed=seed, args=args)
    return describe(model, data, model=model_name, method=method, k=k, seed=seed, dense=dense,
                    seconds=time.perf_counter() - t0, info=dict(info, setting=setting(args)))


def describe(net: nn.Module, data: Data, *, model, method, k, seed, dense, seconds, info) -> dict:
    """One result row; ``shapes`` lets ``--latency`` rebuild the architecture."""
    test = TensorBatches(data.test, batch_size=1000, seed=0, shuffle=False)
    cpu = copy.deepcopy(net).cpu()
    macs = macs_of(cpu)
    accuracy = evaluate_accuracy(net, test)
    return dict(
        kind="accuracy", model=model, method=method, target=k, seed=seed, accuracy=accuracy,
        dense_accuracy=accuracy if dense is None else dense["accuracy"], params=count_params(cpu),
        macs=macs, mac_reduction=round((dense or {}).get("macs", macs) / macs, 4),
        seconds=round(seconds, 1), device=device_name(data.device), channels=channels(cpu),
        shapes=shapes(cpu), **info,
    )


def channels(model: nn.Module) -> dict[str, int]:
    """out_channels of every Conv2d and out_features of every Linear, by module name."""
    return {n: m.weight.shape[0] for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def shapes(model: nn.Module) -> dict[str, list[int]]:
    """Weight shapes of every Conv2d, BatchNorm2d and Linear, by module name."""
    return {n: list(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}


def versions() -> str:
    from zoolib.peers import torch_pruning_version

    tp = torch_pruning_version()
    if tp is None:  # on the path without package metadata
        import torch_pruning

        tp = getattr(torch_pruning, "__version__", "unknown")
    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return f"{versions_line()}, torch-pruning {tp}{cuda}"


# --- running ----------------------------------------------------------------------------------


def run(args) -> list[dict]:
    """Baselines first (one process per model), then every point; rows as they finish."""
    configure(args)
    done = done_points(args) if args.resume else {}
    context = multiprocessing.get_context("spawn")
    rows = list(done.values())
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        dense = {}
        todo = {pool.submit(baseline_job, m, args): m for m in args.models}
        for future in as_completed(todo):
            dense[todo[future]] = emit(future.result(), args, rows, done)
        points = [(m, meth, k, s) for m in args.models for k in args.targets
                  for s in args.seeds for meth in args.methods if (m, meth, k, s) not in done]
        futures = {pool.submit(point_job, *p, dense[p[0]], args): p for p in points}
        for future in as_completed(futures):
            try:
                emit(future.result(), args, rows, done)
            except Exception as e:  # keep the other points' rows; fail at the end
                FAILED.append(futures[future])
                print(f"point {futures[future]} failed: {e!r}", file=sys.stderr, flush=True)
    return rows


FAILED: list[tuple] = []  # (model, method, target, seed) of points that raised


def emit(row: dict, args, rows: list[dict], done: dict) -> dict:
    """Print a finished row and append it to the rows file at once; return the row."""
    key = (row["model"], row["method"], row["target"], row.get("seed"))
    if key in done and row["method"] == "dense":
        return done[key]
    line = json.dumps(row)
    print(line, flush=True)
    Path(args.rows).parent.mkdir(parents=True, exist_ok=True)
    with open(args.rows, "a") as f:
        f.write(line + "\n")
        f.flush()
    rows.append(row)
    return row


def done_points(args) -> dict[tuple, dict]:
    """Rows already in ``--rows`` with this run's setting (``--resume``)."""
    if not Path(args.rows).exists():
        return {}
    rows = rows_from_logs([args.rows])
    return {(r["model"], r["method"], r["target"], r["seed"]): r for r in rows
            if r.get("kind") == "accuracy" and r.get("setting") == setting(args)}


def rows_from_logs(paths: list[str]) -> list[dict]:
    """Rows of earlier runs (``--json`` files, ``--rows`` files, stdout logs): accuracy
    rows first of duplicates kept, latency rows last."""
    rows: dict[tuple, dict] = {}
    for row in read_rows(paths):
        if row.get("kind") == "latency":
            key = ("latency", row["model"], row["method"], row["target"], row["batch"])
            rows[(*key, row.get("variant", ""))] = row
        else:
            rows.setdefault((row["model"], row["method"], row["target"], row["seed"]), row)
    return list(rows.values())


# --- latency (CPU, separately from training) ------------------------------------------------


def rebuild(model_name: str, weight_shapes: dict[str, list[int]]) -> nn.Module:
    """A fresh reference model with each conv, batch norm and linear sliced to the recorded
    weight shapes (values do not matter for latency)."""
    model = build_model(model_name, input_shape=INPUT_SHAPE, num_classes=CLASSES)
    for name, shape in weight_shapes.items():
        _slice(model.get_submodule(name), shape)
    return model.eval()


def _slice(m: nn.Module, shape: list[int]) -> None:
    out = shape[0]
    cut = (slice(0, out), slice(0, shape[1])) if len(shape) > 1 else (slice(0, out),)
    for attr in ("weight", "bias"):
        p = getattr(m, attr, None)
        if p is not None:
            setattr(m, attr, nn.Parameter(p.detach()[cut[: p.dim()]].clone()))
    if isinstance(m, nn.Conv2d):
        m.out_channels, m.in_channels = out, shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = out, shape[1]
    else:  # BatchNorm2d
        m.num_features = out
        m.running_mean, m.running_var = m.running_mean[:out].clone(), m.running_var[:out].clone()


def latency_rows(rows: list[dict], args) -> Iterator[dict]:
    """Dense and pruned architectures timed at each batch size, interleaved in rounds.

    One architecture per model, method, target and pk-kd variant: the cuts are
    deterministic, but pk-kd's choice could differ between seeds on a near tie.
    """
    torch.set_num_threads(args.latency_threads)
    archs = {}
    for r in rows:
        if r.get("kind") == "accuracy" and r["model"] in args.models:
            archs.setdefault((r["model"], r["method"], r["target"], r.get("variant", "")), r)
    for model_name in args.models:
        mine = {key: r for key, r in archs.items() if key[0] == model_name}
        nets = {key: rebuild(model_name, r["shapes"]) for key, r in mine.items()}
        for key, net in nets.items():
            assert macs_of(net) == mine[key]["macs"], f"rebuilt {key} differs from the record"
        for batch in args.latency_batches:
            yield from _time_batch(nets, mine, batch, args)


def _time_batch(nets: dict, records: dict, batch: int, args) -> list[dict]:
    x = torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    runs, warmup = (5, 2) if args.quick else (args.latency_runs, 5)
    medians = interleaved_medians(nets, x, threads=args.latency_threads, warmup=warmup,
                                  runs=runs, rounds=args.latency_rounds)
    dense_key = next(key for key in nets if key[1] == "dense")
    dense_ms = min(medians[dense_key])
    rows = []
    for key in nets:
        if key == dense_key:
            continue
        ms = min(medians[key])
        rows.append(dict(
            kind="latency", model=key[0], method=key[1], target=key[2], variant=key[3],
            batch=batch,
            dense_ms=round(dense_ms, 4), pruned_ms=round(ms, 4),
            speedup=round(dense_ms / ms, 3), mac_reduction=records[key]["mac_reduction"],
            threads=args.latency_threads, runs=runs, rounds=args.latency_rounds,
            host=machine(), versions=versions(),
        ))
    return rows


# --- reporting --------------------------------------------------------------------------------


def summarize(rows: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind", "accuracy") == "accuracy":
            groups.setdefault((r["model"], r["method"], r["target"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        accs = [100 * r["accuracy"] for r in rs]
        out[key] = dict(
            mean=statistics.fmean(accs), std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            n=len(accs), seeds=sorted(r["seed"] for r in rs),
            macs=statistics.fmean(r["macs"] for r in rs), params=rs[0]["params"],
            reduction=statistics.fmean(r["mac_reduction"] for r in rs),
            variants=sorted({r["variant"] for r in rs if "variant" in r}),
            minutes=sum(r["seconds"] for r in rs) / 60,
        )
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if any(k[0] == m for k in summary)]
    methods = [m for m in METHODS if any(k[1] == m for k in summary)]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        dense = summary[(model, "dense", 1)]
        ax.axhline(dense["mean"], color="k", ls=":", label=f"dense {dense['mean']:.2f}%")
        for i, method in enumerate(methods):
            pts = sorted((v["macs"] / 1e6, v) for k, v in summary.items()
                         if k[:2] == (model, method))
            ax.errorbar([x for x, _ in pts], [v["mean"] for _, v in pts],
                        yerr=[v["std"] for _, v in pts], fmt="-o" if method[:2] == "pk" else "--s",
                        color=f"C{i}", capsize=3, label=method)
        ax.set(title=f"{model}, Fashion-MNIST", xlabel="MACs per image (M)",
               ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict], args, plot_rel: str) -> str:
    summary = summarize(rows)
    denses = [r for r in rows if r["method"] == "dense" and r.get("kind") == "accuracy"]
    if not denses:
        raise SystemExit("no dense rows: pass the rows files of a training run")
    models = [m for m in MODELS if any(r["model"] == m for r in denses)]
    lines = [
        "## Structured pruning on Fashion-MNIST: ResNet-20 and the small VGG, 2x and 3x "
        "fewer MACs",
        "",
        *_provenance(rows, denses, args),
        "",
        *_setup(summary, denses),
        "",
        *accuracy_table(summary, models),
        "",
        f"![accuracy vs MACs]({plot_rel})",
        "",
        *variant_lines(summary, models),
        *latency_table(rows, models),
        *aims(summary, rows, models),
    ]
    if args.notes:
        lines += ["", Path(args.notes).read_text().rstrip()]
    return "\n".join(lines)


def _provenance(rows: list[dict], denses: list[dict], args) -> list[str]:
    first = denses[0]
    settings = sorted({r["setting"] for r in rows if r.get("kind") == "accuracy"})
    if len(settings) == 1:
        apply_setting(settings[0])
    devices = sorted({r["device"] for r in rows if r.get("kind") == "accuracy"})
    minutes = sum(r["seconds"] for r in rows if r.get("kind") == "accuracy") / 60
    lat = [r for r in rows if r.get("kind") == "latency"]
    out = [
        f"Training command: `python benchmarks/structured_fmnist.py {first['command']}` "
        f"({minutes:.0f} min of compute over all rows, baselines included; setting "
        f"`{', '.join(settings)}`).  ",
        f"Training machine: {first['host']}; device: {', '.join(devices)}.  ",
        f"Versions (training): {first['versions']}.  ",
    ]
    if lat:
        out += [f"Latency machine: {lat[0]['host']}; {lat[0]['threads']} threads, median of "
                f"{lat[0]['runs']} runs, best of {lat[0]['rounds']} interleaved rounds.  ",
                f"Versions (latency): {lat[0]['versions']}.  "]
    out.append(f"Report: `.venv/bin/python benchmarks/structured_fmnist.py "
               f"{' '.join(sys.argv[1:])}`.")
    return out


def _setup(summary: dict, denses: list[dict]) -> list[str]:
    seeds = sorted({s for k, v in summary.items() if k[1] != "dense" for s in v["seeds"]})
    return [
        f"Baselines (seed 0, one per model, shared by every method and seed): SGD momentum "
        f"0.9, weight decay 5e-4, cosine, batch {BATCH}, {BASELINE['epochs']} epochs at lr "
        f"{BASELINE['lr']}, random crops (padding {PAD}) and horizontal flips; trained on "
        f"the training set less {HOLDOUT:,} held-out images. Fine-tuning budget, the same for "
        f"every method and point: {FINETUNE['epochs']} epochs, SGD momentum 0.9, weight decay "
        f"5e-4, cosine, lr {FINETUNE['lr']}, batch {BATCH}, the same augmentation. Seeds "
        f"{', '.join(map(str, seeds))} change the fine-tuning data order and augmentation.",
        "",
        "Methods. `tp-l2`: Torch-Pruning's `BasePruner` (= `MagnitudePruner`) with "
        "`GroupMagnitudeImportance(p=2)`, `ignored_layers=[model.fc]`, one uniform ratio "
        f"bisected ({TP_BISECT_STEPS} steps) to the smallest whose counted MACs are at most "
        "dense / k; fine-tuned with cross-entropy. `pk-l2`: `pk.prune(model, x, "
        "target={'macs': 1 - 1/k}, criterion='l2', ignore=[model.fc])` (uniform ratio "
        "searched by prunekit), the same fine-tuning. `pk-kd` (prunekit's method): the cut "
        f"among {', '.join(f'`{v}`' for v in VARIANTS)} (global scopes capped at 75% per "
        "group) whose accuracy after batch-norm recalibration is highest on the "
        f"{HOLDOUT:,} held-out training images (EagleEye's proxy, chosen per model and "
        "target before any fine-tuning; the test set plays no part), then batch-norm "
        f"recalibration ({BN_MODE}) on {CALIB_BATCHES} batches and fine-tuning with "
        f"distillation from the baseline (T = {KD['temperature']}, alpha = {KD['alpha']}). "
        "MACs are counted with `prunekit.measure.count_macs` for every method; the classifier "
        "keeps its 10 outputs.",
    ]


def accuracy_table(summary: dict, models: list[str]) -> list[str]:
    methods = [m for m in METHODS if any(k[1] == m for k in summary)]
    lines = [
        "Test accuracy (%), mean ± standard deviation over the seeds (best per row in "
        "bold), and the MAC reduction each reached (dense MACs / pruned MACs).",
        "",
        "| model | target | " + " | ".join(methods) + " | MAC reduction ("
        + ", ".join(methods) + ") |",
        "|---|---:|" + "---:|" * len(methods) + "---|",
    ]
    for model in models:
        dense = summary[(model, "dense", 1)]
        lines.append(f"| {model} | dense ({dense['macs'] / 1e6:.1f} M MACs) | {dense['mean']:.2f}"
                     + " |" * len(methods) + " |")
        for k in sorted({key[2] for key in summary if key[0] == model and key[1] != "dense"}):
            cells = [summary.get((model, m, k)) for m in methods]
            best = max((v["mean"] for v in cells if v), default=None)
            text = ["-" if v is None else f"{v['mean']:.2f} ± {v['std']:.2f}" for v in cells]
            text = [f"**{t}**" if v and v["mean"] == best else t for t, v in zip(text, cells,
                                                                                  strict=True)]
            red = ", ".join("-" if v is None else f"{v['reduction']:.2f}x" for v in cells)
            lines.append(f"| {model} | {k}x | " + " | ".join(text) + f" | {red} |")
    return lines


def variant_lines(summary: dict, models: list[str]) -> list[str]:
    chosen = [f"{model} {k[2]}x: `{', '.join(v['variants'])}`" for model in models
              for k, v in sorted(summary.items()) if k[:2] == (model, MAIN) and v["variants"]]
    return [f"Cuts chosen for `{MAIN}` on the held-out images: " + "; ".join(chosen) + ".",
            ""] if chosen else []


def latency_table(rows: list[dict], models: list[str]) -> list[str]:
    lat = sorted((r for r in rows if r.get("kind") == "latency"),
                 key=lambda r: (models.index(r["model"]) if r["model"] in models else 99,
                                r["target"], list(METHODS).index(r["method"]), r["batch"]))
    if not lat:
        return ["CPU latency: not measured yet (run with `--latency`).", ""]
    lines = ["CPU latency, dense vs pruned (ms per batch, median), speed-up next to the MAC "
             "reduction.", "",
             "| model | target | method | batch | dense ms | pruned ms | speed-up | "
             "MAC reduction | speed-up / MAC reduction |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in lat:
        method = r["method"] + (f" ({r['variant']})" if r.get("variant") else "")
        lines.append(f"| {r['model']} | {r['target']}x | {method} | {r['batch']} | "
                     f"{r['dense_ms']:.3f} | {r['pruned_ms']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['mac_reduction']:.2f}x | {r['speedup'] / r['mac_reduction']:.2f} |")
    return [*lines, ""]


def aims(summary: dict, rows: list[dict], models: list[str]) -> list[str]:
    """The issue's aims against the measured means; a difference within the larger standard
    deviation of the two is a tie."""
    out = ["### Aims", "", f"`{MAIN}` is prunekit's method, fixed before the run. A "
           "difference no larger than the larger of the two standard deviations is a tie.", ""]
    for model in models:
        dense = summary[(model, "dense", 1)]["mean"]
        for k, limit in ((2, 0.5), (3, 1.5)):
            v, peer = summary.get((model, MAIN, k)), summary.get((model, PEER, k))
            if v is None:
                continue
            gap = dense - v["mean"]
            verdict = "met" if gap <= limit else "**not met**"
            out.append(f"- {model} {k}x, {MAIN} vs dense: {v['mean']:.2f}% vs {dense:.2f}%, "
                       f"{gap:.2f} points below (aim: within {limit}) - {verdict}.")
            if peer is not None:
                out.append(_versus(f"{model} {k}x, {MAIN} vs {PEER}", v, peer, "at least as "
                                   "accurate"))
            engine = summary.get((model, "pk-l2", k))
            if engine is not None and peer is not None:
                out.append(_versus(f"{model} {k}x, pk-l2 vs {PEER} (same recovery; the engines "
                                   "alone, not an aim of the issue)", engine, peer, "-"))
    for r in (r for r in rows if r.get("kind") == "latency" and r["method"] == MAIN):
        need = 0.7 * r["mac_reduction"]
        verdict = "met" if r["speedup"] >= need else "**not met**"
        cut = f" ({r['variant']})" if r.get("variant") else ""
        out.append(f"- {r['model']} {r['target']}x, {MAIN}{cut} CPU latency, batch {r['batch']}: "
                   f"{r['speedup']:.2f}x speed-up for {r['mac_reduction']:.2f}x fewer MACs "
                   f"(aim: at least {need:.2f}x) - {verdict}.")
    return out


def _versus(label: str, v: dict, peer: dict, aim: str) -> str:
    diff, spread = v["mean"] - peer["mean"], max(v["std"], peer["std"])
    if aim == "-":
        verdict = "ahead" if diff > spread else "tie" if diff >= -spread else "behind"
    else:
        verdict = "met" if diff > spread else "tie" if diff >= -spread else "**not met**"
    return (f"- {label}: {v['mean']:.2f}% vs {peer['mean']:.2f}% ({diff:+.2f}, larger std "
            f"{spread:.2f}; aim: {aim}) - {verdict}.")


def report(rows: list[dict], args) -> None:
    """Write the raw rows (JSON, unless they were read from it), the plot and the section."""
    if args.json not in (args.report_from or []):
        write_json(args.json, {"args": vars(args), "machine": machine(), "rows": rows})
    plot_rel = "img/structured_fmnist.png"
    plot(summarize(rows), Path(args.docs).parent / plot_rel)
    write_section(args.docs, "structured-fmnist", markdown(rows, args, plot_rel))
    print(f"wrote {args.docs}, {args.json} and {plot_rel} next to {args.docs}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--methods", nargs="+", default=["tp-l2", "pk-l2", "pk-kd"],
                    choices=list(METHODS))
    ap.add_argument("--targets", nargs="+", type=int, default=TARGETS, help="MAC reductions")
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK['train']} training images, 1+1 epochs, seed 0")
    ap.add_argument("--baseline-epochs", type=int, default=BASELINE["epochs"])
    ap.add_argument("--baseline-lr", type=float, default=BASELINE["lr"])
    ap.add_argument("--finetune-epochs", type=int, default=FINETUNE["epochs"])
    ap.add_argument("--lr", type=float, default=FINETUNE["lr"], help="fine-tuning lr, all methods")
    ap.add_argument("--kd-alpha", type=float, default=KD["alpha"])
    ap.add_argument("--kd-temperature", type=float, default=KD["temperature"])
    ap.add_argument("--pk-variant", default="auto", choices=["auto", *VARIANTS],
                    help="pk-kd's cut: chosen on the held-out images (auto) or forced")
    ap.add_argument("--validation", action="store_true",
                    help=f"evaluate on {HOLDOUT} more held-out training images, not the test set")
    ap.add_argument("--resume", action="store_true", help="skip points already in --rows")
    ap.add_argument("--cache", default="runs/bench-cache", help="baseline checkpoints")
    ap.add_argument("--rows", default="runs/structured_fmnist.rows.jsonl",
                    help="every finished row is appended here at once")
    ap.add_argument("--docs", default="docs/benchmarks.md")
    ap.add_argument("--json", default="docs/data/structured_fmnist.json")
    ap.add_argument("--notes", default=None, help="a Markdown file appended to the section")
    ap.add_argument("--report-from", nargs="+", default=None, metavar="FILE",
                    help="rows files, logs or --json outputs to report from instead of training")
    ap.add_argument("--latency", action="store_true",
                    help="time the architectures of --report-from (or --rows) on this CPU")
    ap.add_argument("--latency-batches", nargs="+", type=int, default=[1, 32, 256])
    ap.add_argument("--latency-threads", type=int, default=2)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--latency-rounds", type=int, default=3)
    args = ap.parse_args()
    if any(k <= 1 for k in args.targets):
        ap.error(f"--targets are MAC reductions greater than 1, got {args.targets}")
    if args.quick:
        args.seeds = args.seeds if args.seeds != SEEDS else [0]
        args.latency_batches = [b for b in args.latency_batches if b <= 32]
        args.latency_rounds = min(args.latency_rounds, 2)
    return args


def main() -> None:
    args = parse_args()
    configure(args)
    if args.latency:
        rows = rows_from_logs(args.report_from or [args.rows])
        for row in latency_rows(rows, args):
            emit(row, args, rows, {})
        rows = rows_from_logs([*(args.report_from or []), args.rows])
    elif args.report_from:
        rows = rows_from_logs(args.report_from)
    else:
        rows = run(args)
    report(rows, args)
    if FAILED:
        raise SystemExit(f"{len(FAILED)} points failed (see above): {FAILED}")


if __name__ == "__main__":
    main()
