"""Bytes on disk: dense safetensors and a compressed sparse encoding of a state dict.

The sparse file is an ordinary safetensors file. A tensor that has enough zeros
is stored as two entries, ``"<name>::bitmask"`` (1 bit per element, NumPy
``packbits`` order, set where the element is non-zero) and ``"<name>::values"``
(the non-zero elements in order, in the tensor's own dtype); any other tensor is
stored densely under its own name. A JSON index in the file's metadata (key
``"prunekit.sparse"``) records each name's shape, dtype and encoding, so
:func:`load_sparse` restores every tensor.

Every tensor comes back bit for bit, with one exception: ``-0.0`` counts as zero
(pruning by ``weight * mask`` leaves one for every masked negative weight) and
comes back as ``+0.0``, which compares equal and computes the same. NaNs keep
their bits. Tied tensors (two names for the same memory) are stored once and come
back as one tensor under both names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .._io import dedupe_tied, read_decoded, unshare, write_bytes
from .._registry import Registry
from ..errors import ConfigError, DataError

INDEX_KEY = "prunekit.sparse"
FORMAT = "prunekit-sparse"
VERSION = 1
_SEP = "::"
# Integer dtype of the same width: zero tests and scatters run on these bit patterns.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

encodings: Registry[Callable[[Mapping[str, torch.Tensor]], bytes]] = Registry("encoding")


def save_sparse(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a state dict to ``path`` in the sparse encoding, atomically.

    Args:
        state_dict: Names to tensors (any device; copies are moved to the CPU).
        path: The ``.safetensors`` file to write.
        metadata: Extra string-to-string metadata stored in the file header.

    Raises:
        ConfigError: A value is not a tensor, a name contains ``"::"``, or ``metadata``
            uses the reserved key ``"prunekit.sparse"``.

    Example:
        >>> save_sparse(model.state_dict(), "pruned.safetensors")
        >>> _ = model.load_state_dict(load_sparse("pruned.safetensors"))
    """
    write_bytes(path, encode_sparse(state_dict, metadata=metadata))


