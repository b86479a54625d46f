"""Zoo sources: the registries list what the issue asks for, and the small models run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.catalog import (
    CharLM,
    call_model,
    get_source,
    list_sources,
    output_tensors,
)

TRANSFORMERS_FAMILIES = {
    "bert", "roberta", "distilbert", "albert", "gpt2", "gpt_neox", "llama", "mistral", "t5",
    "vit", "swin", "clip_text",
}  # fmt: skip


def by_name(source: str, name: str):
    return next(m for m in get_source(source) if m.name == name)


def test_sources_are_registered():
    assert list_sources() == ["rnn", "timm", "torchvision", "transformers"]


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="torchvision"):
        get_source("keras")


def test_torchvision_source_is_every_classification_model():
    torchvision = pytest.importorskip("torchvision")
    names = [m.name for m in get_source("torchvision")]
    assert {"resnet18", "mobilenet_v2", "vit_b_16", "inception_v3", "swin_t"} <= set(names)
    assert names == torchvision.models.list_models(module=torchvision.models)
    assert not any("rcnn" in n or "deeplab" in n or "raft" in n or "r3d" in n for n in names)


def test_torchvision_input_sizes():
    pytest.importorskip("torchvision")
    assert by_name("torchvision", "inception_v3").example_inputs().shape == (1, 3, 299, 299)
    assert by_name("torchvision", "resnet18").example_inputs().shape == (1, 3, 224, 224)


def test_torchvision_classifier_is_ignored():
    pytest.importorskip("torchvision")
    zoo_model = by_name("torchvision", "googlenet")
    with torch.device("meta"):
        model = zoo_model.build()
    assert zoo_model.ignored(model) == ["aux1.fc2", "aux2.fc2", "fc"]


def test_timm_source_has_thirty_known_architectures():
    timm = pytest.importorskip("timm")
    names = [m.name for m in get_source("timm")]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert set(names) <= set(timm.list_models())


def test_transformers_source_has_the_twelve_families():
    # listing builds nothing, so it needs no transformers install
    assert {m.name for m in get_source("transformers")} == TRANSFORMERS_FAMILIES


def test_tiny_llama_runs_with_grouped_query_attention():
    pytest.importorskip("transformers")
    zoo_model = by_name("transformers", "llama")
    model = zoo_model.create()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    with torch.no_grad():
        out = call_model(model, zoo_model.example_inputs())
    assert out.logits.shape == (2, 8, 1000)
    assert zoo_model.ignored(model) == ["lm_head"]


def test_rnn_source_models_run():
    expected = {"lstm_classifier": (2, 4), "gru_classifier": (2, 4), "char_lm": (2, 12, 64)}
    models = get_source("rnn")
    assert [m.name for m in models] == list(expected)
    for zoo_model in models:
        model = zoo_model.create()
        with torch.no_grad():
            out = call_model(model, zoo_model.example_inputs())
        assert out.shape == expected[zoo_model.name]
        heads = zoo_model.ignored(model)
        assert heads and all(isinstance(model.get_submodule(n), nn.Linear) for n in heads)


def test_char_lm_ties_decoder_to_embedding():
    model = CharLM()
    assert model.decoder.weight is model.embed.weight


def test_builds_and_inputs_are_reproducible():
    zoo_model = by_name("rnn", "gru_classifier")
    a, b = zoo_model.create(), zoo_model.create()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                   strict=True))
    assert torch.equal(zoo_model.example_inputs(), zoo_model.example_inputs())
    assert not torch.equal(zoo_model.example_inputs(seed=0), zoo_model.example_inputs(seed=1))


def test_call_model_dispatches_on_input_kind():
    def f(*args, **kwargs):
        return args, kwargs

    x = torch.zeros(1)
    assert call_model(f, x) == ((x,), {})
    assert call_model(f, (x, x)) == ((x, x), {})
    assert call_model(f, {"a": x}) == ((), {"a": x})


def test_output_tensors_names_nested_leaves():
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    out = {"logits": a, "extra": (b, None, [c])}
    assert [(n, t.shape[0]) for n, t in output_tensors(out)] == [
        ("output.logits", 1), ("output.extra.0", 2), ("output.extra.2.0", 3)
    ]
