"""How long prunekit takes to trace, plan and apply a 50% channel cut.

ResNet-50 (torchvision, random weights, on the CPU) and a LLaMA-7B-shaped model
(transformers, 32 layers, hidden 4096, FFN 11008, 32 heads) built on the meta device,
so no weights are in memory. Each step is timed on its own: ``pk.trace``, ``pk.plan``
(which dry-runs the plan on a weightless copy) and ``pk.apply``; the best of
``--repeats`` runs is reported. Writes the section "prune-time" of docs/benchmarks.md.

    .venv/bin/python benchmarks/prune_time.py                 # ~1 min on 2 cores
    .venv/bin/python benchmarks/prune_time.py --docs /tmp/b.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import machine, versions_line, write_section
from torch import nn

import prunekit as pk


def resnet50() -> tuple[nn.Module, torch.Tensor, list[nn.Module]]:
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    return model, torch.randn(1, 3, 224, 224), [model.fc]  # (B, C, H, W)


def llama_7b_on_meta() -> tuple[nn.Module, dict, list[nn.Module]]:
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008,
                                   num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    inputs = {"input_ids": torch.zeros(1, 8, dtype=torch.long, device="meta")}  # (B, T)
    return model, inputs, [model.lm_head]


MODELS: dict[str, tuple[str, Callable]] = {
    "resnet50": ("ResNet-50, CPU, criterion l2", resnet50),
    "llama-7b-meta": ("LLaMA-7B shape on the meta device, criterion random", llama_7b_on_meta),
}


def time_once(build: Callable, criterion: str) -> dict[str, float]:
    """Seconds of each step of one 50% cut of a freshly built model."""
    model, inputs, ignore = build()
    t0 = time.perf_counter()
    graph = pk.trace(model, inputs)
    t1 = time.perf_counter()
    plan = pk.plan(graph, ratio=0.5, criterion=criterion, ignore=ignore, round_to=8)
    t2 = time.perf_counter()
    pk.apply(model, plan)
    t3 = time.perf_counter()
    return {"trace": t1 - t0, "plan": t2 - t1, "apply": t3 - t2, "total": t3 - t0,
            "groups": sum(1 for g in plan.groups if g.removed)}


def best_of(build: Callable, criterion: str, repeats: int) -> dict[str, float]:
    runs = [time_once(build, criterion) for _ in range(repeats)]
    return min(runs, key=lambda r: r["total"])


def render(results: dict[str, dict[str, float]], args: argparse.Namespace, started: str) -> str:
    lines = [
        "## Time to prune: trace, plan, apply",
        "",
        f"Command: `.venv/bin/python benchmarks/prune_time.py` ({started}); {machine()}; "
        f"{args.threads} torch threads; {versions_line()}. A 50% cut of every prunable group "
        f"(round_to 8, output layer kept); best of {args.repeats} runs, each on a freshly built "
        "model. `plan` includes the dry run of the plan on a weightless copy.",
        "",
        "| model | groups cut | trace s | plan s | apply s | total s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {MODELS[name][0]} | {r['groups']} | {r['trace']:.2f} | {r['plan']:.2f} "
                     f"| {r['apply']:.2f} | {r['total']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = dt.datetime.now().isoformat(timespec="minutes")
    criteria = {"resnet50": "l2", "llama-7b-meta": "random"}
    results = {name: best_of(MODELS[name][1], criteria[name], args.repeats)
               for name in args.models}
    write_section(args.docs, "prune-time", render(results, args, started))
    print(render(results, args, started))


if __name__ == "__main__":
    main()
