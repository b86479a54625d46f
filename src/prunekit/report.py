"""Run reports: a Markdown page with before/after and per-layer tables, and a sparsity chart.

Everything here is a pure function of a run's numbers: the ``metrics`` dict that
``prunekit run`` writes to ``metrics.json`` (``{"dense": {...}, "pruned": {...}}``)
and a per-layer table, a list of rows such as::

    {"name": "fc1.weight", "shape": [300, 64], "params": 19200,
     "nonzero_params": 1920, "sparsity": 0.9}

Example:
    >>> text = render_report(metrics, layers, title="quickstart", seed=0,
    ...                      versions=versions(), command="prunekit run")
    >>> plot_layer_sparsity(layers, "runs/quickstart/sparsity.png")
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._io import write_bytes

__all__ = ["LAYER_KEYS", "plot_layer_sparsity", "render_report"]

LAYER_KEYS = ("name", "shape", "params", "nonzero_params", "sparsity")
CHART_NAME = "sparsity.png"

Fmt = Callable[[Any], str]


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _count(value: float) -> str:
    return f"{int(value):,}"


def _ms(value: float) -> str:
    return f"{value:.3f} ms"


def _bytes(value: float) -> str:
    return f"{int(value):,} B ({value / 1024:.1f} KiB)"


def _points(dense: float, pruned: float) -> str:
    """Difference of two fractions in percentage points, e.g. ``-0.44 pt``."""
    return f"{100 * (pruned - dense):+.2f} pt"


def _times(dense: float, pruned: float) -> str:
    """Ratio pruned / dense, e.g. ``0.10x``; a dash where dense is zero."""
    return f"{pruned / dense:.2f}x" if dense else "-"


# (metrics key, row label, value format, change format): the before/after table.
# Fractions compare in points, costs as a ratio.
_ROWS: list[tuple[str, str, Fmt, Callable[[float, float], str]]] = [
    ("accuracy", "accuracy", _pct, _points),
    ("f1_macro", "F1 (macro)", _pct, _points),
    ("precision_macro", "precision (macro)", _pct, _points),
    ("recall_macro", "recall (macro)", _pct, _points),
    ("sparsity", "sparsity (prunable weights)", _pct, _points),
    ("params", "parameters", _count, _times),
    ("nonzero_params", "non-zero parameters", _count, _times),
    ("macs", "MACs (dense)", _count, _times),
    ("effective_macs", "effective MACs (non-zero weights)", _count, _times),
    ("latency_ms", "latency, batch 1", _ms, _times),
    ("size_bytes", "size on disk, dense encoding", _bytes, _times),
    ("sparse_size_bytes", "size on disk, sparse encoding", _bytes, _times),
]


def render_report(
    metrics: Mapping[str, Mapping[str, Any]],
    layers: Sequence[Mapping[str, Any]],
    *,
    title: str,
    seed: int,
    versions: Mapping[str, str],
    command: str,
    settings: Mapping[str, Any] | None = None,
    chart: str | None = CHART_NAME,
) -> str:
    """The Markdown text of a run's report.

    Args:
        metrics: ``{"dense": {...}, "pruned": {...}}`` as in ``metrics.json``; rows
            whose key is missing on either side are left out.
        layers: the pruned model's per-layer rows (keys :data:`LAYER_KEYS`).
        title: the run's name (the recipe name).
        seed: the run's seed.
        versions: library versions (``prunekit._utils.versions()``).
        command: the command line that reproduces the run.
        settings: what was run, shown as a list (data, model, criterion, ...).
        chart: file name of the per-layer sparsity chart beside the report, or None.

    Returns:
        Markdown: summary, before/after table, per-layer table, chart, how to reproduce.
    """
    dense, pruned = metrics["dense"], metrics["pruned"]
    parts = [f"# prunekit run: {title}", _summary(dense, pruned)]
    if settings:
        parts.append("\n".join(f"- {key}: {value}" for key, value in settings.items()))
    parts += ["## Before and after", _before_after(dense, pruned)]
    parts += ["## Per-layer sparsity", _layer_table(layers)]
    if chart:
        parts.append(f"![per-layer sparsity]({chart})")
    parts += ["## Reproduce", f"Seed {seed}.\n\n```\n{command}\n```", _versions(versions)]
    return "\n\n".join(parts) + "\n"


def _summary(dense: Mapping[str, Any], pruned: Mapping[str, Any]) -> str:
    """One sentence: sparsity, accuracy before -> after, size gain."""
    text = (
        f"Pruned to {_pct(pruned['sparsity'])} sparsity: accuracy {_pct(dense['accuracy'])} "
        f"-> {_pct(pruned['accuracy'])} ({_points(dense['accuracy'], pruned['accuracy'])})"
    )
    if "size_bytes" in dense and "sparse_size_bytes" in pruned and pruned["sparse_size_bytes"]:
        gain = dense["size_bytes"] / pruned["sparse_size_bytes"]
        text += f", {gain:.1f}x smaller on disk in the sparse encoding"
    return text + "."


def _before_after(dense: Mapping[str, Any], pruned: Mapping[str, Any]) -> str:
    """The before/after table, one row per metric both sides have."""
    rows = [("metric", "dense", "pruned", "pruned vs dense"), ("---", "---:", "---:", "---:")]
    for key, label, fmt, change in _rows_for(dense):
        if key in dense and key in pruned:
            rows.append((label, fmt(dense[key]), fmt(pruned[key]), change(dense[key], pruned[key])))
    return _table(rows)


def _rows_for(
    dense: Mapping[str, Any],
) -> list[tuple[str, str, Fmt, Callable[[float, float], str]]]:
    """The fixed rows, plus one latency row per larger batch size (``latency_ms_batch64``)."""
    batches = sorted(
        int(key.removeprefix("latency_ms_batch"))
        for key in dense
        if key.startswith("latency_ms_batch") and key.removeprefix("latency_ms_batch").isdigit()
    )
    extra = [(f"latency_ms_batch{b}", f"latency, batch {b}", _ms, _times) for b in batches]
    at = next(i for i, row in enumerate(_ROWS) if row[0] == "latency_ms") + 1
    return [*_ROWS[:at], *extra, *_ROWS[at:]]


def _layer_table(layers: Sequence[Mapping[str, Any]]) -> str:
    """Per-layer table: layer, shape, params, non-zeros, sparsity."""
    rows = [
        ("layer", "shape", "params", "non-zeros", "sparsity"),
        ("---", "---", "---:", "---:", "---:"),
    ]
    for layer in layers:
        shape = " x ".join(str(d) for d in layer["shape"])
        rows.append(
            (
                f"`{layer['name']}`",
                shape,
                _count(layer["params"]),
                _count(layer["nonzero_params"]),
                _pct(layer["sparsity"]),
            )
        )
    return _table(rows)


def _versions(versions: Mapping[str, str]) -> str:
    """Library versions as one line of ``name version`` pairs."""
    return "Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + "."


def _table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table from rows of cells (the second row is the alignment row)."""
    return "\n".join(
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
    )


