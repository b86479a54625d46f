"""``prunekit run`` on your own model and data, and ``prunekit run --dry-run`` on any recipe.

A run on your own things: build the model (:func:`prunekit.models.sources.load_model`) and
the loaders (:func:`prunekit.data.sources.load_data`); check that they fit each other
(class count, labels for the task) before anything else; evaluate the dense model on the
task and measure it; cut once (masks with ``pk.sparsify``, or channels with ``pk.prune``,
verified with ``pk.verify``); fine-tune when the task has labels to train on; evaluate the
pruned model against the dense one; write ``recipe.yaml``, ``pruned.safetensors``,
``plan.json`` (channels), ``layers.png``, ``report.md``, ``report.html`` and, last,
``metrics.json``.

A dry run stops after the cut: it builds the model and one batch, traces, plans and cuts
a copy, and says what would be cut (groups, parameters and MACs before and after).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import save_safetensors, write_json, write_text
from .._utils import seed_everything, versions
from ..data import load_dataset
from ..data.sources import UserData, _Loaders, check_num_classes, load_data
from ..errors import DataError
from ..mask import bake
from ..mask.targets import find_targets
from ..measure import count_macs, count_params, measure_cost
from ..measure.tasks import evaluate_task, forward, get_task, logits_of
from ..models import CLASSIFIER, build_model
from ..models.sources import load_checkpoint, load_model
from ..recovery import train
from ..sparsify import sparsify, sparsity_of
from .html import render_html
from .recipe import PruneConfig, Recipe, dump_recipe
from .user_report import plot_layers, render_markdown

__all__ = ["Prepared", "dry_run", "prepare", "run_user"]

LAYERS_CHART = "layers.png"
USER_FILES = ("recipe.yaml", "pruned.safetensors", "plan.json", LAYERS_CHART, "report.md",
              "report.html", "metrics.json")


@dataclass
class Prepared:
    """A recipe's model and data, built and checked against each other.

    Attributes:
        model: the dense network (eval mode).
        data: the loaders.
        heads: output layers kept whole by a channel cut.
        example: a few inputs (a batch of at most 4) for tracing and verification.
        num_classes: classes of the model's classifier, when it has one.
        label: what the model is, in words.
    """

    model: nn.Module
    data: UserData
    heads: tuple[str, ...]
    example: Any
    num_classes: int | None
    label: str


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"prunekit: {message}", file=sys.stderr, flush=True)


def _head(inputs: Any, n: int) -> Any:
    """The first ``n`` examples of a batch's inputs (tensor, dict or tuple of tensors)."""
    if torch.is_tensor(inputs):
        return inputs[:n]
    if isinstance(inputs, dict):
        return {k: _head(v, n) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_head(v, n) for v in inputs)
    return inputs


def prepare(recipe: Recipe, *, quiet: bool = False) -> Prepared:
    """Build the model and the data of ``recipe``; check them against each other and the task.

    Raises:
        ConfigError: the model cannot be built or its checkpoint does not fit.
        DataError: the data is missing or empty, has another class count than the head,
            or has no labels for a task that needs them.
    """
    seed_everything(recipe.seed)
    started = time.perf_counter()
    model, heads, num_classes, folder, label = _model(recipe, quiet)
    data = _data(recipe, folder, model)
    if model is None:  # a reference network, sized by the data
        model, heads, num_classes = _reference(recipe, data)
    task = get_task(recipe.task)
    if task.needs_labels and not data.labelled:
        raise DataError(f"task {task.name} needs labels, but the data has none; use task "
                        "agreement to compare with the dense model, or give labelled data")
    if task.name == "classification":
        check_num_classes(data, num_classes)
    example = _example(recipe, data)
    _say(quiet, f"model and data ready in {time.perf_counter() - started:.1f} s")
    return Prepared(model.eval(), data, heads, example, num_classes, label)


def _example(recipe: Recipe, data: UserData) -> Any:
    """Inputs for tracing and timing: random ones of ``model.input_shape`` when it is
    given (seeded), else the first examples of the test split."""
    shape = recipe.model.input_shape
    if shape is None:
        return _head(data.example_inputs(), 4)
    generator = torch.Generator().manual_seed(recipe.seed)
    return torch.randn(2, *shape, generator=generator)  # (2, *input_shape)


