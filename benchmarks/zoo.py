"""Model zoo, prunekit and Torch-Pruning side by side: which architectures each can prune.

Every model of every source (torchvision, timm, transformers, rnn) goes through both tools
with the same ratio (50% of the channels of each group) and the same ignored output heads.
prunekit passes a model when ``pk.verify`` and the plan round trip hold; Torch-Pruning
passes when its prune completes and the outputs keep their shapes (it has no verify). Both
fail a model when nothing was removed. Writes docs/zoo.md (and, with --json, every result).

    .venv/bin/python benchmarks/zoo.py                                # everything, ~1 h on 2 cores
    .venv/bin/python benchmarks/zoo.py --sources rnn transformers     # the small sources
    .venv/bin/python benchmarks/zoo.py --tools torch-pruning --json docs/zoo.json
    .venv/bin/python benchmarks/zoo.py --sources timm --merge --json docs/zoo.json
    .venv/bin/python benchmarks/zoo.py --render-only --json docs/zoo.json

With --merge, results already in the --json file for (source, model, tool) triples that are
not run now are kept, so a long run can be done source by source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
from _common import machine
from zoolib.runner import ZooResult, run_one, select

from prunekit._io import write_json, write_text
from prunekit._utils import versions
from prunekit.models.catalog import get_source

TOOLS = ("prunekit", "torch-pruning")
TOOL_TITLES = {"prunekit": "prunekit", "torch-pruning": "Torch-Pruning"}
SOURCES = ("torchvision", "timm", "transformers", "rnn")
AIMS = {"torchvision": 0.98, "timm": 0.90, "transformers": 1.0, "rnn": 1.0}  # issue 3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    p.add_argument("--names", nargs="+", help="only these models (names or shell patterns)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per model and tool")
    p.add_argument("--memory-limit-gb", type=float, default=14.0,
                   help="address-space cap for this process (Linux); a model that needs more "
                   "fails with a memory error instead of exhausting a shared machine; 0: none")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 keeps a shared machine usable)")
    p.add_argument("--json", type=Path, help="write every result here (rewritten per model)")
    p.add_argument("--merge", action="store_true", help="keep earlier results from --json")
    p.add_argument("--render-only", action="store_true", help="only rewrite --out from --json")
    p.add_argument("--out", type=Path, default=Path("docs/zoo.md"))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _key(r: ZooResult) -> tuple[str, str, str]:
    return (r.source, r.model, r.tool)


def save(path: Path, results: list[ZooResult], meta: dict) -> None:
    write_json(path, {"meta": meta, "results": [r.to_dict() for r in results]})


def load(path: Path) -> tuple[list[ZooResult], dict]:
    data = json.loads(path.read_text())
    return [ZooResult.from_dict(d) for d in data["results"]], data["meta"]


def run(args: argparse.Namespace, earlier: list[ZooResult], meta: dict) -> list[ZooResult]:
    """Run each model with each tool in turn, saving everything after every model."""
    done = {_key(r): r for r in earlier}
    for source in args.sources:
        models = select(get_source(source), args.names) if args.names else get_source(source)
        for i, zoo_model in enumerate(models, 1):
            for tool in args.tools:
                result = run_one(zoo_model, tool=tool, ratio=args.ratio,
                                 time_limit_s=args.time_limit)
                done[_key(result)] = result
                if args.json:
                    save(args.json, list(done.values()), meta)
                if not args.quiet:
                    status = "pass" if result.passed else f"FAIL ({result.stage}) {result.reason}"
                    print(f"[{source} {i}/{len(models)}] {zoo_model.name:<32} {tool:<14} "
                          f"{status} {result.wall_s:.1f} s", file=sys.stderr, flush=True)
    return list(done.values())


# --------------------------------------------------------------------------- rendering


def _versions() -> str:
    v = versions()
    out = {k: v[k] for k in ("python", "prunekit", "torch", "torchvision") if k in v}
    for dist in ("timm", "transformers", "torch-pruning"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return ", ".join(f"{k} {val}" for k, val in out.items())


def _n(x: int | None) -> str:
    if x is None:
        return "–"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return str(x)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _status(r: ZooResult | None) -> str:
    if r is None:
        return "not run"
    if not r.passed:
        return _cell(f"**fail** ({r.stage}): {r.reason}")
    extra = [f"{n} {what}" for n, what in ((r.groups_unchecked, "unchecked"),
                                           (r.groups_left_whole, "left whole")) if n]
    return "pass" + (f" ({', '.join(extra)})" if extra else "")


def _seconds(results: list[ZooResult], attr: str) -> float:
    return sum(getattr(r, attr) or 0.0 for r in results)


def summary_table(results: list[ZooResult], tools: list[str]) -> list[str]:
    header = ["source", "models"]
    for tool in tools:
        t = TOOL_TITLES[tool]
        header += [f"{t} passed", f"{t} prune s", f"{t} total s"]
    header.append("aim for prunekit")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sources = [s for s in SOURCES if any(r.source == s for r in results)]
    for source in [*sources, "all"]:
        of_source = [r for r in results if source in (r.source, "all")]
        models = {(r.source, r.model) for r in of_source}
        row = [f"**{source}**" if source == "all" else source, str(len(models))]
        for tool in tools:
            mine = [r for r in of_source if r.tool == tool]
            passed = sum(r.passed for r in mine)
            row += [f"{passed}/{len(mine)} ({passed / max(len(mine), 1):.0%})",
                    f"{_seconds(mine, 'prune_s'):.1f}", f"{_seconds(mine, 'wall_s'):.1f}"]
        row.append(f"{AIMS[source]:.0%}" if source in AIMS else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def model_table(results: list[ZooResult], source: str, tools: list[str]) -> list[str]:
    by_key = {(r.model, r.tool): r for r in results if r.source == source}
    models = list(dict.fromkeys(r.model for r in results if r.source == source))
    header = ["model", "params", "MACs"]
    for tool in tools:
        t = TOOL_TITLES[tool]
        header += [t, f"{t} params", f"{t} MACs", f"{t} prune s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        first = next(by_key[(model, t)] for t in tools if (model, t) in by_key)
        row = [model, _n(first.params_before), _n(first.macs_before)]
        for tool in tools:
            r = by_key.get((model, tool))
            prune_s = "–" if r is None or r.prune_s is None else f"{r.prune_s:.2f}"
            row += [_status(r), _n(r and r.params_after), _n(r and r.macs_after), prune_s]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _each(meta: dict, key: str) -> str:
    """The distinct values a setting took over the runs that made the results."""
    values = list(dict.fromkeys(str(run.get(key)) for run in meta["runs"]))
    return " | ".join(values) if len(values) == 1 else "varied by run: " + "; ".join(values)


def _runs_line(runs: list[dict]) -> str:
    if len(runs) == 1:
        return f"run started {runs[0]['started']}"
    return f"merged from {len(runs)} runs started {runs[0]['started']} to {runs[-1]['started']}"


def render(results: list[ZooResult], meta: dict) -> str:
    tools = [t for t in TOOLS if any(r.tool == t for r in results)]
    counters = sorted({n.removeprefix("MACs counted by ") for r in results for n in r.notes
                       if n.startswith("MACs counted by ")})
    out = [
        "# Model zoo: prunekit and Torch-Pruning side by side",
        "",
        f"Generated by `benchmarks/zoo.py` ({_runs_line(meta['runs'])}). Ratio "
        f"{meta['ratio']}: that fraction of the "
        "channels, features or heads of every prunable group is removed, output heads "
        "(classifiers, LM heads) are kept whole by both tools, random weights, no downloads.",
        "",
        f"- Machine: {_each(meta, 'machine')}; torch threads: {_each(meta, 'threads')}; "
        f"1-minute load average at start/end of each run: {_each(meta, 'load')} (a shared "
        "machine: times are indicative).",
        f"- Versions: {_each(meta, 'versions')}.",
        f"- MACs counted by: {', '.join(counters) or '–'}.",
        "- prunekit passes a model when `pk.prune` removes something, `pk.verify` finds the "
        "pruned network equal to the original with the removed units zeroed, and the JSON plan "
        "plus safetensors weights replayed on a freshly built model give the same outputs.",
        "- Torch-Pruning (DepGraph, `BasePruner`, group L2 magnitude importance) passes when "
        "its prune completes, removes something, and the pruned model runs with every output "
        "tensor of the original's shape. It has no functional check and no portable plan. The "
        "adapter (`zoolib.peers`) sets `num_heads`, the custom pruners and the attribute "
        "fix-ups its own examples use; it does not rewrite models' forward code (its timm ViT "
        "example replaces `Attention.forward`), so models that need such a rewrite fail.",
        "- Every output tensor counts, for both tools: a model returning hidden states beside "
        "its logits (T5's `encoder_last_hidden_state`, CLIP's `last_hidden_state`) must keep "
        "their width too, since callers read them.",
        f"- Time limit: {_each(meta, 'time_limit_s')} s per model and tool (a model past it "
        f"fails with `ZooTimeout`); address space capped at {_each(meta, 'memory_limit_gb')} "
        "GiB (a model that needs more fails with a memory error).",
        "- In prunekit's column, *unchecked*: cut groups that `pk.verify` cannot check by "
        "zero-out, cut in the reference too: a softmax or mean over the cut dimension, or a "
        "norm whose formula verify does not know (layer, group and RMS norm modules are "
        "checked, computed over the kept units); *left "
        "whole*: groups the plan did not cut because the forward pass fails when they are cut "
        "(sizes baked into the model's code).",
        "- *prune s*: the pruning calls that returned (trace, choose, cut), summed; *total s*: "
        "everything per model and tool (build, measure, prune, checks, and time spent on "
        "failures), summed.",
        "",
        *[f"- **{TOOL_TITLES[t]} has not been run for this file yet**: "
          f"`benchmarks/zoo.py --tools {t} --merge --json <the JSON of this run>` adds it."
          for t in TOOLS if t not in tools],
        "",
        "## Summary",
        "",
        *summary_table(results, tools),
    ]
    for source in [s for s in SOURCES if any(r.source == s for r in results)]:
        out += ["", f"## {source}", "", *model_table(results, source, tools)]
    return "\n".join(out) + "\n"


def limit_memory(gb: float) -> None:
    """Cap this process's address space (RLIMIT_AS) at ``gb`` GiB, where the OS supports it."""
    if not gb:
        return
    try:
        import resource
    except ImportError:  # not POSIX
        return
    cap = int(gb * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))


