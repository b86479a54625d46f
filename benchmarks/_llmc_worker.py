"""llm-compressor's one-shot Wanda / SparseGPT on a GGUF causal LM, for the side-by-side table.

Runs in llm-compressor's own virtual environment (it pins an older torch and
transformers than prunekit's), started by ``llm_compressor_side_by_side.py`` with
that environment's python; it imports nothing from prunekit. It reads the token ids
the parent wrote (the same calibration and held-out tensors prunekit's rows use),
prunes a fresh copy of the dense model per job with ``llmcompressor.oneshot`` and
prints one ``ROW {json}`` line per job: perplexity (the same formula as
``prunekit.oneshot.text.perplexity``) and the wall and CPU time of the ``oneshot`` call.

    python _llmc_worker.py --gguf MODEL.gguf --ids ids.pt --jobs wanda:0,sparsegpt:0
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--ids", required=True, help="torch file: {'calib': {seed: ids}, 'eval': ids}")
    p.add_argument("--jobs", required=True, help="comma list of method:seed")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = tempfile.mkdtemp(prefix="llmc-smollm2-")
    try:
        _run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(args, folder: str) -> None:
    data = torch.load(args.ids, weights_only=True)
    dense, tok, load_s = _load(Path(args.gguf), folder)
    print("ROW " + json.dumps(dict(tool="llm-compressor", run="dense", load_s=round(load_s, 1),
                                   ppl=round(perplexity(dense, data["eval"]), 3),
                                   versions=_versions())), flush=True)
    for job in args.jobs.split(","):
        method, seed = job.split(":")
        row = _prune(dense, tok, method, data["calib"][int(seed)], args.sparsity)
        row.update(seed=int(seed), ppl=round(perplexity(row.pop("model"), data["eval"]), 3))
        print("ROW " + json.dumps(row), flush=True)


def _load(path: Path, folder: str):
    """The GGUF model dequantized, saved as a float32 checkpoint in ``folder`` and loaded
    back from there: llm-compressor reads the model's config from its folder and refuses
    a model marked as GGUF-quantized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), tok, time.perf_counter() - t0


def _modifier(method: str, sparsity: float):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    # every Linear of the decoder layers; embeddings and the (tied) LM head stay dense,
    # as in prunekit's rows; SparseGPT with block 128 and dampening 0.01 (prunekit's too)
    common = dict(sparsity=sparsity, mask_structure="0:0", targets=[r"re:model\.layers\.\d+$"])
    if method == "sparsegpt":
        return SparseGPTModifier(block_size=128, dampening_frac=0.01, **common)
    if method == "wanda":
        return WandaPruningModifier(**common)
    raise SystemExit(f"unknown method {method!r}; valid: sparsegpt, wanda")


def _prune(dense, tok, method: str, ids: torch.Tensor, sparsity: float) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.core import reset_session

    reset_session()
    model = copy.deepcopy(dense)
    samples, seq_len = ids.shape
    ds = Dataset.from_dict({"input_ids": ids.tolist(),
                            "attention_mask": torch.ones_like(ids).tolist()})
    loadavg = round(os.getloadavg()[0], 1)
    t0, c0 = time.perf_counter(), time.process_time()
    model = oneshot(model=model, tokenizer=tok, dataset=ds, recipe=_modifier(method, sparsity),
                    num_calibration_samples=samples, max_seq_length=seq_len,
                    shuffle_calibration_samples=False, batch_size=1)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    linears = [m.weight for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n]
    zeros = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    return dict(tool="llm-compressor", run=f"{method}-{round(sparsity * 100)}", model=model,
                prune_s=round(seconds, 1), cpu_s=round(cpu, 1), sparsity=round(zeros, 4),
                loadavg=loadavg)


def perplexity(model, ids: torch.Tensor, *, batch_size: int = 2) -> float:
    """exp of the mean next-token cross-entropy over ``ids`` (samples, seq_len)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in ids.split(batch_size):
            logits = model(batch).logits[:, :-1].float()  # (B, T-1, vocab)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           batch[:, 1:].reshape(-1), reduction="sum"))
            count += batch[:, 1:].numel()
    return math.exp(total / count)


def _versions() -> dict:
    return {k: version(k) for k in ("llmcompressor", "compressed-tensors", "torch",
                                    "transformers")}


if __name__ == "__main__":
    main()