def plot_layer_sparsity(
    layers: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    target: float | None = None,
    title: str = "Per-layer sparsity",
) -> None:
    """Write a bar chart (PNG) of each layer's sparsity, atomically.

    Args:
        layers: per-layer rows (keys :data:`LAYER_KEYS`); one bar per row.
        path: where the PNG goes.
        target: a sparsity to draw as a dashed line (e.g. the overall sparsity), or None.
        title: the chart's title.
    """
    from matplotlib.figure import Figure  # optional heavy import, Agg canvas, no pyplot state

    names = [str(layer["name"]) for layer in layers]
    values = [100 * float(layer["sparsity"]) for layer in layers]
    fig = Figure(figsize=(max(5.0, 0.6 * len(names) + 2.0), 3.6), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), values, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.0f}%" for v in values], fontsize=8)
    if target is not None:
        ax.axhline(100 * target, color="#c44e52", linestyle="--", linewidth=1)
        title = f"{title} (overall {100 * target:.1f}%, dashed)"
    ax.set_xticks(
        range(len(names)),
        names,
        rotation=45 if len(names) > 4 else 0,
        ha="right" if len(names) > 4 else "center",
        fontsize=8,
    )
    ax.set_ylim(0, 105)
    ax.set_ylabel("sparsity (%)")
    ax.set_title(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_bytes(path, buffer.getvalue())
