"""``prunekit run``: a recipe from data to a measured, pruned network and its report.

The steps: seed everything; load the data; build the model; check every setting that
depends on the model on throwaway copies (so a recipe that does not fit fails before
any training); train the baseline (or load ``model.checkpoint``), with the sparsity
penalty if the recipe has one; evaluate and measure it; then for each point (one, or
one per value of a ``sweep``), on a copy of the baseline: cut, repair and fine-tune
as the recipe's schedule says (:mod:`prunekit.run.stages`), bake the masks, evaluate and
measure; save; report.

Every file is written atomically, and ``metrics.json`` (the mark of a finished run)
comes last, after ``report.md``: a run that stops half way leaves no ``metrics.json``,
and the outputs of an earlier run in the same folder are removed before anything new
is written, so old and new files never mix. A sweep writes each point into
``points/<NN>_<key>-<value>/`` (weights, plan, charts, and that point's
``metrics.json`` last); the top-level weights are those of the designated point.

Example:
    >>> from prunekit.run.recipe import load_recipe
    >>> result = run(load_recipe(), out_dir="runs/quickstart")
    >>> result.metrics["pruned"]["sparsity"] >= 0.8
    True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import save_safetensors, write_json, write_text
from .._log import progress_to_stderr
from .._utils import seed_everything
from ..mask.targets import find_targets
from ..measure import compare_latency, measure_cost, save_sparse
from ..measure.cost import resize_batch
from ..recovery.train import init_distributed, is_main_process
from ..sparsify import sparsity_of
from . import stages as _stages
from .html import render_html
from .prepare import load_reference_checkpoint, prepare, say
from .recipe import PruneConfig, Recipe, dump_recipe
from .report import (
    CHART_NAME,
    SCHEDULE_CHART,
    SWEEP_CHARTS,
    plot_layer_sparsity,
    plot_schedule,
    plot_sweep,
    render_report,
)
from .stages import Context, Job, Outcome

__all__ = ["OUTPUT_FILES", "POINT_FILES", "POINTS_DIR", "RunResult", "layer_table", "run"]

# Every file a run may write at the top of its folder, in the order it writes them:
# metrics.json last. plan.json is for structured runs, the sweep charts for sweeps.
OUTPUT_FILES = (
    "recipe.yaml",
    "dense.safetensors",
    "pruned.safetensors",
    "pruned.sparse.safetensors",
    "plan.json",
    CHART_NAME,
    SCHEDULE_CHART,
    *SWEEP_CHARTS.values(),
    "report.md",
    "report.html",
    "metrics.json",
)
# The files of one sweep point, in points/<NN>_<key>-<value>/; metrics.json last.
POINTS_DIR = "points"
POINT_FILES = (
    "pruned.safetensors",
    "pruned.sparse.safetensors",
    "plan.json",
    CHART_NAME,
    SCHEDULE_CHART,
    "metrics.json",
)


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        out_dir: the output folder.
        metrics: ``{"dense": {...}, "pruned": {...}, "run": {...}}`` (and ``"points"``
            for a sweep), as written to ``metrics.json``.
        layers: per-layer rows of the pruned model (name, shape, params,
            nonzero_params, sparsity).
        files: output name -> path, for every file written.
        seconds: wall time of the whole run.
        model: the pruned network reported as ``pruned`` (masks baked; for structured
            runs rebuilt smaller), in eval mode.
    """

    out_dir: Path
    metrics: dict[str, Any]
    layers: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    model: nn.Module | None = None


@dataclass
class _Point:
    """One pruned network of a run, measured."""

    label: str
    setting: dict[str, float]
    model: nn.Module | None
    metrics: dict[str, Any]
    outcome: Outcome
    layers: list[dict[str, Any]]
    folder: str | None = None


