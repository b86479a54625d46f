"""Structured pruning end to end: trace, plan, apply, verify, save and replay."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit import structured as S
from prunekit.errors import ConfigError
from prunekit.graph._tracer import flatten_tensors, run_model
from prunekit.surgery import Plan


def _outputs(model, inputs):
    with torch.no_grad():
        return flatten_tensors(run_model(model.eval(), inputs))


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_every_zoo_model_prunes_and_passes_zero_out_equivalence(zoo_case):
    model, inputs = zoo_case.model, zoo_case.inputs
    original = copy.deepcopy(model)
    before = [t.shape for t in _outputs(model, inputs)]
    plan = S.prune(model, inputs, ratio=0.5)
    assert plan.removed_units > 0
    assert _params(model) < _params(original)
    assert [t.shape for t in _outputs(model, inputs)] == before
    result = S.verify(original, model, plan, inputs)
    assert result.ok, result.message
    assert result.checked, "at least one group is checked exactly"


def test_zero_out_check_catches_damaged_weights(zoo):
    case = zoo("conv_bn_relu")
    original = copy.deepcopy(case.model)
    plan = S.prune(case.model, case.inputs, ratio=0.5)
    with torch.no_grad():  # damage one kept output channel of the first convolution
        case.model.features[0].weight[0].mul_(3.0)
    result = S.verify(original, case.model, plan, case.inputs)
    assert not result.ok
    assert "differ" in result.message


def test_zero_out_check_names_the_group_of_an_inconsistent_cut(zoo):
    case = zoo("conv_bn_relu")
    original = copy.deepcopy(case.model)
    plan = S.plan(S.trace(case.model, case.inputs), ratio=0.5)
    group = next(g for g in plan.groups if g.name == "features.0.weight:0")
    wrong = sorted(set(range(16)) - set(group.kept))  # the batch norm keeps the other half
    group.members["features.1.weight"][0] = wrong
    plan.tensors["features.1.weight"].kept[0] = wrong
    S.apply(case.model, plan)
    result = S.verify(original, case.model, plan, case.inputs)
    assert not result.ok
    assert result.failed == ["features.0.weight:0"]


def test_flatten_linear_cuts_the_block_of_each_channel(zoo):
    case = zoo("flatten_linear")
    graph = S.trace(case.model, case.inputs)
    plan = S.plan(graph, ratio=0.5)
    conv_kept = plan.tensors["conv.weight"].kept[0]
    fc_kept = plan.tensors["fc1.weight"].kept[1]
    expected = [c * 36 + p for c in conv_kept for p in range(36)]  # 6x6 positions per channel
    assert fc_kept == expected


def test_residual_stream_is_one_group(zoo):
    case = zoo("residual")
    graph = S.trace(case.model, case.inputs)
    (group,) = graph.group_of("layer1.conv2.weight", 0)
    names = {m.name for m in group.members}
    assert {"stem.0.weight", "layer1.bn2.weight", "layer2.conv1.weight",
            "layer2.down.0.weight"} <= names


def test_grouped_and_depthwise_convolutions_keep_their_groups_consistent(zoo):
    case = zoo("grouped_depthwise")
    plan = S.prune(case.model, case.inputs, ratio=0.5)
    m = case.model
    assert m.depthwise.groups == m.depthwise.in_channels == m.depthwise.out_channels
    assert m.grouped.in_channels % m.grouped.groups == 0
    assert m.grouped.out_channels % m.grouped.groups == 0
    assert m.depthwise.out_channels < 32
    assert plan.attrs["depthwise"]["groups"] == m.depthwise.groups


def test_plan_round_trip_gives_the_same_outputs(zoo, tmp_path):
    for name in ("residual", "concat_split", "lstm", "tied_lm", "attention"):
        case = zoo(name)
        plan = S.prune(case.model, case.inputs, ratio=0.4)
        plan_path, weights_path = S.save_pruned(case.model, plan, tmp_path / name)
        fresh = zoo(name).model
        S.load_pruned(fresh, plan_path, weights_path)
        for a, b in zip(_outputs(case.model, case.inputs), _outputs(fresh, case.inputs),
                        strict=True):
            torch.testing.assert_close(a, b)


class _VersionedBN(nn.BatchNorm2d):
    """Refuses a state dict without its version, as torchvision's MNASNet does."""

    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version") != 2:
            raise ValueError(f"version should be 2, got {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def test_load_pruned_gives_modules_the_versions_they_check(tmp_path):
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), _VersionedBN(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

    model, x = build().eval(), torch.randn(2, 3, 8, 8)
    plan = S.prune(model, x, ratio=0.5)
    plan_path, weights_path = S.save_pruned(model, plan, tmp_path / "versioned")
    fresh = S.load_pruned(build().eval(), plan_path, weights_path)
    torch.testing.assert_close(fresh(x), model(x))


def test_plan_json_has_names_dims_and_kept_indices(zoo, tmp_path):
    case = zoo("mlp")
    plan = S.plan(S.trace(case.model, case.inputs), ratio=0.5)
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.tensors.keys() == plan.tensors.keys()
    cut = loaded.tensors["net.0.weight"]
    assert cut.shape == (32, 16) and len(cut.kept[0]) == 16
    assert loaded.attrs["net.0"]["out_features"] == 16


def test_failed_apply_leaves_the_model_exactly_as_it_was(zoo, monkeypatch):
    from prunekit.surgery import apply as apply_mod

    case = zoo("residual")
    plan = S.plan(S.trace(case.model, case.inputs), ratio=0.5)
    before = _state(case.model)
    calls = {"n": 0}
    real = apply_mod._set_attr

    def flaky(obj, attr, value):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("injected failure")
        real(obj, attr, value)

    monkeypatch.setattr(apply_mod, "_set_attr", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        S.apply(case.model, plan)
    after = case.model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert case.model.layer1.conv1.out_channels == 16
    assert case.model.stem[1].num_features == 16


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 1.0}, "ratio"),
    ({"ratio": -0.1}, "ratio"),
    ({"criterion": "nope"}, "unknown criterion"),
    ({"ignore": ["no_such_layer"]}, "matches no module"),
    ({"ignore": [nn.Linear(2, 2)]}, "not part of this model"),
    ({"scope": "everywhere"}, "unknown scope"),
    ({"round_to": 0}, "round_to"),
    ({"target": {"flops": 0.5}}, "unknown target"),
])
def test_bad_arguments_raise_config_error_before_anything_changes(zoo, kwargs, message):
    case = zoo("conv_bn_relu")
    before = _state(case.model)
    with pytest.raises(ConfigError, match=message):
        S.prune(case.model, case.inputs, **kwargs)
    assert all(torch.equal(v, case.model.state_dict()[k]) for k, v in before.items())