def load_sparse(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse`.

    Tensors come back bit for bit, except that ``-0.0`` may come back as ``+0.0``.

    Args:
        path: A file written by :func:`save_sparse`.

    Returns:
        Names to CPU tensors, in the order they were saved.

    Raises:
        DataError: The file is missing, is not safetensors, has no sparse index, or
            its entries disagree with the index; the message names the file.
    """
    return read_decoded(path, "sparse weights", decode_sparse)


@encodings.register("dense")
def encode_dense(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """Plain safetensors bytes of a state dict (tied tensors stored once)."""
    from safetensors.torch import save

    tensors, _ = dedupe_tied(_check_tensors(state_dict))
    return save(unshare(tensors))


@encodings.register("sparse")
def encode_sparse(
    state_dict: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None
) -> bytes:
    """Safetensors bytes in the sparse encoding (see the module docstring)."""
    from safetensors.torch import save

    tensors, aliases = dedupe_tied(_check_tensors(state_dict))
    index: dict[str, dict[str, Any]] = {}
    stored: dict[str, torch.Tensor] = {}
    for name in state_dict:
        if name in aliases:
            index[name] = {"encoding": "alias", "of": aliases[name]}
            continue
        entry, parts = _encode_tensor(name, tensors[name])
        index[name] = entry
        stored.update(parts)
    header = _header(index, metadata)
    return save(unshare(stored), metadata=header)


def decode_sparse(raw: bytes) -> dict[str, torch.Tensor]:
    """Tensors from the bytes of a sparse file (see :func:`load_sparse`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        stored = load(raw)
        meta = _read_metadata(raw)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"not a readable safetensors file ({exc})") from None
    index = _read_index(meta)
    out: dict[str, torch.Tensor] = {}
    for name, entry in index.items():
        if entry.get("encoding") != "alias":
            out[name] = _decode_tensor(name, entry, stored)
    for name, entry in index.items():
        if entry.get("encoding") == "alias":
            if entry.get("of") not in out:
                raise DataError(f"entry {name!r} is an alias of a missing tensor")
            out[name] = out[entry["of"]]
    return {name: out[name] for name in index}


def _check_tensors(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict as name -> detached CPU tensor, or a ConfigError."""
    out = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"state dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                "only tensors can be stored"
            )
        if value.is_meta:
            raise ConfigError(
                f"tensor {name!r} is on the meta device and has no values; "
                "materialize the weights before measuring or saving them"
            )
        if _SEP in name:
            raise ConfigError(f"tensor name {name!r} contains {_SEP!r}; rename it")
        out[name] = value.detach().cpu()
    return out


def _encode_tensor(name: str, t: torch.Tensor) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Index entry and stored parts of one tensor: bitmask + values if that is smaller."""
    entry: dict[str, Any] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
    bits = _BITS.get(t.element_size())
    if bits is None or t.numel() == 0:
        return {**entry, "encoding": "dense"}, {name: t}
    as_int = t.contiguous().reshape(-1).view(bits)  # (numel,) raw bit patterns
    nonzero = _nonzero(as_int, floating=t.is_floating_point())
    nnz = int(nonzero.sum())
    packed_bytes = (t.numel() + 7) // 8 + nnz * t.element_size()
    if packed_bytes >= t.numel() * t.element_size():
        return {**entry, "encoding": "dense"}, {name: t}
    packed = torch.from_numpy(np.packbits(nonzero.numpy()))
    values = as_int[nonzero].view(t.dtype)
    parts = {f"{name}{_SEP}bitmask": packed, f"{name}{_SEP}values": values}
    return {**entry, "encoding": "bitmask", "nnz": nnz}, parts


def _nonzero(as_int: torch.Tensor, *, floating: bool) -> torch.Tensor:
    """Elements whose bits are not all zero; for floats ``-0.0`` (sign bit only) is zero too."""
    nonzero = as_int != 0
    if floating:
        sign_only = 0x80 if as_int.dtype == torch.uint8 else torch.iinfo(as_int.dtype).min
        nonzero &= as_int != sign_only
    return nonzero


def _decode_tensor(
    name: str, entry: dict[str, Any], stored: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Rebuild one tensor from its index entry, checking every part against the index."""
    try:
        shape, dtype = torch.Size(entry["shape"]), _dtype_from_name(entry["dtype"])
        encoding = entry["encoding"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"index entry {name!r} is malformed ({exc})") from None
    if encoding == "dense":
        t = _part(stored, name, name)
        if t.shape != shape or t.dtype != dtype:
            raise DataError(f"tensor {name!r} does not match its index entry")
        return t
    if encoding != "bitmask":
        raise DataError(f"tensor {name!r} has unknown encoding {encoding!r}")
    return _decode_bitmask(name, shape, dtype, stored)


def _decode_bitmask(
    name: str, shape: torch.Size, dtype: torch.dtype, stored: dict[str, torch.Tensor]
) -> torch.Tensor:
    packed = _part(stored, name, f"{name}{_SEP}bitmask")
    values = _part(stored, name, f"{name}{_SEP}values")
    numel, bits = shape.numel(), _BITS.get(values.element_size())
    if packed.dtype != torch.uint8 or packed.numel() != (numel + 7) // 8 or bits is None:
        raise DataError(f"bitmask of tensor {name!r} does not match its shape")
    nonzero = torch.from_numpy(np.unpackbits(packed.numpy(), count=numel).astype(bool))
    if values.dtype != dtype or values.numel() != int(nonzero.sum()):
        raise DataError(f"values of tensor {name!r} do not match its bitmask")
    flat = torch.zeros(numel, dtype=bits)  # all-zero bit patterns
    flat[nonzero] = values.view(bits)
    return flat.view(dtype).reshape(shape)


def _part(stored: dict[str, torch.Tensor], name: str, key: str) -> torch.Tensor:
    if key not in stored:
        raise DataError(f"tensor {name!r} is listed in the index but {key!r} is missing")
    return stored[key]


def _header(index: dict[str, Any], metadata: Mapping[str, str] | None) -> dict[str, str]:
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    if INDEX_KEY in header:
        raise ConfigError(f"metadata key {INDEX_KEY!r} is reserved; use another key")
    doc = {"format": FORMAT, "version": VERSION, "tensors": index}
    header[INDEX_KEY] = json.dumps(doc, separators=(",", ":"))
    return header


def _read_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (an 8-byte length, then JSON)."""
    if len(raw) < 8:
        raise ValueError("file shorter than a safetensors header")
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size].decode("utf-8"))
    return header.get("__metadata__") or {}


def _read_index(meta: dict[str, str]) -> dict[str, dict[str, Any]]:
    if INDEX_KEY not in meta:
        raise DataError(
            "no prunekit sparse index in the metadata; it was not written by save_sparse "
            "(read plain safetensors with safetensors.torch.load_file)"
        )
    try:
        doc = json.loads(meta[INDEX_KEY])
        tensors = doc["tensors"]
        ok = doc.get("format") == FORMAT and isinstance(tensors, dict)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise DataError("the prunekit sparse index is corrupt")
    if doc.get("version") != VERSION:
        raise DataError(f"sparse format version {doc.get('version')} is not supported")
    return tensors


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise DataError(f"unknown dtype {name!r} in the index")
    return dtype
