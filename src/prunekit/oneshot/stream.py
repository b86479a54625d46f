"""One-shot pruning of a checkpoint that need not fit in memory, shard by shard.

:func:`oneshot_streamed` reads a Hugging Face folder (``config.json`` and
``model.safetensors`` or sharded ``model-*.safetensors`` with their index), builds the
model with every parameter on the meta device, and then holds real weights for one
decoder block at a time: block ``i``'s tensors are read from the shards, the block is
calibrated and pruned exactly as :func:`prunekit.oneshot.oneshot` does it, its pruned
tensors are written to a new shard, and its memory is given back before block ``i + 1``
is read. The layers outside the blocks (embeddings, final norm) are loaded once; the
output embedding of an untied model is never loaded, only copied.

Peak memory is therefore about: the embedding, one block's weights and statistics
(SparseGPT: an ``in x in`` matrix per Linear), and the calibration hidden states
(``samples x seq_len x hidden`` floats), not the model. The destination folder is
written under a temporary name and renamed into place when every shard is written, so
a failure leaves neither a half-written folder nor a changed source; it loads with
``from_pretrained`` of the same class.

Example:
    >>> tok = AutoTokenizer.from_pretrained("big-model")
    >>> ids = calibration_ids(tok, texts, samples=128, seq_len=512)
    >>> result = oneshot_streamed("big-model", "big-model-2of4", ids, method="sparsegpt",
    ...                           pattern="2:4")
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _io
from .. import mask as _mask
from ..errors import ConfigError, DataError
from ._memory import PeakMemory
from .api import (
    OneShotResult,
    Resident,
    _advance,
    _batches,
    _block_layers,
    _resolve,
    _result,
    _run,
    _Undo,
)
from .blocks import capture, find_blocks
from .methods import get_method
from .text import check_scored_ids, perplexity

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def oneshot_streamed(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    calibration: Any,
    config: Any = None,
    *,
    model_class: Any = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> OneShotResult:
    """Prune the checkpoint in ``source`` block by block and write it to ``destination``.

    Args:
        source: a Hugging Face model folder with safetensors weights (one file or shards
            with ``model.safetensors.index.json``), as ``save_pretrained`` writes it.
        destination: the output folder (replaced if it exists, only once everything is
            written): one shard per block and one per tensor outside the blocks, an index,
            and the config and every other file of ``source`` (tokenizer, generation
            config) copied.
        calibration: token ids ``(samples, seq_len)``, a dict of such tensors or a list of
            batches, as for :func:`prunekit.oneshot.oneshot`.
        config: a :class:`~prunekit.oneshot.OneShotConfig`, or its fields as keywords.
        model_class: the transformers class to build (default ``AutoModelForCausalLM``;
            ``AutoModel`` for an encoder).
        dtype: the dtype the weights are computed and written in (default: as stored).
        device: where each block is calibrated and pruned (``"cuda"`` on a GPU).

    Returns:
        The :class:`~prunekit.oneshot.OneShotResult`; ``peak_rss_bytes`` is the whole
        call's peak, reading and writing included.

    Raises:
        ConfigError: bad options, a folder without config or safetensors weights, tensor
            names that do not match the model the config builds, ``destination`` equal to
            ``source``. Nothing is written then.
    """
    cfg = _resolve(config, options)
    cfg = dataclasses.replace(cfg, rollback=False)  # the source is never changed
    source, destination = Path(source), Path(destination)
    if source.resolve() == destination.resolve():
        raise ConfigError("destination must differ from source: the source shards are read "
                          "while the pruned ones are written")
    method = get_method(cfg.method)
    device = torch.device(device)
    start = time.perf_counter()
    with PeakMemory() as mem, torch.no_grad():
        model, path, blocks, shards = _open(source, model_class, cfg.blocks, dtype, device)
        layers = _block_layers(model, path, blocks, cfg)
        needs_data = method.needs is not None or cfg.allocation == "owl"
        batches = _batches(calibration, cfg.batch_size, device) if needs_data else []
        with _io.staging(destination) as tmp:
            store = _Streamer(model, path, blocks, shards, Path(tmp), dtype, device)
            run = _run(model, blocks, layers, batches, method, cfg, _Undo(enabled=False),
                       needs_data, store)
            store.finish(source)
    return _result(cfg, path, run, time.perf_counter() - start, mem)


def perplexity_streamed(
    folder: str | os.PathLike[str],
    ids: torch.Tensor,
    *,
    batch_size: int = 2,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    model_class: Any = None,
    blocks: str = "",
) -> float:
    """Held-out perplexity of the causal LM checkpoint in ``folder``, read one block at a
    time as :func:`oneshot_streamed` reads it (so the model may be larger than memory).

    The same number as :func:`prunekit.oneshot.perplexity` on the loaded model: every
    block runs on all of ``ids``'s hidden states in turn, then the model's own final norm
    and LM head score them.

    Args:
        folder: a Hugging Face folder with safetensors weights.
        ids: token ids ``(samples, seq_len)``.
        batch_size: samples scored at once.
        dtype, device, model_class, blocks: as for :func:`oneshot_streamed`.
    """
    check_scored_ids(ids)
    device = torch.device(device)
    with torch.no_grad():
        model, path, block_list, shards = _open(folder, model_class, blocks, dtype, device,
                                                head=True)
        batches = [b.to(device) for b in ids.split(batch_size)]
        store = _Streamer(model, path, block_list, shards, None, dtype, device)  # reads only
        store.load(0)
        captured = capture(model, block_list, batches)
        hidden = list(captured.hidden)
        for i in range(len(block_list)):
            store.load(i)
            hidden = _advance(block_list[i], hidden, captured.calls[i])
            store.release(i)
        originals = list(block_list)
        try:
            for i in range(len(originals)):
                last = i == len(originals) - 1
                block_list[i] = _Replay(hidden if last else None, captured.wraps_tuple)
            return perplexity(model, ids, batch_size=batch_size)
        finally:
            for i, block in enumerate(originals):
                block_list[i] = block


class _Replay(nn.Module):
    """Stands in for a block when the model is finally run: passes its input through, or,
    for the last block, returns the next of the hidden states computed block by block."""

    def __init__(self, outputs: list[torch.Tensor] | None, wraps_tuple: bool) -> None:
        super().__init__()
        self.outputs, self.wraps_tuple = outputs, wraps_tuple

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        out = self.outputs.pop(0) if self.outputs is not None else hidden
        return (out,) if self.wraps_tuple else out


def _open(folder: str | os.PathLike[str], model_class: Any, blocks: str,
          dtype: torch.dtype | None, device: torch.device, *, head: bool = False) -> tuple:
    """``(model, blocks path, blocks, checkpoint)``: the model of ``folder`` with its
    parameters on meta and the tensors outside the blocks read (see :func:`_load_outside`)."""
    folder = Path(folder)
    shards = Checkpoint(folder)
    model = _skeleton(folder, model_class)
    path, block_list = find_blocks(model, blocks)
    _load_outside(model, path, shards, dtype, device, head=head)
    return model, path, block_list, shards


class Checkpoint:
    """The tensors of a safetensors checkpoint folder, read one at a time."""

    def __init__(self, folder: Path) -> None:
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{folder} has no config.json; pass a folder written by "
                              "save_pretrained")
        if (folder / INDEX).is_file():
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        elif (folder / SINGLE).is_file():
            weight_map = dict.fromkeys(_keys(folder / SINGLE), SINGLE)
        else:
            raise ConfigError(f"{folder} has no {SINGLE} or {INDEX}; save the model with "
                              "save_pretrained(safe_serialization=True) first (GGUF and .bin "
                              "checkpoints load whole: use prunekit.oneshot.oneshot)")
        self.folder, self.files = folder, weight_map

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self.folder / self.files[name]
        try:
            with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
                return f.get_tensor(name)
        except (OSError, KeyError, RuntimeError) as exc:  # SafetensorError is a RuntimeError
            raise DataError(f"cannot read tensor {name!r} from {path}: {exc}") from None

    def shard_files(self) -> set[str]:
        return set(self.files.values())


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        return list(f.keys())


def _skeleton(folder: Path, model_class: Any) -> nn.Module:
    """The model of ``folder``'s config with its parameters on the meta device (its
    buffers, such as rotary frequencies, computed for real)."""
    try:
        import transformers
        from accelerate import init_empty_weights
    except ImportError:
        raise ConfigError("oneshot_streamed needs transformers and accelerate: "
                          "pip install 'prunekit[llm]'") from None
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = model_class or transformers.AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config)
    return model.eval()


def _load_outside(model: nn.Module, path: str, shards: Checkpoint,
                  dtype: torch.dtype | None, device: torch.device, *, head: bool = False) -> None:
    """Read every tensor outside the blocks, except an untied output embedding unless
    ``head`` (pruning's forward passes stop at the last block)."""
    prefix = f"{path}."
    head = None if head else _untied_head(model)
    for name, _ in _tensors(model):
        if name.startswith(prefix) or name == head:
            continue
        if name in shards:
            _set(model, name, _cast(shards.read(name), dtype).to(device))
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [n for n, t in _tensors(model)
               if not n.startswith(prefix) and n != head and t.device.type == "meta"]
    if missing:
        raise ConfigError(f"the checkpoint lacks {', '.join(missing[:5])} of the model its "
                          "config builds; save it with save_pretrained of this transformers "
                          "version")


def _untied_head(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get else None
    if head is None or head.weight is model.get_input_embeddings().weight:
        return None
    return next(f"{n}.weight" for n, m in model.named_modules() if m is head)


def _tensors(module: nn.Module):
    """Parameters and persistent buffers, by qualified name (tied ones once)."""
    yield from module.named_parameters()
    keys = set(module.state_dict(keep_vars=True))
    yield from ((n, b) for n, b in module.named_buffers() if n in keys)


def _set(root: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[attr] = value


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


class _Streamer(Resident):
    """Blocks read from the source shards on use, written to ``out`` when pruned (``out``
    None: blocks are only read)."""

    def __init__(self, model, path, blocks, shards, out: Path | None, dtype, device) -> None:
        self.model, self.path, self.blocks, self.shards = model, path, blocks, shards
        self.out, self.dtype, self.device = out, dtype, device
        self.rest = sorted(n for n in shards.files if not n.startswith(f"{path}."))
        self.files = len(blocks) + len(self.rest)
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.loaded: set[int] = set()

    def _names(self, index: int) -> list[str]:
        return [n for n, _ in _tensors(self.blocks[index])]

    def load(self, index: int) -> None:
        if index in self.loaded:
            return
        prefix = f"{self.path}.{index}."
        for name in self._names(index):
            if prefix + name not in self.shards:
                raise ConfigError(f"the checkpoint has no tensor {prefix + name}; its names "
                                  "do not match the model its config builds")
            _set(self.blocks[index], name,
                 _cast(self.shards.read(prefix + name), self.dtype).to(self.device))
        self.loaded.add(index)

    def release(self, index: int) -> None:
        block = self.blocks[index]
        for name, t in list(_tensors(block)):
            _set(block, name, torch.empty_like(t, device="meta"))
        self.loaded.discard(index)

    def pruned(self, index: int) -> None:
        block = self.blocks[index]
        for _, module, name in list(_mask.masked_params(block)):
            _mask.remove_mask(module, name)  # the weights already hold the zeros
        prefix = f"{self.path}.{index}."
        self._write({prefix + n: t for n, t in _tensors(block)}, index + 1)
        self.release(index)

    def _write(self, tensors: dict[str, torch.Tensor], number: int) -> None:
        """One shard, straight to its file (the staging folder makes the whole atomic)."""
        from safetensors.torch import save_file

        file = f"model-{number:05d}-of-{self.files:05d}.safetensors"
        kept, _ = _io.dedupe_tied(tensors)
        kept = {n: t.detach().to("cpu").contiguous() for n, t in kept.items()}
        save_file(kept, os.fspath(self.out / file), metadata={"format": "pt"})
        for name, t in kept.items():
            self.weight_map[name] = file
            self.total += t.numel() * t.element_size()

    def finish(self, source: Path) -> None:
        """Copy the tensors outside the blocks (one shard each, so one is in memory at a
        time), then write the index and copy the folder's other files."""
        for number, name in enumerate(self.rest, start=len(self.blocks) + 1):
            self._write({name: _cast(self.shards.read(name), self.dtype)}, number)
        skip = self.shards.shard_files() | {INDEX}
        for item in source.iterdir():
            if item.is_file() and item.name not in skip:
                shutil.copy2(item, self.out / item.name)
        if self.dtype is not None:
            _set_config_dtype(self.out, self.dtype)
        _io.write_json(self.out / INDEX, {"metadata": {"total_size": self.total},
                                          "weight_map": dict(sorted(self.weight_map.items()))})


def _set_config_dtype(folder: Path, dtype: torch.dtype) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    for key in ("dtype", "torch_dtype"):
        if key in cfg:
            cfg[key] = name
    cfg.setdefault("dtype", name)
    _io.write_json(path, cfg)