def run(recipe: Recipe, *, out_dir: str | os.PathLike[str], quiet: bool = False) -> RunResult:
    """Run a recipe end to end and write its outputs into ``out_dir``.

    Every recipe takes the same stages, in order, each once: prepare the model, data and
    task (:func:`prunekit.run.prepare.prepare`: a reference network on a built-in dataset,
    or your own model and data); check the settings on throwaway copies; train the
    baseline (reference networks, or your model when ``train.epochs`` > 0); evaluate and
    measure it; prune each point under the schedule with its repairs and fine-tuning
    (:func:`prunekit.run.stages.prune_and_recover`); evaluate and measure; save; report.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs the recipe, training runs as
    DistributedDataParallel (:func:`prunekit.recovery.train`), and only rank 0 writes
    ``out_dir`` and prints progress.

    Args:
        recipe: a validated recipe (:func:`prunekit.run.recipe.load_recipe`).
        out_dir: the output folder; created if needed. The files of an earlier run
            there are replaced.
        quiet: no progress bars or progress lines.

    Returns:
        The metrics, the per-layer table and the paths of the files written:
        ``recipe.yaml``, ``dense.safetensors``, ``pruned.safetensors``,
        ``pruned.sparse.safetensors``, ``plan.json`` (structured runs),
        ``sparsity.png``, ``schedule.png``, the sweep charts (sweeps), ``report.md``,
        ``report.html``, ``metrics.json``; a sweep also writes ``points/*/``.

    Raises:
        ConfigError: the recipe does not fit the model (an exclude or ignore pattern
            that matches nothing, an N:M pattern that does not divide a layer, a
            checkpoint of another shape, BN recalibration without batch norm); raised
            before any training.
        DataError: the dataset cannot be found or read.
    """
    start = time.perf_counter()
    init_distributed()
    main = is_main_process()
    scratch = None if main else tempfile.TemporaryDirectory(prefix="prunekit-rank-")
    out = Path(out_dir) if main else Path(scratch.name)
    try:
        with progress_to_stderr(not (quiet or not main)):  # the library's own progress lines
            result = _run(recipe, out, quiet or not main)
    finally:
        if scratch is not None:
            scratch.cleanup()
    result.seconds = time.perf_counter() - start
    if main:
        say(quiet, f"done in {result.seconds:.1f} s; outputs in {result.out_dir}")
    return result


def _run(recipe: Recipe, out: Path, quiet: bool) -> RunResult:
    seed_everything(recipe.seed)
    ctx = _context(recipe, out, quiet)
    model, example = ctx.prepared.model, ctx.prepared.example
    _stages.preflight(model, ctx, example)
    if recipe.model.checkpoint is not None and not recipe.model.own:
        load_reference_checkpoint(model, recipe, quiet=quiet)
    _clear_outputs(ctx.out)
    files = {"recipe.yaml": _save_recipe(ctx)}
    rewind = _stages.rewind_keeper(model, recipe)
    files["dense.safetensors"] = _baseline(model, ctx, rewind)
    ctx.reference = model
    dense = _evaluate(model, ctx, "dense")
    job = Job(ctx, recipe.prune, teacher=model, example=example,
              rewind=rewind.state if rewind else None)
    points = [_point(model, job, prune, i, dense) for i, prune in enumerate(recipe.points())]
    chosen = points[recipe.designated]
    files.update(_save_pruned(chosen, ctx.out, ctx))
    metrics = {"dense": dense, "pruned": chosen.metrics,
               "run": {**chosen.outcome.to_dict(), **_what_ran(ctx)}}
    if recipe.sweep is not None:
        metrics["points"] = [_point_entry(p) for p in points]
    files.update(_save_report(metrics, chosen.layers, ctx))
    files["metrics.json"] = _write(ctx.out / "metrics.json", write_json, metrics)
    return RunResult(ctx.out, metrics, chosen.layers, files, 0.0, chosen.model.eval())


# --- steps --------------------------------------------------------------------------


def _context(recipe: Recipe, out: Path, quiet: bool) -> Context:
    """Prepare the model, the data and the task into a Context."""
    return Context(recipe, out, prepare(recipe, quiet=quiet), quiet)


def _build(ctx: Context) -> nn.Module:
    """The prepared dense model."""
    return ctx.prepared.model


def _what_ran(ctx: Context) -> dict[str, str]:
    """The task, the model and data in words, and what fine-tuning did."""
    p, f = ctx.prepared, ctx.recipe.finetune
    if f.epochs == 0:
        tuned = "none (finetune.epochs is 0)"
    elif ctx.loader("train", train=True) is None:
        tuned = "none (the data has no training split)"
    else:
        how = " on the dense model's outputs" if p.own and p.objective.from_dense else ""
        tuned = f"{f.epochs} epochs ({f.optimizer}, lr {f.lr}, {f.schedule}){how}"
    return {"task": p.task.name, "model": p.label, "data": p.data.kind, "finetune": tuned}


def _clear_outputs(out: Path) -> None:
    """Remove an earlier run's outputs, completion marks first (points' folders too)."""
    for name in reversed(OUTPUT_FILES):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    points = out / POINTS_DIR
    if not points.is_dir():
        return
    for folder in sorted(points.iterdir()):
        if not folder.is_dir():
            continue
        for name in reversed(POINT_FILES):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        points.rmdir()


def _save_recipe(ctx: Context) -> Path:
    return _write(
        ctx.out / "recipe.yaml", write_text, dump_recipe(ctx.recipe, versions=ctx.versions)
    )


