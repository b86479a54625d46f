"""Unstructured, neuron and N:M sparsity with masks: shapes stay, zeros stay.

``sparsify`` scores every prunable weight with a criterion, groups scores into
units (single weights or whole neurons), lets a rule and a scope decide which
units go, and attaches masks, all or nothing: every decision is made before the
first mask is attached, and a rejected call leaves the model untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from . import mask as _mask
from ._registry import Registry
from ._utils import match_any
from .allocation import nm_keep, select
from .config import NM, SparsifyConfig, fold_exclude, split_ignore
from .errors import ConfigError
from .importance import collect_stats, get_criterion
from .mask.targets import Target, find_targets


class Granularity:
    """Units that are scored and pruned together within one weight tensor."""

    def unit_scores(self, scores: torch.Tensor, target: Target) -> torch.Tensor:
        """1-D scores of the units of this weight, from per-weight scores."""
        raise NotImplementedError

    def expand(self, pruned: torch.Tensor, target: Target) -> torch.Tensor:
        """Per-weight prune mask from the 1-D per-unit prune decision."""
        raise NotImplementedError


_GRANULARITIES: Registry[Granularity] = Registry("granularity")


class _Weights(Granularity):
    """Single weights (connections)."""

    def unit_scores(self, scores: torch.Tensor, target: Target) -> torch.Tensor:
        return scores.flatten()

    def expand(self, pruned: torch.Tensor, target: Target) -> torch.Tensor:
        return pruned.reshape(target.weight.shape)


class _Neurons(Granularity):
    """Whole output units: rows of a Linear, output filters of a Conv (shapes kept).

    A neuron's score is the sum of its weights' scores (the L1 norm for
    ``magnitude``); a neuron with ``-inf`` anywhere counts as already pruned only
    when all its weights are.
    """

    def unit_scores(self, scores: torch.Tensor, target: Target) -> torch.Tensor:
        rows = scores.movedim(target.spec.out_dim, 0).flatten(1)  # (out, rest)
        dead = torch.isneginf(rows).all(dim=1)
        total = torch.where(torch.isneginf(rows), torch.zeros_like(rows), rows).sum(dim=1)
        return torch.where(dead, torch.full_like(total, float("-inf")), total)

    def expand(self, pruned: torch.Tensor, target: Target) -> torch.Tensor:
        shape = [1] * target.weight.dim()
        shape[target.spec.out_dim] = -1
        return pruned.reshape(shape).expand(target.weight.shape)


_GRANULARITIES.register("weight")(_Weights())
_GRANULARITIES.register("neuron")(_Neurons())


def sparsify(
    model: nn.Module,
    config: SparsifyConfig | None = None,
    *,
    data: Iterable | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **options: Any,
) -> dict[str, float]:
    """Mask the least important weights of ``model`` in place.

    Exactly one amount says how much to cut: ``sparsity`` (fraction in [0, 1)),
    ``threshold`` (absolute score), ``percentile`` (of the scores, in [0, 100)),
    ``std_k`` (prune scores below mean + k * std), or ``pattern`` ("N:M", keep N
    of every M consecutive input weights). Weights pruned by an earlier call stay
    pruned and count toward the target, so repeated calls prune iteratively.

    Args:
        model: the network; Linear, Conv, ConvTranspose, LSTM/GRU/RNN and
            MultiheadAttention weights are prunable. Biases and normalization
            parameters are left alone (except the bias of a pruned neuron).
        config: a :class:`~prunekit.config.SparsifyConfig`; or give its fields as keywords:
            ``sparsity`` / ``threshold`` / ``percentile`` / ``std_k`` / ``pattern``,
            ``criterion`` (:func:`list_criteria`), ``scope`` (``layer``, ``global``,
            ``lamp``, ``row``; default: the criterion's own, ``row`` for ``wanda``, else
            ``layer``), ``granularity`` (``weight`` or ``neuron``), ``ignore`` (modules,
            module or parameter names, ``re:`` patterns left dense; ``exclude`` is the
            deprecated spelling), ``protect_output``, ``batches``, ``fisher_samples``, ``seed``.
        data: ``(inputs, targets)`` batches for data-driven criteria (gradient,
            taylor, obd, fisher).
        loss_fn: loss for data-driven criteria; cross-entropy by default.

    Returns:
        Qualified weight name -> its sparsity after the call.

    Example:
        >>> pk.sparsify(model, sparsity=0.9, criterion="magnitude", scope="global")
        >>> pk.sparsify(model, pattern="2:4")
        >>> pk.sparsify(model, SparsifyConfig(amount=Rule("sparsity", 0.5), ignore=("fc",)))
    """
    config = _config(model, config, options)
    crit = get_criterion(config.criterion)
    gran = _GRANULARITIES.get(config.granularity)
    targets = select_targets(model, config.ignore, config.protect_output)
    if isinstance(config.amount, NM):
        targets = _nm_divisible(targets, config.amount.m, skip=config.skip_indivisible)
    weights = {t.name: t.weight for t in targets}
    stats = collect_stats(
        model,
        weights,
        data,
        needs=crit.needs,
        loss_fn=loss_fn,
        batches=config.calibration.batches,
        fisher_samples=config.calibration.fisher_samples,
        generator=torch.Generator().manual_seed(config.seed),
    )
    scores = {t.name: _scores(t, crit(t.weight, stats[t.name])) for t in targets}
    if isinstance(config.amount, NM):
        nm = config.amount
        keep = {t.name: nm_keep(scores[t.name], nm.n, nm.m, dim=t.spec.in_dim) for t in targets}
    else:
        rows = config.scope == "row"  # (out, rest) scores, each row ranked on its own
        units = {t.name: _rows(scores[t.name], t) if rows else gran.unit_scores(scores[t.name], t)
                 for t in targets}
        pruned = select(units, config.amount, scope=config.scope)
        keep = {t.name: ~(_unrows(pruned[t.name], t) if rows else gran.expand(pruned[t.name], t))
                for t in targets}
    _attach(targets, keep, neurons=config.granularity == "neuron")
    return {t.name: _zero_fraction(t.weight) for t in targets}


def _nm_divisible(targets: list[Target], m: int, *, skip: bool) -> list[Target]:
    """Targets whose input size is a multiple of ``m``; the others are named (an error, or a
    warning when ``skip``)."""
    bad = [t for t in targets if t.weight.shape[t.spec.in_dim] % m]
    if not bad:
        return targets
    names = ", ".join(f"{t.name} ({t.weight.shape[t.spec.in_dim]} inputs)" for t in bad[:8])
    names += f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    if not skip:
        raise ConfigError(f"an N:M pattern with M={m} needs each layer's input size to be a "
                          f"multiple of {m}; these are not: {names}; leave them dense with "
                          "ignore=[...] or skip_indivisible=True")
    warnings.warn(f"prunekit: left dense (input size not a multiple of {m}): {names}",
                  stacklevel=3)
    return [t for t in targets if t not in bad]


def _config(model: nn.Module, config: SparsifyConfig | None, options: dict) -> SparsifyConfig:
    """The config of a call: the one given, or the one its keywords spell."""
    if config is not None:
        if options:
            raise ConfigError(f"give a SparsifyConfig or keywords, not both (got "
                              f"{', '.join(options)})")
        if not isinstance(config, SparsifyConfig):
            raise ConfigError(f"config must be a SparsifyConfig, got {type(config).__name__}")
        return config
    fold_exclude(options, "sparsify")
    if "ignore" in options:
        options["ignore"] = split_ignore(model, options["ignore"])
    return SparsifyConfig.from_keywords(**options)


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all prunable weights of ``model``.

    Example:
        >>> pk.sparsify(model, sparsity=0.8); round(pk.sparsity_of(model), 2)
        0.8
    """
    targets = find_targets(model)
    total = sum(t.weight.numel() for t in targets)
    if total == 0:
        return 0.0
    zeros = sum(int((t.weight == 0).sum()) for t in targets)
    return zeros / total


