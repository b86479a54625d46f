"""Latency efficiency of latency-budgeted channel cuts at batch 1 on one CPU thread.

Latency efficiency = speed-up / MAC reduction = (dense ms / pruned ms) x (pruned MACs / dense
MACs), i.e. the pruned network's MACs per second over the dense one's. For torchvision's
resnet18 and mobilenet_v2 (3x224x224, freshly initialized with seed 0, as
``benchmarks/allocation.py --part latency`` builds them) each method cuts to a latency budget
of a fraction of dense latency, in eager PyTorch or in the runtime a method names after ``@``
(``uniform:16@ort``: the budget holds in onnxruntime): the per-layer latency table, timed in
that runtime (CPU clock), ranks where to cut, and ``allocate`` measures each chosen cut whole
(between two timings of dense) there and searches again until it meets the budget. Then dense
and pruned are measured the same way, interleaved, in each setup:

- ``eager``: the module as it is (``benchmarks/allocation.py``'s ``timed``).
- ``cl``: eager, weights and input in channels_last.
- ``fold``: batch norm folded into the convolutions (``torch.fx``'s ``fuse``), eager.
- ``jit``: ``torch.jit.freeze(torch.jit.trace(folded))``.
- ``jit-cl``: the same in channels_last.
- ``ort``: onnxruntime 1 intra-op thread, all graph optimizations (``prunekit.export_onnx``).

Methods are ``kind:round_to[,round_to...][@eager|@jit-cl|@ort]``. ``greedy`` and
``evolutionary`` get a data-free ``evaluate``: the kept fraction of dense MACs, so greedy cuts
where predicted latency gained per MAC lost is best and the evolutionary search keeps the most
MACs under the budget. No accuracy is measured: this is the latency side only.

Every time is the CPU time of the inference thread (one thread): fastest run and median of the
per-round medians over ``--rounds`` interleaved rounds. Rows go to ``--rows`` (JSON lines);
the report (``--report-only`` rewrites it from the rows) is the section "latency-efficiency"
of docs/allocation.md.

    .venv/bin/python benchmarks/latency_efficiency.py --nets resnet18 --fractions 0.5 0.333 \
        --methods uniform:1,8 uniform:16 uniform:32 greedy:8,16 greedy:16,32 \
        --setups eager jit-cl ort --rounds 7
    .venv/bin/python benchmarks/latency_efficiency.py --nets mobilenet_v2 --fractions 0.333 \
        --methods greedy:16,32@ort uniform:16@ort --setups ort
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import write_section
from torch import nn

from allocation import SEARCH_GRID, build, emit, interleaved, provenance, timed
from prunekit._io import write_json
from prunekit.allocation import allocate, apply_allocation
from prunekit.allocation.search import NEEDS_EVALUATE
from prunekit.errors import ConfigError
from prunekit.measure import count_macs

SETUPS = ("eager", "cl", "fold", "jit", "jit-cl", "ort")
SETUP_NAMES = {"eager": "eager PyTorch", "cl": "eager, channels_last", "fold": "BN folded, eager",
               "jit": "BN folded + TorchScript frozen",
               "jit-cl": "BN folded + TorchScript frozen, channels_last",
               "ort": "onnxruntime (1 thread)"}


def kept_macs(x: torch.Tensor, dense: float) -> Callable[[nn.Module], float]:
    """A data-free ``evaluate``: the pruned copy's MACs as a fraction of dense."""

    def evaluate(model: nn.Module) -> float:
        return count_macs(model, x).dense / dense

    return evaluate


RUNTIME_OF = {"eager": "eager", "jit-cl": "torchscript", "ort": "onnxruntime"}


def parse_method(spec: str) -> tuple[str, tuple[int, ...], str]:
    """``kind:round_to[,round_to...][@setup]``: the setup (eager, jit-cl, ort) is the
    runtime whose measured latency the budget holds in (default eager)."""
    spec, _, setup = spec.partition("@")
    kind, _, rts = spec.partition(":")
    if setup and setup not in RUNTIME_OF:
        raise SystemExit(f"method {spec}@{setup}: the runtime is one of {', '.join(RUNTIME_OF)}")
    return kind, tuple(int(r) for r in rts.split(",")) if rts else (1,), \
        RUNTIME_OF[setup or "eager"]


