"""One-shot layer methods: how one Linear layer is pruned from its calibration statistics.

Each method is registered by name and maps ``(weight, stats, target)`` to a new
weight and a boolean keep-mask; ``oneshot`` then writes the weight and attaches
the mask through :mod:`prunekit.mask`.

- ``magnitude``: ``|W|``, one ranking per layer (Han et al. 2015); needs no data.
- ``wanda``: ``|W_ij| * ||X_j||_2`` ranked within each output row (Sun et al. 2023).
- ``sparsegpt``: OBS mask selection and reconstruction with the input Hessian
  (Frantar & Alistarh 2023); the only method that changes the kept weights.

With an N:M pattern every method keeps the ``N`` best of each ``M`` consecutive
input weights of a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._registry import Registry
from ..allocation import nm_keep
from ..importance.activation import InputStats
from .sparsegpt import sparsegpt_prune


@dataclass(frozen=True)
class LayerTarget:
    """What one layer must reach: an unstructured sparsity or an N:M pattern."""

    sparsity: float
    nm: tuple[int, int] | None
    blocksize: int = 128
    dampening: float = 0.01


LayerFn = Callable[[torch.Tensor, InputStats | None, torch.Tensor | None, LayerTarget],
                   tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    """A one-shot method: its layer function and the statistics it needs."""

    name: str
    fn: LayerFn
    needs: str | None  # None, "norm" (input-feature norms) or "gram" (X^T X)


_METHODS: Registry[Method] = Registry("one-shot method")


def register_method(name: str, *, needs: str | None) -> Callable[[LayerFn], LayerFn]:
    """Register ``fn(weight, stats, old_keep, target) -> (weight, keep)`` as ``name``."""

    def add(fn: LayerFn) -> LayerFn:
        _METHODS.register(name)(Method(name, fn, needs))
        return fn

    return add


def get_method(name: str) -> Method:
    """The method registered as ``name`` (an unknown name lists the valid ones)."""
    return _METHODS.get(name)


def list_methods() -> list[str]:
    """Names of the one-shot methods."""
    return _METHODS.names()


def select_keep(scores: torch.Tensor, target: LayerTarget, *, per_row: bool) -> torch.Tensor:
    """Keep-mask from scores (``-inf`` = already pruned): N:M, per row, or per layer."""
    if target.nm is not None:
        return nm_keep(scores, *target.nm, dim=1)
    flat = scores if per_row else scores.reshape(1, -1)  # (groups, candidates)
    k = int(round(target.sparsity * flat.shape[1]))
    order = torch.argsort(flat, dim=1, stable=True)
    pruned = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order[:, :k], True)
    pruned |= torch.isneginf(flat)
    return ~pruned.reshape(scores.shape)


def _masked(scores: torch.Tensor, old_keep: torch.Tensor | None) -> torch.Tensor:
    scores = scores.float()
    return scores if old_keep is None else scores.masked_fill(~old_keep, float("-inf"))


@register_method("magnitude", needs=None)
def magnitude(weight, stats, old_keep, target):
    """|W|, ranked over the whole layer (the Wanda paper's magnitude baseline)."""
    keep = select_keep(_masked(weight.abs(), old_keep), target, per_row=False)
    return weight.masked_fill(~keep, 0.0), keep


@register_method("wanda", needs="norm")
def wanda(weight, stats, old_keep, target):
    """|W_ij| * ||X_j||_2 ranked within each output row (Sun et al. 2023)."""
    norm = stats.feature_norm().to(weight.device)
    scores = weight.abs().float() * norm.reshape(1, -1)  # (out, in)
    keep = select_keep(_masked(scores, old_keep), target, per_row=True)
    return weight.masked_fill(~keep, 0.0), keep


@register_method("sparsegpt", needs="gram")
def sparsegpt(weight, stats, old_keep, target):
    """OBS pruning with reconstruction of the kept weights (Frantar & Alistarh 2023)."""
    gram = stats.gram / max(stats.rows, 1)
    blocksize = target.blocksize
    if target.nm is not None:  # an N:M group never straddles two column blocks
        blocksize = max(target.nm[1], blocksize - blocksize % target.nm[1])
    new, keep = sparsegpt_prune(
        weight, gram, sparsity=target.sparsity, nm=target.nm, blocksize=blocksize,
        dampening=target.dampening, forced=None if old_keep is None else ~old_keep,
    )
    return new.to(weight.dtype), keep
