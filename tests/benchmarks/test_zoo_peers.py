"""Torch-Pruning adapter: attention discovery, attribute fix-ups, pass/fail recording."""

from __future__ import annotations

import torch
from torch import nn
from zoolib.peers import (
    AttentionSite,
    _fix_fused,
    _fix_split,
    attention_sites,
    pruner_options,
)
from zoolib.runner import run_one

from prunekit.models.catalog import ZooModel


class FusedAttention(nn.Module):  # timm style
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, 8
        self.qkv = nn.Linear(32, 96)


class SplitAttention(nn.Module):  # Hugging Face style with grouped-query attention
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.num_key_value_groups = 4, 2, 2
        self.head_dim, self.all_head_size = 8, 32
        self.q_proj = nn.Linear(32, 32)
        self.k_proj, self.v_proj = nn.Linear(32, 16), nn.Linear(32, 16)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def test_attention_sites_and_options():
    fused, split = FusedAttention(), SplitAttention()
    model = nn.ModuleDict({"a": fused, "b": split})
    sites = attention_sites(model)
    assert [(s.module, s.heads, s.kv_heads, s.head_dim) for s in sites] == [
        (fused, 4, 4, 8), (split, 4, 2, 8)
    ]
    options = pruner_options(model, sites)
    assert options["num_heads"] == {fused.qkv: 4, split.q_proj: 4, split.k_proj: 2,
                                    split.v_proj: 2}
    assert options["prune_num_heads"] and not options["prune_head_dims"]


def test_fixups_follow_the_pruned_widths():
    fused, split = FusedAttention(), SplitAttention()
    sites = [AttentionSite(fused, (fused.qkv,), 4, 4, 8),
             AttentionSite(split, (split.q_proj, split.k_proj, split.v_proj), 4, 2, 8)]
    fused.qkv = nn.Linear(16, 48)  # head dims halved: 4 heads of 4
    split.q_proj, split.k_proj = nn.Linear(16, 16), nn.Linear(16, 8)  # 2 heads, 1 kv head
    sites[0].projections, sites[1].projections = (fused.qkv,), (split.q_proj, split.k_proj, None)

    class Pruner:  # Torch-Pruning updates num_heads when it removes whole heads
        num_heads = {fused.qkv: 4, split.q_proj: 2, split.k_proj: 1}

    _fix_fused(nn.Module(), sites, Pruner())
    _fix_split(nn.Module(), sites, Pruner())
    assert (fused.num_heads, fused.head_dim) == (4, 4)
    assert (split.num_heads, split.num_key_value_heads, split.num_key_value_groups) == (2, 1, 2)
    assert (split.head_dim, split.all_head_size) == (8, 16)


def test_torch_pruning_tool_prunes_a_small_cnn():
    import pytest

    pytest.importorskip("torch_pruning")
    tiny = ZooModel("tiny_cnn", "test", TinyCNN,
                    lambda g: torch.randn(1, 3, 8, 8, generator=g), heads=("fc",))
    result = run_one(tiny, tool="torch-pruning")
    assert result.passed, result.reason
    assert result.params_after < result.params_before
    assert result.macs_after < result.macs_before
