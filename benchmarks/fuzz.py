"""Random-architecture fuzzing: prunekit and Torch-Pruning side by side on the same networks.

Each case is a small random network from ``fuzz_models.make_case(seed)`` with random
planning options. prunekit's result is judged by the oracles in ``fuzz_models``
(dead units, other input sizes, the plan's JSON round trip) and by ``pk.verify``;
Torch-Pruning (DepGraph, group L2 magnitude, the same ratio, the output layer ignored)
is judged by what can be checked without a plan: it completes, and the pruned network
accepts every input the original accepts with outputs of the same shapes.

Usage::

    python benchmarks/fuzz.py                    # 5000 cases from seed 1000000 -> docs/fuzz.md
    python benchmarks/fuzz.py --n 200 --no-peer --out /dev/stdout

The counts, the command, the machine and the versions go to ``docs/fuzz.md``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import fuzz_models as fm
import torch

LABELS = {
    "pass": "pass (right, or nothing cut)",
    "refused": "refused with a reason",
    "wrong_verify_ok": "wrong while verify said ok",
    "wrong_caught": "wrong, caught by verify",
    "internal_error": "internal error (crash, or a refusal hiding one)",
    "timeout": "timeout",
}
PEER_LABELS = {
    "pass": "completes; shapes hold on every input",
    "broken": "completes, then fails or changes output shapes on some input",
    "internal_error": "crashes while pruning",
    "timeout": "timeout",
}


def check_torch_pruning(case: fm.FuzzCase, *, limit_s: float) -> fm.Outcome:
    """Prune a copy with Torch-Pruning; pass = it completes and every input still runs with
    the original's output shapes (no functional check is possible without a plan)."""
    from zoolib.peers import prune_with_torch_pruning

    model = copy.deepcopy(case.model)
    inputs = [case.inputs, *case.others]
    expected = [fm.outputs(case.model, x).shape for x in inputs]
    try:
        with fm.time_limit(limit_s):
            start = time.perf_counter()
            prune_with_torch_pruning(model, case.inputs, ratio=case.options["ratio"],
                                     ignore=[case.head])
            seconds = time.perf_counter() - start
    except fm.Timeout as e:
        return fm.Outcome("timeout", str(e))
    except Exception as e:
        return fm.Outcome("internal_error", f"{type(e).__name__}: {str(e)[:200]}")
    for x, shape in zip(inputs, expected, strict=True):
        try:
            got = fm.outputs(model, x).shape
        except Exception as e:
            return fm.Outcome("broken", f"input {tuple(x.shape)}: {type(e).__name__}: "
                                        f"{str(e)[:160]}", seconds)
        if got != shape:
            return fm.Outcome("broken", f"input {tuple(x.shape)} gives {tuple(got)}, not "
                                        f"{tuple(shape)}", seconds)
    cut = sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in case.model.parameters())
    return fm.Outcome("pass", "", seconds, cut)


def run(seeds: range, *, peer: bool, limit_s: float, progress: bool) -> dict[str, Any]:
    """Every case through prunekit (and Torch-Pruning); counts, times and the odd cases."""
    tools = {"prunekit": fm.check_prunekit}
    if peer:
        tools["torch-pruning"] = check_torch_pruning
    versions = _versions()  # the code that runs is the code loaded now
    counts = {t: collections.Counter() for t in tools}
    times: dict[str, list[float]] = {t: [] for t in tools}
    reasons: collections.Counter = collections.Counter()
    odd: list[str] = []
    start = time.time()
    for i, seed in enumerate(seeds):
        case = fm.make_case(seed)
        counts["cases"] = counts.get("cases", collections.Counter())
        counts["cases"][case.kind] += 1
        for tool, check in tools.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcome = check(case, limit_s=limit_s)
            counts[tool][outcome.kind] += 1
            counts[tool]["cut"] += outcome.cut
            if outcome.seconds is not None:
                times[tool].append(outcome.seconds)
            if tool == "prunekit" and outcome.kind == "refused":
                reasons[_reason(outcome.detail)] += 1
            elif tool == "prunekit" and outcome.kind != "pass":
                odd.append(f"{outcome.kind}: {case.describe()}: {outcome.detail}")
        if progress and (i + 1) % 100 == 0:
            print(f"{i + 1} cases, {time.time() - start:.0f} s: "
                  + "; ".join(f"{t} {dict(counts[t])}" for t in tools), file=sys.stderr)
    return {"counts": counts, "times": times, "reasons": reasons, "odd": odd,
            "wall_s": time.time() - start, "versions": versions}


