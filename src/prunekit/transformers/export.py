"""Saving pruned Hugging Face models so that they reload, with or without prunekit.

- Uniform cuts (every block the same shape: the config describes the model) are saved
  with ``save_pretrained``; ``from_pretrained`` of the same class reloads them with no
  prunekit installed (``intermediate_size``, ``num_attention_heads``,
  ``num_key_value_heads``, ``num_hidden_layers``, expert counts already rewritten).
- Other cuts are saved as the original config, the plan (JSON), the removed blocks and
  the weights (safetensors); :func:`load_pretrained_pruned` rebuilds the model.
- ``sparse=True`` stores unstructured and N:M results compactly: the config and the
  weights in prunekit's sparse encoding (a bitmask and the non-zero values,
  :func:`prunekit.measure.save_sparse`); :func:`load_pretrained_pruned` reloads them bit
  for bit, in the dtype they were saved in.

The tokenizer, when given, is saved beside the weights. The folder appears complete or
not at all: it is written under a temporary name and renamed into place.

Example:
    >>> save_pretrained_pruned(model, "out/pruned", tokenizer=tok)
    >>> model = LlamaForCausalLM.from_pretrained("out/pruned")      # uniform cut
    >>> model = load_pretrained_pruned("out/pruned")                # any cut
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _io
from ..errors import ConfigError
from ..export import load_pruned, save_pruned
from ..mask import SUFFIX, get_mask, masked_params
from ..measure import load_sparse, save_sparse
from ..surgery import Plan
from ._model import hf_config
from .blocks import BlockCut, remove_blocks

MANIFEST = "prunekit_llm.json"
FORMAT = "prunekit.llm/1"
SPARSE_WEIGHTS = "model.sparse.safetensors"


def config_describes(model: nn.Module) -> bool:
    """Whether a model of the same class built from ``model.config`` has the same tensors
    (and the config passes its own validation, which ``save_pretrained`` runs)."""
    cfg = copy.deepcopy(hf_config(model))
    if _config_invalid(cfg):
        return False
    try:
        with torch.device("meta"):
            fresh = type(model)(cfg)
    except Exception:  # a config that does not build: it cannot describe the model
        return False
    shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    masks = {f"{key}{SUFFIX}" for key, _, _ in _masked(model)}
    return shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()
                      if k not in masks}


def _config_invalid(cfg: Any) -> str | None:
    """Why the config fails its own validation (transformers' strict configs refuse, e.g.,
    a Llama ``hidden_size`` that is not a multiple of ``num_attention_heads`` even when
    ``head_dim`` is given), or None."""
    validate = getattr(cfg, "validate", None)
    if not callable(validate):
        return None
    try:
        validate()
    except Exception as e:  # any validator's refusal: the config cannot be saved as is
        return str(getattr(e, "__cause__", None) or e).strip().splitlines()[-1]
    return None


def save_pretrained_pruned(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    plan: Plan | None = None,
    blocks: BlockCut | None = None,
    sparse: bool = False,
    max_shard_size: int | str | None = None,
) -> str:
    """Save a pruned model (and its tokenizer) so that it reloads.

    Args:
        model: the pruned Hugging Face model.
        directory: the output folder (replaced if it exists).
        tokenizer: saved beside the weights when given.
        plan: the width plan that was applied (needed only when the cut is not uniform).
        blocks: the :class:`BlockCut` of removed blocks, if any, applied before ``plan``.
        sparse: store the weights in prunekit's sparse encoding (for unstructured and
            N:M results: about half the bytes at 50% sparsity in float32); masks are
            baked into what is written, the model keeps them.
        max_shard_size: split the weights into safetensors shards of at most this size
            (``"500MB"``), as ``save_pretrained`` does (not with ``sparse``).

    Returns:
        ``"hf"`` (reloads with ``from_pretrained``), ``"plan"`` or ``"sparse"`` (reload
        with :func:`load_pretrained_pruned`).
    """
    if sparse:
        if max_shard_size is not None:
            raise ConfigError("max_shard_size applies to save_pretrained's files; the sparse "
                              "encoding is one file: drop one of them")
        return _save_sparse(model, directory, tokenizer)
    uniform = config_describes(model)
    if not uniform and plan is None:
        invalid = _config_invalid(hf_config(model))
        why = (f"transformers refuses the rewritten config ({invalid})" if invalid else
               "the cut differs between blocks")
        raise ConfigError(f"{why}, so from_pretrained cannot rebuild this model from its "
                          "config; pass plan= (and blocks=) to save it through a prunekit plan")
    shards = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    with _io.staging(directory) as tmp, _dequantized_gguf(model):
        if uniform and next(masked_params(model), None) is not None:
            model.save_pretrained(tmp, state_dict=_baked_state(model), **shards)  # no masks
        elif uniform:
            model.save_pretrained(tmp, **shards)
        else:
            _save_with_plan(model, tmp, plan, blocks)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return "hf" if uniform else "plan"


@contextlib.contextmanager
def _dequantized_gguf(model: nn.Module):
    """Save a model loaded from GGUF (``gguf_file=``) as the float model it is.

    transformers dequantizes GGUF weights while loading but keeps a GGUF quantizer on the
    model, and ``save_pretrained`` then refuses to write it. Its tensors are plain floats,
    so the quantizer is set aside while saving.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    is_gguf = quantizer is not None and str(getattr(method, "value", method)).lower() == "gguf"
    floats = all(p.is_floating_point() for p in model.parameters())
    if not (is_gguf and floats):
        yield
        return
    cfg = hf_config(model)
    flag = model.__dict__.get("is_quantized")
    qcfg = cfg.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    if flag is not None:
        model.__dict__["is_quantized"] = False
    try:
        yield
    finally:
        model.hf_quantizer = quantizer
        if flag is not None:
            model.__dict__["is_quantized"] = flag
        if qcfg is not None:
            cfg.quantization_config = qcfg


