"""timm ViT attention heads: cut whole, with ``num_heads`` and ``attn_dim`` (the width the
forward pass reshapes to) following the cut."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit as pk

timm = pytest.importorskip("timm", reason="pip install timm to test timm models")


def test_vit_heads_are_cut_and_verified() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    original = copy.deepcopy(model)
    graph = pk.trace(model, x)
    plan = pk.plan(graph, ratio=0.5, ignore=["patch_embed"])
    assert "excluded" not in plan.info, plan.info.get("excluded")
    pk.apply(model, plan)
    attn = model.blocks[0].attn
    assert attn.num_heads < original.blocks[0].attn.num_heads
    assert attn.attn_dim == attn.num_heads * attn.head_dim
    assert attn.qkv.out_features == 3 * attn.attn_dim
    assert pk.verify(original, model, plan, x).ok
    # other batch sizes run too (the width is no longer a stale Python size)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 1000)
