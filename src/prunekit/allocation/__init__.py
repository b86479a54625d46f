"""Allocation: turning importance scores into keep/prune decisions."""

from .nm import nm_keep as nm_keep
from .nm import parse_pattern as parse_pattern
from .rules import Rule as Rule
from .rules import lamp_scores as lamp_scores
from .rules import list_scopes as list_scopes
from .rules import select as select

__all__ = ["Rule", "lamp_scores", "list_scopes", "nm_keep", "parse_pattern", "select"]
