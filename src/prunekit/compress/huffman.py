"""Canonical Huffman coding of non-negative integer symbols, to and from bytes.

A stream is self-describing: a small table (the code length of each symbol,
which is all a canonical code needs) followed by the packed code bits. Symbols
are the cluster indices and the gaps between non-zeros of Deep Compression.

Reference: D. A. Huffman, "A Method for the Construction of Minimum-Redundancy
Codes", Proc. IRE 1952; canonical codes: Schwartz & Kallick, CACM 1964.

Example:
    >>> data = encode(np.array([3, 3, 3, 0, 7]))
    >>> decode(data).tolist()
    [3, 3, 3, 0, 7]
"""

from __future__ import annotations

import heapq
from itertools import count

import numpy as np

from ..errors import DataError

_MAX_LEN = 57  # code bits kept in one Python int window while decoding (plenty: 2**57 symbols)


def code_lengths(freqs: dict[int, int]) -> dict[int, int]:
    """Huffman code length of each symbol from its frequency (one symbol gets length 1)."""
    if len(freqs) == 1:
        return {next(iter(freqs)): 1}
    tie = count()
    heap = [(f, next(tie), [s]) for s, f in sorted(freqs.items())]
    heapq.heapify(heap)
    depth = dict.fromkeys(freqs, 0)
    while len(heap) > 1:
        fa, _, a = heapq.heappop(heap)
        fb, _, b = heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        heapq.heappush(heap, (fa + fb, next(tie), a + b))
    return depth


def canonical_codes(lengths: dict[int, int]) -> dict[int, int]:
    """Canonical code of each symbol: sorted by (length, symbol), consecutive integers."""
    codes, code, prev = {}, 0, 0
    for sym, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        codes[sym] = code
        code, prev = code + 1, n
    return codes


def encode(symbols: np.ndarray) -> bytes:
    """Huffman-code a 1-D array of non-negative integers into a self-describing byte string."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size and symbols.min() < 0:
        raise ValueError("Huffman symbols must be non-negative")
    uniq, freq = np.unique(symbols, return_counts=True)
    lengths = code_lengths(dict(zip(uniq.tolist(), freq.tolist(), strict=True)))
    table = _table_bytes(lengths)
    return _varint(symbols.size) + table + _pack(symbols, lengths)


def decode(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode`: the symbols as an int64 array.

    Raises:
        DataError: The bytes are truncated or not a stream written by :func:`encode`.
    """
    try:
        n, pos = _read_varint(data, 0)
        lengths, pos = _read_table(data, pos)
        return _unpack(data[pos:], n, lengths)
    except (IndexError, ValueError) as exc:
        raise DataError(f"corrupt Huffman stream ({exc})") from None


def _pack(symbols: np.ndarray, lengths: dict[int, int]) -> bytes:
    if symbols.size == 0:
        return b""
    codes = canonical_codes(lengths)
    keys = np.array(sorted(codes), dtype=np.int64)
    pos = np.searchsorted(keys, symbols)
    code = np.array([codes[k] for k in keys.tolist()], dtype=np.uint64)[pos]  # (n,)
    size = np.array([lengths[k] for k in keys.tolist()], dtype=np.int64)[pos]  # (n,)
    # Bit j of each symbol's code, most significant first: (total_bits,)
    owner = np.repeat(np.arange(symbols.size), size)
    starts = np.cumsum(size) - size
    shift = (size[owner] - 1 - (np.arange(owner.size) - starts[owner])).astype(np.uint64)
    bits = ((code[owner] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


def _unpack(payload: bytes, n: int, lengths: dict[int, int]) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if not lengths:
        raise ValueError("symbols without a code table")
    # Canonical decoding: per length, the first code and the symbols of that length.
    max_len = max(lengths.values())
    ordered = sorted(lengths.items(), key=lambda kv: (kv[1], kv[0]))
    per_len = [0] * (max_len + 1)
    for _, length in ordered:
        per_len[length] += 1
    syms = [s for s, _ in ordered]
    first, offset, code = [0] * (max_len + 1), [0] * (max_len + 1), 0
    for length in range(1, max_len + 1):
        code <<= 1
        first[length], offset[length] = code, offset[length - 1] + per_len[length - 1]
        code += per_len[length]
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).tolist()
    return np.asarray(_walk(bits, n, first, offset, per_len, syms, max_len), dtype=np.int64)


def _walk(
    bits: list[int],
    n: int,
    first: list[int],
    offset: list[int],
    per_len: list[int],
    syms: list[int],
    max_len: int,
) -> list[int]:
    out, i = [], 0
    for _ in range(n):
        code, length = 0, 0
        while True:
            code = (code << 1) | bits[i]
            i += 1
            length += 1
            k = code - first[length]
            if k < per_len[length]:
                out.append(syms[offset[length] + k])
                break
            if length >= max_len:
                raise ValueError("a code longer than the table allows")
    return out


def _table_bytes(lengths: dict[int, int]) -> bytes:
    """Symbols in increasing order as varint deltas, each followed by its code length."""
    out, prev = bytearray(_varint(len(lengths))), -1
    for sym in sorted(lengths):
        if lengths[sym] > _MAX_LEN:
            raise ValueError("Huffman code longer than supported")
        out += _varint(sym - prev - 1)
        out.append(lengths[sym])
        prev = sym
    return bytes(out)


def _read_table(data: bytes, pos: int) -> tuple[dict[int, int], int]:
    count_, pos = _read_varint(data, pos)
    lengths, prev = {}, -1
    for _ in range(count_):
        delta, pos = _read_varint(data, pos)
        prev += delta + 1
        if not 1 <= data[pos] <= _MAX_LEN:
            raise ValueError("code length out of range")
        lengths[prev] = data[pos]
        pos += 1
    return lengths, pos


def _varint(value: int) -> bytes:
    """LEB128 unsigned varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
