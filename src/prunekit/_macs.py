"""The MAC formulas, in one place.

The tracer (:mod:`prunekit.graph.rules`) attributes these counts to the dimensions a cut
shrinks, to predict a plan's MACs; the counter (:mod:`prunekit.measure.cost`) sums them
over a real forward pass. Both follow ``torch.utils.flop_counter``'s conventions: one
multiply-accumulate per weight element per output (or, transposed, input) position;
elementwise work (activations, norms, gate arithmetic, softmax) is not counted.
"""

from __future__ import annotations


def product(rows: int, inner: int, cols: int) -> int:
    """``(rows x inner) @ (inner x cols)``: a Linear layer, a matmul, one RNN weight."""
    return rows * inner * cols


def conv(weight_numel: int, positions: int) -> int:
    """A convolution: each weight element meets every (batch x spatial) position of the
    output, or of the input when transposed; grouping is already in the weight's shape."""
    return weight_numel * positions


def attention(rows: int, keys: int, qk_dim: int, v_dim: int) -> tuple[int, int]:
    """``q @ k^T`` then ``scores @ v`` for ``rows`` queries (batch x heads x length) over
    ``keys`` keys: the two products' MACs; masking and causality are ignored."""
    return product(rows, qk_dim, keys), product(rows, keys, v_dim)