def _baseline(model: nn.Module, ctx: Context, keeper: Any) -> Path:
    """Train the baseline (unless it came from ``model.checkpoint``), with the sparsity
    penalty when the recipe adds it there; then the extra sparse-training phase if any;
    save ``dense.safetensors``."""
    r, p = ctx.recipe, ctx.prepared
    base = p.objective.loss if p.own else None
    if r.model.checkpoint is None and r.train.epochs > 0:
        during = r.penalty is not None and r.penalty.epochs == 0
        loss_fn = _stages.penalty_loss(model, r, base) if during else None
        _stages.train_phase(model, ctx, r.train, desc="baseline", loss_fn=loss_fn,
                            after_step=keeper)
    if r.penalty is not None and r.penalty.epochs > 0:
        phase = r.train.model_copy(update={"epochs": r.penalty.epochs, "lr": r.penalty.lr})
        _stages.train_phase(model, ctx, phase, desc=f"sparse training ({r.penalty.kind})",
                            loss_fn=_stages.penalty_loss(model, r, base))
    path = ctx.out / "dense.safetensors"
    save_safetensors(path, model.state_dict(), metadata=_file_metadata(ctx, "dense"))
    return path


def _point(
    dense_model: nn.Module, job: Job, prune: PruneConfig, index: int, dense: dict[str, Any]
) -> _Point:
    """Prune a copy of the baseline with one prune section; measure it; for a sweep,
    save it in its own folder."""
    ctx = job.ctx
    seed_everything(ctx.recipe.seed)
    model = copy.deepcopy(dense_model)
    outcome = _stages.prune_and_recover(model, dataclasses.replace(job, prune=prune))
    key, value = prune.amount
    label = f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
    metrics = _evaluate(model, ctx, f"pruned ({label})" if ctx.recipe.sweep else "pruned")
    # timed beside the dense network; the designated point's timing is the dense one's too
    _latency_side_by_side(dense_model, model, ctx,
                          dense if index == ctx.recipe.designated else dict(dense), metrics)
    layers = layer_table(model)
    if prune.structured:  # shapes shrank: compare each layer with the dense one
        layers = removed_rows(layers, layer_table(dense_model))
    point = _Point(label, {key: value}, model, metrics, outcome, layers)
    if ctx.recipe.sweep is not None:
        point.folder = f"{POINTS_DIR}/{index + 1:02d}_{key}-{value:g}"
        _save_point(point, dense, ctx)
        if index != ctx.recipe.designated:
            point.model = None  # only the designated point's weights are needed later
    return point


def _evaluate(model: nn.Module, ctx: Context, label: str) -> dict[str, Any]:
    """The task's quality on the test split (against the dense reference), then cost
    (params, MACs, latency, bytes) and sparsity."""
    ctx.say(f"evaluating ({ctx.prepared.task.name}) and measuring the {label} model")
    quality = ctx.quality(model)
    measure = ctx.recipe.measure
    example = ctx.prepared.cost_example
    cost = measure_cost(
        model,
        example,
        batch_sizes=tuple(measure.batch_sizes),
        threads=measure.threads,
        runs=measure.latency_runs,
    )
    confusion = quality.pop("confusion_matrix", None)
    metrics = {**quality, "sparsity": sparsity_of(model), **cost}
    if confusion is not None:
        metrics["confusion_matrix"] = confusion
    return metrics


