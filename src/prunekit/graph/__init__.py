"""Operator-level tracing: tensors' dimensions, coupled into groups that are cut together."""

from typing import Any

from torch import nn

from .graph import Graph as Graph
from .graph import Group as Group
from .graph import Member as Member
from .rules import list_op_rules as list_op_rules
from .rules import register_module as register_module
from .rules import register_op as register_op

__all__ = ["Graph", "Group", "Member", "list_op_rules", "register_module", "register_op", "trace"]


def trace(model: nn.Module, example_inputs: Any) -> Graph:
    """Trace ``model`` on ``example_inputs`` (see :func:`prunekit.structured.trace`)."""
    from ._tracer import build_graph
    from .rules import RULES

    return build_graph(model, example_inputs, RULES)
