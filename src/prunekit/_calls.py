"""Calling a model on example inputs, one way everywhere: a tensor, a tuple or list of
positional arguments, or a dict of keyword arguments (Hugging Face models)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["eval_mode", "flatten_tensors", "run_model", "to_device", "to_meta"]


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors inside nested tuples, lists, dicts and Hugging Face ``ModelOutput`` objects."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in flatten_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in flatten_tensors(v)]
    if hasattr(obj, "data") and type(obj).__name__ == "PackedSequence":
        return [obj.data]
    return []


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with example inputs: a tensor, a tuple/list of arguments, or keywords."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def to_meta(obj: Any) -> Any:
    """Example inputs with every tensor replaced by a meta tensor of the same shape."""
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj, device="meta")
    if isinstance(obj, Mapping):
        return type(obj)({k: to_meta(v) for k, v in obj.items()}) if isinstance(obj, dict) \
            else {k: to_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_meta(v) for v in obj)
    return obj


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Inputs with every tensor inside tuples, lists, named tuples and dicts moved to
    ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every module's own train/eval flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