def _latency_side_by_side(dense_model: nn.Module, pruned_model: nn.Module, ctx: Context,
                          dense: dict[str, Any], pruned: dict[str, Any]) -> None:
    """Time the dense and the pruned network together at every batch size (both warmed,
    runs interleaved) and keep those figures, with their spread, in both metrics. Timed one
    after the other, the first network pays the process's warm-up: a masked network once
    showed a "160x" speed-up that way. A speed-up the MACs cannot explain is flagged."""
    measure = ctx.recipe.measure
    example = ctx.prepared.cost_example
    for n in dict.fromkeys((1, *measure.batch_sizes)):
        key = "latency_ms" if n == 1 else f"latency_ms_batch{n}"
        if key not in dense:
            continue
        cmp = compare_latency(dense_model, pruned_model, resize_batch(example, n),
                              threads=measure.threads, runs=max(2, measure.latency_runs),
                              rounds=min(5, max(2, measure.latency_runs)))
        dense[key], pruned[key] = cmp.before.median_ms, cmp.after.median_ms
        pruned[f"{key}_spread"] = round(cmp.spread, 4)
        if cmp.unexplained:
            pruned.setdefault("latency_warnings", []).append(
                f"batch {n}: {cmp} is more than the MACs explain; a measurement artifact")


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per prunable weight: name, shape, params, nonzero_params, sparsity.

    Example:
        >>> layer_table(model)[0]
        {'name': 'fc1.weight', 'shape': [300, 64], 'params': 19200, ...}
    """
    rows = []
    for target in find_targets(model):
        weight = target.weight.detach()
        params, nonzero = weight.numel(), int(torch.count_nonzero(weight))
        rows.append(
            {
                "name": target.name,
                "shape": list(weight.shape),
                "params": params,
                "nonzero_params": nonzero,
                "sparsity": 1.0 - nonzero / params if params else 0.0,
            }
        )
    return rows


def removed_rows(rows: list[dict[str, Any]], dense_rows: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Per-layer rows of a network rebuilt smaller, each with ``dense_params`` (the dense
    layer's weights) and ``removed`` (the fraction of them removed or zero); layers are
    matched by name, and a layer removed whole counts as 100%."""
    after = {r["name"]: r for r in rows}
    out = []
    for dense in dense_rows:
        row = after.get(dense["name"], {**dense, "params": 0, "nonzero_params": 0})
        kept = row["nonzero_params"] / dense["params"] if dense["params"] else 1.0
        out.append({**row, "dense_params": dense["params"], "removed": 1.0 - kept})
    return out


# --- saving -------------------------------------------------------------------------


def _save_pruned(point: _Point, folder: Path, ctx: Context) -> dict[str, Path]:
    """Pruned weights (dense safetensors and the sparse encoding), and for a structured
    run ``plan.json`` beside them: ``pk.load_pruned(fresh, plan, weights)`` rebuilds it."""
    state = point.model.state_dict()
    meta = _file_metadata(ctx, "pruned")
    dense_path = folder / "pruned.safetensors"
    sparse_path = folder / "pruned.sparse.safetensors"
    save_safetensors(dense_path, state, metadata=meta)
    save_sparse(state, sparse_path, metadata=meta)
    files = {"pruned.safetensors": dense_path, "pruned.sparse.safetensors": sparse_path}
    if point.outcome.plan is not None:
        files["plan.json"] = folder / "plan.json"
        point.outcome.plan.save(files["plan.json"])
    return files


def _save_point(point: _Point, dense: dict[str, Any], ctx: Context) -> None:
    """One sweep point's folder: weights, plan, charts, then its metrics.json."""
    folder = ctx.out / point.folder
    _save_pruned(point, folder, ctx)
    _save_charts(point.metrics, point.outcome.to_dict(), point.layers, folder, ctx, point.label)
    metrics = {"dense": dense, "pruned": point.metrics, "run": point.outcome.to_dict()}
    _write(folder / "metrics.json", write_json, metrics)


def _point_entry(point: _Point) -> dict[str, Any]:
    """A sweep point in the top-level metrics.json."""
    return {"label": point.label, "setting": point.setting, "folder": point.folder,
            "pruned": point.metrics, "run": point.outcome.to_dict()}


def _save_charts(
    pruned: dict[str, Any], details: dict[str, Any], layers: list[dict[str, Any]],
    folder: Path, ctx: Context, label: str = "",
) -> dict[str, Path]:
    """``sparsity.png`` (per layer) and ``schedule.png`` (the schedule over its steps)."""
    title = f"{ctx.recipe.name}{f' ({label})' if label else ''}"
    if layers and "removed" in layers[0]:  # structured: weights removed, not zeros
        dense_total = sum(r["dense_params"] for r in layers)
        overall = 1.0 - sum(r["nonzero_params"] for r in layers) / max(dense_total, 1)
        plot_layer_sparsity([{**r, "sparsity": r["removed"]} for r in layers],
                            folder / CHART_NAME, target=overall,
                            title=f"{title}: per-layer weights removed",
                            ylabel="weights removed or zero (% of dense)")
    else:
        plot_layer_sparsity(layers, folder / CHART_NAME, target=pruned["sparsity"],
                            title=f"{title}: per-layer sparsity")
    plot_schedule(details["schedule"], folder / SCHEDULE_CHART, title=f"{title}: schedule")
    return {CHART_NAME: folder / CHART_NAME, SCHEDULE_CHART: folder / SCHEDULE_CHART}


