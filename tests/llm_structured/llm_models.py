"""Tiny Hugging Face decoders built from configs (random weights, no downloads)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="pip install transformers")

VOCAB = 64


def tiny(family: str = "llama", **overrides: Any) -> torch.nn.Module:
    """A 2-block decoder with grouped-query attention (4 query heads over 2 kv heads)."""
    torch.manual_seed(0)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              max_position_embeddings=128, tie_word_embeddings=False)
    kw.update(overrides)
    return model_cls(cfg_cls(**kw)).eval()


def batches(n: int = 4, *, seed: int = 1, length: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, length), generator=g) for _ in range(n)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and the shared cores are not oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
