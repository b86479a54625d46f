"""Run reports: a Markdown page with before/after and per-layer tables, and charts.

Everything here is a pure function of a run's numbers: the ``metrics`` dict that
``prunekit run`` writes to ``metrics.json`` (``{"dense": {...}, "pruned": {...}}``,
with ``"run"``: what the schedule did, and ``"points"`` for a sweep) and a per-layer
table, a list of rows such as::

    {"name": "fc1.weight", "shape": [300, 64], "params": 19200,
     "nonzero_params": 1920, "sparsity": 0.9}

Charts: per-layer sparsity; the schedule's value over the steps (or rounds) that were
run with the sparsity measured at the cuts; for sweeps, accuracy vs sparsity and
accuracy vs MACs. matplotlib is imported inside the plotting functions (Agg canvas).

Example:
    >>> text = render_report(metrics, layers, title="quickstart", seed=0,
    ...                      versions=versions(), command="prunekit run")
    >>> plot_layer_sparsity(layers, "runs/quickstart/sparsity.png")
    >>> plot_schedule(metrics["run"]["schedule"], "runs/quickstart/schedule.png")
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._io import write_bytes
from ..schedules import make_schedule

__all__ = [
    "CHART_NAME",
    "LAYER_KEYS",
    "SCHEDULE_CHART",
    "SWEEP_CHARTS",
    "metric_rows",
    "plot_layer_sparsity",
    "plot_schedule",
    "plot_sweep",
    "render_report",
]

LAYER_KEYS = ("name", "shape", "params", "nonzero_params", "sparsity")
CHART_NAME = "sparsity.png"
SCHEDULE_CHART = "schedule.png"
# x axis -> file name of the sweep charts.
SWEEP_CHARTS = {"sparsity": "accuracy_vs_sparsity.png", "macs": "accuracy_vs_macs.png"}

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


def _num(value: float) -> str:
    return f"{value:.4g}"


def _diff(dense: float, pruned: float) -> str:
    return f"{pruned - dense:+.4g}"


# metric -> how the summary and the sweep charts name and format it
_HEADLINES = {"accuracy": ("accuracy", _pct), "agreement": ("agreement", _pct),
              "cosine_mean": ("cosine to dense", _num), "perplexity": ("perplexity", _num)}


def _headline(value: float, dense: float, key: str) -> str:
    name, fmt = _HEADLINES.get(key, (key, _num))
    change = _points(dense, value) if fmt is _pct else _diff(dense, value)
    return f"{name} {fmt(dense)} -> {fmt(value)} ({change})"


# (metrics key, row label, value format, change format): the before/after table.
# Fractions compare in points, costs as a ratio.
_ROWS: list[tuple[str, str, Fmt, Callable[[float, float], str]]] = [
    ("accuracy", "accuracy", _pct, _points),
    ("agreement", "agreement with dense top-1", _pct, _points),
    ("top5_agreement", "dense top-1 in pruned top-5", _pct, _points),
    ("kl", "KL(dense || pruned)", _num, _diff),
    ("cosine_mean", "cosine to dense (mean)", _num, _diff),
    ("cosine_min", "cosine to dense (min)", _num, _diff),
    ("perplexity", "perplexity", _num, _times),
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
    metrics: Mapping[str, Any],
    layers: Sequence[Mapping[str, Any]],
    *,
    title: str,
    seed: int,
    versions: Mapping[str, str],
    command: str,
    settings: Mapping[str, Any] | None = None,
    chart: str | None = CHART_NAME,
    schedule_chart: str | None = SCHEDULE_CHART,
    sweep_charts: Mapping[str, str] | None = None,
    headline: str = "accuracy",
) -> str:
    """The Markdown text of a run's report.

    Args:
        metrics: ``{"dense": {...}, "pruned": {...}}`` as in ``metrics.json``; rows
            whose key is missing on either side are left out. With ``"run"`` (what the
            schedule did) the report has a schedule section, and structure and recovery
            sections when there were structured cuts or repairs; with ``"points"`` a
            sweep section.
        layers: the pruned model's per-layer rows (keys :data:`LAYER_KEYS`).
        title: the run's name (the recipe name).
        seed: the run's seed.
        versions: library versions (``prunekit._utils.versions()``).
        command: the command line that reproduces the run.
        settings: what was run, shown as a list (data, model, criterion, ...).
        chart: file name of the per-layer sparsity chart beside the report, or None.
        schedule_chart: file name of the schedule chart, or None.
        sweep_charts: x axis -> file name of the sweep charts (default
            :data:`SWEEP_CHARTS`).
        headline: the task's headline metric (``accuracy``, ``agreement``,
            ``cosine_mean``, ``perplexity``), led with in the summary and the sweep.

    Returns:
        Markdown: summary, before/after table, schedule, structure, recovery, sweep,
        per-layer table, chart, how to reproduce.
    """
    dense, pruned = metrics["dense"], metrics["pruned"]
    details = metrics.get("run") or {}
    parts = [f"# prunekit run: {title}", _summary(dense, pruned, headline)]
    if settings:
        parts.append("\n".join(f"- {key}: {value}" for key, value in settings.items()))
    parts += ["## Before and after", _before_after(dense, pruned)]
    spreads = {k.removesuffix("_spread"): v for k, v in pruned.items() if k.endswith("_spread")}
    if spreads:
        noise = max(spreads.values())
        parts.append(f"Latencies: both networks warmed, their runs interleaved; the figures "
                     f"spread by up to +-{100 * noise:.0f}% (p10 to p90 over the median).")
    parts += [f"**Warning:** {w}" for w in pruned.get("latency_warnings", [])]
    if "schedule" in details:
        parts += ["## Schedule", _schedule_section(details, schedule_chart)]
    if details.get("allocation"):
        parts += ["## Allocation", _allocation_section(details["allocation"])]
    if details.get("cuts"):
        parts += ["## Structure", _structure_section(details["cuts"])]
    if details.get("oneshot"):
        parts += ["## One shot", _oneshot_section(details["oneshot"])]
    if any(details.get("recovery") or []):
        parts += ["## Recovery", _recovery_section(details["recovery"])]
    if metrics.get("points"):
        charts = SWEEP_CHARTS if sweep_charts is None else sweep_charts
        parts += ["## Sweep", _sweep_section(metrics["points"], dense, charts, headline)]
    parts += ["## Per-layer sparsity", _layer_table(layers)]
    if chart:
        parts.append(f"![per-layer sparsity]({chart})")
    parts += ["## Reproduce", f"Seed {seed}.\n\n```\n{command}\n```", _versions(versions)]
    return "\n\n".join(parts) + "\n"


def _summary(dense: Mapping[str, Any], pruned: Mapping[str, Any],
             headline: str = "accuracy") -> str:
    """One sentence: sparsity (or parameters and MACs removed), the headline metric
    (accuracy for classification), size gain."""
    accuracy = _headline(pruned[headline], dense[headline], headline)
    if _shrunk(dense, pruned):
        text = f"Removed {_pct(_removed(dense, pruned, 'params'))} of the parameters"
        if dense.get("macs"):
            text += f" and {_pct(_removed(dense, pruned, 'macs'))} of the MACs"
        text += f": {accuracy}"
        if pruned.get("size_bytes"):
            text += f", {dense['size_bytes'] / pruned['size_bytes']:.1f}x smaller on disk"
        return text + "."
    text = f"Pruned to {_pct(pruned['sparsity'])} sparsity: {accuracy}"
    if "size_bytes" in dense and "sparse_size_bytes" in pruned and pruned["sparse_size_bytes"]:
        gain = dense["size_bytes"] / pruned["sparse_size_bytes"]
        text += f", {gain:.1f}x smaller on disk in the sparse encoding"
    return text + "."


def _shrunk(dense: Mapping[str, Any], pruned: Mapping[str, Any]) -> bool:
    """Whether the pruned network is physically smaller (a structured cut)."""
    return "params" in dense and "params" in pruned and pruned["params"] < dense["params"]


def _removed(dense: Mapping[str, Any], pruned: Mapping[str, Any], key: str) -> float:
    return 1.0 - pruned[key] / dense[key] if dense.get(key) else 0.0


def _before_after(dense: Mapping[str, Any], pruned: Mapping[str, Any]) -> str:
    """The before/after table, one row per metric both sides have."""
    rows = [("metric", "dense", "pruned", "pruned vs dense"), ("---", "---:", "---:", "---:")]
    for key, label, fmt, change in _rows_for(dense):
        if key in dense and key in pruned:
            rows.append((label, fmt(dense[key]), fmt(pruned[key]), change(dense[key], pruned[key])))
    return _table(rows)


def metric_rows(dense: Mapping[str, Any], pruned: Mapping[str, Any]) -> list[list[str]]:
    """Rows ``[label, dense, pruned]`` of every metric either side has (for report.html)."""
    return [[label, fmt(dense[key]) if key in dense else "-",
             fmt(pruned[key]) if key in pruned else "-"]
            for key, label, fmt, _ in _rows_for(dense) if key in dense or key in pruned]


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


def _schedule_section(details: Mapping[str, Any], chart: str | None) -> str:
    """What the schedule did: one sentence, the rounds (if any), the chart."""
    schedule = details["schedule"]
    curve = dict(schedule["curve"])
    name = curve.pop("name")
    options = ", ".join(f"{k} {_short(v)}" for k, v in curve.items())
    measured = schedule.get("measured") or []
    unit = "rounds" if schedule["unit"] == "round" else "optimizer steps"
    text = f"Schedule `{name}` ({options}) over {schedule['steps']:,} {unit}"
    kept = [r for r in details.get("rounds") or [] if r.get("kept", True)]
    if kept and len(kept) < len(details["rounds"]):
        text += (f"; the last round fell below the floor and was undone, so the run ends at "
                 f"round {kept[-1]['round']}: {schedule['quantity']} "
                 f"{_pct(kept[-1].get('measured', kept[-1]['sparsity']))}")
    elif measured:
        text += f"; {schedule['quantity']} measured after the last cut: {_pct(measured[-1][1])}"
    parts = [text + "."]
    if details.get("rounds"):
        parts.append(_rounds_table(details["rounds"]))
    if chart:
        parts.append(f"![schedule]({chart})")
    return "\n\n".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _rounds_table(rounds: Sequence[Mapping[str, Any]]) -> str:
    """One row per round: target, measured, accuracy (on which split), kept or undone."""
    quantity = rounds[0].get("quantity", "sparsity")
    split = rounds[0].get("split", "test")
    rows = [("round", "target", quantity, f"accuracy ({split})", "kept"),
            ("---:", "---:", "---:", "---:", "---")]
    for r in rounds:
        accuracy = "-" if r.get("accuracy") is None else _pct(r["accuracy"])
        kept = "yes" if r.get("kept", True) else "no: below the floor, undone"
        rows.append((str(r["round"]), _pct(r["target"]), _pct(r.get("measured", r["sparsity"])),
                     accuracy, kept))
    return _table(rows)


def _allocation_section(a: Mapping[str, Any]) -> str:
    """The searched ratios: kind, budget, predicted costs against dense, one row per unit."""
    budget = ", ".join(f"{k} {_short(v)}" for k, v in a["budget"].items())
    costs = [[key, _short(a["dense"].get(key)), _short(value)]
             for key, value in a["predicted"].items() if key in a["dense"]]
    head = (f"Kind {a['kind']} under {budget}; round_to {a['round_to']}; "
            f"{a['steps']} search steps in `allocation.json`"
            + (f"; held-out quality of the cut before fine-tuning {a['quality']:.4f}."
               if a.get("quality") is not None else "."))
    lat = a.get("latency") or {}
    if "measured_ms" in lat:
        dense = lat.get("measured_dense_ms")
        head += (f" Built and measured whole in {lat.get('runtime', 'eager')} at batch "
                 f"{lat['batch_size']}: {lat['measured_ms']:.4g} ms"
                 + (f" ({lat['measured_ms'] / dense:.3f} of dense {dense:.4g} ms)" if dense
                    else "")
                 + ("; the budget is met as measured." if lat.get("met", True) else
                    "; **no cut met the budget as measured**: this is the fastest found."))
    rows = [[name, f"{ratio:.2f}"] for name, ratio in a["ratios"].items()]
    return "\n\n".join([head,
                         _table([["cost", "dense", "predicted"], ["---", "---:", "---:"], *costs]),
                         _table([["unit", "ratio"], ["---", "---:"], *rows])])


def _oneshot_section(o: Mapping[str, Any]) -> str:
    """A ``prune.method`` cut: what ran, on how much data, in what time and memory."""
    return (f"`{o['method']}` pruned the blocks of `{o['blocks']}` one at a time from "
            f"{o['calibration_batches']} calibration batches: {o['sparsity']:.1%} of their "
            f"weights zeroed in {o['seconds']:.1f} s, peak memory "
            f"{o['peak_rss_bytes'] / 2**30:.2f} GiB (the whole process).")


def _structure_section(cuts: Sequence[Mapping[str, Any]]) -> str:
    """The structured cuts: groups, parameters and MACs before and after, verification."""
    rows = [("cut", "groups cut", "units removed", "parameters", "MACs", "verify"),
            ("---:", "---:", "---:", "---:", "---:", "---")]
    for i, c in enumerate(cuts, start=1):
        verify = c["verify"]
        rows.append((
            str(i), str(c["groups_cut"]), _count(c["units_removed"]),
            f"{_count(c['params_before'])} -> {_count(c['params_after'])}",
            f"{_count(c['macs_before'])} -> {_count(c['macs_after'])}",
            ("passed: " if verify["ok"] else "FAILED: ") + verify["message"],
        ))
    groups = [("cut", "group", "units", "kept"), ("---:", "---", "---:", "---:")]
    for i, c in enumerate(cuts, start=1):
        groups += [(str(i), f"`{g['name']}`", str(g["size"]), str(g["kept"])) for g in c["groups"]]
    text = _table(rows) + "\n\nGroups cut (channels of coupled layers, removed together):" \
        "\n\n" + _table(groups)
    whole = [("cut", "group", "why it was left whole"), ("---:", "---", "---")]
    for i, c in enumerate(cuts, start=1):
        whole += [(str(i), f"`{name}`", why) for name, why in c.get("left_whole", {}).items()]
    if len(whole) > 2:
        text += "\n\nPrunable groups left whole:\n\n" + _table(whole)
    return text


def _recovery_section(recovery: Sequence[Mapping[str, Any]]) -> str:
    """What each repair did after each cut."""
    rows = [("cut", "repair", "result"), ("---:", "---", "---")]
    for i, done in enumerate(recovery, start=1):
        for name, result in done.items():
            if "error_before" in result:
                text = (f"{result['layers']} layers, relative output error "
                        f"{result['error_before']:.4f} -> {result['error_after']:.4f}")
            else:
                text = f"{result['layers']} batch-norm layers"
            rows.append((str(i), name.replace("_", " "), text))
    return _table(rows)


def _sweep_section(
    points: Sequence[Mapping[str, Any]], dense: Mapping[str, Any], charts: Mapping[str, str],
    headline: str = "accuracy",
) -> str:
    """One row per point, then the charts of the headline metric."""
    x_label, x_of = _sweep_x(points, dense)
    name, fmt = _HEADLINES.get(headline, (headline, _num))
    rows = [("point", x_label, name, "F1 (macro)", "parameters", "non-zero", "MACs",
             "latency, batch 1"), ("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:")]
    for p in [{"label": "dense", "pruned": dense}, *points]:
        m = p["pruned"]
        f1 = _pct(m["f1_macro"]) if "f1_macro" in m else "-"
        rows.append((p["label"], _pct(x_of(m)), fmt(m[headline]), f1,
                     _count(m["params"]), _count(m["nonzero_params"]), _count(_macs(m)),
                     _ms(m["latency_ms"])))
    images = [f"![accuracy vs {x}]({name})" for x, name in charts.items()]
    return "\n\n".join([_table(rows), *images])


def _sweep_x(
    points: Sequence[Mapping[str, Any]], dense: Mapping[str, Any]
) -> tuple[str, Callable[[Mapping[str, Any]], float]]:
    """The sweep's x axis: sparsity, or for structured sweeps the parameters removed."""
    if any(_shrunk(dense, p["pruned"]) for p in points):
        return "parameters removed", lambda m: _removed(dense, m, "params")
    return "sparsity", lambda m: float(m["sparsity"])


