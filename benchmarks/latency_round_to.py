"""CPU latency of small pruned CNNs against the channel rounding of the cut (``round_to``).

Latency depends only on the architecture, so this needs no training: the seed-0 baselines
of ``benchmarks/structured_fmnist.py`` (ResNet-20 and the small VGG on 1x28x28 inputs, read
from its cache; a freshly initialized network when the cache is missing) are cut with
``pk.prune(target={"macs": 1 - 1/k})``, L2 importance, per-layer or global scope, and channel
counts rounded to multiples of 1, 8 or 16, then timed against dense at batch 1, 32 and 256
with 2 threads (median of ``--runs``, best of ``--rounds`` interleaved rounds). Writes the
section "latency-round-to" of docs/benchmarks.md.

    .venv/bin/python benchmarks/latency_round_to.py          # ~5 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
from pathlib import Path

import torch
from _common import interleaved_medians, machine, versions_line, write_section
from torch import nn

import prunekit as pk
from prunekit.measure import count_macs
from prunekit.models import build_model

INPUT = (1, 28, 28)
CACHE = "runs/bench-cache/{}-fmnist-aug-e20-lr0.1-n55000-s0.safetensors"


def baseline(name: str) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    model = build_model(name, input_shape=INPUT, num_classes=10)
    path = Path(CACHE.format(name))
    if path.exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path))
        return model.eval(), "trained baseline"
    return model.eval(), "random weights"


def cut(base: nn.Module, *, k: int, scope: str, round_to: int) -> nn.Module:
    model = copy.deepcopy(base)
    options = dict(criterion="l2", scope=scope, round_to=round_to)
    if scope == "global":
        options["max_ratio"] = 0.75
    pk.prune(model, torch.zeros(1, *INPUT), target={"macs": 1 - 1 / k}, ignore=[model.fc],
             **options)
    return model


def speedups(dense: nn.Module, pruned: nn.Module, args) -> list[float]:
    out = []
    for batch in args.batches:
        x = torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(0))  # (B, C, H, W)
        times = interleaved_medians({"dense": dense, "pruned": pruned}, x, threads=args.threads,
                                    warmup=5, runs=args.runs, rounds=args.rounds)
        out.append(min(times["dense"]) / min(times["pruned"]))
    return out


def rows(args) -> list[str]:
    lines = []
    for name in args.models:
        base, weights = baseline(name)
        dense_macs = count_macs(base, torch.zeros(1, *INPUT)).dense
        for k in args.targets:
            for scope in ("layer", "global"):
                for round_to in args.round_to:
                    model = cut(base, k=k, scope=scope, round_to=round_to)
                    reduction = dense_macs / count_macs(model, torch.zeros(1, *INPUT)).dense
                    cells = " | ".join(f"{s:.2f}x ({s / reduction:.2f})"
                                       for s in speedups(base, model, args))
                    lines.append(f"| {name} ({weights}) | {k}x | {scope} | {round_to} "
                                 f"| {reduction:.2f}x | {cells} |")
                    print(lines[-1], flush=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "vgg-small"])
    p.add_argument("--targets", nargs="+", type=int, default=[2, 3])
    p.add_argument("--round-to", nargs="+", type=int, default=[1, 8, 16])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32, 256])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    args = p.parse_args()
    started = dt.datetime.now().isoformat(timespec="minutes")
    header = " | ".join(f"batch {b}" for b in args.batches)
    body = [
        "## Small CNNs: CPU speed-up against channel rounding",
        "",
        f"Command: `.venv/bin/python benchmarks/latency_round_to.py` ({started}); {machine()}; "
        f"{args.threads} threads; {versions_line()}. Architecture only (no fine-tuning): each "
        "baseline cut to 1/k of its MACs with L2 importance; speed-up over dense, and in "
        f"brackets speed-up / MAC reduction (the issue's aim is 0.7); median of {args.runs} "
        f"runs, best of {args.rounds} interleaved rounds.",
        "",
        f"| model | target | scope | round_to | MAC reduction | {header} |",
        "|---|---:|---|---:|---:|" + "---:|" * len(args.batches),
        *rows(args),
    ]
    write_section(args.docs, "latency-round-to", "\n".join(body))


if __name__ == "__main__":
    main()
