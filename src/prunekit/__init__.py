"""prunekit: prune PyTorch networks, recover accuracy, prove the result."""

from __future__ import annotations

__version__ = "0.1.0"
