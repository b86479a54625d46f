"""Data-dependent control flow: a forward pass that reads tensor values into Python.

``if x.sum() > 0:`` in ``forward`` makes the operators that run depend on the data;
one trace sees one path only, and a cut planned on it can be wrong on the other
(a permutation, a slice, a layer that the traced path skipped). Values reach Python
only through a few operators (``_local_scalar_dense`` behind ``bool()``, ``.item()``
and ``.tolist()``; ``equal``), so the tracer notes where they are read. Each
``bool(tensor)`` is then answered the other way in a run of its own; when that run
executes other operators, the other path is traced as well and every group it cuts
differently is kept whole, naming the line. Other reads are checked on perturbed
inputs, and a difference keeps the deciding module whole.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from . import _axes as ax

aten = torch.ops.aten
READS = (aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default)
_SKIP = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch,)) + (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


@dataclass
class Read:
    """A tensor value read into Python during the trace.

    Attributes:
        index: position in the traced operator sequence (for ``bool(tensor)`` reads: the
            count of such calls before it).
        module: the module whose code ran.
        line: ``file:line: code`` of the user code that read it.
    """

    index: int
    module: str
    line: str


def user_line() -> str:
    """``file:line: code`` of the innermost frame outside torch and prunekit."""
    frame = sys._getframe(1)
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not name.startswith(_SKIP) and "<frozen" not in name:
            code = linecache.getline(name, frame.f_lineno).strip()
            return f"{os.path.basename(name)}:{frame.f_lineno}: {code}"
        frame = frame.f_back
    return "<unknown line>"


class _Ops(TorchDispatchMode):
    """Records the name of every operator (nothing else)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def perturbations(inputs: Any) -> list[Any]:
    """Inputs of the same shapes and dtypes with other values (a seeded generator).

    Floating tensors are negated, shifted far up, shifted far down and replaced by
    noise; integer tensors (token ids) are reversed or rolled along their last dimension,
    which keeps every id valid; booleans (masks) are kept.
    """
    gen = torch.Generator().manual_seed(12)

    def change(t: torch.Tensor, kind: int) -> torch.Tensor:
        if t.is_floating_point():
            big = 10 * (float(t.abs().max()) + 1) if t.numel() else 1.0
            if kind == 3:
                return torch.randn(t.shape, generator=gen).to(t.device, t.dtype) * big
            return (-t, t + big, t - big)[kind]
        if t.dtype != torch.bool and t.dim():
            return t.flip(-1) if kind % 2 == 0 else t.roll(1, -1)
        return t

    return [_map(inputs, lambda t, k=k: change(t, k)) for k in range(4)]


