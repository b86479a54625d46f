"""The report of a run on your own model and data: a Markdown page and a per-layer chart."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._io import write_bytes
from ..measure.tasks import get_task
from .recipe import Recipe

__all__ = ["plot_layers", "render_markdown"]

# metric key -> (label, kind); kind formats the value.
_ROWS = (
    ("accuracy", "accuracy", "pct"),
    ("f1_macro", "F1 (macro)", "pct"),
    ("agreement", "agreement with dense top-1", "pct"),
    ("top5_agreement", "dense top-1 in pruned top-5", "pct"),
    ("kl", "KL(dense || pruned)", "num"),
    ("cosine_mean", "cosine to dense (mean)", "num"),
    ("cosine_min", "cosine to dense (min)", "num"),
    ("perplexity", "perplexity", "num"),
    ("params", "parameters", "int"),
    ("nonzero_params", "non-zero parameters", "int"),
    ("sparsity", "sparsity (zero weights)", "pct"),
    ("macs", "MACs per example", "int"),
    ("latency_ms", "CPU latency, batch 1 (ms)", "num"),
    ("size_bytes", "size (dense safetensors)", "kib"),
    ("sparse_size_bytes", "size (sparse encoding)", "kib"),
)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": lambda v: f"{100 * v:.2f}%", "num": lambda v: f"{v:.4g}",
            "int": lambda v: f"{int(v):,}", "kib": lambda v: f"{v / 1024:,.1f} KiB"}[kind](value)


def _table(rows: Sequence[Sequence[str]]) -> str:
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)


def metric_rows(dense: Mapping[str, Any], pruned: Mapping[str, Any]) -> list[list[str]]:
    """Rows ``[label, dense, pruned]`` of every metric both sides have."""
    return [[label, _fmt(dense.get(key), kind), _fmt(pruned.get(key), kind)]
            for key, label, kind in _ROWS if key in dense or key in pruned]


def render_markdown(metrics: Mapping[str, Any], layers: Sequence[Mapping[str, Any]],
                    recipe: Recipe, record: Mapping[str, str], *, chart: str) -> str:
    """``report.md``: what ran, dense vs pruned on the task and in cost, the chart, layers."""
    run, cut = metrics["run"], metrics["run"]["cut"]
    key, value = next(iter(cut["amount"].items()))
    lines = [f"# {recipe.name}", "",
             f"- model: {run['model']}", f"- data: {run['data']}", f"- task: {run['task']}",
             f"- cut: {cut['kind']}, {key} {value:g}, criterion {recipe.prune.criterion}, "
             f"scope {recipe.prune.scope}", f"- fine-tuning: {run['finetune']}",
             f"- seed: {recipe.seed}", ""]
    if cut["kind"] == "channels":
        lines += [f"{cut['groups_cut']} groups cut ({cut['units_removed']} units); every cut "
                  f"verified against the dense model: {'yes' if cut['verify']['ok'] else 'NO'} "
                  f"(max abs difference {cut['verify']['max_abs_diff']:.2e}).", ""]
    lines += ["## Dense vs pruned", "",
              _table([["", "dense", "pruned"], ["---", "---:", "---:"],
                      *metric_rows(metrics["dense"], metrics["pruned"])]), "",
              f"![weights kept per layer]({chart})", "", "## Layers", "",
              _table([["layer", "params", "params after", "non-zero after", "kept"],
                      ["---", "---:", "---:", "---:", "---:"],
                      *[[r["name"], f"{r['params']:,}", f"{r['params_after']:,}",
                         f"{r['nonzero_params']:,}", f"{100 * r['kept']:.1f}%"]
                        for r in layers]]), "",
              "## Versions", "", ", ".join(f"{k} {v}" for k, v in record.items()), ""]
    return "\n".join(lines)


def plot_layers(layers: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                title: str) -> None:
    """Bar chart (PNG, written atomically) of the fraction of each layer's weights kept:
    non-zero weights after the cut over the dense layer's weights, for masks and channels
    alike."""
    from matplotlib.figure import Figure  # optional heavy import, Agg canvas, no pyplot state

    names = [str(r["name"]) for r in layers]
    kept = [100 * float(r["kept"]) for r in layers]
    fig = Figure(figsize=(max(5.0, 0.18 * len(names) + 2.5), 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(names)), kept, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6 if len(names) > 20 else 8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("weights kept (% of dense)")
    ax.set_title(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes(path, buffer.getvalue())


def summary_lines(metrics: Mapping[str, Any], out: Any, seconds: float) -> str:
    """The command line's before/after lines of a run on your own model: the task's
    headline metric, parameters, MACs and latency; then where the outputs are."""
    task = get_task(metrics["run"]["task"])
    kind = {k: f for k, _, f in _ROWS}.get(task.headline, "num")
    lines = []
    for side in ("dense", "pruned"):
        m = metrics[side]
        lines.append(f"{side:>6}: {task.headline} {_fmt(m.get(task.headline), kind)}  "
                     f"params {m['params']:,}  non-zero {m['nonzero_params']:,}  "
                     f"MACs {m['macs']:,}  latency {m['latency_ms']:.2f} ms")
    lines.append(f"outputs in {out}/ (report.md, report.html, metrics.json) after {seconds:.1f} s")
    return "\n".join(lines)
