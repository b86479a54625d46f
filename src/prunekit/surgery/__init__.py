"""Surgery: slicing parameters and buffers along grouped dimensions; the portable plan."""

from .apply import apply_plan as apply_plan
from .plan import GroupCut as GroupCut
from .plan import Plan as Plan
from .plan import PlanInfo as PlanInfo
from .plan import TensorCut as TensorCut
from .surgeons import register_surgeon as register_surgeon

__all__ = ["GroupCut", "Plan", "PlanInfo", "TensorCut", "apply_plan", "register_surgeon"]
