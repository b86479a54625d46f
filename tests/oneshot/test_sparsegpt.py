"""SparseGPT against closed forms: least squares for a fixed mask, the OBS update, N:M."""

import pytest
import torch

from prunekit.importance.activation import InputStats
from prunekit.oneshot import sparsegpt_prune
from prunekit.oneshot.methods import LayerTarget, get_method


def _layer(rows=6, cols=16, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * 0.5 + torch.eye(cols)  # correlated features
    x = torch.randn(n, cols, generator=g, dtype=torch.float64) @ mix.double()
    scale = torch.linspace(0.2, 3.0, cols, dtype=torch.float64)
    x *= scale[torch.randperm(cols, generator=g)]  # features of unequal scale, in no order
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return w, x, x.T @ x / n


def test_fixed_mask_on_leading_columns_equals_least_squares():
    # When every pruned column comes before every kept one, OBS applied column by column
    # is exact: the kept weights solve min_v ||X_kept v - X w||^2 row by row.
    w, x, h = _layer()
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, :5] = False
    new, got_keep = sparsegpt_prune(w.float(), h.float(), mask=keep, dampening=0.0, blocksize=4)
    assert torch.equal(got_keep, keep)
    assert torch.all(new[:, :5] == 0)
    for r in range(w.shape[0]):
        best = torch.linalg.lstsq(x[:, 5:], x @ w[r]).solution
        torch.testing.assert_close(new[r, 5:].double(), best, rtol=2e-3, atol=2e-3)


def test_single_pruned_weight_gets_the_obs_update():
    # Pruning w_q and updating the columns after q: delta = -w_q / [Hs^-1]_00 * Hs^-1[0, :],
    # Hs = H[q:, q:] (the columns before q are already fixed), with dampening lambda * mean diag.
    w, _, h = _layer(rows=3, cols=10, seed=1)
    q, damp = 4, 0.01
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, q] = False
    new, _ = sparsegpt_prune(w.float(), h.float(), mask=keep, dampening=damp, blocksize=3)
    hd = h + damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    inv = torch.linalg.inv(hd[q:, q:])
    expected = w.clone()
    expected[:, q:] -= (w[:, q] / inv[0, 0]).unsqueeze(1) * inv[0].unsqueeze(0)
    torch.testing.assert_close(new.double(), expected, rtol=1e-4, atol=1e-4)
    assert torch.all(new[:, q] == 0)


def _error(w, new, x):
    return float(((x @ (w - new.double()).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


def _stats(x):
    lin = torch.nn.Linear(x.shape[1], 1)
    s = InputStats(lin, gram=True)
    lin(x.float())
    s.remove()
    return s


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
def test_lower_reconstruction_error_than_magnitude_and_wanda(nm):
    w, x, _ = _layer(rows=16, cols=32, n=600, seed=7)
    stats = _stats(x)
    target = LayerTarget(0.5, nm, blocksize=16)
    errors = {}
    for name in ("magnitude", "wanda", "sparsegpt"):
        new, keep = get_method(name).fn(w.float(), stats, None, target)
        assert float((~keep).float().mean()) == pytest.approx(0.5)
        errors[name] = _error(w, new, x)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    assert errors["sparsegpt"] < 0.8 * errors["magnitude"], errors


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_is_exact(n, m):
    w, _, h = _layer(rows=8, cols=32, seed=3)
    new, keep = sparsegpt_prune(w.float(), h.float(), nm=(n, m), blocksize=16)
    groups = keep.reshape(8, 32 // m, m)
    assert torch.all(groups.sum(-1) == n)
    assert torch.all(new[~keep] == 0)


def test_older_mask_stays_pruned():
    w, _, h = _layer(rows=4, cols=16, seed=4)
    forced = torch.zeros_like(w, dtype=torch.bool)
    forced[:, 1] = True  # column 1 was pruned before
    new, keep = sparsegpt_prune(w.float(), h.float(), sparsity=0.5, forced=forced, blocksize=8)
    assert not keep[:, 1].any()
    assert float((~keep).float().mean()) == pytest.approx(0.5)
