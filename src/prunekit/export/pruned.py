"""Saving and loading pruned models: a JSON plan plus safetensors weights, no pickles."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._io import save_safetensors
from ..errors import ConfigError
from ..surgery import Plan
from ..surgery.apply import apply_undoable


def save_pruned(model: nn.Module, plan: Plan, directory: str | os.PathLike[str]) -> tuple[str, str]:
    """Write ``plan.json`` and ``weights.safetensors`` (tied tensors once) into ``directory``.

    Returns:
        The paths of the plan and of the weights.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"cannot save into {os.fspath(directory)!r}: it is a file; "
                          "pass the path of a directory (it is created if missing)")
    os.makedirs(directory, exist_ok=True)
    plan_path = os.path.join(directory, "plan.json")
    weights_path = os.path.join(directory, "weights.safetensors")
    state = model.state_dict()
    for alias in plan.aliases:
        state.pop(alias, None)
    plan.save(plan_path)
    save_safetensors(weights_path, state, metadata={"format": "prunekit"})
    return plan_path, weights_path


def load_pruned(
    model: nn.Module,
    plan: Plan | str | os.PathLike[str],
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Rebuild a pruned model: replay ``plan`` on a freshly built ``model``, then load weights.

    No pickled objects are read: the plan is JSON and the weights safetensors.

    Args:
        model: a freshly constructed instance of the original architecture.
        plan: a :class:`Plan` or the path of its JSON file.
        weights: a safetensors file (or a state dict) of the pruned model; every
            tensor must be present (tied tensors may appear once).

    Returns:
        ``model``, pruned and loaded.

    Raises:
        ConfigError: a damaged plan or weights file, or weights of another pruning, named by
            file and entry. Everything is checked before the model changes: on an error the
            model is left as it was.
    """
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    state = None
    if weights is not None:
        state = dict(weights) if isinstance(weights, Mapping) else _read_safetensors(weights)
        _check_weights(model, plan, state, _source(weights))
    undo = apply_undoable(model, plan)
    if state is None:
        return model
    on_meta = any(t.device.type == "meta" for t in model.parameters())
    # safetensors keeps no per-module versions; modules that check theirs while loading
    # (torchvision's MNASNet) get those of the freshly built model, which the weights match.
    own = model.state_dict()
    state = OrderedDict(state)
    state._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=False, assign=on_meta)
    except Exception as e:
        undo()
        raise ConfigError(f"the weights in {_source(weights)} do not load into the pruned model "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); pass "
                          "the weights saved with this plan") from None
    return model


def _source(weights: Any) -> str:
    return "the state dict" if isinstance(weights, Mapping) else repr(os.fspath(weights))


def _check_weights(model: nn.Module, plan: Plan, state: Mapping[str, Any], source: str) -> None:
    """Every tensor the pruned model will have is in ``state`` with the shape the plan gives."""
    shapes = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    for name, cut in plan.tensors.items():
        for full in [name, *[a for a, n in plan.aliases.items() if n == name]]:
            if full in shapes:
                shapes[full] = cut.new_shape
    missing = sorted(set(shapes) - set(state) - set(plan.aliases))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ConfigError(f"the weights in {source} do not match the pruned model (missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}); pass the weights saved "
                          "with this plan")
    cut = set(plan.tensors) | {a for a, n in plan.aliases.items() if n in plan.tensors}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"entry {name!r} of {source} is not a tensor")
        if name in cut and tuple(t.shape) != shapes[name]:
            raise ConfigError(
                f"entry {name!r} of {source} has shape {tuple(t.shape)} but the plan gives "
                f"{shapes[name]}: these weights belong to another pruning; pass the weights "
                "saved with this plan")


def _read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise ConfigError(f"weights file {os.fspath(path)!r} does not exist")
    try:
        return load_file(os.fspath(path))
    except Exception as e:  # SafetensorError, OSError: a damaged or foreign file
        raise ConfigError(f"weights file {os.fspath(path)!r} is not a readable safetensors file "
                          f"({type(e).__name__}: {e}); save it again with pk.save_pruned") from None