def _save_sparse(model: nn.Module, directory: str | os.PathLike[str], tokenizer: Any) -> str:
    if not config_describes(model):
        raise ConfigError("sparse=True stores masks' zeros in an unchanged architecture; this "
                          "model's shapes differ from its config (a structured cut): save it "
                          "with plan= instead")
    dtypes = {str(p.dtype).removeprefix("torch.") for p in model.parameters()}
    with _io.staging(directory) as tmp, _dequantized_gguf(model):
        hf_config(model).save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_sparse(_baked_state(model), Path(tmp) / SPARSE_WEIGHTS)
        _io.write_json(Path(tmp) / MANIFEST, {
            "format": FORMAT, "class": type(model).__name__, "blocks": None,
            "weights": "sparse", "dtype": dtypes.pop() if len(dtypes) == 1 else None})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return "sparse"


def _masked(model: nn.Module):
    """``(qualified parameter name, module, parameter name)`` of every masked parameter."""
    for path, module, name in masked_params(model):
        yield (f"{path}.{name}" if path else name), module, name


def _baked_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as :func:`prunekit.bake` would leave it (masked entries zero, no mask
    buffers), without changing the model."""
    state = model.state_dict()
    for key, module, name in _masked(model):
        state[key] = state[key] * get_mask(module, name)
        state.pop(key + SUFFIX, None)
    return state


def _save_with_plan(model: nn.Module, tmp: str, plan: Plan, blocks: BlockCut | None) -> None:
    base = copy.deepcopy(hf_config(model))
    for field, old in plan.before.get("config:", {}).items():
        setattr(base, field, old)
    for field, old in (blocks.before if blocks else {}).items():
        setattr(base, field, old)
    base.save_pretrained(tmp)
    save_pruned(model, plan, tmp)
    _io.write_json(Path(tmp) / MANIFEST, {
        "format": FORMAT, "class": type(model).__name__,
        "blocks": blocks.to_dict() if blocks else None,
    })


def load_pretrained_pruned(directory: str | os.PathLike[str], *,
                           model_class: type | None = None, **kwargs: Any) -> nn.Module:
    """Reload what :func:`save_pretrained_pruned` wrote.

    Args:
        directory: the saved folder.
        model_class: the model class (default: from the manifest or ``config.architectures``).
        **kwargs: passed to ``from_pretrained`` for uniform saves (``dtype=`` ...).

    Returns:
        The model in eval mode.
    """
    import transformers

    folder = Path(directory)
    if not (folder / "config.json").exists():
        raise ConfigError(f"{folder} holds no config.json; pass the folder that "
                          "save_pretrained_pruned wrote")
    manifest = _manifest(folder)
    cls = model_class or _class(transformers, folder, manifest)
    if manifest is None:
        return cls.from_pretrained(folder, **kwargs).eval()
    config = transformers.AutoConfig.from_pretrained(folder)
    if manifest.get("weights") == "sparse":
        return _load_sparse(cls, config, folder, manifest)
    model = cls(config)
    if manifest.get("blocks"):
        remove_blocks(model, manifest["blocks"]["removed"])
    load_pruned(model, folder / "plan.json", folder / "weights.safetensors")
    return model.eval()


def _load_sparse(cls: type, config: Any, folder: Path, manifest: dict) -> nn.Module:
    dtype = manifest.get("dtype")
    # built as from_pretrained(dtype=...) builds it: buffers such as the rotary inverse
    # frequencies stay float32 (a .to(dtype) would round them and change the outputs)
    model = cls._from_config(config, dtype=getattr(torch, dtype)) if dtype else cls(config)
    weights = load_sparse(folder / SPARSE_WEIGHTS)
    expected = model.state_dict()
    wrong = sorted(n for n, t in weights.items()
                   if n not in expected or tuple(t.shape) != tuple(expected[n].shape))
    missing = sorted(set(expected) - set(weights))
    if wrong or missing:
        raise ConfigError(f"{folder / SPARSE_WEIGHTS} does not fit {type(model).__name__} "
                          f"built from its config: {', '.join((wrong + missing)[:4])}")
    model.load_state_dict(weights)
    return model.eval()


def _manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a prunekit LLM manifest (format {FORMAT!r})")
    return data


def _class(transformers: Any, folder: Path, manifest: dict | None) -> type:
    name = (manifest or {}).get("class")
    if name is None:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        name = (cfg.get("architectures") or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise ConfigError(f"cannot tell the model class of {folder}; pass model_class=")
    return cls
