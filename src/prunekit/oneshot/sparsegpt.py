"""SparseGPT: one-shot pruning with an optimal-brain-surgeon update of the kept weights.

For a Linear layer ``y = W x`` and the Gram matrix of its calibration inputs
``H = X^T X / n``, removing weight ``w_q`` of a row and compensating with the
row's later weights changes the layer's squared output error by
``w_q^2 / [H^-1]_qq``; the compensating update is
``delta = -(w_q / [H^-1]_qq) * H^-1[q, :]``. SparseGPT visits columns left to
right, so the inverse Hessian of the remaining columns is one row of the upper
Cholesky factor of ``H^-1``; masks are chosen per block of ``blocksize``
columns from ``w^2 / [H^-1]_qq^2`` (adaptive mask selection), and an N:M mask is
chosen jointly with the update, every M columns from the already-updated
weights. ``H`` is dampened by ``dampening * mean(diag H)`` on its diagonal.

E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot", ICML 2023 (Algorithm 1).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def inverse_hessian_factor(gram: torch.Tensor, *, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + lambda I)^-1`` (``U^T U = (H + lambda I)^-1``).

    Inputs that never fired (``H_jj = 0``) get ``H_jj = 1``; a factorization that
    fails is retried with ten times the dampening, up to four times.
    """
    h = gram.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    scale = torch.diagonal(h).mean()
    damp = dampening
    for _ in range(5):
        dampened = h + (damp * scale) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        chol, info = torch.linalg.cholesky_ex(dampened)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper.float()
        damp = max(damp * 10, 1e-6)
    raise ConfigError(
        "SparseGPT could not factor the layer's input Hessian even with 10,000x the "
        "dampening; use more calibration samples or a larger dampening"
    )


def sparsegpt_prune(
    weight: torch.Tensor,
    gram: torch.Tensor,
    *,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    dampening: float = 0.01,
    forced: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out, in) and update its kept entries to keep ``W X`` close.

    Args:
        weight: the layer's weight; not modified.
        gram: ``X^T X / n`` of the layer's calibration inputs, shape (in, in).
        sparsity: fraction pruned in every column block (ignored with ``nm`` or ``mask``).
        nm: ``(n, m)``: keep ``n`` of every ``m`` consecutive input weights.
        blocksize: columns whose mask is chosen together (lazy batch updates).
        dampening: ``lambda`` as a fraction of the mean diagonal of ``H``.
        forced: boolean (out, in), True where a weight must be pruned (an older mask).
        mask: a fixed boolean keep-mask to use instead of choosing one (tests, reuse).

    Returns:
        ``(new_weight, keep)``: float32 weight with pruned entries zero, boolean keep-mask.
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    u = inverse_hessian_factor(gram.to(w.device), dampening=dampening)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    forced = torch.zeros_like(pruned) if forced is None else forced.to(w.device)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        err = _prune_block(w, u, pruned, forced, start, end, sparsity, nm, mask)
        w[:, end:] -= err @ u[start:end, end:]  # lazy update of the later columns
    return w.masked_fill(pruned, 0.0), ~pruned


def _prune_block(w, u, pruned, forced, start, end, sparsity, nm, mask) -> torch.Tensor:
    """Prune columns [start, end) one by one; returns the scaled errors (rows, end - start)."""
    block, u_block = w[:, start:end], u[start:end, start:end]
    d = torch.diagonal(u_block)
    sel = _block_mask(block, d, forced[:, start:end], sparsity, nm, mask, start, end)
    err = torch.zeros_like(block)
    for i in range(end - start):
        if nm is not None and mask is None and i % nm[1] == 0:
            sel[:, i : i + nm[1]] = _nm_select(block[:, i : i + nm[1]], d[i : i + nm[1]],
                                               forced[:, start + i : start + i + nm[1]], nm[0])
        q = block[:, i].masked_fill(sel[:, i], 0.0)
        err[:, i] = (block[:, i] - q) / d[i]
        block[:, i:] -= err[:, i : i + 1] @ u_block[i : i + 1, i:]
        block[:, i] = q
    pruned[:, start:end] = sel
    return err


def _block_mask(block, d, forced, sparsity, nm, mask, start, end) -> torch.Tensor:
    if mask is not None:
        return ~mask[:, start:end].to(block.device)
    if nm is not None:
        return forced.clone()
    score = (block.pow(2) / d.pow(2)).masked_fill(forced, float("-inf"))  # (rows, block)
    k = int(round(sparsity * score.numel()))
    sel = torch.zeros_like(forced)
    sel.view(-1)[torch.argsort(score.view(-1), stable=True)[:k]] = True
    return sel | forced


def _nm_select(group, d, forced, n) -> torch.Tensor:
    """Prune the ``m - n`` weights of each row of ``group`` (rows, m) with the lowest OBS error."""
    m = group.shape[1]
    if m - n <= 0 or d.numel() != m:
        raise ConfigError(f"the input width is not a multiple of the pattern's M ({m})")
    score = (group.pow(2) / d.pow(2)).masked_fill(forced, float("-inf"))
    low = torch.topk(score, m - n, dim=1, largest=False).indices
    return torch.zeros_like(forced).scatter_(1, low, True) | forced
