"""IDX reader: round trips in every dtype, plain and gzipped, and every corruption named."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from prunekit.data import read_idx
from prunekit.errors import DataError

# IDX dtype code -> big-endian NumPy dtype, written out independently of the reader.
CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file's bytes, built by hand from the format description."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(CODES[code]).tobytes()


def write(path, data: bytes, *, gz: bool):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("code", sorted(CODES))
def test_round_trip_every_dtype(tmp_path, code, gz):
    rng = np.random.default_rng(code)
    native = np.dtype(CODES[code]).newbyteorder("=")
    if native.kind == "f":
        array = rng.standard_normal((3, 4, 5)).astype(native)
    else:
        info = np.iinfo(native)
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(native)
    path = write(tmp_path / "x.idx", idx_bytes(array, code), gz=gz)
    out = read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_gzip_detected_by_content_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    gz_named_plain = write(tmp_path / "labels.gz", idx_bytes(labels, 0x08), gz=True)
    plain_named_gz = write(tmp_path / "labels-idx1-ubyte", idx_bytes(labels, 0x08), gz=True)
    np.testing.assert_array_equal(read_idx(gz_named_plain), labels)
    np.testing.assert_array_equal(read_idx(plain_named_gz), labels)


def test_empty_array(tmp_path):
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    assert read_idx(write(tmp_path / "e", idx_bytes(empty, 0x08), gz=False)).shape == (0, 28, 28)


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08)
CORRUPTIONS = {
    "bad magic": (b"\x01\x00" + GOOD[2:], "bad magic"),
    "unknown dtype": (GOOD[:2] + b"\x0a" + GOOD[3:], "unknown dtype code 0x0A"),
    "truncated payload": (GOOD[:-5], "truncated"),
    "extra payload": (GOOD + b"\x00", "payload bytes"),
    "truncated header": (GOOD[:9], "ends inside its header"),
    "too short": (b"\x00\x00", "too short"),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_file_names_file_and_problem(tmp_path, case, gz):
    data, fragment = CORRUPTIONS[case]
    path = write(tmp_path / f"broken-{case.replace(' ', '-')}", data, gz=gz)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_corrupt_gzip_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(GOOD)[:-12])  # gzip magic, cut-off stream
    with pytest.raises(DataError, match="cannot be decompressed") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_names_file(tmp_path):
    path = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
