"""prune_width: heads (GQA key/value groups) and MLP channels from calibration activations."""

from __future__ import annotations

import copy

import pytest
import torch
from llm_models import batches, n_params, one_thread, state_equal, tiny  # noqa: F401

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.transformers import prune_width

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_gqa_heads_and_mlp_cut_coherently(family: str) -> None:
    model = tiny(family)
    original = copy.deepcopy(model)
    data = batches()
    plan = prune_width(model, data, attention_ratio=0.5, mlp_ratio=0.5, compensate="none")
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (2, 1, 24)
    assert cfg.hidden_size == 32  # the residual width is kept
    for layer in model.model.layers:
        attn = layer.self_attn
        assert attn.q_proj.out_features == cfg.num_attention_heads * cfg.head_dim
        assert attn.k_proj.out_features == cfg.num_key_value_heads * cfg.head_dim
        assert layer.mlp.down_proj.in_features == 24
    assert pk.verify(original, model, plan, data[0]).ok
    # oracle: the same class built from the rewritten config has exactly these parameters
    fresh = type(model)(copy.deepcopy(cfg))
    assert n_params(fresh) == n_params(model)
    assert model(torch.randint(0, 64, (3, 17))).logits.shape == (3, 17, 64)


@pytest.mark.parametrize("criterion", ["wanda", "flap"])
def test_channels_with_no_activation_go_first(criterion: str) -> None:
    model = tiny()
    dead = [3, 7, 11, 19, 23, 40]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[dead] = 0  # these channels always output 0
    plan = prune_width(model, batches(), attention_ratio=0.0, mlp_ratio=len(dead) / 48,
                       criterion=criterion, compensate="none")
    for i in range(2):
        kept = plan.tensors[f"model.layers.{i}.mlp.down_proj.weight"].kept[1]
        assert set(kept) == set(range(48)) - set(dead)


def _constant_channel_model() -> torch.nn.Module:
    """MLP channels 0..23 output a constant (their gate/up rows are zero, biases not): FLAP
    removes them first, and their whole contribution is a mean that folding restores."""
    model = tiny(mlp_bias=True)
    with torch.no_grad():
        for layer in model.model.layers:
            mlp = layer.mlp
            mlp.gate_proj.weight[:24] = 0
            mlp.up_proj.weight[:24] = 0
            mlp.gate_proj.bias[:24] = 2.0
            mlp.up_proj.bias[:24] = torch.linspace(1, 3, 24)
            mlp.gate_proj.bias[24:] = 0
            mlp.up_proj.bias[24:] = 0
    return model


def _error(model, reference, data) -> float:
    with torch.no_grad():
        return sum(float((model(x).logits - reference(x).logits).pow(2).mean()) for x in data)


def test_bias_folding_restores_a_constant_contribution() -> None:
    dense = _constant_channel_model()
    held_out = batches(3, seed=7)
    errors = {}
    for method in ("none", "bias"):
        model = copy.deepcopy(dense)
        plan = prune_width(model, batches(), attention_ratio=0.0, mlp_ratio=0.5,
                           criterion="flap", compensate=method)
        assert plan.tensors["model.layers.0.mlp.down_proj.weight"].kept[1] == list(range(24, 48))
        errors[method] = _error(model, dense, held_out)
    assert errors["none"] > 1e-3
    assert errors["bias"] < 1e-6 * max(1.0, errors["none"])


def test_bias_is_added_through_the_config_switch() -> None:
    dense = tiny()  # Llama: no biases, but mlp_bias / attention_bias switches exist
    model = copy.deepcopy(dense)
    plan = prune_width(model, batches(), ratio=0.5, compensate="bias")
    assert model.config.mlp_bias and model.config.attention_bias
    assert plan.info["compensation"]["bias_switched_on"] == ["attention_bias", "mlp_bias"]
    assert model.model.layers[0].mlp.down_proj.bias is not None
    fresh = type(model)(copy.deepcopy(model.config))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_no_switch_means_no_bias_and_a_note() -> None:
    model = tiny("qwen2")  # o_proj and down_proj have no bias and no switch builds one
    plan = prune_width(model, batches(), ratio=0.5, compensate="bias")
    notes = plan.info["compensation"]
    assert "model.layers.0.self_attn.o_proj" in notes["bias_not_possible"]
    assert model.model.layers[0].self_attn.o_proj.bias is None


