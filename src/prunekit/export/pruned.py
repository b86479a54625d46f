"""Saving and loading pruned models: a JSON plan plus safetensors weights, no pickles."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from .._io import save_safetensors
from ..errors import ConfigError
from ..surgery import Plan, apply_plan


def save_pruned(model: nn.Module, plan: Plan, directory: str | os.PathLike[str]) -> tuple[str, str]:
    """Write ``plan.json`` and ``weights.safetensors`` (tied tensors once) into ``directory``.

    Returns:
        The paths of the plan and of the weights.
    """
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
    """
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    apply_plan(model, plan)
    if weights is None:
        return model
    state = dict(weights) if isinstance(weights, Mapping) else _read_safetensors(weights)
    own = model.state_dict()
    expected = set(own)
    missing = sorted(expected - set(state) - set(plan.aliases))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(f"weights do not match the pruned model (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}); pass the weights saved with this plan")
    on_meta = any(t.device.type == "meta" for t in model.parameters())
    # safetensors keeps no per-module versions; modules that check theirs while loading
    # (torchvision's MNASNet) get those of the freshly built model, which the weights match.
    state = OrderedDict(state)
    state._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=False, assign=on_meta)
    return model


def _read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise ConfigError(f"weights file {os.fspath(path)!r} does not exist")
    return load_file(os.fspath(path))
