"""Dry runs: apply a plan to a weightless copy and check that the forward pass still works.

Python code sometimes bakes a size into a literal (``x.view(-1, 400)``,
``torch.zeros(batch, self.hidden)``): the operator graph cannot see it. A dry
run on a meta-device copy of the model (no weights, near-zero cost) finds such
groups before the real model is touched; :func:`find_failing` narrows a failure
down to the groups that cause it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .._calls import flatten_tensors, run_model, to_meta
from ..graph import size_calls, tracing_state
from .apply import apply_undoable
from .plan import Plan


class _MetaScalars(TorchDispatchMode):
    """Answer data-dependent ``.item()`` calls on meta tensors with a neutral value."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            t = args[0]
            return True if t.dtype == torch.bool else (1.0 if t.dtype.is_floating_point else 1)
        return func(*args, **(kwargs or {}))


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are meta tensors (no memory)."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in memo:
            continue
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) \
            if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


class _ViewShapes(TorchFunctionMode):
    """Records the name and output shapes of every size-taking call (``view``, ``reshape``,
    slicing ...), in the order the code makes them."""

    def __init__(self) -> None:
        super().__init__()
        self.funcs = set(size_calls())
        self.calls: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.funcs:
            name = getattr(func, "__name__", str(func))
            self.calls.append((name, [tuple(t.shape) for t in flatten_tensors(out)]))
        return out


def regrouped(expected: list | None, calls: list[tuple[str, list[tuple[int, ...]]]]) -> str | None:
    """The first size-taking call whose shape differs from what the cut predicts, or ``None``.

    The calls are compared in order; when the two runs made different calls (data-dependent
    code), nothing can be matched and ``None`` is returned.
    """
    if not expected or len(expected) != len(calls):
        return None
    if any(e[0] != c[0] for e, c in zip(expected, calls, strict=True)):
        return None
    for (name, module, shapes), (_, got) in zip(expected, calls, strict=True):
        if shapes is None or len(shapes) != len(got):
            continue
        for want, have in zip(shapes, got, strict=True):
            if want is not None and tuple(want) != tuple(have):
                return (f"{name} in {module or '<model>'} gives shape {tuple(have)} where the cut "
                        f"needs {tuple(want)}: the code spells a size (a literal or an attribute "
                        "the plan does not update) and would regroup the cut dimension")
    return None


def output_shapes(model: nn.Module, inputs: Any) -> list[tuple[int, ...]]:
    """Shapes of the tensors the model returns (eval mode, no gradients, modes restored)."""
    with tracing_state(model), _MetaScalars():
        out = run_model(model, inputs)
    return [tuple(t.shape) for t in flatten_tensors(out)]


class DryRunner:
    """Checks plans against a model without touching it.

    On a meta copy when the model's forward pass runs on the meta device, else on a
    full copy (the real weights are copied once per check). Small real models (under
    64 MiB of parameters) are always checked on a full copy: meta kernels decompose
    into many small operators and run slower than the real ones at that size.
    """

    def __init__(self, model: nn.Module, inputs: Any, expected: list[tuple[int, ...]], *,
                 real_seconds: float = 0.0) -> None:
        self.expected = expected
        real = next((t.device.type != "meta" for t in model.parameters()), False)
        size = sum(t.numel() * t.element_size() for t in model.parameters())
        if real and size < 2**26:
            self.copy, self.inputs = copy.deepcopy(model), inputs
        else:
            self.copy, self.inputs = meta_skeleton(model), to_meta(inputs)
        if real and size >= 2**26:  # the traced run proved nothing about meta kernels: try one
            start = time.perf_counter()
            works = self._runs()
            slow = time.perf_counter() - start > max(0.3, 3 * real_seconds)
            small = sum(t.numel() * t.element_size() for t in model.parameters()) < 2**31
            if not works or slow and small:
                self.copy, self.inputs = copy.deepcopy(model), inputs
        self.meta = next((t.device.type == "meta" for t in self.copy.parameters()), True)
        self.paths = {id(m): n for n, m in self.copy.named_modules()}
        self.last_module: str | None = None

    def _runs(self) -> bool:
        try:
            return output_shapes(self.copy, self.inputs) == self.expected
        except Exception:
            return False

    def error(self, plan: Plan) -> str | None:
        """``None`` if the plan's model runs and returns the expected shapes, else why not."""
        self.last_module = None
        try:
            undo = apply_undoable(self.copy, plan)
        except Exception as e:
            return _short(e)
        try:
            with _ViewShapes() as views:
                shapes = output_shapes(self.copy, self.inputs)
        except Exception as e:
            self.last_module = self._where(e)
            return _short(e)
        finally:
            undo()
        if shapes != self.expected:
            return f"output shapes changed from {self.expected} to {shapes}"
        return regrouped(plan.expected_views, views.calls)


    def _where(self, e: BaseException) -> str | None:
        """The innermost module of the copy whose code raised ``e``."""
        found, tb = None, e.__traceback__
        while tb is not None:
            obj = tb.tb_frame.f_locals.get("self")
            if isinstance(obj, nn.Module) and id(obj) in self.paths:
                found = self.paths[id(obj)]
            tb = tb.tb_next
        return found


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def find_failing(ids: list[int], fails: Callable[[list[int]], str | None]) -> dict[int, str]:
    """Groups whose cuts break the dry run, found by bisection, most likely ones first.

    Args:
        ids: group ids whose combined plan fails, the likeliest culprits first.
        fails: ids -> error message (``None`` when the subset runs).

    Returns:
        group id -> error for the first culprit found (and, when only a combination
        fails, all of its groups); the caller re-plans and checks again.
    """
    if len(ids) == 1:
        return {ids[0]: fails(ids) or "fails only in combination"}
    half = len(ids) // 2
    for part in (ids[:half], ids[half:]):
        msg = fails(part)
        if msg:
            return find_failing(part, fails) if len(part) > 1 else {part[0]: msg}
    return dict.fromkeys(ids, "fails only in combination")