def _model(recipe: Recipe, quiet: bool) -> tuple:
    m = recipe.model
    if not m.own:
        return None, (), None, None, m.name
    where = m.path or m.name or m.python
    _say(quiet, f"building {m.source or 'python'} model {where}")
    user = load_model(m.spec())
    return user.model, user.heads, user.num_classes, user.folder, f"{m.source or 'python'}:{where}"


def _data(recipe: Recipe, folder: Path | None, model: nn.Module | None) -> UserData:
    d = recipe.data
    if d.own:
        return load_data(d.spec(), batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                         train_samples=d.train_samples, test_samples=d.test_samples,
                         tokenizer=folder, seed=recipe.seed)
    return _builtin(recipe)


def _builtin(recipe: Recipe) -> UserData:
    """A registered dataset (digits, Fashion-MNIST...) as loaders."""

    d = recipe.data
    splits = load_dataset(d.name, data_dir=d.data_dir, seed=recipe.seed)
    make = _Loaders(d.batch_size, d.eval_batch_size, d.train_samples, d.test_samples,
                    recipe.seed)
    return UserData(kind=d.name, train=make.make(splits.train, train=True),
                    test=make.make(splits.test, train=False), num_classes=splits.num_classes,
                    input_shape=splits.input_shape)


def _reference(recipe: Recipe, data: UserData) -> tuple[nn.Module, tuple[str, ...], int]:

    if data.num_classes is None or data.input_shape is None:
        raise DataError(f"reference network {recipe.model.name} needs labelled data of a fixed "
                        "input shape; use model.source or model.python for this data")
    model = build_model(recipe.model.name, input_shape=data.input_shape,
                        num_classes=data.num_classes)
    if recipe.model.checkpoint is not None:
        load_checkpoint(model, recipe.model.checkpoint)
    return model, (CLASSIFIER,), data.num_classes


# --- the cut -----------------------------------------------------------------------------


def cut(model: nn.Module, prepared: Prepared, prune: PruneConfig, *, seed: int) -> dict:
    """Cut ``model`` once as ``prune`` says; returns what was cut (and the plan for channels)."""
    before = {"params": count_params(model), "macs": count_macs(model, _head(prepared.example,
                                                                            1)).dense}
    if prune.structured:
        summary = _channel_cut(model, prepared, prune, seed=seed)
    else:
        summary = _mask_cut(model, prune, seed=seed)
    after = {"params": count_params(model), "macs": count_macs(model, _head(prepared.example,
                                                                           1)).dense}
    summary.update(params_before=before["params"], params_after=after["params"],
                   macs_before=before["macs"], macs_after=after["macs"],
                   sparsity=sparsity_of(model))
    return summary


def _mask_cut(model: nn.Module, prune: PruneConfig, *, seed: int) -> dict:
    key, value = prune.amount
    layers = sparsify(model, **{key: value}, criterion=prune.criterion, scope=prune.scope,
                      granularity=prune.granularity, ignore=tuple(prune.exclude or ()),
                      protect_output=prune.protect_output, seed=seed)
    return {"kind": "masks", "amount": {key: value}, "layers": len(layers), "plan": None}


def _channel_cut(model: nn.Module, prepared: Prepared, prune: PruneConfig, *, seed: int) -> dict:
    import prunekit as pk

    key, value = prune.amount
    amount = {"ratio": value} if key == "ratio" else {"target": {key: value}}
    ignore = [*prepared.heads, *(prune.ignore or ())]
    original = copy.deepcopy(model)
    plan = pk.prune(model, prepared.example, **amount, criterion=prune.criterion,
                    scope=prune.scope, max_ratio=prune.max_ratio, round_to=prune.round_to,
                    ignore=ignore, seed=seed)
    check = pk.verify(original, model, plan, prepared.example)
    groups = [{"name": g.name, "size": g.size, "kept": len(g.kept)} for g in plan.groups
              if g.removed]
    return {"kind": "channels", "amount": {key: value}, "groups_cut": len(groups),
            "groups": groups, "units_removed": plan.removed_units, "plan": plan,
            "verify": {"ok": bool(check.ok), "max_abs_diff": float(check.max_abs_diff)}}


# --- dry run -----------------------------------------------------------------------------


def dry_run(recipe: Recipe, *, quiet: bool = False) -> str:
    """Validate, build the model and one batch, trace and cut a copy; say what would be cut.

    Nothing is trained and nothing is written. Returns the text to print.
    """
    started = time.perf_counter()
    prepared = prepare(recipe, quiet=quiet)
    _say(quiet, "tracing and cutting a copy of the model")
    trial = copy.deepcopy(prepared.model)
    summary = cut(trial, prepared, recipe.prune, seed=recipe.seed)
    return _dry_text(recipe, prepared, summary, time.perf_counter() - started)


