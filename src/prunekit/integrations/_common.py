"""What both trainer callbacks share: stepping a pruner to the trainer's step, and models
that accept saved masks while their weights are loaded."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .._io import write_bytes
from ..errors import ConfigError
from ..mask import SUFFIX, attach_mask, get_mask

STATE_FILE = "prunekit_pruner.pt"


class Stateful(Protocol):
    """A pruner a trainer can drive: :class:`prunekit.Pruner`, or
    :class:`~prunekit.schedules.Surgery`."""

    model: nn.Module
    step_count: int

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_pruner(pruner: Any) -> Stateful:
    """``pruner`` if it can be driven by a trainer; a ConfigError that says what is missing."""
    missing = [n for n in ("step", "state_dict", "load_state_dict", "step_count", "model")
               if not hasattr(pruner, n)]
    if missing:
        raise ConfigError(
            f"{type(pruner).__name__} cannot be driven by a trainer (it has no "
            f"{', '.join(missing)}); pass a prunekit.Pruner or prunekit.schedules.Surgery"
        )
    return pruner


def catch_up(pruner: Stateful, global_step: int) -> None:
    """Step ``pruner`` until it has seen ``global_step`` optimizer steps.

    Trainers count optimizer steps (one per ``gradient_accumulation_steps`` batches);
    the pruner takes one step per optimizer step, as it does in a plain loop.
    """
    while pruner.step_count < global_step:
        pruner.step()


def accept_saved_masks(model: nn.Module) -> Any:
    """Let ``model.load_state_dict`` take ``*_mask`` entries of parameters not masked yet.

    A trainer restores the weights before it restores callbacks; a checkpoint taken after
    a cut holds ``weight_mask`` buffers that a freshly built model does not have. This
    load-state-dict pre-hook attaches each such mask before the weights are copied, so a
    strict load succeeds. Returns the hook handle.
    """
    modules = dict(model.named_modules())

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix) and k.endswith(SUFFIX)]:
            owner_name, _, local = key[len(prefix):].rpartition(".")
            owner = modules.get(owner_name)
            param = local[: -len(SUFFIX)]
            weight = getattr(owner, param, None) if owner is not None else None
            if isinstance(weight, torch.Tensor) and get_mask(owner, param) is None:
                attach_mask(owner, param, state_dict[key].to(torch.bool))

    return model.register_load_state_dict_pre_hook(hook)


def save_state(pruner: Stateful, path: Path) -> None:
    """Write the pruner's state (masks, step, schedule) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(pruner.state_dict(), buffer)
    write_bytes(path, buffer.getvalue())


def load_state(pruner: Stateful, path: Path) -> None:
    """Read a state written by :func:`save_state` (weights only, never unpickling code)."""
    pruner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