def test_a_model_blocked_by_an_operator_without_rule_is_a_config_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.fft.fft(self.a(x)).real)

    model = Odd()
    before = _state(model)
    with pytest.raises(ConfigError, match="fft"):
        S.prune(model, torch.randn(2, 8), ratio=0.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_replaying_a_plan_on_a_different_model_is_a_config_error(zoo):
    case = zoo("mlp")
    plan = S.plan(S.trace(case.model, case.inputs), ratio=0.5)
    other = zoo("conv_bn_relu").model
    with pytest.raises(ConfigError, match="does not have"):
        S.apply(other, plan)


def test_round_to_keeps_multiples(zoo):
    case = zoo("mlp")
    S.prune(case.model, case.inputs, ratio=0.6, round_to=8)
    assert case.model.net[0].out_features % 8 == 0
    assert case.model.net[2].out_features % 8 == 0


def test_ignore_keeps_the_module_outputs(zoo):
    case = zoo("conv_bn_relu")
    S.prune(case.model, case.inputs, ratio=0.5, ignore=[case.model.features[3]])
    assert case.model.features[3].out_channels == 24
    assert case.model.features[0].out_channels == 8
    assert case.model.features[3].in_channels == 8  # its inputs still follow the first layer


def test_ratios_by_pattern(zoo):
    case = zoo("mlp")
    S.prune(case.model, case.inputs, ratio=0.5, ratios={"net.2": 0.25})
    assert case.model.net[0].out_features == 16
    assert case.model.net[2].out_features == 18


def test_global_scope_respects_the_total_and_the_cap(zoo):
    case = zoo("mlp")
    graph = S.trace(case.model, case.inputs)
    plan = S.plan(graph, ratio=0.5, scope="global", max_ratio=0.7)
    removed = sum(g.removed for g in plan.groups)
    assert removed == round(0.5 * (32 + 24))
    assert all(g.removed <= 0.7 * g.size for g in plan.groups)


@pytest.mark.parametrize("key", ["params", "macs"])
def test_target_fraction_is_reached(zoo, key):
    case = zoo("residual")
    graph = S.trace(case.model, case.inputs)
    plan = S.plan(graph, target={key: 0.4})
    counts = {g.id: len(g.kept) for g in plan.groups}
    measure = graph.params_after if key == "params" else graph.macs_after
    removed = 1 - measure(counts) / measure({})
    assert removed >= 0.4
    assert removed < 0.6
    pruned = copy.deepcopy(case.model)
    S.apply(pruned, plan)
    if key == "params":
        assert _params(pruned) == measure(counts)
    else:  # the predicted MACs are those of the pruned network
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            pruned(case.inputs)
        assert measure(counts) == counter.get_total_flops() // 2


@pytest.mark.parametrize("criterion", ["l1", "l2", "random", "bn_scale", "lamp", "taylor"])
def test_every_criterion_plans_a_verified_cut(zoo, criterion):
    case = zoo("conv_bn_relu")
    original = copy.deepcopy(case.model)
    data = [(case.inputs, torch.tensor([0, 3]))]
    plan = S.prune(case.model, case.inputs, ratio=0.5, criterion=criterion, data=data)
    assert S.verify(original, case.model, plan, case.inputs).ok


def test_l1_keeps_the_largest_channels():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(6.0).view(6, 1).repeat(1, 4))
        model[0].bias.zero_()
        model[2].weight.fill_(0.01)
    plan = S.plan(S.trace(model, torch.randn(3, 4)), ratio=0.5, criterion="l1")
    assert plan.tensors["0.weight"].kept[0] == [3, 4, 5]