def _dry_text(recipe: Recipe, prepared: Prepared, s: dict, seconds: float) -> str:
    shape = "x".join(map(str, prepared.data.input_shape or ())) or "tokens"
    key, value = s["amount"].popitem()
    lines = [
        f"recipe {recipe.name}: valid",
        f"model: {prepared.label} ({type(prepared.model).__name__}); heads kept whole: "
        f"{', '.join(prepared.heads) or 'none'}",
        f"data: {prepared.data.kind}, input {shape}, "
        f"{prepared.data.num_classes or 'no'} classes, task {recipe.task}",
        f"cut: {s['kind']}, {key} {value:g}",
    ]
    if s["kind"] == "channels":
        lines.append(f"groups cut: {s['groups_cut']} ({s['units_removed']} units removed); "
                     f"verified: {'yes' if s['verify']['ok'] else 'NO'}")
        lines += [f"  {g['name']}: {g['size']} -> {g['kept']}" for g in s["groups"][:12]]
        if len(s["groups"]) > 12:
            lines.append(f"  ... and {len(s['groups']) - 12} more groups")
    else:
        lines.append(f"layers masked: {s['layers']}; sparsity after: {100 * s['sparsity']:.1f}%")
    lines += [
        f"params: {s['params_before']:,} -> {s['params_after']:,} "
        f"({_change(s['params_before'], s['params_after'])})",
        f"MACs:   {s['macs_before']:,} -> {s['macs_after']:,} "
        f"({_change(s['macs_before'], s['macs_after'])})",
        f"dry run in {seconds:.1f} s; nothing trained or written",
    ]
    if s["kind"] == "masks":
        lines.insert(-1, "(masks keep shapes: params and MACs count dense; non-zeros fall)")
    return "\n".join(lines)


def _change(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "n/a"


# --- the whole run -----------------------------------------------------------------------


def run_user(recipe: Recipe, *, out_dir: str | Path, quiet: bool = False) -> Any:
    """Run a recipe on your own model or data; see the module docs for the steps.

    Returns:
        A :class:`prunekit.run.RunResult`.
    """
    from .pipeline import RunResult

    started = time.perf_counter()
    out = Path(out_dir)
    prepared = prepare(recipe, quiet=quiet)
    _clear(out)
    record = versions()
    files = {"recipe.yaml": out / "recipe.yaml"}
    write_text(files["recipe.yaml"], dump_recipe(recipe, versions=record))
    dense = prepared.model
    _baseline(dense, prepared, recipe, quiet)
    dense_metrics = _evaluate(dense, dense, prepared, recipe, quiet, "dense")
    model = copy.deepcopy(dense)
    what = "channels: trace, plan, verify" if recipe.prune.structured else "masks"
    _say(quiet, f"cutting ({what})")
    cut_start = time.perf_counter()
    summary = cut(model, prepared, recipe.prune, seed=recipe.seed)
    _say(quiet, f"cut in {time.perf_counter() - cut_start:.1f} s: params "
                f"{summary['params_before']:,} -> {summary['params_after']:,}, sparsity "
                f"{100 * summary['sparsity']:.1f}%")
    tuned = _finetune(model, prepared, recipe, quiet)
    pruned_metrics = _evaluate(model, dense, prepared, recipe, quiet, "pruned")
    plan = summary.pop("plan")
    files.update(_save(model, plan, out))
    layers = _layer_rows(dense, model)
    metrics = {"dense": dense_metrics, "pruned": pruned_metrics,
               "run": {"task": recipe.task, "model": prepared.label, "data": prepared.data.kind,
                       "finetune": tuned, "cut": summary}}
    files.update(_report(metrics, layers, recipe, out, record))
    files["metrics.json"] = out / "metrics.json"
    write_json(files["metrics.json"], metrics)
    seconds = time.perf_counter() - started
    _say(quiet, f"done in {seconds:.1f} s; outputs in {out}")
    return RunResult(out, metrics, layers, files, seconds, model.eval())


def _clear(out: Path) -> None:
    for name in reversed(USER_FILES):
        (out / name).unlink(missing_ok=True)


def _baseline(model: nn.Module, prepared: Prepared, recipe: Recipe, quiet: bool) -> None:
    """Train a reference network that has no checkpoint (your own models come trained)."""
    if recipe.model.own or recipe.model.checkpoint is not None:
        return
    _train(model, prepared, recipe.train, recipe, quiet, "baseline")


def _finetune(model: nn.Module, prepared: Prepared, recipe: Recipe, quiet: bool) -> str:
    f, data = recipe.finetune, prepared.data
    if f.epochs == 0:
        reason = "finetune.epochs is 0"
    elif recipe.task != "classification" or data.train is None:
        reason = f"task {recipe.task} has no labels to train on here"
    else:
        _train(model, prepared, f, recipe, quiet, "fine-tune")
        bake(model)
        return f"{f.epochs} epochs ({f.optimizer}, lr {f.lr}, {f.schedule})"
    bake(model)
    _say(quiet, f"no fine-tuning: {reason}")
    return f"none ({reason})"


def _train(model: nn.Module, prepared: Prepared, config: Any, recipe: Recipe, quiet: bool,
           desc: str) -> None:
    _say(quiet, f"{desc}: {config.epochs} epochs")
    train(_Logits(model), _Batches(prepared.data.train), epochs=config.epochs, lr=config.lr,
          optimizer=config.optimizer, momentum=config.momentum,
          weight_decay=config.weight_decay, schedule=config.schedule, seed=recipe.seed,
          quiet=quiet, desc=desc)
    model.eval()


class _Keywords(dict):
    """A batch's keyword inputs (tokenized text) that move like a tensor."""

    def to(self, device: Any) -> _Keywords:
        return _Keywords({k: v.to(device) for k, v in self.items()})


class _Batches:
    """A loader whose dict inputs come as :class:`_Keywords`, for the training loop."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        for inputs, labels in self.loader:
            yield (_Keywords(inputs) if isinstance(inputs, dict) else inputs), labels

    def __len__(self) -> int:
        return len(self.loader)


class _Logits(nn.Module):
    """The model as the training loop calls it: one argument in, logits out (a dict of
    inputs goes in as keywords; ``.logits`` of a Hugging Face output comes out)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Any) -> torch.Tensor:
        return logits_of(forward(self.model, dict(inputs) if isinstance(inputs, dict)
                                 else inputs))