def _reason(detail: str) -> str:
    """A refusal's message without the parts that vary from case to case."""
    return detail.split(";")[0][:140]


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("torch-pruning",):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        out["prunekit commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
        if dirty:
            out["prunekit commit"] += " (with uncommitted changes under src/)"
    except (OSError, subprocess.CalledProcessError):
        out["prunekit commit"] = "unknown"
    return out


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu}, {os.cpu_count()} cores (load average at the end: {load}), "
            f"torch threads: {torch.get_num_threads()}")


def _median_ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.1f} ms" if values else "-"


def report(result: dict[str, Any], *, command: str, seeds: range) -> str:
    """Markdown: the counts per tool, median prune times, refusal reasons, odd cases."""
    counts, times = result["counts"], result["times"]
    n = len(seeds)
    kinds = dict(counts.get("cases", {}))
    lines = [
        "# Random-architecture fuzzing",
        "",
        f"{n} random networks (seeds {seeds.start} to {seeds.stop - 1}; "
        + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        + ") built by `benchmarks/fuzz_models.py` from convolutions of every kind, norms, "
        "residuals, concatenation and splits, gating, hand-written and `nn.MultiheadAttention` "
        "attention, LSTM/GRU, embeddings with position tables and reshapes, each pruned with "
        "a random ratio, criterion, `round_to`, scope and ignored layer.",
        "",
        "prunekit's cuts are judged by oracles that do not use `pk.verify`: the units the "
        "plan removes are made dead in the original and removing them must not move the "
        "outputs (on the traced inputs and on other batch sizes, lengths and image sizes); "
        "the pruned network must accept every input the original accepts; the plan through "
        "JSON, replayed on a fresh copy with the pruned weights, must give the same outputs. "
        "Torch-Pruning keeps no plan, so for it only completion and output shapes on the "
        "same inputs are checked.",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine()}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + "  ",
        f"Wall time: {result['wall_s']:.0f} s",
        "",
        "## prunekit",
        "",
        "| outcome | cases |",
        "|---|---:|",
    ]
    pk_counts = counts["prunekit"]
    lines += [f"| {label} | {pk_counts.get(k, 0)} |" for k, label in LABELS.items()]
    lines += [f"| (of the passes: something was cut) | {pk_counts.get('cut', 0)} |", "",
              f"Median prune time (trace + plan with its dry runs + apply): "
              f"{_median_ms(times['prunekit'])}.", ""]
    if "torch-pruning" in counts:
        tp = counts["torch-pruning"]
        lines += ["## Torch-Pruning on the same networks", "", "| outcome | cases |", "|---|---:|"]
        lines += [f"| {label} | {tp.get(k, 0)} |" for k, label in PEER_LABELS.items()]
        lines += ["", f"Median prune time: {_median_ms(times['torch-pruning'])}.", ""]
    if result["reasons"]:
        lines += ["## Why prunekit refused", "", "| reason | cases |", "|---|---:|"]
        lines += [f"| {r.replace('|', '/')} | {c} |" for r, c in result["reasons"].most_common(12)]
        lines.append("")
    lines += ["## Cases that were not right or refused", ""]
    lines += [f"- {o}" for o in result["odd"][:50]] or ["None."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="number of cases")
    parser.add_argument("--start", type=int, default=1_000_000, help="first seed")
    parser.add_argument("--limit-s", type=float, default=60.0, help="time limit per case")
    parser.add_argument("--no-peer", action="store_true", help="prunekit only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs",
                                                      "fuzz.md"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks: a second thread only adds contention
    seeds = range(args.start, args.start + args.n)
    result = run(seeds, peer=not args.no_peer, limit_s=args.limit_s, progress=not args.quiet)
    shown = ["python", "benchmarks/fuzz.py"] + (argv if argv is not None else sys.argv[1:])
    text = report(result, command=" ".join(shown), seeds=seeds)
    if args.out in ("-", "/dev/stdout"):
        print(text)
        return
    from prunekit._io import write_text

    write_text(args.out, text)
    print(text.split("## Why")[0])


if __name__ == "__main__":
    main()
