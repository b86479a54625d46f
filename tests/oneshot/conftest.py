"""Tiny Hugging Face decoders built from configs (random weights), for one-shot tests."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="pip install transformers")


def tiny_llama(seed: int = 0, layers: int = 3):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


FAMILIES = {
    "mistral": ("MistralConfig", "MistralForCausalLM", "model.layers"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "model.layers"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", "model.layers"),
    "bert": ("BertConfig", "BertModel", "encoder.layer"),
}


def tiny_family(family: str):
    """A 2-block model of ``family`` (a key of FAMILIES): Gemma-3 with a sliding and a full
    attention layer, the decoders with grouped-query attention. Returns (model, blocks path)."""
    cfg_name, cls_name, path = FAMILIES[family]
    kwargs = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64)
    if family != "bert":
        kwargs.update(num_key_value_heads=2, head_dim=8)
    if family == "gemma3_text":
        kwargs.update(layer_types=["sliding_attention", "full_attention"], sliding_window=4)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**kwargs)).eval()
    return model, path


def calibration(samples: int = 6, seq_len: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 96, (samples, seq_len), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert set(after) == set(before), "masks were left behind"
    for k, v in before.items():
        assert torch.equal(after[k], v), k
