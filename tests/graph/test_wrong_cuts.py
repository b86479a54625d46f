"""Classes of silently wrong cuts (issue 12), each with the pattern that produced it.

Every test here failed before its fix: the cut was accepted and the pruned model was
wrong on some input while ``pk.verify`` said ok, or the tracer failed internally.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk


class PositionTable(nn.Module):
    """minGPT's pattern: a raw position table read up to the input's length."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(20, 16)
        self.pos = nn.Parameter(torch.randn(1, 32, 16))
        self.fc = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.shape[1]
        h = self.tok(idx) + self.pos[:, :length]  # (B, L, 16)
        return self.head(F.relu(self.fc(h)))


class LiteralHeads(nn.Module):
    """Attention whose head count is an attribute the plan does not know (``self.h``)."""

    def __init__(self, dim: int = 32, h: int = 4) -> None:
        super().__init__()
        self.h = h
        self.inp = nn.Linear(8, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)  # (3, B, h, L, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = (q @ k.transpose(-2, -1)).softmax(-1) @ v  # (B, h, L, hd)
        return self.head(self.proj(y.transpose(1, 2).reshape(b, n, -1)))


class Interleave(nn.Module):
    """``view(B, L, f, D // f).transpose(2, 3)``: the literal factor ``f`` fixes the order."""

    def __init__(self, dim: int = 32, f: int = 8) -> None:
        super().__init__()
        self.f = f
        self.a = nn.Linear(8, dim)
        self.b = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        y = self.a(x)
        d = y.shape[-1]
        y = y.view(b, n, self.f, d // self.f).transpose(2, 3).reshape(b, n, d)  # (B, L, D)
        return self.b(F.relu(y))


class OneHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 1, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(x + self.mlp(x))


class Branchy(nn.Module):
    """Data-dependent control flow: the column order depends on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = h.flip(-1)
        return self.b(F.relu(h))


def _pruned(model: nn.Module, x, **options):
    original = copy.deepcopy(model)
    plan = pk.prune(model, x, **options)
    return original, plan


def test_position_table_is_never_cut_and_longer_inputs_still_run():
    torch.manual_seed(0)
    model = PositionTable()
    original, plan = _pruned(model, torch.randint(0, 20, (2, 8)), ratio=0.5)
    assert "pos" not in plan.tensors or 1 not in plan.tensors["pos"].kept
    longer = torch.randint(0, 20, (2, 30))
    assert model(longer).shape == original(longer).shape
    graph = pk.trace(PositionTable(), torch.randint(0, 20, (2, 8)))
    reasons = [r for g in graph.group_of("pos", 1) for r in g.blocked]
    assert any("runtime size" in r for r in reasons)


def test_heads_spelled_as_an_attribute_are_not_regrouped():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    model = LiteralHeads()
    original, plan = _pruned(model, x, ratio=0.5)
    assert pk.verify(original, model, plan, x).ok
    assert model.qkv.out_features == 96  # heads and head_dim both kept: a cut would regroup
    assert any("regroup" in why for why in plan.info["excluded"].values())


@pytest.mark.parametrize("f", [8, 2])
def test_interleave_keeps_its_order(f):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    model = Interleave(f=f)
    original, plan = _pruned(model, x, ratio=0.5)
    assert pk.verify(original, model, plan, x).ok
    x2 = torch.randn(3, 7, 8)
    ref = copy.deepcopy(original)
    with torch.no_grad():  # dead-unit oracle: zero the removed units of the original
        keep = torch.zeros(32, dtype=torch.bool)
        keep[plan.tensors["a.weight"].kept[0] if "a.weight" in plan.tensors else slice(None)] = 1
        ref.a.weight[~keep] = 0
        ref.a.bias[~keep] = 0
        torch.testing.assert_close(model(x2), ref(x2), atol=1e-5, rtol=1e-4)


def test_single_head_multihead_attention_traces():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    model = OneHead()
    graph = pk.trace(model, x)
    (group,) = graph.group_of("attn.in_proj_weight", 1)
    assert not group.prunable and any("head_dim" in r for r in group.blocked)
    original, plan = _pruned(model, x, ratio=0.5)
    assert model.mlp[0].out_features == 12
    assert pk.verify(original, model, plan, x).ok


def test_data_dependent_branch_is_refused_with_its_line():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="data-dependent control flow"):
        graph = pk.trace(Branchy(), torch.randn(2, 8))
    assert not graph.prunable_groups
    assert any("if h.sum() > 0" in n for n in graph.notes)


def test_reading_values_without_branching_is_not_refused():
    class Reads(Branchy):
        def forward(self, x):
            scale = float(x.abs().max())  # a value read, but the path is the same for any x
            return self.b(F.relu(self.a(x / scale)))

    graph = pk.trace(Reads(), torch.randn(2, 8))
    assert [g.name for g in graph.prunable_groups] == ["a.weight:0"]


@pytest.mark.parametrize("sdpa", [True, False])
def test_single_head_attention_keeps_head_dim(sdpa):
    """One head: head_dim is the whole width, and it sets the scale 1/sqrt(head_dim)."""
    torch.manual_seed(0)

    class OneHeadHand(LiteralHeads):
        def forward(self, x):
            x = self.inp(x)
            b, n, _ = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, 1, -1).permute(2, 0, 3, 1, 4)  # (B, 1, L, D)
            if sdpa:
                y = F.scaled_dot_product_attention(q, k, v)
            else:
                y = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1) @ v
            return self.head(self.proj(y.transpose(1, 2).reshape(b, n, -1)))

    x = torch.randn(2, 5, 8)
    model = OneHeadHand(h=1)
    original, plan = _pruned(model, x, ratio=0.5)
    assert model.qkv.out_features == 96
    assert pk.verify(original, model, plan, x).ok


def test_every_deciding_module_is_found():
    """Two data-dependent branches in two modules: both are refused, not only the first."""
    torch.manual_seed(0)
    model = nn.Sequential(Branchy(), nn.ReLU(), Branchy())
    model[2].a = nn.Linear(4, 16)
    with pytest.warns(UserWarning):
        graph = pk.trace(model, torch.randn(2, 8))
    for name in ("0.a.weight", "2.a.weight"):
        assert not any(g.prunable for g in graph.group_of(name, 0))
    notes = [n for n in graph.notes if "data-dependent" in n]
    assert len(notes) == 2 and "(in 0)" in notes[0] and "(in 2)" in notes[1]


def test_paths_that_cut_the_same_groups_are_not_refused():
    """A branch that only decides whether a mask is built (Hugging Face's "padding_mask.all()"
    shortcut) changes no group: nothing is refused."""

    class MaskShortcut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x, mask):
            h = F.relu(self.a(x))  # (B, L, 16)
            if not mask.all():
                h = h * mask[..., None]
            return self.b(h)

    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    graph = pk.trace(MaskShortcut(), (x, mask))
    assert [g.name for g in graph.prunable_groups] == ["a.weight:0"]


def test_nothing_to_prune_says_it_was_the_branch():
    from prunekit.errors import ConfigError

    with pytest.warns(UserWarning), pytest.raises(ConfigError, match=r"if h\.sum\(\) > 0"):
        pk.prune(Branchy(), torch.randn(2, 8), ratio=0.5)


def test_model_errors_and_tracer_errors_are_told_apart(monkeypatch):
    from prunekit.errors import TraceError
    from prunekit.graph import _tracer

    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(TraceError, match="the model failed on the example inputs"):
        pk.trace(model, torch.randn(2, 5))  # the user's mistake: a wrong input size

    monkeypatch.setattr(_tracer, "Call", None)  # a bug in the tracer's own bookkeeping
    with pytest.raises(TraceError, match="tracer failed internally"):
        pk.trace(model, torch.randn(2, 8))