def cut(base: nn.Module, x: torch.Tensor, spec: str, fraction: float, args) -> dict[str, Any]:
    """The pruned copy for one method and budget, with what the allocation predicted."""
    kind, round_to, runtime = parse_method(spec)
    dense_macs = count_macs(base, x).dense
    evaluate = kept_macs(x, dense_macs) if kind in NEEDS_EVALUATE else None
    start = time.perf_counter()
    alloc = allocate(base, x, kind=kind, budget={"latency_ratio": fraction}, evaluate=evaluate,
                     grid=args.grid, round_to=round_to, batch_size=1, threads=1, clock="cpu",
                     cache_dir=args.cache, cache_key="kept-macs", seed=args.seed,
                     population=args.population, generations=args.generations,
                     runtime=runtime)
    model = copy.deepcopy(base)
    apply_allocation(model, alloc, x)
    return {"model": model.eval(), "predicted_ms": alloc.predicted["latency_ms"],
            "predicted_dense_ms": alloc.dense["latency_ms"], "round_to": alloc.round_to,
            "ratios": {k: round(v, 4) for k, v in alloc.ratios.items()},
            "macs_ratio": count_macs(model, x).dense / dense_macs,
            "checks": alloc.latency.get("checks", []),
            "search_s": time.perf_counter() - start}


# --- deployment-style runners: () -> output, built once per network and setup -----------------
def runner(setup: str, model: nn.Module, x: torch.Tensor) -> Callable:
    """The setups that take the library's runtimes apart (``RUNTIME_OF`` names the others):
    channels_last alone, batch norm folded alone, TorchScript without channels_last."""
    from torch.fx.experimental.optimization import fuse

    net = fuse(copy.deepcopy(model).eval()) if setup in ("fold", "jit") else \
        copy.deepcopy(model).eval()
    if setup == "cl":
        net, x = net.to(memory_format=torch.channels_last), \
            x.contiguous(memory_format=torch.channels_last)
    if setup == "jit":
        with torch.no_grad():
            net = torch.jit.freeze(torch.jit.trace(net, x))

    def run() -> Any:
        with torch.no_grad():
            return net(x)

    return run


def measure(nets: dict[str, nn.Module], x: torch.Tensor, setup: str, args) -> dict:
    """Every network of ``nets`` (dense among them) timed in one setup, interleaved."""
    if setup in RUNTIME_OF:
        return timed(nets, x, args, RUNTIME_OF[setup])
    return interleaved({key: runner(setup, net, x) for key, net in nets.items()}, args)


def rows(args) -> None:
    for name in args.nets:
        base, x = build(name)
        cuts = {}
        for f in args.fractions:
            for spec in args.methods:
                try:
                    cuts[(f, spec)] = cut(base, x, spec, f, args)
                except ConfigError as e:  # a budget the method cannot meet: said in the rows
                    emit({"part": "unreachable", "model": name, "fraction": f, "method": spec,
                          "error": str(e)}, args)
        nets = {"dense": base, **{f"{f}|{spec}": c["model"] for (f, spec), c in cuts.items()}}
        for setup in args.setups:
            got = measure(nets, x, setup, args)
            for (fraction, spec), made in cuts.items():
                emit(row(name, fraction, spec, setup, made, got["dense"],
                         got[f"{fraction}|{spec}"], args), args)


def row(name: str, fraction: float, spec: str, setup: str, made: dict, dense: tuple,
        pruned: tuple, args) -> dict:
    speed, speed_med = dense[0] / pruned[0], dense[1] / pruned[1]
    return {"part": "latency-efficiency", "model": name, "fraction": fraction, "method": spec,
            "setup": setup, "seed": args.seed,
            "predicted_ms": round(made["predicted_ms"], 4),
            "predicted_dense_ms": round(made["predicted_dense_ms"], 4),
            "measured_ms": round(pruned[0], 4), "measured_dense_ms": round(dense[0], 4),
            "measured_median_ms": round(pruned[1], 4),
            "measured_dense_median_ms": round(dense[1], 4),
            "macs_ratio": round(made["macs_ratio"], 4), "speedup": round(speed, 4),
            "efficiency": round(speed * made["macs_ratio"], 4),
            "efficiency_median": round(speed_med * made["macs_ratio"], 4),
            "round_to": made["round_to"], "ratios": made["ratios"],
            "search_s": round(made["search_s"], 1), "checks": made["checks"],
            "rounds": args.rounds, "runs": args.runs, "clock": "cpu", "threads": 1}