def _save_report(
    metrics: dict[str, Any], layers: list[dict[str, Any]], ctx: Context
) -> dict[str, Path]:
    """The charts, then ``report.md``."""
    files = _save_charts(metrics["pruned"], metrics["run"], layers, ctx.out, ctx)
    if "points" in metrics:
        for x, name in SWEEP_CHARTS.items():
            axis = "MACs" if x == "macs" else "sparsity"
            headline = ctx.prepared.task.headline
            plot_sweep(metrics["points"], metrics["dense"], ctx.out / name, x=x,
                       title=f"{ctx.recipe.name}: {headline} vs {axis}", metric=headline)
            files[name] = ctx.out / name
    text = render_report(
        metrics,
        layers,
        title=ctx.recipe.name,
        seed=ctx.recipe.seed,
        versions=ctx.versions,
        command=f"prunekit run {ctx.out / 'recipe.yaml'} --out {ctx.out}",
        settings=_settings(ctx),
        chart=CHART_NAME,
        headline=ctx.prepared.task.headline,
    )
    files["report.md"] = _write(ctx.out / "report.md", write_text, text)
    files["report.html"] = render_html(ctx.out, metrics=metrics, markdown=text)
    return files


def _settings(ctx: Context) -> dict[str, str]:
    """What was run, in words, for the report."""
    r, p = ctx.recipe, ctx.prepared
    if r.model.checkpoint:
        baseline = f"loaded from {r.model.checkpoint}"
    elif r.train.epochs == 0:
        baseline = "the model as built (train.epochs is 0)"
    else:
        baseline = (f"trained {r.train.epochs} epochs ({r.train.optimizer}, lr {r.train.lr}, "
                    f"{r.train.schedule})")
    out = {"data": _data_words(ctx), "model": p.label, "task": p.task.name,
           "baseline": baseline}
    if r.penalty is not None:
        out["sparse training"] = _penalty_words(r)
    out["pruning"] = _prune_words(r.prune)
    out["schedule"] = _schedule_words(r)
    if any(v is not None for v in r.recovery.model_dump().values()):
        out["recovery"] = _recovery_words(r)
    out["fine-tuning"] = _what_ran(ctx)["finetune"]
    if r.sweep is not None:
        out["sweep"] = f"{r.sweep.key} {', '.join(f'{v:g}' for v in r.sweep.values)}"
    out["measurement"] = (f"latency median of {r.measure.latency_runs} runs on "
                          f"{r.measure.threads} CPU threads")
    return out


def _data_words(ctx: Context) -> str:
    """The data, its split sizes, input shape and classes."""
    data = ctx.prepared.data
    sizes = {s: data.size(s) for s in ("train", "val", "test")}
    names = {"train": "train", "val": "validation", "test": "test"}
    parts = [f"{n:,} {names[s]}" for s, n in sizes.items() if n is not None]
    shape = "x".join(map(str, data.input_shape)) if data.input_shape else "varied"
    classes = f", {data.num_classes} classes" if data.num_classes else ""
    return f"{data.kind} ({' / '.join(parts)}, input {shape}{classes})"


def _prune_words(p: PruneConfig) -> str:
    key, value = p.amount
    amount = f"target {key} {value}" if key in ("macs", "params") else f"{key} {value}"
    text = f"{amount}, criterion {p.criterion}, scope {p.scope}, granularity {p.granularity}"
    if p.structured:
        text += f", max ratio {p.max_ratio}, round to {p.round_to}"
        text += f", ignored {', '.join(p.ignore)}" if p.ignore else ""
    else:
        text += f", excluded {', '.join(p.exclude)}" if p.exclude else ""
    return text + (", output layer kept whole" if p.protect_output else "")


def _schedule_words(r: Recipe) -> str:
    fields = r.schedule.model_dump(exclude={"kind"}, exclude_none=True)
    options = ", ".join(f"{k} {v}" for k, v in fields.items())
    return f"{r.schedule.kind}" + (f" ({options})" if options else "")


def _recovery_words(r: Recipe) -> str:
    parts = []
    for name, config in r.recovery:
        if config is not None:
            options = ", ".join(f"{k} {v}" for k, v in config.model_dump().items())
            parts.append(f"{name.replace('_', ' ')} ({options})")
    return ", then ".join(parts)


def _penalty_words(r: Recipe) -> str:
    p = r.penalty
    when = "during baseline training" if p.epochs == 0 else f"{p.epochs} extra epochs, lr {p.lr}"
    return f"{p.kind} penalty, strength {p.strength}, {when}"


def _file_metadata(ctx: Context, stage: str) -> dict[str, str]:
    """safetensors header metadata: what the weights are."""
    return {"prunekit.run.recipe": ctx.recipe.name, "prunekit.stage": stage,
            **ctx.prepared.metadata()}


def _write(path: Path, writer: Any, content: Any) -> Path:
    """``writer(path, content)`` (an atomic writer from ``prunekit._io``); returns ``path``."""
    writer(path, content)
    return path
