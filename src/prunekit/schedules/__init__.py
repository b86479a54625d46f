"""When to cut: sparsity schedules, a pruner for your training loop, iterative rounds,
dynamic network surgery and lottery tickets (sparse training penalties live in
:mod:`prunekit.recovery.penalty`).

Example:
    >>> from prunekit.schedules import Pruner, make_schedule
    >>> pruner = Pruner(model, make_schedule("agp", final=0.9, end=1000, frequency=50))
    >>> train(model, loader, epochs=3, lr=0.05, after_step=pruner.step)
"""

from __future__ import annotations

from .curves import AGP as AGP
from .curves import Geometric as Geometric
from .curves import OneShot as OneShot
from .curves import Polynomial as Polynomial
from .curves import Schedule as Schedule
from .curves import Steps as Steps
from .curves import list_schedules as list_schedules
from .curves import make_schedule as make_schedule
from .curves import register_schedule as register_schedule
from .dns import Surgery as Surgery
from .iterative import Round as Round
from .iterative import lottery_ticket as lottery_ticket
from .iterative import prune_iteratively as prune_iteratively
from .pruner import MaskPruning as MaskPruning
from .pruner import PruneMethod as PruneMethod
from .pruner import Pruner as Pruner

__all__ = [
    "AGP",
    "Geometric",
    "MaskPruning",
    "OneShot",
    "Polynomial",
    "PruneMethod",
    "Pruner",
    "Round",
    "Schedule",
    "Steps",
    "Surgery",
    "list_schedules",
    "lottery_ticket",
    "make_schedule",
    "prune_iteratively",
    "register_schedule",
]
