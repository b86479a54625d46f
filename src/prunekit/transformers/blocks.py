"""Whole decoder blocks: ranked by how little they change their input, then removed.

Two rankings, both measured on calibration data at every token:

- ``"cosine"``: a block's Block Influence ``1 - cos(h_in, h_out)``; the ``n`` blocks of
  lowest influence go, wherever they are (Men et al. 2024, "ShortGPT: Layers in Large
  Language Models are More Redundant Than You Expect").
- ``"angular"``: the angular distance ``arccos(cos(h_l, h_{l+n})) / pi`` between the input
  of block ``l`` and the output of block ``l+n-1``; the ``n`` consecutive blocks with the
  smallest distance go (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the
  Deeper Layers").

Removing blocks rewrites ``config.num_hidden_layers`` and every per-layer config list
(``layer_types``), and renumbers the ``layer_idx`` the kept blocks use to find their
cache entries, so generation with a cache works and ``save_pretrained`` /
``from_pretrained`` round-trips.

Example:
    >>> ranking = rank_blocks(model, batches, metric="angular", n=4)
    >>> remove_blocks(model, ranking.chosen)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from ..errors import ConfigError
from ..importance.group_activation import model_inputs, run_model
from ._model import decoder_layers, hf_config, take

_METRICS: Registry[Any] = Registry("block metric")


@dataclass
class BlockRanking:
    """How much each block changes its input, and which blocks to remove.

    Attributes:
        metric: ``"cosine"`` or ``"angular"``.
        influence: per block, ``1 - cos(input, output)`` averaged over tokens.
        window: for ``"angular"``, per start block ``l``, the angular distance between
            the input of block ``l`` and the output of block ``l+n-1``.
        chosen: the blocks to remove (sorted).
    """

    metric: str
    influence: list[float]
    window: list[float] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)


@dataclass
class BlockCut:
    """A record of removed blocks (enough to redo it on a freshly built model).

    Attributes:
        removed: indices of the removed blocks in the original numbering.
        before: the config fields that were rewritten, with their old values.
    """

    removed: list[int]
    before: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"removed": list(self.removed), "before": dict(self.before)}


def rank_blocks(model: nn.Module, data: Iterable, *, n: int = 1, metric: str = "angular",
                batches: int | None = None) -> BlockRanking:
    """Measure every block's effect on its input over calibration data.

    Args:
        model: a Hugging Face decoder.
        data: calibration batches (token ids or dicts of model inputs).
        n: how many blocks to choose for removal.
        metric: ``"angular"`` (consecutive window, Gromov et al. 2024) or ``"cosine"``
            (lowest Block Influence, ShortGPT).
        batches: use at most this many batches.

    Returns:
        A :class:`BlockRanking` whose ``chosen`` blocks are the ones to remove.
    """
    _, layers = decoder_layers(model)
    _METRICS.get(metric)
    _check_n(n, len(layers))
    batch_list = take(data, batches)
    cos_sum = torch.zeros(len(layers) + 1, len(layers) + 1, dtype=torch.float64)
    tokens = 0
    for batch in batch_list:
        states = _boundary_states(model, layers, model_inputs(batch))  # L+1 x (N, H)
        tokens += states[0].shape[0]
        for i in range(len(states)):
            for j in range(i + 1, len(states)):
                cos_sum[i, j] += _cos(states[i], states[j]).sum()
    cos = cos_sum / tokens  # mean cosine between boundaries i < j
    return _METRICS.get(metric)(cos, len(layers), n)


@_METRICS.register("cosine")
def _shortgpt(cos: torch.Tensor, count: int, n: int) -> BlockRanking:
    influence = [float(1 - cos[i, i + 1]) for i in range(count)]
    chosen = sorted(sorted(range(count), key=lambda i: influence[i])[:n])
    return BlockRanking("cosine", influence, [], chosen)


@_METRICS.register("angular")
def _angular(cos: torch.Tensor, count: int, n: int) -> BlockRanking:
    influence = [float(1 - cos[i, i + 1]) for i in range(count)]
    window = [math.acos(max(-1.0, min(1.0, float(cos[s, s + n])))) / math.pi
              for s in range(count - n + 1)]
    start = min(range(len(window)), key=lambda s: window[s])
    return BlockRanking("angular", influence, window, list(range(start, start + n)))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def _boundary_states(model: nn.Module, layers: nn.ModuleList, inputs: Any) -> list[torch.Tensor]:
    """Hidden states entering each block and leaving the last: L+1 tensors of (tokens, H)."""
    states: list[torch.Tensor | None] = [None] * (len(layers) + 1)

    def pre(i: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            states[i] = h.detach().reshape(-1, h.shape[-1]).double().cpu()  # (B*T, H)
        return hook

    def post(module, args, kwargs, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        states[-1] = h.detach().reshape(-1, h.shape[-1]).double().cpu()  # (B*T, H)

    hooks = [layer.register_forward_pre_hook(pre(i), with_kwargs=True)
             for i, layer in enumerate(layers)]
    hooks.append(layers[-1].register_forward_hook(post, with_kwargs=True))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_model(model, inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if any(s is None for s in states):
        raise ConfigError("some decoder blocks did not run on the calibration batch")
    return states  # type: ignore[return-value]


def _check_n(n: int, count: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < count:
        raise ConfigError(f"n must be an integer from 1 to {count - 1} (the model has {count} "
                          f"blocks and keeps at least one), got {n!r}")


def remove_blocks(model: nn.Module, indices: Iterable[int]) -> BlockCut:
    """Remove decoder blocks in place and fix the config and cache layer indices.

    Args:
        model: a Hugging Face decoder.
        indices: blocks to remove (original numbering).

    Returns:
        A :class:`BlockCut` (pass it to
        :func:`~prunekit.transformers.save_pretrained_pruned` for non-uniform saves).

    Example:
        >>> remove_blocks(model, [20, 21, 22])
    """
    cfg = hf_config(model)
    path, layers = decoder_layers(model)
    removed = _check_indices(indices, len(layers))
    kept = [i for i in range(len(layers)) if i not in set(removed)]
    lists = {k: v for k, v in cfg.to_dict().items()  # per-layer lists such as layer_types
             if isinstance(v, list) and len(v) == len(layers) and k != "architectures"
             and all(isinstance(x, str) for x in v)}
    before = {"num_hidden_layers": cfg.num_hidden_layers, **lists}
    owner, _, attr = path.rpartition(".")
    parent = model.get_submodule(owner) if owner else model
    setattr(parent, attr, nn.ModuleList([layers[i] for i in kept]))
    for new, old in enumerate(kept):
        _renumber(layers[old], old, new)
    cfg.num_hidden_layers = len(kept)
    for k, v in lists.items():
        setattr(cfg, k, [v[i] for i in kept])
    return BlockCut(removed, before)


def _check_indices(indices: Iterable[int], count: int) -> list[int]:
    try:
        out = sorted(set(int(i) for i in indices))
    except (TypeError, ValueError):
        raise ConfigError(f"block indices must be integers, got {indices!r}") from None
    if not out:
        raise ConfigError("no block to remove: pass at least one index")
    bad = [i for i in out if not 0 <= i < count]
    if bad:
        raise ConfigError(f"block indices {bad} are out of range: the model has {count} blocks "
                          f"(0..{count - 1})")
    if len(out) >= count:
        raise ConfigError(f"cannot remove all {count} blocks; keep at least one")
    return out


def _renumber(block: nn.Module, old: int, new: int) -> None:
    """Every ``layer_idx`` inside ``block`` that held ``old`` becomes ``new``."""
    for module in block.modules():
        if getattr(module, "layer_idx", None) == old:
            module.layer_idx = new


def prune_blocks(model: nn.Module, data: Iterable, *, n: int, metric: str = "angular",
                 batches: int | None = None) -> tuple[BlockRanking, BlockCut]:
    """Rank the blocks on calibration data and remove the ``n`` chosen ones, in place.

    Example:
        >>> ranking, cut = prune_blocks(model, batches, n=4, metric="angular")
    """
    ranking = rank_blocks(model, data, n=n, metric=metric, batches=batches)
    return ranking, remove_blocks(model, ranking.chosen)