def test_a_size_baked_into_the_code_is_left_out_by_the_dry_run(zoo):
    case = zoo("concat_split")  # torch.split(y, [4, 16]) uses literal sizes
    graph = S.trace(case.model, case.inputs)
    blocked_before = {g.name: list(g.blocked) for g in graph.groups}
    plan = S.plan(graph, ratio=0.5)
    assert "b.weight:0" in plan.info["excluded"]
    # planning has no side effect on the graph it is given: the reason lives in the plan
    assert {g.name: list(g.blocked) for g in graph.groups} == blocked_before
    assert S.plan(graph, ratio=0.5).info["excluded"] == plan.info["excluded"]
    original = copy.deepcopy(case.model)
    S.apply(case.model, plan)
    assert S.verify(original, case.model, plan, case.inputs).ok


class _WidthFromInput(nn.Module):
    """An inner width reshaped to the width of the block's input, as timm's EVA attention."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.inner = nn.Linear(6, 8), nn.Linear(8, 8)
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (B, T, 8)
        b, t, c = h.shape
        y = self.inner(h).reshape(b, t, 2, 4).transpose(2, 3).reshape(b, t, c)  # c: h's width
        return self.head(torch.relu(self.proj(y) + h))


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_a_size_read_from_another_tensor_is_left_out_by_the_dry_run(ratio):
    torch.manual_seed(0)
    model, x = _WidthFromInput(), torch.randn(2, 5, 6)
    original = copy.deepcopy(model)
    plan = S.prune(model, x, ratio=ratio)
    assert plan.info["excluded"]  # a cut that breaks the reshape was found and left out
    model(x)  # the pruned model runs
    assert S.verify(original, model, plan, x).ok


def test_model_outputs_are_never_pruned(zoo):
    case = zoo("tied_lm")
    S.prune(case.model, case.inputs, ratio=0.5)
    assert case.model.lm_head.out_features == 50
    assert case.model.embed.num_embeddings == 50
    assert case.model.lm_head.weight is case.model.embed.weight  # the tie survives


def test_inspect_names_what_cannot_be_pruned_and_why():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            h = self.a(x)
            h = torch.fft.fft(h).real  # no rule: the 16 hidden units must stay
            return self.b(h)

    report = S.inspect_model(Odd(), torch.randn(2, 8))
    assert report.params == 8 * 16 + 16 + 16 * 4 + 4
    assert report.macs > 0
    assert not report.prunable
    assert {u["module"] for u in report.unknown_ops} == {""}
    row = next(g for g in report.groups if g["name"] == "a.weight:0")
    assert any("no rule for operator" in r and "fft" in r for r in row["blocked"])
    assert "a.weight:0" in str(report)


def test_verify_checks_groups_under_a_layer_norm_by_normalizing_over_the_kept_units(zoo):
    case = zoo("mha")
    original = copy.deepcopy(case.model)
    plan = S.prune(case.model, case.inputs, ratio=0.5)
    assert any("layer norm" in " ".join(g.unchecked) for g in plan.groups if g.removed)
    result = S.verify(original, case.model, plan, case.inputs)
    assert result.ok and not result.unchecked
    assert result.emulated == {"norm": "LayerNorm"}
    assert {g.name for g in plan.groups if g.removed} == set(result.checked)


class _StdConv(nn.Conv2d):
    """Weight standardization written as a batch norm of the weight, as timm's StdConv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1),
                                           None, None, training=True, momentum=0.0, eps=1e-6)
        return self._conv_forward(x, w.reshape_as(self.weight), self.bias)


