"""``prunekit run``: a recipe from data to a measured, pruned network and its report.

The steps: seed everything; load the data; build the model; train the baseline (or
load ``model.checkpoint``); evaluate and measure it; prune one-shot with
:func:`prunekit.sparsify`; fine-tune with the masks in place; bake; evaluate and
measure again; save. Every file is written atomically, and ``metrics.json`` (the
mark of a finished run) comes last, after ``report.md``: a run that stops half way
leaves no ``metrics.json``, and the outputs of an earlier run in the same folder are
removed before anything new is written, so old and new files never mix.

Example:
    >>> from prunekit.recipe import load_recipe
    >>> result = run(load_recipe(), out_dir="runs/quickstart")
    >>> result.metrics["pruned"]["sparsity"] >= 0.8
    True
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import save_safetensors, write_json, write_text
from ._targets import find_targets
from ._utils import seed_everything, versions
from .data import Splits, load_dataset, make_loader
from .errors import ConfigError
from .mask import bake
from .measure import classification_metrics, measure_cost, save_sparse
from .models import build_model
from .recipe import PruneConfig, Recipe, dump_recipe
from .recovery import predict, train
from .report import CHART_NAME, plot_layer_sparsity, render_report
from .sparsify import sparsify, sparsity_of

__all__ = ["OUTPUT_FILES", "RunResult", "layer_table", "run"]

# Every file a run writes, in the order it writes them: metrics.json last.
OUTPUT_FILES = (
    "recipe.yaml",
    "dense.safetensors",
    "pruned.safetensors",
    "pruned.sparse.safetensors",
    "sparsity.png",
    "report.md",
    "metrics.json",
)


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        out_dir: the output folder.
        metrics: ``{"dense": {...}, "pruned": {...}}``, as written to ``metrics.json``.
        layers: per-layer rows of the pruned model (name, shape, params,
            nonzero_params, sparsity).
        files: output name -> path, for every file written.
        seconds: wall time of the whole run.
    """

    out_dir: Path
    metrics: dict[str, dict[str, Any]]
    layers: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Context:
    """What the steps of one run share."""

    recipe: Recipe
    out: Path
    splits: Splits
    quiet: bool
    versions: dict[str, str] = field(default_factory=versions)

    def say(self, message: str) -> None:
        """A progress line on stderr, unless quiet."""
        if not self.quiet:
            print(f"prunekit: {message}", file=sys.stderr, flush=True)

    def loader(self, split: str, *, train: bool) -> torch.utils.data.DataLoader:
        """A seeded loader over the train or test split."""
        data = self.recipe.data
        size = data.batch_size if train else data.eval_batch_size
        dataset = getattr(self.splits, split)
        return make_loader(dataset, batch_size=size, shuffle=train, seed=self.recipe.seed)


def run(recipe: Recipe, *, out_dir: str | os.PathLike[str], quiet: bool = False) -> RunResult:
    """Run a recipe end to end and write its outputs into ``out_dir``.

    Args:
        recipe: a validated recipe (:func:`prunekit.recipe.load_recipe`).
        out_dir: the output folder; created if needed. The files of an earlier run
            there are replaced.
        quiet: no progress bars or progress lines.

    Returns:
        The metrics, the per-layer table and the paths of the files written:
        ``recipe.yaml``, ``dense.safetensors``, ``pruned.safetensors``,
        ``pruned.sparse.safetensors``, ``sparsity.png``, ``report.md``, ``metrics.json``.

    Raises:
        ConfigError: the recipe does not fit the model (an exclude pattern that
            matches nothing, an N:M pattern that does not divide a layer, a checkpoint
            of another shape); raised before any training.
        DataError: the dataset cannot be found or read.
    """
    start = time.perf_counter()
    seed_everything(recipe.seed)
    ctx = _Context(recipe, Path(out_dir), _load_data(recipe), quiet)
    model = _build(ctx)
    _preflight(model, recipe.prune)
    if recipe.model.checkpoint is not None:
        _load_checkpoint(model, recipe.model.checkpoint, ctx)
    _clear_outputs(ctx.out)
    files = {"recipe.yaml": _save_recipe(ctx)}
    files["dense.safetensors"] = _baseline(model, ctx)
    dense = _evaluate(model, ctx, "dense")
    _prune(model, ctx)
    _finetune(model, ctx)
    bake(model)
    pruned = _evaluate(model, ctx, "pruned")
    metrics = {"dense": dense, "pruned": pruned}
    layers = layer_table(model)
    files.update(_save_pruned(model, ctx))
    files.update(_save_report(metrics, layers, ctx))
    files["metrics.json"] = _write(ctx.out / "metrics.json", write_json, metrics)
    seconds = time.perf_counter() - start
    ctx.say(f"done in {seconds:.1f} s; outputs in {ctx.out}")
    return RunResult(ctx.out, metrics, layers, files, seconds)


