"""Where the parts of a Hugging Face decoder live: its config, its stack of blocks, the
attention and MLP inside each block."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..importance.group_activation import model_inputs

_ATTENTION = ("self_attn", "attention", "attn", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe")


def hf_config(model: nn.Module) -> Any:
    """The model's Hugging Face config, or a ConfigError saying what is expected."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise ConfigError(f"{type(model).__name__} has no Hugging Face config; these verbs take "
                          "transformers models (LlamaForCausalLM, Qwen2ForCausalLM, ...)")
    return cfg


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and the ``nn.ModuleList`` of the model's decoder blocks.

    The list is the one holding ``config.num_hidden_layers`` blocks (the longest such list
    when several match, preferring one named ``layers``).
    """
    cfg = hf_config(model)
    n = getattr(cfg, "num_hidden_layers", None)
    found = [(p, m) for p, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n and n]
    if not found:
        raise ConfigError(f"no decoder blocks recognised in {type(model).__name__}: expected an "
                          f"nn.ModuleList of config.num_hidden_layers ({n}) blocks")
    found.sort(key=lambda pm: (not pm[0].endswith("layers"), pm[0].count(".")))
    return found[0]


def block_child(block: nn.Module, names: Iterable[str]) -> str | None:
    """The first child of ``block`` with one of ``names``."""
    children = dict(block.named_children())
    return next((n for n in names if n in children), None)


def part_patterns(model: nn.Module) -> dict[str, str]:
    """``{"attention": pattern, "mlp": pattern}``: name patterns of every block's parts."""
    path, layers = decoder_layers(model)
    out = {}
    for kind, names in (("attention", _ATTENTION), ("mlp", _MLP)):
        child = block_child(layers[0], names)
        if child is not None:
            out[kind] = rf"re:{re.escape(path)}\.\d+\.{re.escape(child)}(\..*)?"
    return out


def first_batch(batches: list) -> Any:
    """Example inputs from the first calibration batch."""
    if not batches:
        raise ConfigError("calibration data is empty; pass at least one batch of token ids "
                          "(or dicts of model inputs)")
    return model_inputs(batches[0])


def take(data: Iterable | None, batches: int | None) -> list:
    """The calibration batches as a list (at most ``batches``)."""
    if data is None:
        raise ConfigError("calibration data is needed: pass data=<list of token-id batches "
                          "or dicts of model inputs>")
    if isinstance(data, (str, bytes)):
        raise ConfigError("data must be batches of token ids, not text; tokenize first")
    out = list(itertools.islice(data, batches))
    first_batch(out)
    return out


def small_example(inputs: Any, *, rows: int = 1, tokens: int = 16) -> Any:
    """The first ``rows`` sequences and ``tokens`` positions of a batch: enough to trace."""
    import torch

    def cut(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            return t[:rows, :tokens]
        return t

    if isinstance(inputs, dict):
        return {k: cut(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(cut(v) for v in inputs)
    return cut(inputs)
