"""Finding a model's repeated blocks and capturing what each block is called with.

A block list is the ``nn.ModuleList`` of same-class modules that holds most of
the model's prunable weights: ``model.layers`` of Llama / Mistral / Qwen2 /
Gemma-3, ``encoder.layer`` of BERT, ``transformer.h`` of GPT-2-like models.

Capture runs the model once per calibration batch with every block replaced by
a recorder that stores the block's positional and keyword arguments (attention
mask, ``position_ids``, rotary ``position_embeddings``: they may differ per
block, as Gemma-3's sliding and global layers do) and returns its input
unchanged, so capture costs about one block, not the model. The recorder of the
last block stops the forward pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._calls import to_device
from ..errors import ConfigError
from ..mask.targets import find_targets

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def find_blocks(model: nn.Module, path: str = "") -> tuple[str, nn.ModuleList]:
    """The dotted name and the ModuleList of ``model``'s repeated blocks.

    Args:
        model: any network.
        path: the ModuleList's dotted name, to skip the search (``"model.layers"``).

    Raises:
        ConfigError: no such path, or no list of at least two same-class modules
            holding Linear layers.
    """
    if path:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"blocks={path!r} is not a submodule of the model") from None
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ConfigError(f"blocks={path!r} is not a non-empty nn.ModuleList")
        return path, blocks
    best, best_size = None, 0
    for name, module in model.named_modules():
        if _is_block_list(module):
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise ConfigError(
            f"found no decoder/encoder blocks in {type(model).__name__}: no nn.ModuleList of "
            "two or more same-class modules with Linear layers; pass blocks='<dotted path>' "
            "or use pk.sparsify for models without repeated blocks"
        )
    return best


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) < 2:
        return False
    kinds = {type(m) for m in module}
    return len(kinds) == 1 and any(isinstance(t.module, nn.Linear) for t in find_targets(module[0]))


@dataclass
class BlockCall:
    """What one block was called with for one batch (hidden states held apart)."""

    args: tuple
    kwargs: dict[str, Any]
    hidden_in_kwargs: bool = False


@dataclass
class Captured:
    """Inputs of block 0 per batch and every block's other arguments per batch."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    calls: list[list[BlockCall]] = field(default_factory=list)  # [block][batch]
    wraps_tuple: bool = False
    probed: bool = False


class _Stop(Exception):
    """Raised by the last recorder to end the forward pass."""


class _Recorder(nn.Module):
    """Stands in for one block during capture."""

    def __init__(self, block: nn.Module, index: int, last: bool, captured: Captured) -> None:
        super().__init__()
        self.block, self.index, self.last, self.captured = block, index, last, captured

    def __getattr__(self, name: str) -> Any:  # models read block attributes (attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden, call = _split_hidden(args, kwargs)
        self.captured.calls[self.index].append(call)
        if self.index == 0:
            self.captured.hidden.append(hidden)
        if self.last:
            raise _Stop
        if not self.captured.probed:  # learn once whether blocks return a tuple
            self.captured.wraps_tuple = isinstance(self.block(*args, **kwargs), (tuple, list))
            self.captured.probed = True
        return (hidden,) if self.captured.wraps_tuple else hidden


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    kwargs = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    if args:
        return args[0], BlockCall(tuple(args[1:]), kwargs)
    if "hidden_states" in kwargs:
        hidden = kwargs.pop("hidden_states")
        return hidden, BlockCall((), kwargs, hidden_in_kwargs=True)
    raise ConfigError("a block was called without hidden states (no positional argument and "
                      "no hidden_states=); pass blocks='<dotted path>' of the right list")


def capture(model: nn.Module, blocks: nn.ModuleList, batches: list) -> Captured:
    """Run ``model`` on every batch and record every block's call arguments."""
    captured = Captured(calls=[[] for _ in blocks])
    originals = list(blocks)
    extra = _no_cache_kwargs(model)
    try:
        for i, block in enumerate(originals):
            blocks[i] = _Recorder(block, i, i == len(originals) - 1, captured)
        with torch.no_grad():
            for batch in batches:
                try:
                    if isinstance(batch, dict):
                        model(**batch, **extra)
                    else:
                        model(batch, **extra)
                except _Stop:
                    pass
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    if len(captured.hidden) != len(batches) or any(len(c) != len(batches) for c in captured.calls):
        raise ConfigError("the model's forward pass did not call every block once per batch; "
                          "pass blocks='<dotted path>' of the list it runs in order")
    return captured


def _no_cache_kwargs(model: nn.Module) -> dict[str, Any]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """Run one block on ``hidden`` with its recorded arguments; returns its hidden output.

    The inputs go to the device of the block's weights first, so a model spread over
    several GPUs (accelerate's ``device_map``) is calibrated where each block lives.
    """
    device = block_device(block)
    if device is not None and hidden.device != device:
        hidden = hidden.to(device)
        call = BlockCall(to_device(call.args, device), to_device(call.kwargs, device),
                         call.hidden_in_kwargs)
    if call.hidden_in_kwargs:
        out = block(*call.args, hidden_states=hidden, **call.kwargs)
    else:
        out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def block_device(block: nn.Module) -> torch.device | None:
    """The device of ``block``'s first parameter (None for a block without any)."""
    p = next(block.parameters(), None)
    return None if p is None else p.device
