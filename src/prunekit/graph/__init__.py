"""Operator-level tracing: tensors' dimensions, coupled into groups that are cut together."""

from typing import Any

from torch import nn

from . import _axes as axes  # dimension algebra, shared with surgery and importance
from ._tracer import _tracing_state as tracing_state
from ._tracer import build_graph
from ._tracer import flatten_tensors as flatten_tensors
from ._tracer import run_model as run_model
from ._tracer import size_calls as size_calls
from .graph import Graph as Graph
from .graph import Group as Group
from .graph import Member as Member
from .rules import RULES
from .rules import list_op_rules as list_op_rules
from .rules import register_module as register_module
from .rules import register_op as register_op

__all__ = [
    "Graph",
    "Group",
    "Member",
    "axes",
    "flatten_tensors",
    "list_op_rules",
    "register_module",
    "register_op",
    "run_model",
    "size_calls",
    "trace",
    "tracing_state",
]


def trace(model: nn.Module, example_inputs: Any) -> Graph:
    """Trace ``model`` on ``example_inputs`` (see :func:`prunekit.structured.trace`)."""
    return build_graph(model, example_inputs, RULES)
