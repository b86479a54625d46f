"""prune_width(query_ratio=...): query heads removed inside every key/value group."""

from __future__ import annotations

import copy

import pytest
import torch
from llm_models import batches, n_params, one_thread, state_equal, tiny  # noqa: F401

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.transformers import load_pretrained_pruned, prune_width, save_pretrained_pruned

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["llama", "qwen2", "mistral"]
HEAD_DIM = 8


def gqa(family: str = "llama", **overrides) -> torch.nn.Module:
    """6 query heads over 2 key/value heads (groups of 3), head_dim 8, MLP 64."""
    return tiny(family, **{"hidden_size": 48, "intermediate_size": 64, "num_attention_heads": 6,
                           "num_key_value_heads": 2, **overrides})


def hand_sliced(dense: torch.nn.Module, kept: list[list[int]]) -> torch.nn.Module:
    """The reference: a model built from a config with fewer query heads, whose q_proj rows
    and o_proj columns are copied from ``dense`` for the heads in ``kept[block]``."""
    cfg = copy.deepcopy(dense.config)
    cfg.num_attention_heads = len(kept[0])
    cfg.head_dim = HEAD_DIM
    ref = type(dense)(cfg).eval()
    state = dense.state_dict()
    for i, heads in enumerate(kept):
        rows = torch.tensor([h * HEAD_DIM + c for h in heads for c in range(HEAD_DIM)])
        pre = f"model.layers.{i}.self_attn."
        state[pre + "q_proj.weight"] = state[pre + "q_proj.weight"][rows]
        state[pre + "o_proj.weight"] = state[pre + "o_proj.weight"][:, rows]
        if pre + "q_proj.bias" in state:
            state[pre + "q_proj.bias"] = state[pre + "q_proj.bias"][rows]
    ref.load_state_dict(state)
    return ref


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_equals_a_hand_sliced_reference(family: str) -> None:
    dense = gqa(family)
    model = copy.deepcopy(dense)
    plan = prune_width(model, batches(), query_ratio=1 / 3, compensate="none")
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, HEAD_DIM)
    kept = [g.kept for g in plan.groups]
    for heads in kept:  # two of every group of three
        assert [sum(h // 3 == j for h in heads) for j in range(2)] == [2, 2]
    for layer in model.model.layers:
        assert layer.self_attn.num_key_value_groups == 2
        assert layer.self_attn.k_proj.out_features == 2 * HEAD_DIM  # key/value heads stay
    x = torch.randint(0, 64, (2, 11))
    assert torch.allclose(logits(model, x), logits(hand_sliced(dense, kept), x), atol=1e-6)
    assert pk.verify(dense, model, plan, batches()[0]).ok


@pytest.mark.parametrize("criterion", ["flap", "wanda"])
def test_silent_heads_are_ranked_last_within_their_group(criterion: str) -> None:
    dense = gqa()
    silent = {0: [1, 3], 1: [2, 4]}  # one head per group whose o_proj columns are zero
    with torch.no_grad():
        for i, heads in silent.items():
            o = dense.model.layers[i].self_attn.o_proj.weight
            for h in heads:
                o[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
    model = copy.deepcopy(dense)
    plan = prune_width(model, batches(), query_ratio=1 / 3, criterion=criterion,
                       compensate="bias")
    for i, heads in silent.items():
        assert plan.groups[i].kept == sorted(set(range(6)) - set(heads))
    x = torch.randint(0, 64, (2, 11))  # silent heads add nothing: the output is the dense one
    assert torch.allclose(logits(model, x), logits(dense, x), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_reload_with_from_pretrained_and_generate(family: str, tmp_path) -> None:
    import transformers

    model = gqa(family)
    prune_width(model, batches(), query_ratio=1 / 3, compensate="bias")
    assert save_pretrained_pruned(model, tmp_path / "m") == "hf"
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert again.config.num_attention_heads == 4 and again.config.head_dim == HEAD_DIM
    x = torch.randint(0, 64, (2, 11))
    assert torch.equal(logits(again, x), logits(model, x))
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    cached = again.generate(x, use_cache=True, **kw)
    assert torch.equal(cached, again.generate(x, use_cache=False, **kw))
    assert torch.equal(cached, model.generate(x, use_cache=True, **kw))


def test_head_dim_is_written_when_the_config_derives_it(tmp_path) -> None:
    import transformers

    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=48, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=6,
                                   num_key_value_heads=2, max_position_embeddings=128)
    assert not hasattr(cfg, "head_dim")  # Qwen2 derives 48 / 6 = 8; after the cut, 48 / 4 = 12
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    prune_width(model, batches(), query_ratio=1 / 3)
    assert model.config.head_dim == HEAD_DIM
    save_pretrained_pruned(model, tmp_path / "m")
    again = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "m").eval()
    x = torch.randint(0, 64, (1, 9))
    assert torch.equal(logits(again, x), logits(model, x))


def test_a_config_transformers_refuses_saves_through_the_plan(tmp_path) -> None:
    # hidden 30 over 6 heads is valid; over 4 heads Llama's config validation refuses it
    model = gqa(hidden_size=30)
    plan = prune_width(model, batches(), query_ratio=1 / 3)
    with pytest.raises(ConfigError, match="refuses the rewritten config.*pass plan="):
        save_pretrained_pruned(model, tmp_path / "m")
    assert save_pretrained_pruned(model, tmp_path / "m", plan=plan) == "plan"
    again = load_pretrained_pruned(tmp_path / "m")
    x = torch.randint(0, 64, (1, 9))
    assert torch.equal(logits(again, x), logits(model, x))


def test_with_groups_and_channels_in_one_call(tmp_path) -> None:
    dense = gqa()
    model = copy.deepcopy(dense)
    plan = prune_width(model, batches(), query_ratio=1 / 3, attention_ratio=0.5,
                       mlp_ratio=0.5, compensate="none")
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (2, 1, 32)
    assert n_params(type(model)(copy.deepcopy(cfg))) == n_params(model)
    assert pk.verify(dense, model, plan, batches()[0]).ok
    # the composed plan replays on a model built from the original config
    save_pretrained_pruned(model, tmp_path / "m", plan=plan)
    fresh = gqa()
    pk.load_pruned(fresh, plan, model.state_dict())
    x = torch.randint(0, 64, (1, 9))
    assert torch.equal(logits(fresh, x), logits(model, x))


def test_least_squares_compensation_runs_and_helps() -> None:
    dense = gqa()
    held_out = batches(3, seed=7)
    errors = {}
    for method in ("none", "lstsq"):
        model = copy.deepcopy(dense)
        prune_width(model, batches(16, length=24), query_ratio=1 / 3, compensate=method)
        errors[method] = sum(float((logits(model, x) - logits(dense, x)).pow(2).mean())
                             for x in held_out)
    assert errors["lstsq"] < errors["none"]


@pytest.mark.parametrize("model_kw, kwargs, match", [
    ({"num_key_value_heads": 6}, {"query_ratio": 0.5},
     "no grouped-query attention.*attention_ratio"),
    ({}, {"query_ratio": 0.9}, "leave no query head in groups of 3; use at most 0.6667"),
    ({}, {"query_ratio": 0.1}, "removes no query head from groups of 3"),
    ({}, {"query_ratio": 1.0}, "query ratio must be a fraction"),
    ({}, {"query_ratio": 0.3, "target_params": 0.2}, "cannot be combined with target_params"),
])
def test_bad_query_ratios_are_refused_and_the_model_kept(model_kw, kwargs, match) -> None:
    model = gqa(**model_kw)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        prune_width(model, batches(), **kwargs)
    assert state_equal(before, model.state_dict())
    assert model.config.num_attention_heads == 6 and not model.config.attention_bias


def test_failure_after_the_query_cut_restores_the_model(monkeypatch) -> None:
    model = gqa()
    before = copy.deepcopy(model.state_dict())
    from prunekit import structured

    def broken(*a, **k):
        raise RuntimeError("apply failed")

    monkeypatch.setattr(structured, "apply", broken)  # the second (engine) cut fails
    with pytest.raises(RuntimeError):
        prune_width(model, batches(), query_ratio=1 / 3, mlp_ratio=0.5, compensate="bias")
    assert state_equal(before, model.state_dict())
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.attention_bias, cfg.mlp_bias) == (6, False, False)
    assert model.model.layers[0].self_attn.num_key_value_groups == 3
