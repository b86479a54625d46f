"""OWL: outlier-weighted layerwise sparsity.

Blocks whose Wanda scores ``|W_ij| * ||X_j||_2`` hold more outliers (scores
above ``M`` times the block's mean score) keep more weights. With ``D_l`` the
outlier ratio of block ``l``, the ratios are scaled to ``[0, 2 * lambda]``,
shifted so that their mean is the target density ``1 - s``, and block ``l`` is
pruned to ``1 - density_l``: the mean sparsity stays ``s`` and every block lies
within ``s +- lambda``.

L. Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce
for Pruning LLMs to High Sparsity", ICML 2024 (arXiv 2310.05175).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..importance.activation import InputStats


def outlier_ratio(weights: Sequence[torch.Tensor], stats: Sequence[InputStats], *,
                  threshold: float) -> float:
    """Fraction of the Wanda scores of a block's layers above ``threshold`` x their mean."""
    scores = torch.cat([
        (w.detach().abs().float() * s.feature_norm().to(w.device).reshape(1, -1)).flatten()
        for w, s in zip(weights, stats, strict=True)
    ])
    return float((scores > threshold * scores.mean()).float().mean())


def owl_sparsities(ratios: Sequence[float], *, sparsity: float, lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios (mean ``sparsity``, within ``+- lam``).

    Example:
        >>> owl_sparsities([0.01, 0.03], sparsity=0.5, lam=0.08)
        [0.58, 0.42]
    """
    r = torch.tensor(list(ratios), dtype=torch.float64)
    spread = r.max() - r.min()
    scaled = (r - r.min()) / spread * (2 * lam) if spread > 0 else torch.zeros_like(r)
    density = scaled - scaled.mean() + (1.0 - sparsity)
    return [round(float(min(max(1.0 - d, 0.0), 0.99)), 12) for d in density]
