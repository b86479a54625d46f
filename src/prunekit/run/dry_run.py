"""``prunekit run --dry-run``: validate a recipe, build its model and one batch, trace and
cut a copy, and say what would be cut (groups, parameters and MACs before and after), in
seconds, with nothing trained or written.

Example:
    >>> print(dry_run(load_recipe("recipe.yaml")))
    recipe mine: valid
    ...
"""

from __future__ import annotations

import copy
import dataclasses
import time

from torch import nn

from ..measure import count_macs, count_params
from ..oneshot import oneshot
from ..sparsify import sparsify, sparsity_of
from ..structured import prune as prune_model
from ..verify import verify
from .prepare import Prepared, head_of, prepare, say
from .recipe import PruneConfig, Recipe

__all__ = ["cut", "dry_run"]


# --- the cut -----------------------------------------------------------------------------


def cut(model: nn.Module, prepared: Prepared, prune: PruneConfig, *, seed: int) -> dict:
    """Cut ``model`` once as ``prune`` says; returns what was cut (and the plan for channels)."""
    before = {"params": count_params(model), "macs": count_macs(model, head_of(prepared.example,
                                                                            1)).dense}
    if prune.method is not None:
        summary = _oneshot_cut(model, prune)
    elif prune.structured:
        summary = _channel_cut(model, prepared, prune, seed=seed)
    else:
        summary = _mask_cut(model, prune, seed=seed)
    after = {"params": count_params(model), "macs": count_macs(model, head_of(prepared.example,
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


def _oneshot_cut(model: nn.Module, prune: PruneConfig) -> dict:
    """``prune.method`` cuts the same layers by magnitude: no calibration data is read."""
    key, value = prune.amount
    config = dataclasses.replace(prune.oneshot_config(quiet=True), method="magnitude")
    result = oneshot(model, None, config)
    return {"kind": f"{prune.method} block by block over {result.blocks} "
                    f"({len(result.block_sparsity)} blocks; {prune.calibration_batches} "
                    "calibration batches of the training split; the dry run cuts by magnitude)",
            "amount": {key: value}, "layers": len(result.layer_sparsity), "plan": None}


def _channel_cut(model: nn.Module, prepared: Prepared, prune: PruneConfig, *, seed: int) -> dict:
    key, value = prune.amount
    amount = {"ratio": value} if key == "ratio" else {"target": {key: value}}
    ignore = [*prepared.heads, *(prune.ignore or ())]
    original = copy.deepcopy(model)
    plan = prune_model(model, prepared.example, **amount, criterion=prune.criterion,
                    scope=prune.scope, max_ratio=prune.max_ratio, round_to=prune.round_to,
                    ignore=ignore, seed=seed)
    check = verify(original, model, plan, prepared.example)
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
    say(quiet, "tracing and cutting a copy of the model")
    trial = copy.deepcopy(prepared.model)
    summary = cut(trial, prepared, recipe.prune, seed=recipe.seed)
    return _dry_text(recipe, prepared, summary, time.perf_counter() - started)


def _dry_text(recipe: Recipe, prepared: Prepared, s: dict, seconds: float) -> str:
    shape = "x".join(map(str, prepared.data.input_shape or ())) or "varied"
    key, value = s["amount"].popitem()
    lines = [
        f"recipe {recipe.name}: valid",
        f"model: {prepared.label} ({type(prepared.model).__name__}); heads kept whole: "
        f"{', '.join(prepared.heads) or 'none'}",
        f"data: {prepared.data.kind}, input {shape}, "
        f"{prepared.data.num_classes or 'no'} classes, task {prepared.task.name}",
        f"cut: {s['kind']}, {key} {value if isinstance(value, str) else f'{value:g}'}",
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
    if s["kind"] != "channels":
        lines.insert(-1, "(masks keep shapes: params and MACs count dense; non-zeros fall)")
    return "\n".join(lines)


def _change(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "n/a"
