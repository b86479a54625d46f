"""Measure a network: quality (classification metrics) and cost (params, MACs, latency, bytes).

Example:
    >>> from prunekit.measure import classification_metrics, measure_cost
    >>> measure_cost(model, torch.randn(1, 1, 28, 28))["macs"]
"""

from __future__ import annotations

from .cost import LatencyComparison as LatencyComparison
from .cost import LatencyStats as LatencyStats
from .cost import MacCount as MacCount
from .cost import compare_latency as compare_latency
from .cost import count_macs as count_macs
from .cost import count_nonzero_params as count_nonzero_params
from .cost import count_params as count_params
from .cost import measure_cost as measure_cost
from .cost import measure_latency as measure_latency
from .cost import size_bytes as size_bytes
from .quality import classification_metrics as classification_metrics
from .sparse_io import load_sparse as load_sparse
from .sparse_io import save_sparse as save_sparse

__all__ = [
    "LatencyComparison",
    "LatencyStats",
    "MacCount",
    "classification_metrics",
    "compare_latency",
    "count_macs",
    "count_nonzero_params",
    "count_params",
    "load_sparse",
    "measure_cost",
    "measure_latency",
    "save_sparse",
    "size_bytes",
]
