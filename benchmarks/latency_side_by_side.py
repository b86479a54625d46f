"""Two sets of latency-efficiency cuts timed side by side, in one session.

``latency_efficiency.py`` times each run's cuts against that run's dense network, and a
shared machine's timing moves by several percent between sessions, so rows of two runs (two
versions of ``allocate``) cannot be compared figure for figure. This script rebuilds the
cuts two row files describe (each row keeps its per-unit ratios and ``round_to``) and times
them all, interleaved with the dense network, in each runtime the methods held their budget
in. Which rows: those of ``--nets`` whose method names the runtime after ``@``.

    git show 71faa3d:docs/data/latency_efficiency.json > runs/le-before.json
    git show 2996c47:docs/data/latency_efficiency.json > runs/le-after.json
    .venv/bin/python benchmarks/latency_side_by_side.py runs/le-before.json \\
        runs/le-after.json --labels eager-table runtime-table

Prints, for each row file, network and runtime, where ``allocate``'s first search landed
(its measured share of dense over the budget, from the rows' checks) and how many searches
an allocation took; then one line per cut: the share of dense it measures, the MACs it
keeps, the latency efficiency (MACs kept / share of dense time).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import prunekit as pk
from allocation import build, timed
from prunekit.measure import count_macs

SETUPS = {"ort": "onnxruntime", "jit-cl": "torchscript"}


def rows_of(path: str) -> list[dict]:
    """The measured rows of a JSON file (``{"rows": [...]}``) or JSON lines (a budget a
    method could not reach has no cut to time)."""
    text = Path(path).read_text()
    rows = json.loads(text)["rows"] if path.endswith(".json") else [
        json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if r.get("part") != "unreachable"]


def searches(label: str, rows: list[dict], nets: list[str]) -> None:
    """Where the first search of each runtime-held method landed, and the searches taken."""
    for net in nets:
        for setup, runtime in SETUPS.items():
            held = [r for r in rows if r["model"] == net and r["setup"] == setup
                    and r["method"].endswith("@" + setup) and r.get("checks")]
            if not held:
                continue
            first = [r["checks"][0]["measured_ms"] / r["checks"][0]["measured_dense_ms"]
                     / r["fraction"] for r in held]
            taken = sum(len(r["checks"]) for r in held) / len(held)
            print(f"{label} | {net} | {runtime} | first search at {min(first):.2f}-"
                  f"{max(first):.2f} of the budget | {taken:.1f} searches per allocation",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--labels", nargs=2, default=["first", "second"])
    ap.add_argument("--nets", nargs="+", default=["mobilenet_v2", "resnet18"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    timing = argparse.Namespace(threads=1, rounds=args.rounds, runs=args.runs, clock="cpu")
    sets = {label: [r for r in rows_of(path) if r.get("part") == "latency-efficiency"]
            for label, path in zip(args.labels, (args.first, args.second), strict=True)}
    for label, rows in sets.items():
        searches(label, rows, args.nets)
    for net in args.nets:
        base, x = build(net)
        dense_macs = count_macs(base, x).dense
        for setup, runtime in SETUPS.items():
            cuts = {"dense": base}
            for label, rows in sets.items():
                for r in rows:
                    if r["model"] == net and r["setup"] == setup \
                            and r["method"].endswith("@" + setup):
                        model = copy.deepcopy(base)
                        pk.apply(model, pk.plan(pk.trace(model, x), ratio=0.0,
                                                ratios=r["ratios"], round_to=r["round_to"],
                                                criterion="l2"))
                        cuts[f"{label} {r['method']} {r['fraction']:.3g}"] = model
            measured = timed(cuts, x, timing, runtime)
            dense_ms = measured["dense"][0]
            for key, model in cuts.items():
                if key == "dense":
                    continue
                share = measured[key][0] / dense_ms
                macs = count_macs(model, x).dense / dense_macs
                print(f"{net} | {runtime} | {key} | share {share:.3f} | MACs {macs:.3f} | "
                      f"efficiency {macs / share:.2f}", flush=True)


if __name__ == "__main__":
    main()
