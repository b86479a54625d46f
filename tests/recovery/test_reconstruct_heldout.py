"""Reconstruction for transformers: held-out error, ridge chosen on held-out data, a layer
that would get worse keeps its weights, dict inputs, and the OBS solver (no solve per row)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.mask import attach_mask, get_mask
from prunekit.recovery.reconstruct import reconstruct


def batches(n, rows, d, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * 0.3 + torch.eye(d)
    return [torch.randn(rows, d, generator=g) @ mix for _ in range(n)]


def pruned_pair(d=12, out=5, sparsity_cols=None, seed=0):
    torch.manual_seed(seed)
    original = nn.Sequential(nn.Linear(d, out))
    model = copy.deepcopy(original)
    keep = torch.rand(out, d, generator=torch.Generator().manual_seed(seed)) > 0.5
    if sparsity_cols is not None:
        keep = torch.ones(out, d, dtype=torch.bool)
        keep[:, :sparsity_cols] = False
    attach_mask(model[0], "weight", keep)
    return original, model, keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heldout_error_never_rises(seed):
    # Few calibration rows: the least-squares fit interpolates them and may generalize
    # worse than the pruned weights; then the layer keeps its weights.
    original, model, _ = pruned_pair(seed=seed)
    calib, held = batches(1, 6, 12, seed=10 + seed), batches(4, 64, 12, seed=20 + seed)
    before = model[0].weight.detach().clone()
    e = reconstruct(model, original, calib, ridge=0.0, heldout=held)["0"]
    assert e["heldout_after"] <= e["heldout_before"]
    if e["kept_old"]:
        assert torch.equal(model[0].weight, before)
        assert e["after"] == e["before"]


def test_a_fit_worse_on_heldout_data_is_refused():
    original, model, _ = pruned_pair()
    calib = batches(1, 4, 12, seed=3)  # 4 rows for 12 inputs: an interpolant, nothing general
    held = batches(4, 64, 12, seed=4)
    twisted = copy.deepcopy(original)
    with torch.no_grad():
        twisted[0].weight.copy_(-original[0].weight)
    before = model[0].weight.detach().clone()
    errors = reconstruct(model, twisted, calib, ridge=0.0, heldout=held)["0"]
    assert errors["after"] < errors["before"] or errors["kept_old"]
    assert errors["kept_old"] == 1.0
    assert torch.equal(model[0].weight, before)
    assert get_mask(model[0], "weight") is not None


def test_ridge_is_chosen_on_heldout_data():
    original, model, _ = pruned_pair(seed=5)
    calib, held = batches(1, 14, 12, seed=6), batches(3, 64, 12, seed=7)
    ridges = [0.0, 1e-2, 1.0, 100.0]
    got = reconstruct(copy.deepcopy(model), original, calib, ridge=ridges, heldout=held)["0"]
    singles = {r: reconstruct(copy.deepcopy(model), original, calib, ridge=r, heldout=held)["0"]
               for r in ridges}
    # each single run reports min(its fit, the old weights) on held-out data; the
    # combined run keeps the best fit of all ridges unless the old weights beat it
    assert got["heldout_after"] == pytest.approx(min(e["heldout_after"] for e in singles.values()))
    if not got["kept_old"]:
        assert got["ridge"] == min(ridges, key=lambda r: singles[r]["heldout_after"])


def test_obs_solver_equals_exact_when_pruned_inputs_lead_and_helps_otherwise():
    original, model, _ = pruned_pair(sparsity_cols=5, seed=8)
    calib = batches(4, 64, 12, seed=9)
    exact, obs = copy.deepcopy(model), copy.deepcopy(model)
    reconstruct(exact, original, calib, ridge=1e-3)
    reconstruct(obs, original, calib, ridge=1e-3, solver="obs")
    torch.testing.assert_close(obs[0].weight, exact[0].weight, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(obs[0].bias, exact[0].bias, rtol=1e-3, atol=1e-4)
    original, model, keep = pruned_pair(seed=10)  # random mask
    e = reconstruct(model, original, calib, ridge=1e-3, solver="obs")["0"]
    assert e["after"] < e["before"]
    assert torch.all(model[0].weight[~keep] == 0)


class KeywordNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 4)

    def forward(self, input_ids=None, attention_mask=None):
        x = input_ids * attention_mask.unsqueeze(-1)
        return self.proj(x)


def test_dict_batches_reach_models_that_take_keywords():
    torch.manual_seed(0)
    original = KeywordNet()
    model = copy.deepcopy(original)
    attach_mask(model.proj, "weight", torch.rand(4, 8) > 0.5)
    data = [{"input_ids": torch.randn(3, 5, 8), "attention_mask": torch.ones(3, 5)}
            for _ in range(3)]
    errors = reconstruct(model, original, data, ridge=1e-4, heldout=data[:1])
    assert errors["proj"]["after"] < errors["proj"]["before"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(ridge=[0.1, 1.0]), "need heldout"),
    (dict(ridge=-1.0), "ridge must be >= 0"),
    (dict(solver="cg"), "unknown solver"),
])
def test_bad_options_leave_the_model_alone(kwargs, match):
    original, model, _ = pruned_pair()
    before = model[0].weight.detach().clone()
    with pytest.raises(ConfigError, match=match):
        reconstruct(model, original, batches(2, 8, 12, seed=0), **kwargs)
    assert torch.equal(model[0].weight, before)