# --- steps --------------------------------------------------------------------------


def _load_data(recipe: Recipe) -> Splits:
    return load_dataset(recipe.data.name, data_dir=recipe.data.data_dir, seed=recipe.seed)


def _build(ctx: _Context) -> nn.Module:
    return build_model(
        ctx.recipe.model.name,
        input_shape=ctx.splits.input_shape,
        num_classes=ctx.splits.num_classes,
    )


def _sparsify_options(prune: PruneConfig) -> dict[str, Any]:
    """The recipe's prune section as keyword arguments of :func:`prunekit.sparsify`."""
    options = prune.model_dump(exclude={"calibration_batches"})
    options["exclude"] = tuple(options["exclude"])
    return options


def _preflight(model: nn.Module, prune: PruneConfig) -> None:
    """Try the prune settings on a throwaway copy, so a bad one fails before training.

    Uses the magnitude criterion (no data needed); the real criterion's name was
    checked when the recipe was read.
    """
    options = {**_sparsify_options(prune), "criterion": "magnitude"}
    try:
        sparsify(copy.deepcopy(model), **options)
    except ConfigError as err:
        raise ConfigError(f"prune settings do not fit the model: {err}") from None


def _clear_outputs(out: Path) -> None:
    """Remove an earlier run's outputs, completion marks first."""
    for name in reversed(OUTPUT_FILES):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def _save_recipe(ctx: _Context) -> Path:
    return _write(
        ctx.out / "recipe.yaml", write_text, dump_recipe(ctx.recipe, versions=ctx.versions)
    )


def _baseline(model: nn.Module, ctx: _Context) -> Path:
    """Train the baseline (unless it came from ``model.checkpoint``); save ``dense.safetensors``."""
    if ctx.recipe.model.checkpoint is None:
        _train(model, ctx, ctx.recipe.train, desc="baseline")
    path = ctx.out / "dense.safetensors"
    save_safetensors(path, model.state_dict(), metadata=_file_metadata(ctx, "dense"))
    return path


def _load_checkpoint(model: nn.Module, checkpoint: str, ctx: _Context) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ctx.say(f"loading the baseline from {checkpoint}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.checkpoint {checkpoint} does not exist; give the dense.safetensors of "
            "an earlier run, or drop model.checkpoint to train the baseline"
        )
    try:
        state = load_file(path)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        problem = str(err).strip().splitlines()[0][:300]
        raise ConfigError(
            f"model.checkpoint {checkpoint} does not fit model {ctx.recipe.model.name!r} on "
            f"{ctx.recipe.data.name!r} ({problem}); use a checkpoint saved by a run with the "
            "same model and data"
        ) from None


def _train(model: nn.Module, ctx: _Context, phase: Any, *, desc: str) -> None:
    if phase.epochs:
        ctx.say(f"{desc}: {phase.epochs} epochs of {phase.optimizer}, lr {phase.lr}")
    train(
        model,
        ctx.loader("train", train=True),
        epochs=phase.epochs,
        lr=phase.lr,
        optimizer=phase.optimizer,
        momentum=phase.momentum,
        weight_decay=phase.weight_decay,
        schedule=phase.schedule,
        seed=ctx.recipe.seed,
        quiet=ctx.quiet,
        desc=desc,
    )


def _prune(model: nn.Module, ctx: _Context) -> None:
    prune = ctx.recipe.prune
    ctx.say(f"pruning: {_amount(prune)}, {prune.criterion}, {prune.scope}, {prune.granularity}")
    sparsify(
        model,
        **_sparsify_options(prune),
        data=ctx.loader("train", train=True),
        batches=prune.calibration_batches,
        seed=ctx.recipe.seed,
    )


def _finetune(model: nn.Module, ctx: _Context) -> None:
    """Fine-tune with the masks in place (they keep pruned weights at zero by themselves)."""
    _train(model, ctx, ctx.recipe.finetune, desc="fine-tune")


def _bake(model: nn.Module) -> None:
    bake(model)


