"""Resolve a model name given on the command line to a model and example inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .catalog import get_source, list_sources
from .reference import build_model


def resolve_model(spec: str, *, input_shape: tuple[int, ...] = (1, 28, 28),
                  num_classes: int = 10) -> tuple[nn.Module, Any]:
    """``"lenet5"`` (a prunekit reference network) or ``"SOURCE:NAME"`` from a zoo source
    (``"torchvision:resnet18"``, ``"transformers:llama"``, ``"rnn:char_lm"``), with random
    weights and example inputs.

    Example:
        >>> model, inputs = resolve_model("torchvision:resnet18")
    """
    if ":" not in spec:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(spec, input_shape=input_shape, num_classes=num_classes)
        return model.eval(), torch.randn(1, *input_shape)
    source, name = spec.split(":", 1)
    if source not in list_sources():
        raise ConfigError(f"unknown model source {source!r}; valid: {', '.join(list_sources())}")
    entries = {m.name: m for m in get_source(source)}
    if name not in entries:
        sample = ", ".join(sorted(entries)[:8])
        raise ConfigError(f"no model {name!r} in source {source!r}; it has e.g. {sample}")
    entry = entries[name]
    return entry.create(), entry.example_inputs()
