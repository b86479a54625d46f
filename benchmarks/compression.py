"""Compression table: bytes and accuracy after prune, after int8, after Deep Compression.

For each model and seed: train the dense network on Fashion-MNIST, prune it
(one-shot magnitude with LAMP allocation, then fine-tune with the masks held),
then measure three compressed forms of the *same* pruned network:

- ``pruned``: prunekit's sparse safetensors (bitmask + float32 non-zeros);
- ``pruned + int8``: ``pk.quantize`` (dynamic int8 for LeNet-300-100's Linear layers,
  static int8 for ResNet-20's convolutions), stored as a ``torch.save`` checkpoint and,
  with its int8 weights unpacked, in the sparse encoding;
- ``pruned + shared + Huffman``: k-means weight sharing, centroid fine-tuning,
  then ``save_compressed`` (Huffman-coded cluster indices and gaps); the accuracy is
  that of the model *decoded from the file*, after checking that every decoded tensor
  is bit-identical to the shared model's.

Every byte count is the size of a file written to disk. Latency: median of
interleaved CPU timings (batch 1 and 64) of the dense, pruned and int8 models.

    .venv/bin/python benchmarks/compression.py                          # LeNet-300-100, seeds 0 1 2
    .venv/bin/python benchmarks/compression.py --models resnet20 --seeds 0 --train-samples 12000
    .venv/bin/python benchmarks/compression.py --quick                  # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    TensorBatches,
    interleaved_medians,
    machine,
    versions_line,
    write_section,
)

import prunekit as pk
from prunekit._io import save_safetensors, write_json
from prunekit.compress import (
    ShareConfig,
    StaticInt8Config,
    bake_sharing,
    baked_state_dict,
    int8_state_dict,
    load_compressed,
    quantize,
    save_compressed,
    save_quantized,
    share_weights,
)
from prunekit.data import load_dataset
from prunekit.measure import save_sparse
from prunekit.models import build_model
from prunekit.recovery import train

# Per model: baseline training, pruning, fine-tuning, sharing and int8 settings.
SETTINGS = {
    "lenet300": dict(
        epochs=10,
        lr=0.05,
        sparsity=0.92,
        ft_epochs=3,
        ft_lr=0.02,
        bits=5,
        conv_bits=8,
        share_epochs=1,
        share_lr=0.005,
        int8="dynamic",
    ),
    "resnet20": dict(
        epochs=5,
        lr=0.1,
        sparsity=0.8,
        ft_epochs=2,
        ft_lr=0.02,
        bits=5,
        conv_bits=5,
        share_epochs=1,
        share_lr=0.002,
        int8="static",
    ),
}
TITLE = "# Compression\n"
# Deep Compression (Han et al., ICLR 2016), Table 1: LeNet-300-100 on MNIST.
PUBLISHED = {
    "lenet300": "40x on MNIST (1070 KB -> 27 KB, 92% of the weights pruned, 6-bit shared "
    "weights), error 1.64% -> 1.58%, i.e. no loss; Fashion-MNIST is a harder task, so the "
    "accuracy columns are not comparable, only the ratio and the loss"
}


def accuracy(model: torch.nn.Module, loader) -> float:
    right = total = 0
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return right / total


def file_size(path: Path) -> int:
    return path.stat().st_size


def one_seed(name: str, seed: int, data, args, tmp: Path) -> list[dict]:
    cfg = dict(SETTINGS[name])
    if args.quick:
        cfg.update(epochs=1, ft_epochs=1)
    train_set, test_loader, calib, example = data
    train_loader = TensorBatches(train_set, batch_size=128, seed=seed)  # seeded data order
    torch.manual_seed(seed)
    model = build_model(name, input_shape=(1, 28, 28), num_classes=10)
    opt = dict(seed=seed, quiet=args.quiet, momentum=0.9, weight_decay=5e-4)
    train(model, train_loader, epochs=cfg["epochs"], lr=cfg["lr"], desc=f"{name} dense", **opt)
    rows = [stage_row(name, seed, "dense", model, test_loader, tmp / "dense.safetensors")]

    pk.sparsify(model, sparsity=cfg["sparsity"], criterion="magnitude", scope="lamp")
    train(model, train_loader, epochs=cfg["ft_epochs"], lr=cfg["ft_lr"], desc="fine-tune", **opt)
    pk.bake(model)
    rows.append(stage_row(name, seed, "pruned", model, test_loader, tmp / "pruned.sparse"))

    if cfg["int8"] == "static":
        qmodel = quantize(model, StaticInt8Config(), example_inputs=example, calibration=calib)
    else:
        qmodel = quantize(model, "dynamic")
    rows.append(int8_row(name, seed, qmodel, test_loader, tmp))

    shared = copy.deepcopy(model)
    share_weights(shared, ShareConfig(bits=cfg["bits"], conv_bits=cfg["conv_bits"]))
    train(
        shared,
        train_loader,
        epochs=cfg["share_epochs"],
        lr=cfg["share_lr"],
        desc="centroids",
        **opt,
    )
    rows.append(deep_row(name, seed, shared, test_loader, tmp / "model.pkdc", cfg))

    lat = latency({"dense": rows[0]["_model"], "pruned": model, "int8": qmodel}, example, args)
    for row in rows:
        row.update(lat.get(row.pop("_key", ""), {}))
        row.pop("_model", None)
        row["ratio"] = round(rows[0]["bytes"] / row["bytes"], 2)
    return rows


def stage_row(name, seed, stage, model, loader, path: Path) -> dict:
    if stage == "dense":
        save_safetensors(path, model.state_dict())
        kept = copy.deepcopy(model)
    else:
        save_sparse(model.state_dict(), path)
        kept = None
    return dict(
        model=name,
        seed=seed,
        stage=stage,
        accuracy=accuracy(model, loader),
        bytes=file_size(path),
        file=_kind(stage),
        sparsity=round(pk.sparsity_of(model), 4),
        _key=stage,
        _model=kept,
    )


def int8_row(name, seed, qmodel, loader, tmp: Path) -> dict:
    ckpt = save_quantized(qmodel, tmp / "int8.pt")
    save_sparse(int8_state_dict(qmodel), tmp / "int8.sparse")
    return dict(
        model=name,
        seed=seed,
        stage="pruned + int8",
        accuracy=accuracy(qmodel, loader),
        bytes=file_size(tmp / "int8.sparse"),
        checkpoint_bytes=ckpt,
        file="int8 weights in the sparse encoding",
        _key="int8",
    )


def deep_row(name, seed, shared, loader, path: Path, cfg: dict) -> dict:
    nbytes = save_compressed(shared, path)
    expected = baked_state_dict(shared)
    decoded = load_compressed(path)
    identical = list(decoded) == list(expected) and all(
        torch.equal(_bits(decoded[k]), _bits(expected[k])) for k in expected
    )
    if not identical:
        raise SystemExit("decoded tensors differ from the shared model's: the decoder is broken")
    fresh = bake_sharing(copy.deepcopy(shared))
    fresh.load_state_dict(decoded)
    return dict(
        model=name,
        seed=seed,
        stage="pruned + shared + Huffman",
        accuracy=accuracy(fresh, loader),
        bytes=nbytes,
        bit_identical=identical,
        file=f"Deep-Compression file ({cfg['bits']}-bit fc, {cfg['conv_bits']}-bit conv)",
        _key="",
    )


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _kind(stage: str) -> str:
    return {"dense": "float32 safetensors", "pruned": "sparse safetensors (bitmask + values)"}[
        stage
    ]


def latency(nets: dict, example: torch.Tensor, args) -> dict:
    out: dict = {}
    for batch in (1, 64):
        x = example[:1].repeat(batch, 1, 1, 1)
        med = interleaved_medians(nets, x, threads=args.threads, warmup=3, runs=args.runs, rounds=3)
        for key, values in med.items():
            out.setdefault(key, {})[f"latency_ms_b{batch}"] = round(statistics.median(values), 3)
    return out


def load(args, name: str):
    splits = load_dataset("fashion-mnist", data_dir=args.data_dir, seed=0)
    train_set = splits.train
    if args.train_samples and name == "resnet20":
        x, y = train_set.tensors
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[
            : args.train_samples
        ]
        train_set = torch.utils.data.TensorDataset(x[keep], y[keep])
    if args.quick:
        x, y = train_set.tensors
        train_set = torch.utils.data.TensorDataset(x[:4000], y[:4000])
    test_loader = TensorBatches(splits.test, batch_size=1000, seed=0, shuffle=False)
    batches = TensorBatches(train_set, batch_size=128, seed=1)
    calib = [x for _, (x, _) in zip(range(8), batches, strict=False)]
    return train_set, test_loader, calib, splits.test.tensors[0][:1]


def summary(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted(
        {(r["model"], r["stage"]) for r in rows},
        key=lambda k: [r["stage"] for r in rows].index(k[1]),
    )
    for model in dict.fromkeys(r["model"] for r in rows):
        for _, stage in (k for k in keys if k[0] == model):
            pts = [r for r in rows if r["model"] == model and r["stage"] == stage]
            acc = [100 * r["accuracy"] for r in pts]
            out.append(
                dict(
                    model=model,
                    stage=stage,
                    file=pts[0]["file"],
                    seeds=len(pts),
                    acc_mean=statistics.mean(acc),
                    acc_std=statistics.pstdev(acc),
                    bytes=statistics.mean(r["bytes"] for r in pts),
                    ratio=statistics.mean(r["ratio"] for r in pts),
                    lat1=_mean_or_none(pts, "latency_ms_b1"),
                    lat64=_mean_or_none(pts, "latency_ms_b64"),
                )
            )
    return out


def _mean_or_none(pts, key):
    vals = [r[key] for r in pts if key in r]
    return statistics.mean(vals) if vals else None


def markdown(rows: list[dict], runs: list[dict]) -> str:
    models = {r["model"] for r in rows}
    lines = [
        "## Measured: prune, int8, Deep Compression on Fashion-MNIST",
        "",
        *(
            f"Command: `.venv/bin/python benchmarks/compression.py {_public(run['command'])}` "
            f"({run['seconds'] / 60:.0f} min).  "
            for run in runs
        ),
        f"Machine: {machine()} (shared with other jobs while it ran: latencies are indicative).  ",
        f"Versions: {versions_line()}.",
        "",
        "Settings per model: "
        + "; ".join(
            f"{m}: dense {c['epochs']} epochs SGD lr {c['lr']} "
            "(momentum 0.9, wd 5e-4, cosine, batch 128), "
            f"magnitude pruning to {c['sparsity']:.0%} with LAMP allocation, "
            f"{c['ft_epochs']} epochs fine-tune at lr {c['ft_lr']}, {c['int8']} int8, "
            f"sharing {c['bits']}-bit Linear / {c['conv_bits']}-bit conv with linear centroid "
            f"init, {c['share_epochs']} epoch of centroid fine-tuning at lr {c['share_lr']}"
            for m, c in SETTINGS.items()
            if m in models
        )
        + ".",
        "",
        "Bytes are file sizes on disk; ratio = dense file / this file. Accuracy on the 10,000 test "
        "images, mean ± std over the seeds. The Deep-Compression row's accuracy is measured on the "
        "model decoded from the file (decoded tensors checked bit-identical to the shared "
        "model's in every run). Latency: median over 3 interleaved rounds (dense, pruned, int8) "
        f"of {runs[0].get('runs', 20)} timed runs each, {runs[0].get('threads', 1)} intra-op "
        "thread(s); the pruned network is the dense one with zeros, so it is no faster.",
        "",
        "| model | stage | stored as | accuracy (%) | bytes | ratio "
        "| CPU ms, batch 1 | CPU ms, batch 64 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary(rows):
        lat = [f"{v:.3f}" if v is not None else "" for v in (s["lat1"], s["lat64"])]
        lines.append(
            f"| {s['model']} | {s['stage']} | {s['file']} "
            f"| {s['acc_mean']:.2f} ± {s['acc_std']:.2f} | "
            f"{s['bytes']:,.0f} | {s['ratio']:.1f}x | {lat[0]} | {lat[1]} |"
        )
    for model in dict.fromkeys(r["model"] for r in rows):
        ckpt = [
            r["checkpoint_bytes"] for r in rows if r["model"] == model and "checkpoint_bytes" in r
        ]
        if ckpt:
            lines += [
                "",
                f"{model}: the int8 model's own `save_quantized` checkpoint (torch.save of packed "
                f"int8 weights, pruned zeros included) is {statistics.mean(ckpt):,.0f} bytes; the "
                "table's int8 row stores the same int8 weights in the sparse encoding.",
            ]
    lines += ["", *aims(rows)]
    return "\n".join(lines) + "\n"


def _public(command: str) -> str:
    """The command without the output-only flags (--json FILE, --no-docs)."""
    words, out = command.split(), []
    skip = False
    for w in words:
        if skip or w == "--no-docs":
            skip = False
            continue
        skip = w == "--json"
        if not skip:
            out.append(w)
    return " ".join(out)


def aims(rows: list[dict]) -> list[str]:
    out = ["### Against Deep Compression", ""]
    for s in summary(rows):
        if s["stage"] != "pruned + shared + Huffman":
            continue
        dense = next(d for d in summary(rows) if d["model"] == s["model"] and d["stage"] == "dense")
        drop = dense["acc_mean"] - s["acc_mean"]
        met = s["ratio"] >= 40 and drop <= 1.0
        line = (
            f"- {s['model']} ({s['seeds']} seed(s)): {s['ratio']:.1f}x smaller than the dense "
            f"file, accuracy {s['acc_mean']:.2f}% vs dense {dense['acc_mean']:.2f}% "
            f"({-drop:+.2f} points)."
        )
        if s["model"] in PUBLISHED:
            line += (
                f" Published: {PUBLISHED[s['model']]}. Aim (>= 40x within 1 point): "
                f"{'met' if met else '**not met**'}."
            )
        else:
            line += " Deep Compression reports no figure for it; no aim was set."
        out.append(line)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet300"], choices=sorted(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help="train ResNet-20 on a seeded subset of this many images",
    )
    p.add_argument("--runs", type=int, default=20)
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (training and timing)"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        help="write the docs section from earlier --json files instead of running",
    )
    args = p.parse_args()
    if args.from_json:
        runs = [json.loads(Path(f).read_text()) for f in args.from_json]
        rows = [r for run in runs for r in run["rows"]]
        write_section("docs/compress.md", "compression", markdown(rows, runs), title=TITLE)
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            data = load(args, name)
            for seed in args.seeds:
                for row in one_seed(name, seed, data, args, Path(tmp)):
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    run = {
        "command": " ".join(sys.argv[1:]),
        "seconds": time.perf_counter() - t0,
        "threads": args.threads,
        "runs": args.runs,
        "rows": rows,
    }
    if args.json:
        write_json(args.json, run)
    if not args.no_docs:
        write_section("docs/compress.md", "compression", markdown(rows, [run]), title=TITLE)


if __name__ == "__main__":
    main()
