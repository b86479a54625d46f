"""prunekit: prune PyTorch networks, recover accuracy, prove the result.

Example:
    >>> import prunekit as pk
    >>> pk.sparsify(model, sparsity=0.9, criterion="magnitude", scope="global")
    >>> pk.sparsity_of(model)
    0.9
"""

from __future__ import annotations

from ._version import __version__ as __version__
from .allocation import allocate as allocate
from .compress import quantize as quantize
from .config import Budget as Budget
from .config import PlanConfig as PlanConfig
from .config import SparsifyConfig as SparsifyConfig
from .export import export_onnx as export_onnx
from .export import load_pruned as load_pruned
from .export import save_pruned as save_pruned
from .importance import list_criteria as list_criteria
from .importance import register_criterion as register_criterion
from .mask import bake as bake
from .oneshot import OneShotConfig as OneShotConfig
from .oneshot import oneshot as oneshot
from .schedules import Pruner as Pruner
from .schedules import list_schedules as list_schedules
from .schedules import make_schedule as make_schedule
from .sparsify import list_granularities as list_granularities
from .sparsify import sparsify as sparsify
from .sparsify import sparsity_of as sparsity_of
from .structured import apply as apply
from .structured import inspect_model as inspect_model
from .structured import plan as plan
from .structured import prune as prune
from .structured import trace as trace
from .surgery import Plan as Plan
from .surgery import PlanInfo as PlanInfo
from .verify import VerifyResult as VerifyResult
from .verify import verify as verify