def test_verify_lists_groups_feeding_a_standardized_weight_as_unchecked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), _StdConv(8, 8, 3), nn.ReLU(),
                          nn.Conv2d(8, 2, 1)).eval()
    x, original = torch.randn(2, 3, 9, 9), copy.deepcopy(model)
    plan = S.prune(model, x, ratio=0.5)
    result = S.verify(original, model, plan, x)
    assert result.ok, result.message
    assert any("batch norm statistics" in " ".join(r) for r in result.unchecked.values())
    assert "0.weight:0" in result.unchecked  # the group cut at the standardized conv's input


def test_trace_on_meta_device_plans_and_applies_without_weights(zoo):
    with torch.device("meta"):
        model = zoo("residual").model.to("meta")
    inputs = torch.empty(2, 3, 8, 8, device="meta")
    plan = S.prune(model, inputs, ratio=0.5, criterion="random")
    assert model.layer1.conv1.weight.device.type == "meta"
    assert model.layer1.conv1.out_channels == 8
    assert plan.removed_units > 0
    with pytest.raises(ConfigError, match="meta"):
        S.plan(S.trace(model, inputs), criterion="l2")


# -- Hugging Face transformers (tiny configs, random weights) -----------------------------------
def _hf(name: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=48,
                                      max_position_embeddings=16)
        model = transformers.BertModel(cfg)
    elif name == "llama":
        cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=48,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=16)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=60, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=16, bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(1))
    pristine = copy.deepcopy(cfg)  # pruning updates model.config in place
    return model.eval(), {"input_ids": ids}, lambda: type(model)(copy.deepcopy(pristine)).eval()


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2"])
def test_hugging_face_models_prune_verify_and_reload(name, tmp_path):
    model, inputs, fresh = _hf(name)
    original = copy.deepcopy(model)
    plan = S.prune(model, inputs, ratio=0.5)
    result = S.verify(original, model, plan, inputs)
    assert result.ok, result.message
    paths = S.save_pruned(model, plan, tmp_path)
    rebuilt = S.load_pruned(fresh(), *paths)
    for a, b in zip(_outputs(model, inputs), _outputs(rebuilt, inputs), strict=True):
        torch.testing.assert_close(a, b)


def test_a_model_built_from_the_pruned_config_is_refused():
    model, inputs, _ = _hf("bert")
    plan = S.prune(model, inputs, ratio=0.5)
    wrong = type(model)(model.config)  # config already says 2 heads
    with pytest.raises(ConfigError, match="original"):
        S.apply(wrong, plan)


def test_bert_heads_and_ffn_shrink_with_attributes_and_config():
    model, inputs, _ = _hf("bert")
    plan = S.prune(model, inputs, ratio=0.5)
    for layer in model.encoder.layer:
        att = layer.attention.self
        assert att.num_attention_heads == 2 and att.attention_head_size == 8
        assert att.all_head_size == 16 == att.query.out_features
        assert layer.attention.output.dense.in_features == 16
        assert layer.intermediate.dense.out_features == 24
    assert model.config.num_attention_heads == 2
    assert plan.config[""]["num_attention_heads"] == 2
    assert model.embeddings.word_embeddings.embedding_dim == 32  # last_hidden_state is an output


