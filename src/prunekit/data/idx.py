"""Reader for IDX files, the format of MNIST, Fashion-MNIST, KMNIST and EMNIST.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order,
big-endian. Files may be gzipped; compression is detected from the content (the
gzip magic bytes ``1f 8b``), not from the file name.

Reference: Y. LeCun, C. Cortes, C. Burges, "The MNIST database of handwritten
digits", http://yann.lecun.com/exdb/mnist/ (section "File formats").
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian NumPy dtype of the stored values.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a NumPy array in native byte order.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        An array with the shape and dtype the header declares
        (``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``).

    Raises:
        DataError: the file is missing, not gzip-readable, has a bad magic number or
            dtype code, or its payload size does not match its header. The message
            names the file and what is wrong.

    Example:
        >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        >>> images.shape, images.dtype
        ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    raw = _read_bytes(path)
    dtype, shape, offset = _parse_header(path, raw)
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - offset
    if actual != expected:
        raise DataError(
            f"IDX file {path}: header declares shape {shape} of {dtype.name} "
            f"({expected} payload bytes) but the file holds {actual}; "
            "the file is truncated or corrupt, download it again"
        )
    values = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=offset)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from exc
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"IDX file {path} is gzip-compressed but cannot be decompressed ({exc}); "
            "the file is truncated or corrupt, download it again"
        ) from exc


def _parse_header(path: Path, raw: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(stored dtype, shape, payload offset) from the IDX header, validated."""
    if len(raw) < 4:
        raise DataError(
            f"IDX file {path} is {len(raw)} bytes long, too short for the 4-byte magic "
            "number; the file is truncated or not an IDX file"
        )
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"IDX file {path} has bad magic number 0x{raw[:4].hex()} (must start with two "
            "zero bytes); it is not an IDX file"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(
            f"IDX file {path} has unknown dtype code 0x{code:02X} (valid: {valid}); "
            "it is not an IDX file or is corrupt"
        )
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(
            f"IDX file {path} declares {ndim} dimensions but ends inside its header "
            f"({len(raw)} of {offset} bytes); the file is truncated"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:offset])
    return IDX_DTYPES[code], tuple(shape), offset
