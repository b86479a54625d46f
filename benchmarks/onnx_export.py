"""ONNX export of five structured-pruned networks: agreement with PyTorch and CPU latency.

Each network (random weights: agreement and speed do not need trained ones) is
pruned with ``pk.prune(ratio=0.5)`` (classifier kept), exported with
``pk.export_onnx`` (which refuses a file whose onnxruntime outputs differ from
PyTorch's by more than 1e-4 x the output scale), and timed at batch 1 in PyTorch
(``prunekit.measure.measure_latency``) and in onnxruntime (``onnx_latency``), both
with the same intra-op thread count (``--threads``, 1 by default), in interleaved
rounds. The BERT encoder is also quantized with onnxruntime's dynamic int8
(``quantize_onnx``).

    .venv/bin/python benchmarks/onnx_export.py            # all five, a few minutes
    .venv/bin/python benchmarks/onnx_export.py --models resnet20 bert-minilm --runs 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, versions_line, write_section

import prunekit as pk
from prunekit.export.onnx import export_onnx, onnx_latency, quantize_onnx, run_onnx
from prunekit.measure import count_params, measure_latency


def _resnet20():
    from prunekit.models import build_model

    return (
        build_model("resnet20", input_shape=(1, 28, 28), num_classes=10),
        torch.randn(1, 1, 28, 28),
        ["fc"],
    )


def _torchvision(name: str, head: str):
    def make():
        import torchvision

        return getattr(torchvision.models, name)(), torch.randn(1, 3, 224, 224), [head]

    return make


def _timm_vit():
    import timm

    return (
        timm.create_model("vit_tiny_patch16_224", pretrained=False),
        torch.randn(1, 3, 224, 224),
        ["head"],
    )


def _bert():
    import transformers

    cfg = transformers.BertConfig(  # all-MiniLM-L6-v2's shape
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (1, 128), generator=gen)
    return (
        transformers.BertModel(cfg),
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        [],
    )


MODELS = {
    "resnet20": _resnet20,
    "resnet18": _torchvision("resnet18", "fc"),
    "mobilenet_v2": _torchvision("mobilenet_v2", "classifier.1"),
    "vit_tiny": _timm_vit,
    "bert-minilm": _bert,
}


def one(name: str, args, tmp: Path) -> dict:
    torch.manual_seed(0)
    model, x, heads = MODELS[name]()
    model.eval()
    dense_params = count_params(model)
    # The tracer refuses transformers' attention-mask branch (data-dependent control flow in
    # masking_utils), so the encoder is pruned from input_ids alone; it is exported with both.
    trace_x = {"input_ids": x["input_ids"]} if isinstance(x, dict) else x
    pk.prune(model, trace_x, ratio=0.5, ignore=[model.get_submodule(h) for h in heads])
    t0 = time.perf_counter()
    report = export_onnx(model, x, tmp / f"{name}.onnx")
    row = dict(
        model=name,
        params_dense=dense_params,
        params_pruned=count_params(model),
        export_s=round(time.perf_counter() - t0, 1),
        onnx_bytes=report.size_bytes,
        max_abs_diff=report.max_abs_diff,
        max_rel_diff=report.max_rel_diff,
    )
    files = {"onnxruntime": report.path}
    if name == "bert-minilm":
        row["int8_bytes"] = quantize_onnx(report.path, tmp / f"{name}.int8.onnx")
        files["onnxruntime int8"] = tmp / f"{name}.int8.onnx"
        ref = model(**x).last_hidden_state
        out = torch.from_numpy(run_onnx(files["onnxruntime int8"], x)[0])
        row["int8_max_rel_diff"] = float((out - ref).abs().max() / ref.abs().max())
    row.update(_latency(model, x, files, args))
    return row


def _latency(model, x, files: dict, args) -> dict:
    times: dict = {"torch_ms": [], **{f"{k}_ms": [] for k in files}}
    for _ in range(args.rounds):
        stats = measure_latency(model, x, threads=args.threads, runs=args.runs)
        times["torch_ms"].append(stats.median_ms)
        for key, path in files.items():
            times[f"{key}_ms"].append(onnx_latency(path, x, threads=args.threads, runs=args.runs))
    return {k.replace(" ", "_"): round(statistics.median(v), 3) for k, v in times.items()}


def markdown(rows: list[dict], args, seconds: float, command: str) -> str:
    lines = [
        "## Measured: five pruned networks through ONNX Runtime",
        "",
        f"Command: `.venv/bin/python benchmarks/onnx_export.py {command}` "
        f"(seed 0, random weights, {seconds / 60:.1f} min).  ",
        f"Machine: {machine()} (shared with other jobs while it ran: latencies are indicative).  ",
        f"Versions: {versions_line()}, onnx {_v('onnx')}, onnxruntime {_v('onnxruntime')}, "
        f"onnxscript {_v('onnxscript')}.",
        "",
        "Every network pruned with `pk.prune(model, x, ratio=0.5)` (classifier kept), exported "
        "with `pk.export_onnx` (opset 18, dynamic batch), outputs compared with PyTorch's on the "
        f"example input. Latency: batch 1, {args.threads} intra-op thread(s) in both runtimes, "
        "median of "
        f"{args.rounds} interleaved rounds of {args.runs} runs. Inputs: 1x28x28 for ResNet-20, "
        "3x224x224 for the ImageNet networks, 128 tokens for BERT.",
        "",
        "| network | params dense -> pruned | ONNX MB | max abs diff | max diff / output scale | "
        "PyTorch ms | ORT ms | ORT speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_dense'] / 1e6:.2f}M -> {r['params_pruned'] / 1e6:.2f}M | "
            f"{r['onnx_bytes'] / 1e6:.2f} | {r['max_abs_diff']:.2e} | {r['max_rel_diff']:.2e} | "
            f"{r['torch_ms']:.2f} | {r['onnxruntime_ms']:.2f} | "
            f"{r['torch_ms'] / r['onnxruntime_ms']:.2f}x |"
        )
    for r in rows:
        if "int8_bytes" in r:
            lines += [
                "",
                f"{r['model']} through onnxruntime dynamic int8 "
                "(MatMul/Gemm weights, per channel): "
                f"{r['int8_bytes'] / 1e6:.2f} MB (float: {r['onnx_bytes'] / 1e6:.2f} MB), "
                f"{r['onnxruntime_int8_ms']:.2f} ms vs {r['onnxruntime_ms']:.2f} ms float ORT and "
                f"{r['torch_ms']:.2f} ms PyTorch; max difference to PyTorch's float output "
                f"{r['int8_max_rel_diff']:.3f} x the output scale.",
            ]
    return "\n".join(lines) + "\n"


def _v(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, both runtimes")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument(
        "--from-log",
        nargs="+",
        default=None,
        help="write the docs from the JSON rows an earlier run printed (its stdout saved); "
        "give that run's --runs / --rounds / --minutes and its command with --command",
    )
    p.add_argument("--command", default=None)
    p.add_argument("--minutes", type=float, default=0.0)
    args = p.parse_args()
    if args.from_log:
        lines = [ln for f in args.from_log for ln in Path(f).read_text().splitlines()]
        rows = [json.loads(ln) for ln in lines if ln.startswith("{")]
        body = markdown(rows, args, 60 * args.minutes, args.command or "")
        write_section("docs/deploy.md", "onnx", body, title="# Deployment\n")
        return
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(one(name, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    if not args.no_docs:
        write_section(
            "docs/deploy.md",
            "onnx",
            markdown(rows, args, time.perf_counter() - t0, " ".join(sys.argv[1:])),
            title="# Deployment\n",
        )


if __name__ == "__main__":
    main()