def _macs(m: Mapping[str, Any]) -> float:
    """MACs of the non-zero weights (the dense count where that is missing)."""
    return m.get("effective_macs", m.get("macs", 0))


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
    ylabel: str = "sparsity (%)",
) -> None:
    """Write a bar chart (PNG) of each layer's sparsity, atomically.

    Args:
        layers: per-layer rows (keys :data:`LAYER_KEYS`); one bar per row.
        path: where the PNG goes.
        target: a sparsity to draw as a dashed line (e.g. the overall sparsity), or None.
        title: the chart's title.
        ylabel: the y axis's label (structured runs plot weights removed).
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
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_bytes(path, buffer.getvalue())


def plot_schedule(
    schedule: Mapping[str, Any], path: str | os.PathLike[str], *, title: str = "Schedule"
) -> None:
    """Write a chart (PNG) of a schedule over the steps that were run, atomically.

    The line is the schedule's pure function ``sparsity_at(step)`` at every step
    (or round) from 0 to ``schedule["steps"]``; the dots are the values measured at
    the cuts.

    Args:
        schedule: ``metrics["run"]["schedule"]``: ``curve`` (``Schedule.to_dict()``),
            ``unit`` (``step`` or ``round``), ``steps``, ``quantity`` (what was
            measured), ``measured`` (``[x, value]`` pairs).
        path: where the PNG goes.
        title: the chart's title.
    """

    curve = make_schedule(**schedule["curve"])
    total = max(int(schedule["steps"]), 1)
    xs = sorted({round(i * total / 400) for i in range(401)})
    measured = schedule.get("measured") or []
    fig, ax = _figure(6.0, 3.6)
    ax.step(xs, [100 * v for v in curve.curve(xs)], where="post", color="#4c72b0",
            label=f"schedule: {curve.name}")
    quantity = schedule["quantity"]
    # A channel schedule sets a ratio (or budget) but measures parameters removed: two
    # quantities, two axes.
    other = ax.twinx() if measured and quantity != "sparsity" else ax
    if measured:
        other.plot([m[0] for m in measured], [100 * m[1] for m in measured], "o",
                   color="#c44e52", markersize=4, label=f"measured {quantity}")
    unit = "round" if schedule["unit"] == "round" else "optimizer step of fine-tuning"
    ax.set_xlabel(unit)
    ax.set_ylabel("sparsity (%)" if other is ax else "scheduled amount (%)")
    ax.set_ylim(0, 105)
    if other is not ax:
        other.set_ylabel(f"measured {quantity} (%)", color="#c44e52")
        other.set_ylim(0, 105)
    handles = [h for a in dict.fromkeys((ax, other)) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_sweep(
    points: Sequence[Mapping[str, Any]],
    dense: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    x: str = "sparsity",
    title: str = "Accuracy",
    metric: str = "accuracy",
) -> None:
    """Write a chart (PNG) of a sweep's accuracy against sparsity or MACs, atomically.

    Args:
        points: ``metrics["points"]``: each with ``label`` and ``pruned`` metrics.
        dense: the dense model's metrics, drawn as the reference point.
        path: where the PNG goes.
        x: ``"sparsity"`` (for structured sweeps: the fraction of parameters removed)
            or ``"macs"`` (MACs of the non-zero weights).
        title: the chart's title.
        metric: the metric on the y axis (the task's headline; a fraction is drawn in %).
    """
    if x == "sparsity":
        label, x_of = _sweep_x(points, dense)
        xs = [100 * x_of(p["pruned"]) for p in points]
        dense_x, x_label = 0.0, f"{label} (%)"
    elif x == "macs":
        xs = [_macs(p["pruned"]) for p in points]
        dense_x, x_label = _macs(dense), "MACs per example (non-zero weights)"
    else:
        raise ValueError(f"x must be 'sparsity' or 'macs', got {x!r}")
    scale = 100 if _HEADLINES.get(metric, ("", _num))[1] is _pct else 1
    ys = [scale * p["pruned"][metric] for p in points]
    fig, ax = _figure(5.5, 3.6)
    ax.plot(xs, ys, "o-", color="#4c72b0", label="pruned")
    for xv, yv, p in zip(xs, ys, points, strict=True):
        ax.annotate(p["label"], (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.plot([dense_x], [scale * dense[metric]], "s", color="#c44e52", label="dense")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else
                  f"{_HEADLINES.get(metric, (metric,))[0]}{' (%)' if scale == 100 else ''}")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # optional heavy import, Agg canvas, no pyplot state

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_bytes(path, buffer.getvalue())