def _threads() -> int:
    return torch.get_num_threads()


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    earlier, meta = [], {"ratio": args.ratio, "runs": []}
    if args.json and args.json.exists() and (args.merge or args.render_only):
        earlier, meta = load(args.json)
    if args.render_only:
        if not earlier:
            sys.exit("--render-only needs an existing --json file with results")
        write_text(args.out, render(earlier, meta))
        print(f"wrote {args.out}", file=sys.stderr)
        return
    if meta["ratio"] != args.ratio:
        sys.exit(f"--merge: {args.json} holds ratio {meta['ratio']} results, not {args.ratio}")
    torch.set_num_threads(args.threads)
    limit_memory(args.memory_limit_gb)
    this_run = {
        "started": dt.datetime.now().isoformat(timespec="minutes"), "machine": machine(),
        "threads": _threads(), "versions": _versions(), "load": _load(),
        "time_limit_s": args.time_limit, "memory_limit_gb": args.memory_limit_gb or None,
        "sources": args.sources, "tools": args.tools, "names": args.names,
    }
    meta["runs"].append(this_run)
    t0 = time.perf_counter()
    results = run(args, earlier, meta)
    this_run["load"] = f"{this_run['load']} / {_load()}"
    if args.json:
        save(args.json, results, meta)
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    write_text(args.out, render(results, meta))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
