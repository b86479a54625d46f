"""Importance criteria: how much each weight (or unit) matters."""

from . import activation as activation  # registers "wanda" (per weight)
from . import group as group  # registers the group reductions: random, bn_scale, lamp
from . import group_activation as group_activation  # registers wanda / flap for groups
from .criteria import Criterion as Criterion
from .criteria import ParamStats as ParamStats
from .criteria import get_criterion as get_criterion
from .criteria import list_criteria as list_criteria
from .criteria import register_criterion as register_criterion
from .criteria import register_group_criterion as register_group_criterion
from .stats import collect_stats as collect_stats

__all__ = [
    "Criterion",
    "ParamStats",
    "collect_stats",
    "get_criterion",
    "list_criteria",
    "register_criterion",
    "register_group_criterion",
]