def _map(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)({k: _map(v, fn) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj


class _FlipBool(TorchFunctionMode):
    """Answers the ``which``-th ``bool(tensor)`` of a forward pass with the other value."""

    def __init__(self, which: int) -> None:
        super().__init__()
        self.which, self.seen = which, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.__bool__:
            self.seen += 1
            if self.seen - 1 == self.which:
                return not out
        return out


MAX_BRANCHES = 8  # ``bool(tensor)`` calls tried the other way; past these, perturbed inputs


def check_paths(graph: Any, model: nn.Module, inputs: Any, ops: list[str],
                reads: list[Read], bools: list[Read], rules: Any) -> None:
    """Find data-dependent branches; keep whole what the other path would cut differently.

    Each ``bool(tensor)`` of the traced run (``if x.sum() > 0:``) is answered the other
    way in a run of its own. If that run executes other operators, the other path is
    traced too, and every group it does not cut the same way (blocked there, or coupled
    otherwise) is kept whole here, naming the line. Paths that differ only in operators
    that touch no prunable dimension (a padding mask built or skipped) change nothing.
    Other values read into Python (``.item()``, ``float()``) are checked by comparing the
    operators on perturbed inputs; a difference keeps the deciding module whole.

    Args:
        graph: the finalized graph of the traced run.
        model: the traced model.
        inputs: the example inputs.
        ops: operator names of the traced run, in order.
        reads: the values read into Python during the traced run (any kind).
        bools: the ``bool(tensor)`` calls among them (``index`` counts those calls).
        rules: the rules the graph was traced with (to trace the other path).
    """
    from ._tracer import build_graph, flatten_tensors  # the tracer imports this module

    if any(t.device.type == "meta" for t in flatten_tensors(inputs)):
        return  # values on the meta device were faked; no other path can be run
    for read in bools[:MAX_BRANCHES]:  # every branch: another module may decide another path
        got = _ops_of(model, inputs, _FlipBool(read.index))
        if got is None or _first_difference(ops, got) is None:
            continue
        try:
            other = build_graph(model, inputs, rules, flip=read.index)
        except Exception:  # the other path cannot be traced: keep its module whole
            _block_branch(graph, read)
            continue
        _reconcile(graph, other, read)
    if not reads or bools and len(bools) <= MAX_BRANCHES and len(bools) == len(reads):
        return
    for other_inputs in perturbations(inputs):
        got = _ops_of(model, other_inputs)
        at = None if got is None else _first_difference(ops, got)
        if at is not None:
            before = [r for r in reads if r.index <= at] or reads[:1]
            _block_branch(graph, before[-1])
            return


def _reconcile(graph: Any, other: Any, read: Read) -> None:
    """Keep whole every prunable group of ``graph`` that ``other`` (the other path) does not
    have as the same prunable group (same name, size and tensors)."""
    mine = {g.name: g for g in graph.groups}
    theirs = {g.name: g for g in other.groups}
    differ = [g for g in graph.groups if g.prunable and not _same(g, theirs.get(g.name))]
    only_there = [o for o in other.groups if o.prunable and not _same(o, mine.get(o.name))]
    if not differ and not only_there:
        return
    where = read.module or "<model>"
    reason = (f"data-dependent control flow at {read.line} (in {where}): the path other inputs "
              "take does not cut this group the same way; make the branch independent of the "
              "data, or ignore the module")
    for g in differ:
        ax.mark(g.leaf, reason)
    names = [g.name for g in differ or only_there]
    note = (f"data-dependent control flow at {read.line} (in {where}): the paths cut "
            f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''} differently"
            + (f"; {len(differ)} groups kept whole" if differ else "; they stay whole"))
    graph.notes.append(note)
    warnings.warn(f"prunekit: {note}", stacklevel=4)


def _same(g: Any, o: Any) -> bool:
    """Whether two groups of two traces are the same prunable group."""
    return o is not None and o.prunable and g.prunable and o.size == g.size and \
        {(m.name, m.dim) for m in o.members} == {(m.name, m.dim) for m in g.members}


def _ops_of(model: nn.Module, inputs: Any, mode: TorchFunctionMode | None = None
            ) -> list[str] | None:
    """Operator names of one forward pass (``None`` if it raises: an error path, such as a
    failed assertion, computes nothing else)."""
    from ._tracer import _tracing_state, run_model  # the tracer imports this module

    try:
        with _tracing_state(model), _Ops() as rec, mode or contextlib.nullcontext():
            run_model(model, inputs)
    except Exception:
        return None
    return rec.ops


def _first_difference(a: list[str], b: list[str]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _block_branch(graph: Any, read: Read) -> None:
    """Block every dimension that the module deciding the path and its submodules touched."""
    path = read.module
    reason = (f"data-dependent control flow at {read.line} (in {path or '<model>'}): another input "
              "runs other operators, which one trace cannot see; make the branch independent of "
              "the data, or ignore this module")
    if reason in graph.notes:
        return
    for p, axes in graph.module_axes.items():
        if not path or p == path or p.startswith(path + "."):
            for a in axes:
                ax.mark(a, reason)
    graph.notes.append(reason)
    warnings.warn(f"prunekit: {reason}", stacklevel=4)
