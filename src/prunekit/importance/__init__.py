"""Importance criteria: how much each weight (or unit) matters."""

from . import activation as activation  # registers "wanda"
from .criteria import Criterion as Criterion
from .criteria import ParamStats as ParamStats
from .criteria import get_criterion as get_criterion
from .criteria import list_criteria as list_criteria
from .criteria import register_criterion as register_criterion
from .stats import collect_stats as collect_stats

__all__ = [
    "Criterion",
    "ParamStats",
    "collect_stats",
    "get_criterion",
    "list_criteria",
    "register_criterion",
]