def _evaluate(model: nn.Module, dense: nn.Module, prepared: Prepared, recipe: Recipe,
              quiet: bool, label: str) -> dict[str, Any]:

    _say(quiet, f"evaluating the {label} model ({recipe.task}) and measuring it")
    quality = evaluate_task(recipe.task, model, prepared.data.test, reference=dense,
                            num_classes=prepared.num_classes)
    m = recipe.measure
    cost = measure_cost(model, _head(prepared.example, 1), batch_sizes=tuple(m.batch_sizes),
                        threads=m.threads, runs=m.latency_runs)
    confusion = quality.pop("confusion_matrix", None)
    out = {**quality, "sparsity": sparsity_of(model), **cost}
    if confusion is not None:
        out["confusion_matrix"] = confusion
    return out


def _save(model: nn.Module, plan: Any, out: Path) -> dict[str, Path]:
    files = {"pruned.safetensors": out / "pruned.safetensors"}
    save_safetensors(files["pruned.safetensors"], model.state_dict())
    if plan is not None:
        files["plan.json"] = out / "plan.json"
        plan.save(files["plan.json"])
    return files


def _layer_rows(dense: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Per prunable weight: parameters before and after, and non-zeros after."""
    after = {t.name: t.weight.detach() for t in find_targets(pruned)}
    rows = []
    for t in find_targets(dense):
        w = after.get(t.name)
        params_after = w.numel() if w is not None else 0
        nonzero = int(torch.count_nonzero(w)) if w is not None else 0
        rows.append({"name": t.name, "params": t.weight.numel(), "params_after": params_after,
                     "nonzero_params": nonzero,
                     "kept": nonzero / t.weight.numel() if t.weight.numel() else 0.0})
    return rows


def _report(metrics: dict, layers: list[dict], recipe: Recipe, out: Path,
            record: dict[str, str]) -> dict[str, Path]:

    files = {LAYERS_CHART: out / LAYERS_CHART}
    plot_layers(layers, files[LAYERS_CHART], title=f"{recipe.name}: weights kept per layer")
    files["report.md"] = out / "report.md"
    text = render_markdown(metrics, layers, recipe, record, chart=LAYERS_CHART)
    write_text(files["report.md"], text)
    files["report.html"] = render_html(out, metrics=metrics, markdown=text)
    return files
