"""Deep-Compression storage: shared weights as Huffman-coded cluster indices and gaps.

A weight tensor whose non-zero elements take at most ``2**16`` distinct values
(a layer after :func:`~prunekit.compress.share_weights`, baked or not) is stored as

- its codebook: the distinct non-zero values, sorted, in the tensor's dtype;
- the cluster index of each non-zero, in row-major order, Huffman-coded;
- the relative position of each non-zero (the number of zeros since the previous
  one), Huffman-coded. Han et al. cap gaps at ``2**b`` and pad with filler zeros;
  here the gap alphabet is unbounded and the code table lists only the gaps that
  occur, so no filler is needed.

Every other tensor (biases, batch-norm statistics, layers with too many distinct
values) is stored with prunekit's sparse safetensors encoding
(:func:`prunekit.measure.sparse_io.encode_sparse`), embedded in the same file.

File layout: the magic ``b"PKDC"``, a little-endian ``uint32`` header length, a
zlib-compressed JSON header (names, shapes, dtypes, byte ranges), then the blobs.
Decoding gives back every tensor bit for bit, except that ``-0.0`` comes back as
``+0.0`` (as in the sparse encoding).

Reference: S. Han, H. Mao, W. J. Dally, "Deep Compression", ICLR 2016, section 4.

Example:
    >>> nbytes = save_compressed(model, "model.pkdc")
    >>> _ = model.load_state_dict(load_compressed("model.pkdc"))
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import read_decoded, write_bytes
from ..errors import ConfigError, DataError
from ..measure.sparse_io import _BITS, _nonzero, decode_sparse, encode_sparse
from . import huffman
from .sharing import baked_state_dict

MAGIC = b"PKDC"
FORMAT = "prunekit-deep-compression"
VERSION = 1
MAX_CLUSTERS = 2**16


def encode_compressed(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], *, min_numel: int = 64
) -> bytes:
    """The bytes of the Deep-Compression file of a model or state dict.

    A model with shared layers still attached is measured as if baked (a copy of
    its state is baked; the model itself is not changed).

    Args:
        model_or_state_dict: A module or a name-to-tensor mapping.
        min_numel: Tensors with fewer elements are stored in the sparse part.

    Raises:
        ConfigError: A value is not a tensor or is on the meta device.
    """
    state = _state(model_or_state_dict)
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "tensors": {}}
    blobs: list[bytes] = []
    rest: dict[str, torch.Tensor] = {}
    offset = 0
    for name, t in state.items():
        coded = _encode_shared(t) if t.numel() >= min_numel else None
        if coded is None:
            rest[name] = t
            continue
        entry, parts = coded
        for key, blob in parts.items():
            entry[key] = [offset, len(blob)]
            blobs.append(blob)
            offset += len(blob)
        header["tensors"][name] = entry
    sparse = encode_sparse(rest) if rest else b""
    header["rest"] = [offset, len(sparse)]
    header["order"] = list(state)
    packed = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return MAGIC + len(packed).to_bytes(4, "little") + packed + b"".join(blobs) + sparse


def save_compressed(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    min_numel: int = 64,
) -> int:
    """Write the Deep-Compression file atomically; return its size in bytes.

    Example:
        >>> share_weights(model); nbytes = save_compressed(model, "lenet.pkdc")
    """
    data = encode_compressed(model_or_state_dict, min_numel=min_numel)
    write_bytes(path, data)
    return Path(path).stat().st_size


def load_compressed(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a file of :func:`save_compressed`: names to CPU tensors, in the saved order.

    Raises:
        DataError: The file is missing, truncated or not a Deep-Compression file; the
            message names the file.
    """
    return read_decoded(path, "compressed weights", decode_compressed)


