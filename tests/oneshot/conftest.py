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


def calibration(samples: int = 6, seq_len: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 96, (samples, seq_len), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert set(after) == set(before), "masks were left behind"
    for k, v in before.items():
        assert torch.equal(after[k], v), k
