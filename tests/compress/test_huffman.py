import numpy as np
import pytest

from prunekit.compress import huffman
from prunekit.errors import DataError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_random_symbols(seed):
    rng = np.random.default_rng(seed)
    symbols = rng.geometric(0.2, size=5000) - 1  # skewed, unbounded alphabet
    assert np.array_equal(huffman.decode(huffman.encode(symbols)), symbols)


@pytest.mark.parametrize("symbols", [[], [7], [7, 7, 7], [0, 1], [300, 0, 70000, 300]])
def test_round_trip_edge_cases(symbols):
    out = huffman.decode(huffman.encode(np.array(symbols, dtype=np.int64)))
    assert out.tolist() == symbols


def test_code_lengths_are_optimal_prefix_code():
    freqs = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}  # textbook example (CLRS 16.3)
    lengths = huffman.code_lengths(freqs)
    assert sum(freqs[s] * n for s, n in lengths.items()) == 224
    assert sum(2.0**-n for n in lengths.values()) == 1.0  # complete prefix code (Kraft)


def test_average_length_within_one_bit_of_entropy():
    rng = np.random.default_rng(0)
    symbols = rng.choice(32, size=20000, p=np.arange(1, 33) / np.arange(1, 33).sum())
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    entropy_bits = -(p * np.log2(p)).sum() * symbols.size
    payload_bits = 8 * len(huffman.encode(symbols))
    assert entropy_bits <= payload_bits <= entropy_bits + symbols.size + 8 * 200  # + table


def test_corrupt_stream_is_a_data_error():
    data = huffman.encode(np.arange(100) % 7)
    with pytest.raises(DataError, match="corrupt Huffman stream"):
        huffman.decode(data[: len(data) // 2])


def test_negative_symbols_refused():
    with pytest.raises(ValueError, match="non-negative"):
        huffman.encode(np.array([-1, 2]))


def test_code_bits_match_canonical_codes():
    freqs = {0: 5, 1: 1, 2: 1, 3: 2}
    codes = huffman.canonical_codes(huffman.code_lengths(freqs))
    assert codes == {0: 0b0, 3: 0b10, 1: 0b110, 2: 0b111}
    data = huffman.encode(np.array([0, 0, 0, 0, 0, 3, 3, 1, 2]))
    # 0 0 0 0 0 10 10 110 111 -> 00000101 0110111(0): 15 bits, padded to 2 bytes
    assert data[-2:] == bytes([0b00000101, 0b01101110])
    assert len(data) == 1 + 1 + 4 * 2 + 2  # count, table size, (delta, length) x 4, payload