#: Granularities that rebuild the network smaller (``pk.plan`` / ``pk.prune``).
STRUCTURED_GRANULARITIES = ("channel",)


def list_granularities(kind: str = "all") -> list[str]:
    """Names of the unit granularities: ``"mask"`` (``sparsify``: shapes stay),
    ``"structured"`` (``plan``: shapes shrink) or ``"all"``."""
    masks = _GRANULARITIES.names()
    choices = {"mask": masks, "structured": list(STRUCTURED_GRANULARITIES),
               "all": sorted([*masks, *STRUCTURED_GRANULARITIES])}
    if kind not in choices:
        raise ConfigError(f"unknown granularity kind {kind!r}; valid: {', '.join(choices)}")
    return choices[kind]


def select_targets(model: nn.Module, ignore: Sequence[str], protect_output: bool) -> list[Target]:
    """The prunable weights of ``model`` less those ``ignore`` names (and the classifier's
    with ``protect_output``); none left is a ConfigError."""
    exclude = list(ignore)
    targets = find_targets(model)
    if not targets:
        raise ConfigError(
            "the model has no prunable weights (Linear, Conv, ConvTranspose, LSTM/GRU/RNN, "
            "MultiheadAttention)"
        )
    names = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_parameters()]
    for pattern in exclude:
        if not any(match_any(n, [pattern]) for n in names):
            sample = ", ".join(t.name for t in targets[:6])
            raise ConfigError(
                f"ignore pattern {pattern!r} matches no module or parameter; "
                f"prunable weights are named like: {sample}"
            )
    kept = [
        t for t in targets if not (match_any(t.module_name, exclude) or match_any(t.name, exclude))
    ]
    if protect_output and kept and kept[-1].module is targets[-1].module:
        kept = [t for t in kept if t.module is not targets[-1].module]
    if not kept:
        raise ConfigError("every prunable weight is ignored; nothing left to prune")
    return kept


def _rows(scores: torch.Tensor, target: Target) -> torch.Tensor:
    return scores.movedim(target.spec.out_dim, 0).flatten(1)  # (out, rest)


def _unrows(pruned: torch.Tensor, target: Target) -> torch.Tensor:
    shape = target.weight.movedim(target.spec.out_dim, 0).shape
    return pruned.reshape(shape).movedim(0, target.spec.out_dim)


def _scores(target: Target, scores: torch.Tensor) -> torch.Tensor:
    """Scores with already-masked weights at -inf, so they stay pruned."""
    if scores.shape != target.weight.shape:
        raise ConfigError(
            f"criterion returned shape {tuple(scores.shape)} for {target.name} "
            f"of shape {tuple(target.weight.shape)}"
        )
    scores = scores.float()
    old = _mask.get_mask(target.module, target.spec.param)
    if old is not None:
        scores = scores.masked_fill(~old, float("-inf"))
    return scores


def _attach(targets: list[Target], keep: dict[str, torch.Tensor], *, neurons: bool) -> None:
    for t in targets:
        _mask.attach_mask(t.module, t.spec.param, keep[t.name])
        bias = t.spec.bias and getattr(t.module, t.spec.bias, None)
        if neurons and bias is not None:
            dims = [d for d in range(keep[t.name].dim()) if d != t.spec.out_dim]
            alive = keep[t.name].any(dim=dims) if dims else keep[t.name]
            old = _mask.get_mask(t.module, t.spec.bias)
            _mask.attach_mask(t.module, t.spec.bias, alive if old is None else alive & old)


def _zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / max(weight.numel(), 1)
