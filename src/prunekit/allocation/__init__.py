"""Allocation: turning importance scores into keep/prune decisions, and choosing how much to
cut where under a budget (sensitivity scans, greedy / hierarchical / evolutionary search,
a per-layer latency table)."""

from .allocate import Allocation as Allocation
from .allocate import allocate as allocate
from .allocate import apply_allocation as apply_allocation
from .budget import Budget as Budget
from .latency import LatencyTable as LatencyTable
from .nm import nm_keep as nm_keep
from .nm import parse_pattern as parse_pattern
from .rules import Rule as Rule
from .rules import lamp_scores as lamp_scores
from .rules import list_scopes as list_scopes
from .rules import select as select
from .search import list_kinds as list_kinds
from .sensitivity import SensitivityScan as SensitivityScan
from .sensitivity import scan as scan

__all__ = ["Allocation", "Budget", "LatencyTable", "Rule", "SensitivityScan", "allocate",
           "apply_allocation", "lamp_scores", "list_kinds", "list_scopes", "nm_keep",
           "parse_pattern", "scan", "select"]
