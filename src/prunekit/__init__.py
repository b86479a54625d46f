"""prunekit: prune PyTorch networks, recover accuracy, prove the result.

Example:
    >>> import prunekit as pk
    >>> pk.sparsify(model, sparsity=0.9, criterion="magnitude", scope="global")
    >>> pk.sparsity_of(model)
    0.9
"""

from __future__ import annotations

__version__ = "0.1.0"

from .importance import list_criteria as list_criteria
from .importance import register_criterion as register_criterion
from .mask import bake as bake
from .sparsify import list_granularities as list_granularities
from .sparsify import sparsify as sparsify
from .sparsify import sparsity_of as sparsity_of