def report(args) -> None:
    """The rows as a table per network (the latest row of each network, budget, method and
    setup), with machine and versions."""
    rows_ = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line]
    latest: dict[tuple, dict] = {}
    unreachable: dict[tuple, dict] = {}  # a rerun replaces rows of the same method and budget
    for r in rows_:
        method = (r["model"], r["fraction"], r["method"])
        if r["part"] == "latency-efficiency":
            latest[(*method, r["setup"])] = r
            unreachable.pop(method, None)
        elif r["part"] == "unreachable":
            unreachable[method] = r
            latest = {k: v for k, v in latest.items() if k[:3] != method}
    lines = [provenance(list(latest.values())), "",
             "Batch 1, one thread, CPU clock (the inference thread's CPU time); dense and every "
             f"cut interleaved, {args.rounds} rounds x {args.runs} runs; freshly initialized "
             "networks (seed 0), 3x224x224. Method: allocation kind and the `round_to` choices "
             "it may use (the one it took in brackets); greedy and evolutionary judge a cut by "
             "the MACs it keeps (no data). Budget: the fraction of the dense latency, as "
             "`allocate` measures the cut and dense whole in eager PyTorch, or in the runtime "
             "after `@` (`@ort`: onnxruntime, `@jit-cl`: TorchScript); 'predicted' is the "
             "prediction of the table timed in that runtime. Efficiency: speed-up x (MACs x "
             "dense), from the fastest runs (from the median runs in brackets).", "",
             "| network | budget (x dense) | method | measured as | predicted ms (dense) | "
             "measured ms (dense) | measured x dense | speed-up | MACs x dense | "
             "latency efficiency |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {s: i for i, s in enumerate(SETUPS)}
    held = [k for k in latest if k[3] == (k[2].partition("@")[2] or "eager")]
    summary = ["**Each budget held where it is measured** (the method's runtime, after `@`, "
               "is the one timed; the rows below are all of them):", "",
               "| network | budget (x dense) | runtime | method | measured x dense | "
               "MACs x dense | latency efficiency |", "|---|---|---|---|---|---|---|"]
    for key in sorted(held, key=lambda k: (k[0], -k[1], order[k[3]], k[2])):
        r = latest[key]
        summary.append(
            f"| {r['model']} | {r['fraction']:.3g} | {SETUP_NAMES[r['setup']]} | "
            f"{r['method']} ({r['round_to']}) | {r['measured_ms'] / r['measured_dense_ms']:.3f} | "
            f"{r['macs_ratio']:.3f} | {r['efficiency']:.2f} ({r['efficiency_median']:.2f}) |")
    lines[4:4] = [*summary, "", "All rows:", ""]
    for key in sorted(latest, key=lambda k: (k[0], -k[1], k[2], order[k[3]])):
        r = latest[key]
        lines.append(
            f"| {r['model']} | {r['fraction']:.3g} | {r['method']} ({r['round_to']}) | "
            f"{SETUP_NAMES[r['setup']]} | {r['predicted_ms']:.2f} ({r['predicted_dense_ms']:.2f})"
            f" | {r['measured_ms']:.2f} ({r['measured_dense_ms']:.2f}) | "
            f"{r['measured_ms'] / r['measured_dense_ms']:.3f} | {r['speedup']:.2f} | "
            f"{r['macs_ratio']:.3f} | {r['efficiency']:.2f} ({r['efficiency_median']:.2f}) |")
    for r in unreachable.values():
        lines += ["", f"Not in the table: {r['model']}, {r['fraction']:.3g} x dense, "
                  f"{r['method']}: {r['error']}"]
    write_section(args.docs, "latency-efficiency", "\n".join(lines), title="# Allocation\n")
    write_json(args.json, {"rows": [*latest.values(), *unreachable.values()]})


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[1 / 2, 1 / 3])
    ap.add_argument("--methods", nargs="+", default=["uniform:1,8", "uniform:16", "greedy:16,32"],
                    help="kind:round_to[,round_to]; greedy/evolutionary keep the most MACs")
    ap.add_argument("--setups", nargs="+", choices=SETUPS, default=["eager", "jit-cl", "ort"])
    ap.add_argument("--grid", nargs="+", type=float, default=SEARCH_GRID)
    ap.add_argument("--seed", type=int, default=0, help="evolutionary search seed")
    ap.add_argument("--population", type=int, default=10)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default="runs/bench-cache")
    ap.add_argument("--rows", default="runs/latency_efficiency.rows.jsonl")
    ap.add_argument("--docs", default="docs/allocation.md")
    ap.add_argument("--json", default="docs/data/latency_efficiency.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.threads, args.clock = 1, "cpu"  # what allocation.timed reads
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    Path(args.rows).parent.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        rows(args)
    report(args)


if __name__ == "__main__":
    main()
