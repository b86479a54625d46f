"""Structured pruning on the CPU: measured latency of pruned networks against dense ones.

ResNet-50 and MobileNetV2 (torchvision) and a ViT-S/16 (torchvision's VisionTransformer at
DeiT-S sizes: 12 layers, 6 heads, width 384) are pruned with prunekit to 1/2 and 1/3 of their
dense MACs, the target given to ``pk.prune(..., target={"macs": f})`` (or, with
``--search bisect``, a uniform ratio bisected against the counted MACs). Each network is timed
at batch 1 and 32 with 2 threads, and the table reports the speed-up next to the MAC
reduction. Random weights: latency does not depend on their values. Writes the section
"structured-latency" of docs/benchmarks.md.

    .venv/bin/python benchmarks/structured_latency.py                 # ~10-15 min on 2 cores
    .venv/bin/python benchmarks/structured_latency.py --quick         # smoke run, batch 1 only
    .venv/bin/python benchmarks/structured_latency.py --models resnet50 --json lat.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _common import interleaved_medians, machine, versions_line, write_section
from torch import nn

import prunekit as pk
from prunekit._io import write_json
from prunekit.measure import count_macs, count_params
from prunekit.models.catalog import ZooModel


def _vit_s_16() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=6,
                             hidden_dim=384, mlp_dim=1536)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def _image(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=gen)  # (B, C, H, W)


MODELS = {
    "resnet50": ZooModel("resnet50", "torchvision", _torchvision("resnet50"), _image,
                         num_classes=1000),
    "mobilenet_v2": ZooModel("mobilenet_v2", "torchvision", _torchvision("mobilenet_v2"), _image,
                             num_classes=1000),
    "vit_s_16": ZooModel("vit_s_16", "torchvision", _vit_s_16, _image, num_classes=1000),
}


SEARCHES = {
    "engine": "searched by `pk.prune(..., target={\"macs\": f})`",
    "bisect": "found by bisecting a uniform ratio against counted MACs",
}


@dataclass
class Row:
    """One network (dense or pruned to a MAC target) at one batch size."""

    model: str
    target: str  # "dense", "1/2 MACs", "1/3 MACs"
    ratio: float | None
    params: int
    macs: int  # at batch 1
    batch: int
    median_ms: float
    low_ms: float  # fastest round's median
    high_ms: float  # slowest round's median
    speedup: float | None = None
    mac_reduction: float | None = None


def pruned_copy(dense: nn.Module, inputs: torch.Tensor, *, ignore: list[str],
                round_to: int, **options: object) -> tuple[nn.Module, float | None]:
    """A pruned copy of ``dense`` and the channel ratio the plan used."""
    model = copy.deepcopy(dense)
    plan = pk.prune(model, inputs, ignore=[model.get_submodule(n) for n in ignore],
                    round_to=round_to, **options)
    info = plan.info
    return model, info.get("ratio_found", info.get("ratio"))


def reach_macs(dense: nn.Module, inputs: torch.Tensor, fraction: float, *, ignore: list[str],
               round_to: int, search: str, steps: int = 10) -> tuple[nn.Module, float | None]:
    """A pruned copy with about ``fraction`` of the dense MACs left.

    ``search="engine"`` states the target to ``pk.prune`` (``target={"macs": ...}``);
    ``"bisect"`` bisects a uniform ratio against the MACs prunekit.measure counts.
    """
    if search == "engine":
        return pruned_copy(dense, inputs, ignore=ignore, round_to=round_to,
                           target={"macs": 1.0 - fraction})
    dense_macs = count_macs(dense, inputs).dense
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        ratio = (lo + hi) / 2
        model, _ = pruned_copy(dense, inputs, ignore=ignore, round_to=round_to, ratio=ratio)
        got = count_macs(model, inputs).dense / dense_macs
        if best is None or abs(got - fraction) < abs(best[2] - fraction):
            best = (model, ratio, got)
        if abs(got - fraction) <= 0.02 * fraction:
            break
        lo, hi = (ratio, hi) if got > fraction else (lo, ratio)
    return best[0], best[1]


def time_variants(variants: list[tuple[str, float | None, nn.Module]], inputs: torch.Tensor, *,
                  batch: int, threads: int, runs: int, rounds: int) -> list[list[float]]:
    """Per variant, the median latency of each round; rounds interleave the variants."""
    x = inputs.expand(batch, *inputs.shape[1:]).contiguous()  # (batch, C, H, W)
    nets = {i: model for i, (_, _, model) in enumerate(variants)}
    medians = interleaved_medians(nets, x, threads=threads, warmup=2,
                                  runs=max(1, runs // rounds), rounds=rounds)
    return [medians[i] for i in nets]


def bench_model(name: str, args: argparse.Namespace) -> list[Row]:
    zoo_model = MODELS[name]
    dense, inputs = zoo_model.create(), zoo_model.example_inputs()
    ignore = zoo_model.ignored(dense)
    variants: list[tuple[str, float | None, nn.Module]] = [("dense", None, dense)]
    for divisor in args.targets:
        model, ratio = reach_macs(dense, inputs, 1 / divisor, ignore=ignore,
                                  round_to=args.round_to, search=args.search)
        variants.append((f"1/{divisor} MACs", ratio, model))
    rows = []
    for batch in args.batches:
        runs = args.runs if batch == 1 else args.runs_large
        medians = time_variants(variants, inputs, batch=batch, threads=args.threads, runs=runs,
                                rounds=args.rounds)
        for (target, ratio, model), ms in zip(variants, medians, strict=True):
            rows.append(Row(name, target, ratio, count_params(model),
                            count_macs(model, inputs).dense, batch, statistics.median(ms),
                            min(ms), max(ms)))
            print(f"{name} {target} batch {batch}: {statistics.median(ms):.1f} ms",
                  file=sys.stderr, flush=True)
    _relate_to_dense(rows)
    return rows


def _relate_to_dense(rows: list[Row]) -> None:
    dense = {(r.model, r.batch): r for r in rows if r.target == "dense"}
    for r in rows:
        d = dense[(r.model, r.batch)]
        r.speedup = d.median_ms / r.median_ms
        r.mac_reduction = d.macs / r.macs


def render(rows: list[Row], args: argparse.Namespace, started: str) -> str:
    lines = [
        "## Structured pruning: CPU latency against dense",
        "",
        f"Generated by `benchmarks/structured_latency.py` ({started}); {machine()}; "
        f"{args.threads} threads; {versions_line()}. {args.runs} timed runs at batch 1 and "
        f"{args.runs_large} at larger batches, in {args.rounds} rounds that interleave the "
        "dense and pruned networks (2 warm-up runs each); latency is the median of the round "
        "medians, with the fastest and slowest round in brackets. "
        "Each pruned network is a plain dense model with fewer channels (prunekit, L2 group "
        f"importance, round_to={args.round_to}, classifier kept); the channel ratio that reaches "
        f"each MAC target is {SEARCHES[args.search]}, and the MACs shown are those "
        "prunekit.measure counts. *Efficiency* is speed-up / MAC reduction "
        "(1.0: latency falls exactly as fast as MACs). The machine is shared with other work, "
        "so single numbers are noisy.",
        "",
        "| model | network | ratio | params | MACs (batch 1) | batch | latency ms "
        "| speed-up | MAC reduction | efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "–" if r.ratio is None else f"{r.ratio:.3f}"
        slower = " **slower than dense**" if r.speedup < 1.0 else ""
        lines.append(
            f"| {r.model} | {r.target} | {ratio} | {r.params / 1e6:.2f}M | {r.macs / 1e9:.2f}G "
            f"| {r.batch} | {r.median_ms:.1f} [{r.low_ms:.1f}-{r.high_ms:.1f}] "
            f"| {r.speedup:.2f}x{slower} | {r.mac_reduction:.2f}x "
            f"| {r.speedup / r.mac_reduction:.2f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--targets", nargs="+", type=int, default=[2, 3],
                   help="MAC reductions to reach (2 = half the dense MACs)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20, help="timed runs at batch 1")
    p.add_argument("--runs-large", type=int, default=8, help="timed runs at larger batches")
    p.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    p.add_argument("--round-to", type=int, default=8, help="channel counts in multiples of this")
    p.add_argument("--search", choices=("engine", "bisect"), default="engine",
                   help="reach the MAC target with pk.prune(target=...) or by bisecting a ratio")
    p.add_argument("--quick", action="store_true", help="batch 1, 5 runs: a smoke test")
    p.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"),
                   help="Markdown file whose section 'structured-latency' is (re)written")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.runs, args.rounds = [1], 4, 2
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = dt.datetime.now().isoformat(timespec="minutes")
    t0 = time.perf_counter()
    rows = [row for name in args.models for row in bench_model(name, args)]
    if args.json:
        write_json(args.json, [asdict(r) for r in rows])
    write_section(args.docs, "structured-latency", render(rows, args, started))
    print(f"wrote {args.docs} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