def _evaluate(model: nn.Module, ctx: _Context, label: str) -> dict[str, Any]:
    """Quality on the test split, then cost (params, MACs, latency, bytes) and sparsity."""
    ctx.say(f"evaluating and measuring the {label} model")
    y_true, y_pred = predict(model, ctx.loader("test", train=False))
    quality = classification_metrics(y_true, y_pred, num_classes=ctx.splits.num_classes)
    measure = ctx.recipe.measure
    example = ctx.splits.test.tensors[0][:1]  # (1, C, H, W)
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


# --- saving -------------------------------------------------------------------------


def _save_pruned(model: nn.Module, ctx: _Context) -> dict[str, Path]:
    """Baked pruned weights, dense safetensors and the sparse encoding."""
    state = model.state_dict()
    meta = _file_metadata(ctx, "pruned")
    dense_path = ctx.out / "pruned.safetensors"
    sparse_path = ctx.out / "pruned.sparse.safetensors"
    save_safetensors(dense_path, state, metadata=meta)
    save_sparse(state, sparse_path, metadata=meta)
    return {"pruned.safetensors": dense_path, "pruned.sparse.safetensors": sparse_path}


def _save_report(
    metrics: dict[str, dict[str, Any]], layers: list[dict[str, Any]], ctx: _Context
) -> dict[str, Path]:
    """``sparsity.png`` and then ``report.md``."""
    chart = ctx.out / CHART_NAME
    plot_layer_sparsity(
        layers,
        chart,
        target=metrics["pruned"]["sparsity"],
        title=f"{ctx.recipe.name}: per-layer sparsity",
    )
    text = render_report(
        metrics,
        layers,
        title=ctx.recipe.name,
        seed=ctx.recipe.seed,
        versions=ctx.versions,
        command=f"prunekit run {ctx.out / 'recipe.yaml'} --out {ctx.out}",
        settings=_settings(ctx),
        chart=CHART_NAME,
    )
    return {CHART_NAME: chart, "report.md": _write(ctx.out / "report.md", write_text, text)}


def _settings(ctx: _Context) -> dict[str, str]:
    """What was run, in words, for the report."""
    r, splits = ctx.recipe, ctx.splits
    baseline = (
        f"loaded from {r.model.checkpoint}"
        if r.model.checkpoint
        else f"trained {r.train.epochs} epochs ({r.train.optimizer}, lr {r.train.lr}, "
        f"{r.train.schedule})"
    )
    return {
        "data": f"{r.data.name} ({len(splits.train):,} train / {len(splits.test):,} test, "
        f"input {'x'.join(map(str, splits.input_shape))}, {splits.num_classes} classes)",
        "model": r.model.name,
        "baseline": baseline,
        "pruning": f"one-shot, {_amount(r.prune)}, criterion {r.prune.criterion}, "
        f"scope {r.prune.scope}, granularity {r.prune.granularity}"
        + (f", excluded {', '.join(r.prune.exclude)}" if r.prune.exclude else "")
        + (", output layer kept dense" if r.prune.protect_output else ""),
        "fine-tuning": f"{r.finetune.epochs} epochs ({r.finetune.optimizer}, "
        f"lr {r.finetune.lr}, {r.finetune.schedule})",
        "measurement": f"latency median of {r.measure.latency_runs} runs on "
        f"{r.measure.threads} CPU threads",
    }


def _amount(prune: PruneConfig) -> str:
    """How much a prune section cuts, in words: ``sparsity 0.9`` or ``pattern 2:4``."""
    for key in ("sparsity", "threshold", "percentile", "std_k", "pattern"):
        if getattr(prune, key) is not None:
            return f"{key} {getattr(prune, key)}"
    return "nothing"


def _file_metadata(ctx: _Context, stage: str) -> dict[str, str]:
    """safetensors header metadata: what the weights are."""
    r = ctx.recipe
    return {
        "prunekit.recipe": r.name,
        "prunekit.stage": stage,
        "prunekit.model": r.model.name,
        "prunekit.dataset": r.data.name,
        "prunekit.input_shape": "x".join(map(str, ctx.splits.input_shape)),
        "prunekit.num_classes": str(ctx.splits.num_classes),
    }


def _write(path: Path, writer: Any, content: Any) -> Path:
    """``writer(path, content)`` (an atomic writer from ``prunekit._io``); returns ``path``."""
    writer(path, content)
    return path