def test_llama_grouped_query_attention_keeps_kv_groups_and_prunes_hidden():
    model, inputs, _ = _hf("llama")
    original = copy.deepcopy(model)
    plan = S.prune(model, inputs, ratio=0.5)
    att = model.model.layers[0].self_attn
    assert att.k_proj.out_features == 8 and att.q_proj.out_features == 16  # 1 kv head, 2 q heads
    assert att.head_dim == 8 and att.num_key_value_groups == 2
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    assert model.config.hidden_size == 16 == model.model.norm.weight.shape[0]
    assert model.config.intermediate_size == 24 == model.model.layers[1].mlp.intermediate_size
    result = S.verify(original, model, plan, inputs)
    assert result.ok and not result.unchecked  # the hidden width: its RMS norms emulated
    assert set(result.emulated.values()) == {"LlamaRMSNorm"}


def test_per_layer_sizes_are_recorded_when_the_config_cannot_hold_them(tmp_path):
    model, inputs, fresh = _hf("llama")
    plan = S.prune(model, inputs, ratio=0.25, ratios={"re:model\\.layers\\.1\\..*": 0.5})
    mlps = [layer.mlp for layer in model.model.layers]
    assert [m.intermediate_size for m in mlps] == [36, 24]
    assert [m.gate_proj.out_features for m in mlps] == [36, 24]
    assert "intermediate_size" not in plan.config.get("", {})
    assert any("intermediate_size" in s for s in plan.info["config_not_updated"])
    rebuilt = S.load_pruned(fresh(), *S.save_pruned(model, plan, tmp_path))
    assert [layer.mlp.intermediate_size for layer in rebuilt.model.layers] == [36, 24]


def test_gpt2_keeps_its_tied_output_layer():
    model, inputs, _ = _hf("gpt2")
    S.prune(model, inputs, ratio=0.5)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.h[0].attn.split_size == 16
    assert model.config.n_head == 2


def _meta_llama(layers: int, hidden: int, ffn: int, heads: int):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=ffn,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=heads, vocab_size=32000)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    return model, {"input_ids": torch.zeros(1, 8, dtype=torch.long, device="meta")}


def test_llama_shaped_model_on_meta_is_pruned_without_weights():
    model, inputs = _meta_llama(layers=4, hidden=512, ffn=1376, heads=8)
    plan = S.prune(model, inputs, ratio=0.5, criterion="random", round_to=8)
    assert all(p.device.type == "meta" for p in model.parameters())
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (256, 688, 4)
    assert model.model.layers[3].self_attn.q_proj.weight.shape == (4 * 64, 256)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 8, 32000)
    assert len(plan.groups) == 4 * 2 + 1  # heads and FFN per layer, one hidden group


@pytest.mark.slow
def test_llama_7b_shape_on_meta():
    model, inputs = _meta_llama(layers=32, hidden=4096, ffn=11008, heads=32)
    plan = S.prune(model, inputs, ratio=0.5, criterion="random", round_to=8)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (2048, 5504, 16)
    assert len(plan.groups) == 65


def test_load_pruned_into_a_model_built_on_the_meta_device(zoo, tmp_path):
    case = zoo("residual")
    plan = S.prune(case.model, case.inputs, ratio=0.5)
    paths = S.save_pruned(case.model, plan, tmp_path)
    with torch.device("meta"):
        fresh = zoo("residual").model.to("meta")
    S.load_pruned(fresh, *paths)
    assert all(p.device.type == "cpu" for p in fresh.parameters())
    for a, b in zip(_outputs(case.model, case.inputs), _outputs(fresh, case.inputs), strict=True):
        torch.testing.assert_close(a, b)


def test_global_lamp_ranking_removes_the_total_asked_for(zoo):
    case = zoo("mlp")
    graph = S.trace(case.model, case.inputs)
    plan = S.plan(graph, ratio=0.5, scope="global", criterion="lamp", max_ratio=0.8)
    assert sum(g.removed for g in plan.groups) == 28
    assert all(g.removed <= 0.8 * g.size for g in plan.groups)


def test_prune_reports_its_progress_through_logging(caplog):
    import logging

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with caplog.at_level(logging.INFO, logger="prunekit"):
        S.prune(model, torch.randn(2, 8), ratio=0.5, check="always")
    lines = [r.getMessage() for r in caplog.records if r.name == "prunekit"]
    assert lines[0].startswith("tracing Sequential (212 parameters)")
    assert any(line.startswith("traced in") and "1 prunable" in line for line in lines)
    assert "scoring 1 candidate groups by l2" in lines
    assert "dry run of the plan (1 groups cut)" in lines