def decode_compressed(raw: bytes) -> dict[str, torch.Tensor]:
    """Tensors from the bytes of a Deep-Compression file (see :func:`load_compressed`)."""
    header, body = _read_header(raw)
    out: dict[str, torch.Tensor] = {}
    try:
        for name, entry in header["tensors"].items():
            out[name] = _decode_shared(name, entry, body)
        start, size = header["rest"]
        if size:
            out.update(decode_sparse(body[start : start + size]))
        return {name: out[name] for name in header["order"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"the Deep-Compression header is corrupt ({exc!r})") from None


def _state(model_or_state_dict: Any) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        model_or_state_dict = baked_state_dict(model_or_state_dict)
    out = {}
    for name, value in model_or_state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"state dict entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        if value.is_meta:
            raise ConfigError(f"tensor {name!r} is on the meta device; materialize the weights")
        out[name] = value.detach().cpu().contiguous()
    return out


def _encode_shared(t: torch.Tensor) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """Codebook, index and gap streams of a tensor with few distinct non-zeros, or None."""
    bits = _BITS.get(t.element_size())
    if not t.is_floating_point() or bits is None:
        return None
    as_int = t.reshape(-1).view(bits)  # (numel,) raw bit patterns
    kept = _nonzero(as_int, floating=True)
    values = as_int[kept]
    codebook, index = torch.unique(values, sorted=True, return_inverse=True)
    if codebook.numel() > MAX_CLUSTERS:
        return None
    positions = torch.nonzero(kept).reshape(-1).numpy()
    gaps = np.diff(positions, prepend=-1) - 1  # zeros before each non-zero
    entry = {
        "encoding": "shared",
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "nnz": int(positions.size),
        "clusters": int(codebook.numel()),
    }
    parts = {
        "codebook": codebook.numpy().tobytes(),
        "index": huffman.encode(index.numpy()),
        "gaps": huffman.encode(gaps),
    }
    plain = min(t.numel(), (t.numel() + 7) // 8 + positions.size) * t.element_size()
    if sum(map(len, parts.values())) >= plain:  # too many distinct values: no gain
        return None
    return entry, parts


def _decode_shared(name: str, entry: dict[str, Any], body: bytes) -> torch.Tensor:
    shape = torch.Size(entry["shape"])
    dtype = getattr(torch, entry["dtype"], None)
    if not isinstance(dtype, torch.dtype) or _BITS.get(dtype.itemsize) is None:
        raise DataError(f"tensor {name!r} has an unknown dtype {entry['dtype']!r}")
    bits = _BITS[dtype.itemsize]
    raw = _blob(body, entry["codebook"])
    codebook = torch.frombuffer(bytearray(raw), dtype=bits) if raw else torch.zeros(0, dtype=bits)
    index = huffman.decode(_blob(body, entry["index"]))
    gaps = huffman.decode(_blob(body, entry["gaps"]))
    nnz = int(entry["nnz"])
    if index.size != nnz or gaps.size != nnz or (nnz and index.max() >= codebook.numel()):
        raise DataError(f"the streams of tensor {name!r} do not match its header")
    positions = np.cumsum(gaps + 1) - 1  # undo the gaps: flat position of each non-zero
    if nnz and positions[-1] >= shape.numel():
        raise DataError(f"tensor {name!r} has non-zeros past its end")
    flat = torch.zeros(shape.numel(), dtype=bits)
    flat[torch.from_numpy(positions)] = codebook[torch.from_numpy(index)]
    return flat.view(dtype).reshape(shape)


def _blob(body: bytes, span: list[int]) -> bytes:
    start, size = int(span[0]), int(span[1])
    if start < 0 or size < 0 or start + size > len(body):
        raise DataError("a byte range in the header lies outside the file")
    return body[start : start + size]


def _read_header(raw: bytes) -> tuple[dict[str, Any], bytes]:
    if raw[:4] != MAGIC or len(raw) < 8:
        raise DataError(
            "not a prunekit Deep-Compression file (bad magic); was it written by save_compressed?"
        )
    size = int.from_bytes(raw[4:8], "little")
    try:
        header = json.loads(zlib.decompress(raw[8 : 8 + size]))
    except (zlib.error, ValueError) as exc:
        raise DataError(f"the Deep-Compression header is unreadable ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError("the Deep-Compression header is corrupt")
    if header.get("version") != VERSION:
        raise DataError(f"Deep-Compression format version {header.get('version')} is not supported")
    return header, raw[8 + size :]
