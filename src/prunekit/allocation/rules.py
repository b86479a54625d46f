"""Selection rules (how much to cut) and scopes (where the rule is applied).

Rules, one per call:

- ``sparsity``: prune exactly ``round(s * n)`` lowest-scored units of the scope;
- ``threshold``: prune units scored below an absolute value;
- ``percentile``: prune units scored below the p-th percentile of the scope;
- ``std``: prune units scored below ``mean + k * std`` of the scope's scores
  (k may be negative: ``mean - |k| * std``), the rule of Han et al. 2015 with
  the quality parameter k.

Scopes:

- ``layer``: the rule is applied to each layer on its own (uniform sparsity);
- ``global``: one ranking across all layers, so layers with small scores lose more;
- ``row``: each output row of each layer on its own (Wanda's comparison group;
  ``sparsify`` hands this scope ``(out, rest)`` scores);
- ``lamp``: global ranking of LAMP scores (Lee et al. 2021, "Layer-adaptive
  Sparsity for the Magnitude-based Pruning"), which are comparable across layers
  and never empty a layer before the others.

Units scored ``-inf`` are already pruned: they stay pruned and count toward a
sparsity target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .._registry import Registry
from ..errors import ConfigError

RULE_KINDS = ("sparsity", "threshold", "percentile", "std")


@dataclass(frozen=True)
class Rule:
    """How much to prune: ``kind`` is one of sparsity, threshold, percentile, std."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ConfigError(f"unknown rule {self.kind!r}; valid rules: {', '.join(RULE_KINDS)}")
        v = self.value
        if not np.isfinite(v):
            raise ConfigError(f"{self.kind} must be a finite number, got {v}")
        if self.kind == "sparsity" and not 0.0 <= v < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {v}; 0.9 keeps 10% of weights")
        if self.kind == "percentile" and not 0.0 <= v < 100.0:
            raise ConfigError(f"percentile must be in [0, 100), got {v}")

    def prune(self, scores: torch.Tensor) -> torch.Tensor:
        """Boolean mask of units to prune among the 1-D ``scores`` of one scope."""
        done = torch.isneginf(scores)
        if self.kind == "sparsity":
            k = int(round(self.value * scores.numel()))
            order = torch.argsort(scores, stable=True)  # -inf (already pruned) first
            out = torch.zeros_like(done)
            out[order[:k]] = True
            return out | done
        return (scores < self._threshold(scores[~done])) | done

    def _threshold(self, live: torch.Tensor) -> float:
        if self.kind == "threshold":
            return self.value
        if live.numel() == 0:
            return float("-inf")
        values = live.double().cpu().numpy()
        if self.kind == "percentile":
            return float(np.percentile(values, self.value))
        return float(values.mean() + self.value * values.std())


Scope = Callable[[dict[str, torch.Tensor], Rule], dict[str, torch.Tensor]]
_SCOPES: Registry[Scope] = Registry("scope")


def list_scopes() -> list[str]:
    """Names of the registered scopes."""
    return _SCOPES.names()


def select(scores: dict[str, torch.Tensor], rule: Rule, *, scope: str) -> dict[str, torch.Tensor]:
    """Decide which units to prune.

    Args:
        scores: layer name -> 1-D unit scores (``-inf`` = already pruned).
        rule: how much to prune.
        scope: ``"layer"``, ``"global"`` or ``"lamp"`` (see :func:`list_scopes`).

    Returns:
        layer name -> 1-D boolean tensor, True where the unit is pruned.

    Example:
        >>> select({"fc": torch.tensor([0.1, 3.0])}, Rule("sparsity", 0.5), scope="layer")
        {'fc': tensor([ True, False])}
    """
    return _SCOPES.get(scope)(scores, rule)


@_SCOPES.register("layer")
def _layer(scores: dict[str, torch.Tensor], rule: Rule) -> dict[str, torch.Tensor]:
    return {name: rule.prune(s) for name, s in scores.items()}


@_SCOPES.register("global")
def _global(scores: dict[str, torch.Tensor], rule: Rule) -> dict[str, torch.Tensor]:
    if not scores:
        return {}
    flat = torch.cat([s.flatten().double().cpu() for s in scores.values()])
    pruned = rule.prune(flat)
    sizes = [s.numel() for s in scores.values()]
    return dict(
        zip(
            scores,
            (p.to(s.device) for p, s in zip(pruned.split(sizes), scores.values(), strict=False)),
            strict=False,
        )
    )


@_SCOPES.register("row")
def _row(scores: dict[str, torch.Tensor], rule: Rule) -> dict[str, torch.Tensor]:
    """Each row of a 2-D ``(out, rest)`` score tensor on its own: the per-output comparison
    group of Wanda (Sun et al. 2023). A 1-D tensor is one row."""
    return {name: _prune_rows(s, rule) for name, s in scores.items()}


def _prune_rows(scores: torch.Tensor, rule: Rule) -> torch.Tensor:
    rows = scores.reshape(-1, scores.shape[-1]) if scores.dim() else scores.reshape(1, 1)
    if rule.kind == "sparsity":  # vectorized: the k lowest of every row
        k = int(round(rule.value * rows.shape[1]))
        order = torch.argsort(rows, dim=1, stable=True)
        pruned = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, order[:, :k], True)
        pruned |= torch.isneginf(rows)
    else:
        pruned = torch.stack([rule.prune(r) for r in rows])
    return pruned.reshape(scores.shape)


@_SCOPES.register("lamp")
def _lamp(scores: dict[str, torch.Tensor], rule: Rule) -> dict[str, torch.Tensor]:
    return _global({name: lamp_scores(s) for name, s in scores.items()}, rule)


def lamp_scores(scores: torch.Tensor) -> torch.Tensor:
    """LAMP score of each unit: s_u^2 / sum of s_v^2 over units v ranked at or above u.

    Already-pruned units (``-inf``) keep ``-inf``. The largest unit of a layer
    always scores 1, so a global ranking never empties a layer first.
    """
    done = torch.isneginf(scores)
    sq = torch.where(done, torch.zeros_like(scores), scores).double().pow(2)
    order = torch.argsort(sq, stable=True)
    sorted_sq = sq[order]
    # suffix sums: total squared score of this unit and every unit ranked above it
    suffix = sorted_sq.flip(0).cumsum(0).flip(0)
    lamp_sorted = torch.where(suffix > 0, sorted_sq / suffix, torch.zeros_like(suffix))
    out = torch.empty_like(lamp_sorted)
    out[order] = lamp_sorted
    return torch.where(done, torch.full_like(out, float("-inf")), out)
