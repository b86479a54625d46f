"""pk.verify: a relative tolerance, arguments named when they do not fit, never a raw error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError


def _mlp(scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[2].weight.mul_(scale)
        model[2].bias.mul_(scale)
    return model.eval()


def _pruned(model: nn.Module, x: torch.Tensor):
    pruned = copy.deepcopy(model)
    plan = pk.prune(pruned, x, ratio=0.5)
    return pruned, plan


def test_small_outputs_are_compared_to_their_own_scale():
    x = torch.randn(3, 8)
    model = _mlp(scale=1e-3)  # outputs around 1e-4: an absolute 1e-4 would hide anything
    pruned, plan = _pruned(model, x)
    assert pk.verify(model, pruned, plan, x).ok
    with torch.no_grad():
        pruned[2].weight.mul_(1.12)  # every output 12% larger
        pruned[2].bias.mul_(1.12)
    result = pk.verify(model, pruned, plan, x)
    assert not result.ok and "of the output's scale" in result.message


def test_original_of_another_architecture_is_named():
    x = torch.randn(3, 8)
    pruned, plan = _pruned(_mlp(), x)
    other = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 4))
    with pytest.raises(ConfigError, match=r"original model does not match the plan: 0\.weight"):
        pk.verify(other, pruned, plan, x)
    with pytest.raises(ConfigError, match="pruned model does not match the plan"):
        pk.verify(_mlp(), _mlp(), plan, x)


def test_inputs_of_the_wrong_shape_are_named():
    x = torch.randn(3, 8)
    model = _mlp()
    pruned, plan = _pruned(model, x)
    with pytest.raises(ConfigError, match="fails on example_inputs"):
        pk.verify(model, pruned, plan, torch.randn(3, 5))


def test_nan_weights_are_named():
    x = torch.randn(3, 8)
    model = _mlp()
    pruned, plan = _pruned(model, x)
    with torch.no_grad():
        pruned[2].weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"NaN or infinite values in 2\.weight"):
        pk.verify(model, pruned, plan, x)


class Branches(nn.Module):
    """Two branches concatenated into an LSTM: their groups share input_size."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.rnn = nn.LSTM(16, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=-1)  # (B, L, 16)
        return self.head(self.rnn(h)[0])


def test_locating_a_mismatch_names_groups_instead_of_raising():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    model = Branches().eval()
    pruned, plan = _pruned(model, x)
    assert pk.verify(model, pruned, plan, x).ok
    with torch.no_grad():
        pruned.a.weight.add_(0.5)  # a wrong model, which verify must report, not crash on
    result = pk.verify(model, pruned, plan, x)
    assert not result.ok and result.failed
    assert "a.weight:0" in " ".join(result.failed)


class _Normed(nn.Module):
    """A hidden width normalized by a layer norm, a group norm and an RMS norm."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, 16), norm, nn.Linear(16, 4)
        self.channels_first = isinstance(norm, nn.GroupNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.channels_first:
            return self.fc2(self.norm(h.transpose(1, 2)).transpose(1, 2))
        return self.fc2(torch.relu(self.norm(h)))


def _normed(norm: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _Normed(norm).eval()
    with torch.no_grad():
        for p in model.norm.parameters():
            p.uniform_(0.5, 1.5)
    return model, torch.randn(3, 5, 8)


_NORMS = {"layer": lambda: nn.LayerNorm(16), "group": lambda: nn.GroupNorm(1, 16),
          "rms": lambda: nn.RMSNorm(16, eps=1e-6)}


@pytest.mark.parametrize("kind", sorted(_NORMS))
def test_groups_under_a_norm_are_checked_by_normalizing_over_the_kept_units(kind):
    model, x = _normed(_NORMS[kind]())
    pruned, plan = _pruned(model, x)
    assert any(g.unchecked for g in plan.groups if g.removed)
    result = pk.verify(model, pruned, plan, x)
    assert result.ok, result.message
    assert not result.unchecked and result.emulated == {"norm": type(model.norm).__name__}


@pytest.mark.parametrize("kind", sorted(_NORMS))
def test_a_wrong_cut_of_a_normalized_group_is_caught_even_when_the_surgery_is_wrong(
        kind, monkeypatch):
    """The reference must not share the surgery's mistakes: a norm weight sliced at the wrong
    positions (here by a broken slicer that the reference would also use, were it to cut the
    norm) is a difference, not an agreement."""
    from prunekit.surgery import apply as surgery

    model, x = _normed(_NORMS[kind]())
    right = surgery._cut

    def broken(t, kept):
        out = right(t, kept)
        if out.dim() == 1 and out.shape[0] == 8 and t.shape[0] == 16:  # the norm's weight
            with torch.no_grad():
                out.data = out.data.flip(0)
        return out

    monkeypatch.setattr(surgery, "_cut", broken)
    pruned, plan = _pruned(model, x)
    result = pk.verify(model, pruned, plan, x)
    assert not result.ok
    assert result.failed  # the group is named


class _GemmaStyleRMSNorm(nn.Module):
    """An RMS norm scaling by ``1 + weight``: a formula verify does not know, so it must fall
    back to a structural cut and say the group is unchecked."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.zeros(n)), 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * (1 + self.weight)


def test_a_norm_whose_formula_differs_falls_back_to_unchecked():
    model, x = _normed(_GemmaStyleRMSNorm(16))
    pruned, plan = _pruned(model, x)
    result = pk.verify(model, pruned, plan, x)
    assert result.ok and result.unchecked and not result.emulated


class LayerNorm2d(nn.LayerNorm):
    """A layer norm over the channels of (N, C, H, W), as timm and torchvision write it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_channels_first_layer_norm_is_checked_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), LayerNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 4, 1)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    pruned, plan = _pruned(model, x)
    result = pk.verify(model, pruned, plan, x)
    assert result.ok and not result.unchecked and result.emulated == {"1": "LayerNorm2d"}
