"""Unstructured one-shot pruning on Fashion-MNIST: every criterion, several sparsities.

Trains LeNet-300-100 and LeNet-5 once (seeded), then for each criterion and each
target sparsity prunes a copy of the baseline one-shot and measures test accuracy
right after the cut and after a short fine-tune with the masks held. Writes a
table and an accuracy-vs-sparsity plot into docs/benchmarks.md (section
"unstructured") with the machine, versions and seed.

    .venv/bin/python benchmarks/unstructured.py            # full run, ~20-30 min on 2 cores
    .venv/bin/python benchmarks/unstructured.py --quick    # smoke run, a minute
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from _common import machine, versions_line, write_section

import prunekit as pk
from prunekit._io import write_json
from prunekit.data import load_dataset, make_loader
from prunekit.measure import classification_metrics
from prunekit.models import build_model
from prunekit.recovery import predict, train

CRITERIA = ["magnitude", "random", "gradient", "taylor", "obd"]
SPARSITIES = [0.5, 0.8, 0.9, 0.95]
# Baseline training and fine-tuning settings per model (SGD, momentum 0.9, cosine).
BASELINE = {"lenet300": dict(epochs=10, lr=0.05), "lenet5": dict(epochs=8, lr=0.05)}
FINETUNE = dict(epochs=1, lr=0.01)


def accuracy(model, loader) -> float:
    y_true, y_pred = predict(model, loader)
    return classification_metrics(y_true, y_pred)["accuracy"]


def run(args) -> list[dict]:
    pk_seed = args.seed
    splits = load_dataset("fashion-mnist", data_dir=args.data_dir, seed=pk_seed)
    train_loader = make_loader(splits.train, batch_size=128, shuffle=True, seed=pk_seed)
    test_loader = make_loader(splits.test, batch_size=1000, shuffle=False)
    calib = [
        b
        for _, b in zip(
            range(8),
            make_loader(splits.train, batch_size=128, shuffle=True, seed=pk_seed + 1),
            strict=False,
        )
    ]
    rows = []
    for model_name in args.models:
        torch.manual_seed(pk_seed)
        base = build_model(
            model_name, input_shape=splits.input_shape, num_classes=splits.num_classes
        )
        t0 = time.perf_counter()
        cfg = dict(BASELINE[model_name])
        if args.quick:
            cfg["epochs"] = 1
        train(
            base, train_loader, seed=pk_seed, quiet=args.quiet, desc=f"{model_name} baseline", **cfg
        )
        dense_acc = accuracy(base, test_loader)
        print(
            f"{model_name}: dense accuracy {dense_acc:.4f} "
            f"({time.perf_counter() - t0:.0f} s to train)",
            flush=True,
        )
        rows.append(
            dict(
                model=model_name,
                criterion="dense",
                scope="-",
                sparsity=0.0,
                measured_sparsity=0.0,
                acc_oneshot=dense_acc,
                acc_finetuned=dense_acc,
            )
        )
        methods = [(c, args.scope) for c in args.criteria] + [
            tuple(m.split(":")) for m in args.extra
        ]
        for criterion, scope in methods:
            for sparsity in args.sparsities:
                rows.append(
                    prune_point(
                        base,
                        model_name,
                        criterion,
                        scope,
                        sparsity,
                        calib,
                        train_loader,
                        test_loader,
                        args,
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def prune_point(
    base, model_name, criterion, scope, sparsity, calib, train_loader, test_loader, args
):
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    pk.sparsify(
        model, sparsity=sparsity, criterion=criterion, scope=scope, data=calib, seed=args.seed
    )
    prune_s = time.perf_counter() - t0
    acc_oneshot = accuracy(model, test_loader)
    ft = dict(FINETUNE, epochs=0 if args.no_finetune else FINETUNE["epochs"])
    train(model, train_loader, seed=args.seed, quiet=True, **ft)
    pk.bake(model)
    return dict(
        model=model_name,
        criterion=criterion,
        scope=scope,
        sparsity=sparsity,
        measured_sparsity=round(pk.sparsity_of(model), 4),
        acc_oneshot=acc_oneshot,
        acc_finetuned=accuracy(model, test_loader),
        prune_seconds=round(prune_s, 2),
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        dense = next(r for r in rows if r["model"] == model and r["criterion"] == "dense")
        ax.axhline(100 * dense["acc_oneshot"], color="k", ls=":", label="dense")
        methods = sorted({(r["criterion"], r["scope"]) for r in rows if r["scope"] != "-"})
        for i, (crit, scope) in enumerate(methods):
            pts = sorted(
                (
                    r
                    for r in rows
                    if r["model"] == model and r["criterion"] == crit and r["scope"] == scope
                ),
                key=lambda r: r["sparsity"],
            )
            crit = f"{crit} ({scope})"
            xs = [100 * r["sparsity"] for r in pts]
            color = f"C{i}"
            ax.plot(
                xs,
                [100 * r["acc_finetuned"] for r in pts],
                "-o",
                color=color,
                label=f"{crit} + fine-tune",
            )
            ax.plot(
                xs,
                [100 * r["acc_oneshot"] for r in pts],
                "--x",
                color=color,
                alpha=0.6,
                label=f"{crit} one-shot",
            )
        ax.set(title=f"{model} on Fashion-MNIST", xlabel="sparsity (%)", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict], args, seconds: float, plot_path: str) -> str:
    lines = [
        "## Unstructured one-shot pruning on Fashion-MNIST",
        "",
        f"Command: `.venv/bin/python benchmarks/unstructured.py {' '.join(sys.argv[1:])}`"
        f" (seed {args.seed}, {seconds / 60:.1f} min).  ",
        f"Machine: {machine()}.  ",
        f"Versions: {versions_line()}.",
        "",
        "Baselines: SGD (momentum 0.9, cosine schedule, batch 128), "
        + ", ".join(
            f"{m} {1 if args.quick else c['epochs']} epochs at lr {c['lr']}"
            for m, c in BASELINE.items()
            if m in args.models
        )
        + f". Fine-tune: {FINETUNE['epochs']} epoch at lr {FINETUNE['lr']} with masks held. "
        "Data-driven criteria use 8 calibration batches of 128 training images "
        "(obd: 256 single-sample gradients).",
        "",
        "| model | criterion | scope | sparsity | one-shot acc. | after fine-tune | Δ vs dense |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    dense = {r["model"]: r["acc_oneshot"] for r in rows if r["criterion"] == "dense"}
    for r in rows:
        delta = 100 * (r["acc_finetuned"] - dense[r["model"]])
        lines.append(
            f"| {r['model']} | {r['criterion']} | {r['scope']} | "
            f"{100 * r['measured_sparsity']:.1f}% | "
            f"{100 * r['acc_oneshot']:.2f} | {100 * r['acc_finetuned']:.2f} | {delta:+.2f} |"
        )
    lines += ["", f"![accuracy vs sparsity]({plot_path})", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    ap.add_argument("--scope", default="layer", help="scope used with every --criteria entry")
    ap.add_argument(
        "--extra",
        nargs="*",
        default=["magnitude:global", "magnitude:lamp"],
        help="further criterion:scope pairs",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 baseline epoch, for a smoke run")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--docs", default="docs/benchmarks.md")
    ap.add_argument("--json", default="docs/data/unstructured.json")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    rows = run(args)
    seconds = time.perf_counter() - t0
    write_json(args.json, {"args": vars(args), "machine": machine(), "rows": rows})
    plot_rel = "img/unstructured_fmnist.png"
    plot(rows, Path(args.docs).parent / plot_rel)
    write_section(args.docs, "unstructured", markdown(rows, args, seconds, plot_rel))
    print(f"wrote {args.docs} and {args.json}")


if __name__ == "__main__":
    main()