def test_least_squares_beats_folding_on_held_out_data() -> None:
    dense = tiny(intermediate_size=64)
    held_out = batches(4, seed=9)
    errors = {}
    for method in ("none", "bias", "lstsq"):
        model = copy.deepcopy(dense)
        prune_width(model, batches(16, length=24), attention_ratio=0.0, mlp_ratio=0.5,
                    compensate=method)
        errors[method] = _error(model, dense, held_out)
    assert errors["lstsq"] < errors["bias"] < errors["none"]


def test_plan_takes_activation_criteria() -> None:
    model = tiny()
    data = batches()
    graph = pk.trace(model, data[0])
    plan = pk.plan(graph, ratio=0.5, criterion="flap", data=data,
                   ignore=[model.get_input_embeddings()])
    assert plan.config[""]["intermediate_size"] == 24
    with pytest.raises(ConfigError, match="calibration data"):
        pk.plan(graph, ratio=0.5, criterion="wanda")


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.5}, "fraction"),
    ({"mlp_ratio": -0.1}, "fraction"),
    ({"criterion": "nope"}, "unknown criterion"),
    ({"compensate": "magic"}, "unknown compensation"),
    ({"scope": "world"}, "unknown scope"),
    ({"target_params": 0.2, "ratio": 0.1}, "not both"),
    ({"data": []}, "empty"),
    ({"data": "some text"}, "tokenize"),
])
def test_bad_inputs_leave_the_model_untouched(kwargs: dict, match: str) -> None:
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    kwargs = {"data": batches(), **kwargs}
    with pytest.raises(ConfigError, match=match):
        prune_width(model, **kwargs)
    assert state_equal(before, model.state_dict())
    assert not model.config.mlp_bias


def test_failure_after_biases_were_added_is_undone(monkeypatch) -> None:
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    from prunekit import structured

    def broken(*a, **k):
        raise RuntimeError("apply failed")

    monkeypatch.setattr(structured, "apply", broken)
    with pytest.raises(RuntimeError):
        prune_width(model, batches(), ratio=0.5, compensate="lstsq")
    assert state_equal(before, model.state_dict())
    assert not model.config.mlp_bias and not model.config.attention_bias


def test_not_a_transformers_model() -> None:
    with pytest.raises(ConfigError, match="Hugging Face config"):
        prune_width(torch.nn.Linear(4, 4), [torch.randn(2, 4)])


def test_importing_the_package_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = ("import sys, prunekit.transformers; "
            "sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_round_to_keeps_multiples() -> None:
    model = tiny(intermediate_size=64)
    prune_width(model, batches(), attention_ratio=0.0, mlp_ratio=0.3, round_to=8)
    assert model.config.intermediate_size == 48  # 64 x 0.7 = 44.8, rounded to a multiple of 8


def test_mlp_cut_rewrites_intermediate_size_equal_to_hidden_size(tmp_path) -> None:
    """An MLP as wide as the residual stream: the MLP attribute and config field that were
    cut are told apart from the residual width that was not."""
    transformers = pytest.importorskip("transformers")
    from prunekit.transformers import save_pretrained_pruned

    model = tiny("llama", intermediate_size=32)
    data = batches()
    prune_width(model, data, attention_ratio=0, mlp_ratio=0.25, compensate="none")
    assert model.config.intermediate_size == 24 and model.config.hidden_size == 32
    assert all(layer.mlp.intermediate_size == 24 and layer.mlp.hidden_size == 32
               for layer in model.model.layers)
    assert save_pretrained_pruned(model, tmp_path / "m") == "hf"
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(again(data[0]).logits, model(data[0]).logits)
