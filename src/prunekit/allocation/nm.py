"""N:M semi-structured sparsity: at most N non-zeros in every M consecutive weights.

The blocks run along the input dimension (the reduction dimension of the matrix
multiply), the layout sparse tensor cores accelerate (2:4 on NVIDIA Ampere and
later; Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").
"""

from __future__ import annotations

import re

import torch

from ..errors import ConfigError


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``; anything else is a ConfigError."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise ConfigError(f"pattern must look like 'N:M' (e.g. '2:4'), got {pattern!r}")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise ConfigError(f"pattern {pattern!r} needs 0 < N < M (e.g. '2:4' or '4:8')")
    return n, m


def nm_keep(scores: torch.Tensor, n: int, m: int, *, dim: int = 1) -> torch.Tensor:
    """Boolean keep-mask with the ``n`` best of every ``m`` consecutive entries along ``dim``.

    Args:
        scores: importance of each weight (``-inf`` = already pruned, never kept).
        n, m: keep ``n`` of every ``m``.
        dim: the input dimension of the weight.
    """
    size = scores.shape[dim]
    if size % m:
        raise ConfigError(
            f"pattern {n}:{m} needs the input dimension to be a multiple of {m}, "
            f"got {size}; exclude this layer or choose M that divides {size}"
        )
    moved = scores.movedim(dim, -1)  # (..., in)
    blocks = moved.reshape(*moved.shape[:-1], size // m, m)  # (..., in/m, m)
    top = blocks.topk(n, dim=-1).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, top, True)
    keep &= ~torch.isneginf(blocks)
    return keep.reshape(moved.shape).movedim(-1, dim)
