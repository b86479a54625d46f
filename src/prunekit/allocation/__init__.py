"""Allocation: turning importance scores into keep/prune decisions, and choosing how much to
cut where under a budget (sensitivity scans, greedy / hierarchical / evolutionary search,
a per-layer latency table).

Two layers live here. The rules (``rules``, ``nm``, ``channels``, ``budget``) sit below the
verbs: ``pk.sparsify`` and ``pk.plan`` use them to turn scores into kept units. The searches
(``allocate``, ``search``, ``space``, ``sensitivity``, ``latency``) sit above the verbs: they
call ``pk.plan`` / ``pk.sparsify`` to try ratios. The searches are imported on first use,
so the verbs can import the rules without loading what calls them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .budget import Budget as Budget
from .nm import nm_keep as nm_keep
from .nm import parse_pattern as parse_pattern
from .rules import Rule as Rule
from .rules import lamp_scores as lamp_scores
from .rules import list_scopes as list_scopes
from .rules import select as select

# name -> module of the search layer (above the verbs), imported when first asked for
_SEARCH = {
    "Allocation": "allocate",
    "allocate": "allocate",
    "apply_allocation": "allocate",
    "fit_share_to_measured": "allocate",
    "fit_to_measured": "allocate",
    "paired_ms": "allocate",
    "LatencyTable": "latency",
    "list_kinds": "search",
    "SensitivityScan": "sensitivity",
    "scan": "sensitivity",
    "score_after_training": "allocate",
}

__all__ = ["Allocation", "Budget", "LatencyTable", "Rule", "SensitivityScan", "allocate",
           "apply_allocation", "fit_share_to_measured", "fit_to_measured", "lamp_scores",
           "list_kinds", "list_scopes", "nm_keep", "paired_ms", "parse_pattern", "scan",
           "score_after_training", "select"]


def __getattr__(name: str) -> Any:
    module = _SEARCH.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SEARCH))
