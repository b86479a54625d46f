"""Mixture-of-experts: experts and expert widths are cut; oracle: the dense model with the
removed experts masked out of the routing and the removed channels zeroed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from llm_models import VOCAB, batches, n_params, one_thread, state_equal  # noqa: F401

from prunekit.errors import ConfigError
from prunekit.transformers import moe_layers, prune_experts

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers", reason="pip install transformers")


def tiny_moe(family: str = "mixtral") -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, num_experts_per_tok=2,
                  tie_word_embeddings=False)
    if family == "mixtral":
        cfg = transformers.MixtralConfig(intermediate_size=48, num_local_experts=8, **common)
        return transformers.MixtralForCausalLM(cfg).eval()
    cfg = transformers.Qwen2MoeConfig(intermediate_size=40, moe_intermediate_size=24,
                                      shared_expert_intermediate_size=16, num_experts=8,
                                      norm_topk_prob=True, **common)
    return transformers.Qwen2MoeForCausalLM(cfg).eval()


def _reference(dense: torch.nn.Module, cut) -> torch.nn.Module:
    """The dense model with removed experts masked from routing and removed channels zeroed."""
    ref = copy.deepcopy(dense)
    for layer in moe_layers(ref):
        kept = cut.kept_experts[layer.path]
        mask = torch.full((layer.count,), float("-inf"))
        mask[kept] = 0
        router = layer.router

        def forward(h, router=router, mask=mask):
            h = h.reshape(-1, router.hidden_dim)
            logits = F.linear(h, router.weight) + mask  # (N, E)
            top, idx = torch.topk(F.softmax(logits.float(), dim=-1), router.top_k, dim=-1)
            top = top / top.sum(-1, keepdim=True)
            return logits, top.to(h.dtype), idx

        router.forward = forward
        width = layer.width
        with torch.no_grad():
            for e, channels in zip(kept, cut.kept_channels[layer.path], strict=True):
                drop = sorted(set(range(width)) - set(channels))
                layer.experts.gate_up_proj[e, drop] = 0
                layer.experts.gate_up_proj[e, [width + c for c in drop]] = 0
                layer.experts.down_proj[e][:, drop] = 0
    return ref


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_experts_and_widths_cut_match_the_masked_dense_model(family: str) -> None:
    dense = tiny_moe(family)
    model = copy.deepcopy(dense)
    cut = prune_experts(model, batches(), expert_ratio=0.5, width_ratio=0.25)
    layer = moe_layers(model)[0]
    assert (layer.count, layer.width) == (4, 16 if family == "qwen2_moe" else 32)
    assert len(cut.kept_experts[layer.path]) == 4
    x = batches(2, seed=3)
    ref = _reference(dense, cut)
    with torch.no_grad():
        for batch in x:
            torch.testing.assert_close(model(batch).logits, ref(batch).logits,
                                       rtol=1e-4, atol=1e-5)
    # the config describes the result: the class built from it has the same tensors
    fresh = type(model)(copy.deepcopy(model.config))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert cut.params_after == n_params(model) < cut.params_before


def test_half_the_experts_removes_most_expert_parameters() -> None:
    model = tiny_moe()
    cut = prune_experts(model, batches(), expert_ratio=0.5)
    expert_params = sum(m.experts.gate_up_proj.numel() + m.experts.down_proj.numel()
                        for m in moe_layers(tiny_moe()))
    removed = cut.params_before - cut.params_after
    assert removed >= 0.5 * expert_params  # all of half the experts, plus router rows
    assert model.config.num_local_experts == 4


def test_unused_experts_go_first() -> None:
    model = tiny_moe()
    with torch.no_grad():
        for layer in moe_layers(model):
            layer.router.weight[[1, 5]] = 0
            layer.router.weight[[0, 2, 3, 4, 6, 7]] *= 50  # the others dominate the top-2
    cut = prune_experts(model, batches(), expert_ratio=0.25, criterion="frequency")
    for kept in cut.kept_experts.values():
        assert 1 not in kept and 5 not in kept


@pytest.mark.parametrize("kwargs, match", [
    ({"expert_ratio": 0.9}, "fewer than"), ({"expert_ratio": 1.0}, "fraction"),
    ({"width_ratio": -1}, "fraction"), ({"criterion": "vibes"}, "unknown expert criterion"),
    ({"data": []}, "empty"), ({"round_to": 0}, "round_to"),
])
def test_bad_inputs_leave_the_model_untouched(kwargs, match) -> None:
    model = tiny_moe()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        prune_experts(model, **{"data": batches(), **kwargs})
    assert state_equal(before, model.state_dict()) and model.config.num_local_experts == 8


def test_dense_model_has_no_experts() -> None:
    from llm_models import tiny

    with pytest.raises(ConfigError, match="no mixture-of-experts"):
        prune_experts(tiny(), batches())
