"""Model zoos for structured pruning: torchvision, timm, transformers and RNN architectures.

``run_zoo`` prunes every model of a source, verifies each result and records pass/fail with
the reason; ``prunekit zoo --source ...`` is a thin wrapper around it.

Example:
    >>> from prunekit.zoo import format_results, run_zoo
    >>> print(format_results(run_zoo("rnn", progress=False)))  # doctest: +SKIP
"""

from __future__ import annotations

from .runner import ZooResult as ZooResult
from .runner import format_results as format_results
from .runner import list_tools as list_tools
from .runner import load_results as load_results
from .runner import run_zoo as run_zoo
from .sources import ZooModel as ZooModel
from .sources import get_source as get_source
from .sources import list_sources as list_sources
