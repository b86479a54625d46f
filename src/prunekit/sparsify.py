"""Unstructured, neuron and N:M sparsity with masks: shapes stay, zeros stay.

``sparsify`` scores every prunable weight with a criterion, groups scores into
units (single weights or whole neurons), lets a rule and a scope decide which
units go, and attaches masks, all or nothing: every decision is made before the
first mask is attached, and a rejected call leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from . import mask as _mask
from ._registry import Registry
from ._utils import match_any
from .allocation import Rule, nm_keep, parse_pattern, select
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
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    percentile: float | None = None,
    std_k: float | None = None,
    pattern: str | None = None,
    criterion: str = "magnitude",
    scope: str | None = None,
    granularity: str = "weight",
    exclude: Sequence[str] = (),
    protect_output: bool = False,
    data: Iterable | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batches: int = 8,
    fisher_samples: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Mask the least important weights of ``model`` in place.

    Exactly one rule says how much to cut: ``sparsity`` (fraction in [0, 1)),
    ``threshold`` (absolute score), ``percentile`` (of the scores, in [0, 100)),
    ``std_k`` (prune scores below mean + k * std), or ``pattern`` ("N:M", keep N
    of every M consecutive input weights). Weights pruned by an earlier call stay
    pruned and count toward the target, so repeated calls prune iteratively.

    Args:
        model: the network; Linear, Conv, ConvTranspose, LSTM/GRU/RNN and
            MultiheadAttention weights are prunable. Biases and normalization
            parameters are left alone (except the bias of a pruned neuron).
        criterion: a name from :func:`list_criteria`.
        scope: ``"layer"`` (each layer on its own), ``"global"`` (one ranking),
            ``"lamp"`` (global over LAMP-normalized scores) or ``"row"`` (each output
            row on its own, as Wanda compares). Default: the criterion's own scope
            (``"row"`` for ``wanda``), else ``"layer"``.
        granularity: ``"weight"`` or ``"neuron"`` (whole rows / filters).
        exclude: module or parameter name patterns to leave dense (``"fc"``,
            ``"re:layer[0-9]+\\.conv1"``); a pattern that matches nothing is an error.
        protect_output: leave the last prunable layer (the classifier) dense.
        data: ``(inputs, targets)`` batches for data-driven criteria (gradient,
            taylor, obd).
        loss_fn: loss for data-driven criteria; cross-entropy by default.
        batches: batches used for mean gradients.
        fisher_samples: single samples used for the Fisher diagonal (obd).
        seed: seed of the ``random`` criterion.

    Returns:
        Qualified weight name -> its sparsity after the call.

    Example:
        >>> pk.sparsify(model, sparsity=0.9, criterion="magnitude", scope="global")
        >>> pk.sparsify(model, pattern="2:4")
    """
    rule, nm = _parse_rule(sparsity, threshold, percentile, std_k, pattern)
    crit = get_criterion(criterion)
    scope = scope or crit.scope or "layer"
    if rule and scope != ROW_SCOPE:
        select({}, rule, scope=scope)  # validates the scope name early
    gran = _GRANULARITIES.get(granularity)
    if nm and granularity != "weight":
        raise ConfigError("an N:M pattern works on single weights; use granularity='weight'")
    targets = _select_targets(model, exclude, protect_output)
    weights = {t.name: t.weight for t in targets}
    stats = collect_stats(
        model,
        weights,
        data,
        needs=crit.needs,
        loss_fn=loss_fn,
        batches=batches,
        fisher_samples=fisher_samples,
        generator=torch.Generator().manual_seed(seed),
    )
    scores = {t.name: _scores(t, crit(t.weight, stats[t.name])) for t in targets}
    if nm:
        keep = {t.name: nm_keep(scores[t.name], *nm, dim=t.spec.in_dim) for t in targets}
    else:
        keep = _keep(targets, scores, rule, scope, gran, granularity)
    _attach(targets, keep, neurons=granularity == "neuron")
    return {t.name: _zero_fraction(t.weight) for t in targets}


ROW_SCOPE = "row"


def _keep(targets, scores, rule, scope, gran, granularity) -> dict[str, torch.Tensor]:
    if scope == ROW_SCOPE:
        if granularity != "weight":
            raise ConfigError("scope='row' ranks single weights; use granularity='weight'")
        return {t.name: ~_row_prune(scores[t.name], rule, t.spec.out_dim) for t in targets}
    units = {t.name: gran.unit_scores(scores[t.name], t) for t in targets}
    pruned = select(units, rule, scope=scope)
    return {t.name: ~gran.expand(pruned[t.name], t) for t in targets}


def _row_prune(scores: torch.Tensor, rule: Rule, out_dim: int) -> torch.Tensor:
    """The rule applied to each output row on its own (Wanda's comparison group)."""
    rows = scores.movedim(out_dim, 0).flatten(1)  # (out, rest)
    if rule.kind == "sparsity":  # vectorized: the k lowest of every row
        k = int(round(rule.value * rows.shape[1]))
        order = torch.argsort(rows, dim=1, stable=True)
        pruned = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, order[:, :k], True)
        pruned |= torch.isneginf(rows)
    else:
        pruned = torch.stack([rule.prune(r) for r in rows]) if rows.numel() else rows.bool()
    return pruned.reshape(scores.movedim(out_dim, 0).shape).movedim(0, out_dim)


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


def list_granularities() -> list[str]:
    """Names of the unit granularities ``sparsify`` accepts."""
    return _GRANULARITIES.names()


def _parse_rule(
    sparsity, threshold, percentile, std_k, pattern
) -> tuple[Rule | None, tuple | None]:
    given = {
        k: v
        for k, v in dict(
            sparsity=sparsity, threshold=threshold, percentile=percentile, std=std_k
        ).items()
        if v is not None
    }
    if pattern is not None:
        if given:
            raise ConfigError(
                f"pattern={pattern!r} fixes the sparsity itself; drop {', '.join(given)}"
            )
        return None, parse_pattern(pattern)
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of sparsity, threshold, percentile, std_k or pattern"
            + (f" (got {', '.join(given)})" if given else "")
        )
    ((kind, value),) = given.items()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{kind} must be a number, got {value!r}") from None
    return Rule(kind, value), None


def _select_targets(model: nn.Module, exclude: Sequence[str], protect_output: bool) -> list[Target]:
    if isinstance(exclude, str):
        exclude = [exclude]
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
                f"exclude pattern {pattern!r} matches no module or parameter; "
                f"prunable weights are named like: {sample}"
            )
    kept = [
        t for t in targets if not (match_any(t.module_name, exclude) or match_any(t.name, exclude))
    ]
    if protect_output and kept and kept[-1].module is targets[-1].module:
        kept = [t for t in kept if t.module is not targets[-1].module]
    if not kept:
        raise ConfigError("every prunable weight is excluded; nothing left to prune")
    return kept


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
