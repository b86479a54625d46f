"""Follow one forward pass at the ATen operator level and build a :class:`Graph`.

A ``TorchDispatchMode`` sees every operator with its real (or meta) tensors;
forward hooks on every module give each operator its module context. Modules
with a module-level rule (``nn.MultiheadAttention``, RNNs) are followed as one
step: the operators inside them are not looked at.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .._calls import flatten_tensors, run_model
from ..errors import TraceError
from . import _axes as ax
from ._axes import ONE, Axis, AxisError
from ._control import READS, Read, _FlipBool, check_paths, user_line
from .graph import Graph, HeadSplit, UnknownOp, ViewCall
from .reasons import Reason, kind_of

_MODEL_INPUT = Reason("size of a model input", kind="model_input")


def _at(why: str, where: str) -> Reason:
    """``why`` with the place it happened, keeping its kind."""
    return Reason(f"{why} at {where}", kind=kind_of(why), op=getattr(why, "op", None),
                  module=getattr(why, "module", None))

aten = torch.ops.aten


class Call:
    """One operator call seen by a rule: its arguments, outputs and module context."""

    def __init__(self, tracer: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        self.tracer = tracer
        self.graph = tracer.graph
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.out = out
        self.module = tracer.module_path

    @property
    def name(self) -> str:
        """Operator name without the overload, e.g. ``aten.convolution``."""
        return str(self.func).rsplit(".", 1)[0] if "." in str(self.func) else str(self.func)

    @property
    def where(self) -> str:
        """Operator and module, for messages."""
        return f"{self.name} in {self.module or '<model>'}"

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """An argument by position or keyword."""
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, default)

    def named(self, name: str, default: Any = None) -> Any:
        """An argument by its schema name (positional or keyword)."""
        for i, a in enumerate(self.func._schema.arguments):
            if a.name == name:
                if i < len(self.args):
                    return self.args[i]
                return self.kwargs.get(name, default)
        return default

    def axes(self, t: torch.Tensor) -> tuple[Axis, ...]:
        """Axes of the dimensions of ``t`` (fresh, blocked ones for a tensor of unknown origin)."""
        return self.tracer.axes_of(t, self.where)

    def set(self, t: torch.Tensor, axes: list[Axis] | tuple[Axis, ...]) -> None:
        """Give output ``t`` these axes (an existing tensor, e.g. in-place, is unified instead)."""
        self.tracer.set_axes(t, tuple(axes), self.where)

    def fresh(self, size: int, why: str = "size set by a constant") -> Axis:
        """A new axis that may not be pruned (its size does not follow any parameter)."""
        return ax.new(size, _at(why, self.where))

    def unify(self, a: Axis, b: Axis) -> None:
        """Couple two axes; if their structures cannot be aligned, block both."""
        try:
            ax.unify(a, b)
        except AxisError as e:
            reason = f"dimensions that cannot be aligned ({e}) at {self.where}"
            ax.mark(a, reason)
            ax.mark(b, reason)

    def block(self, a: Axis, why: str) -> None:
        """Make the leaves under ``a`` unprunable, saying why."""
        ax.mark(a, _at(why, self.where))

    def unchecked(self, a: Axis, why: str) -> None:
        """Leaves under ``a`` stay prunable but cannot be checked by zero-out equivalence."""
        ax.mark(a, Reason(f"{why} at {self.where}", kind="unchecked", op=self.name,
                          module=self.module), kind="unchecked")

    def tensor_args(self) -> list[torch.Tensor]:
        """Tensor arguments, including those inside list arguments."""
        return flatten_tensors(list(self.args) + list(self.kwargs.values()))

    def outs(self) -> list[torch.Tensor]:
        """Tensor outputs."""
        return flatten_tensors(self.out)

    def macs(self, count: int, axes: list[Axis]) -> None:
        """Record ``count`` multiply-accumulates that scale with the kept sizes of ``axes``."""
        self.graph.macs_terms.append((int(count), list(axes)))

    def head_split(self, whole: Axis, parts: list[Axis]) -> None:
        """Record that a view in this module split ``whole`` into ``parts`` (heads x head_dim)."""
        if self.module is not None:
            self.graph.head_splits.append(HeadSplit(self.module, whole, parts))


class Tracer(TorchDispatchMode):
    """Dispatch mode that applies operator rules to every call."""

    def __init__(self, graph: Graph, rules: Any) -> None:
        super().__init__()
        self.graph = graph
        self.rules = rules
        self.table: dict[int, tuple[Axis, ...]] = {}
        self.modules: list[str] = []
        self.suspended = 0
        self.used: set[int] = set()
        self.tensors: set[int] = set()  # ids of the model's parameters and buffers
        self.ops: list[str] = []  # every operator, in order (to compare with another input)
        self.reads: list[Read] = []  # tensor values read into Python
        self.bools: list[Read] = []  # bool(tensor) calls, the usual data-dependent branches
        self.input_sizes: set[int] = set()  # sizes of the example inputs' dimensions

    @property
    def module_path(self) -> str:
        return self.modules[-1] if self.modules else ""

    # -- tensor bookkeeping ----------------------------------------------------------
    def axes_of(self, t: torch.Tensor, where: str) -> tuple[Axis, ...]:
        self.used.add(id(t))
        got = self.table.get(id(t))
        if got is None or len(got) != t.dim():
            got = tuple(ax.new(s, f"tensor of unknown origin used by {where}") for s in t.shape)
            self._store(t, got)
        return got

    def set_axes(self, t: torch.Tensor, axes: tuple[Axis, ...], where: str) -> None:
        old = self.table.get(id(t))
        if old is not None and len(old) == len(axes) == t.dim():
            for a, b in zip(old, axes, strict=True):
                try:
                    ax.unify(a, b)
                except AxisError as e:
                    ax.mark(a, f"{e} at {where}")
                    ax.mark(b, f"{e} at {where}")
            return
        if len(axes) != t.dim():
            axes = tuple(ax.new(s, f"rule mismatch at {where}") for s in t.shape)
        self._store(t, axes)

    def _store(self, t: torch.Tensor, axes: tuple[Axis, ...]) -> None:
        key = id(t)
        if key not in self.table:
            weakref.finalize(t, self.table.pop, key, None)
        self.table[key] = axes

    def seed(self, t: torch.Tensor, axes: tuple[Axis, ...]) -> None:
        """Axes for a tensor that exists before tracing (parameters, buffers, inputs)."""
        self.table[id(t)] = axes

    # -- dispatch ----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            return self._fake_scalar(args[0])
        if func in READS:
            self.reads.append(Read(len(self.ops), self.module_path, user_line()))
        self.ops.append(str(func))
        out = func(*args, **kwargs)
        if not self.suspended:
            self._record(func, args, kwargs, out)
        return out

    def _fake_scalar(self, t: torch.Tensor) -> Any:
        value = True if t.dtype == torch.bool else (1.0 if t.dtype.is_floating_point else 1)
        note = (f"a data-dependent value on the meta device was taken as {value} "
                f"in {self.module_path}")
        if note not in self.graph.notes:
            self.graph.notes.append(note)
        return value

    def _record(self, func, args, kwargs, out) -> None:
        call = Call(self, func, args, kwargs, out)
        rule = self.rules.lookup(func)
        try:
            if rule is None:
                self._unknown(call)
            else:
                rule(call)
        except AxisError as e:
            self._block_all(call, f"dimensions that cannot be aligned ({e})")
        except Exception as e:  # a rule that cannot follow this call must not stop the trace
            self._block_all(call, _rule_failed(call.name, e))
        for t in call.outs():
            self.axes_of(t, call.where)  # anything the rule left out is fresh and blocked
        self._note_module(call)

    def _note_module(self, call: Call) -> None:
        """Remember which axes each module's operators touched (to locate failures)."""
        seen = self.graph.module_axes.setdefault(call.module, [])
        for t in call.tensor_args() + call.outs():
            got = self.table.get(id(t))
            if got:
                seen.extend(a for a in got if a.size > 1)

    def _unknown(self, call: Call) -> None:
        if not call.outs():
            return  # no tensor result: nothing downstream depends on its shape
        if not call.tensor_args():
            for t in call.outs():  # a factory: its size comes from a constant
                call.set(t, [call.fresh(s) for s in t.shape])
            return
        key = (call.name, call.module)
        if key in self.graph.unknown_ops:
            self.graph.unknown_ops[key].count += 1
        else:
            self.graph.unknown_ops[key] = UnknownOp(call.name, call.module)
        self._block_all(call, "no rule for operator")

    def _block_all(self, call: Call, why: str) -> None:
        for t in call.tensor_args():
            for a in call.axes(t):
                call.block(a, why)
        for t in call.outs():
            call.set(t, [call.fresh(s, why + " (its output)") for s in t.shape])


def _rule_failed(name: str, e: Exception) -> str:
    """Why dimensions are kept when the rule for ``name`` raised: an internal limit, not the
    model's fault (the trace goes on; these dimensions are simply not cut)."""
    return (f"prunekit's rule for {name} could not follow this call ({type(e).__name__}: {e}); "
            "its dimensions are kept (please report it)")


def _int_args(args: tuple) -> list[Any]:
    """Sizes given either as varargs or as one tuple/list/Size."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return list(args[0])
    return list(args)


def size_calls() -> tuple[Any, ...]:
    """The Python-level calls that take sizes from the code (noted by the tracer and compared,
    call by call, by dry runs)."""
    T = torch.Tensor
    return (T.view, T.reshape, torch.reshape, T.expand, T.unflatten, torch.unflatten, T.split,
            torch.split, T.narrow, torch.narrow, T.__getitem__)


class _Literals(TorchFunctionMode):
    """Notes dimensions whose size the Python code spells out (``x.view(-1, 400)``).

    Such a size may be a constant that a cut would make stale, so groups through
    these dimensions are dry-run before a plan is trusted. ``torch.flatten``,
    ``chunk`` and ``-1`` compute their sizes and are not noted.
    """

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer
        self.handlers = dict(zip(size_calls(), (
            self._sizes, self._sizes, self._sizes, self._expand, self._unflatten,
            self._unflatten, self._split, self._split, self._narrow, self._narrow,
            self._getitem), strict=True))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.__bool__:
            bools = self.tracer.bools
            bools.append(Read(len(bools), self.tracer.module_path, user_line()))
        handler = self.handlers.get(func)
        if handler is None:
            return out
        name = getattr(func, "__name__", str(func))
        self._log(name, out)
        if not self.tracer.suspended:
            try:
                handler(name, args, kwargs, out)
            except Exception:  # noting is best effort; the dry run is the real check
                pass
        return out

    def _log(self, name: str, out: Any) -> None:
        """Remember the axes this call returned, so a dry run can compare shapes call by call."""
        tracer = self.tracer
        outs = None
        if not tracer.suspended:
            outs = [tracer.table.get(id(t)) for t in flatten_tensors(out)]
            outs = [a if a is not None and len(a) == t.dim() else None
                    for a, t in zip(outs, flatten_tensors(out), strict=True)]
        tracer.graph.view_calls.append(ViewCall(name, tracer.module_path, outs))

    def _mark(self, t: torch.Tensor, dim: int, name: str) -> None:
        axes = self.tracer.table.get(id(t))
        if axes is not None and 0 <= dim < len(axes):
            ax.mark(axes[dim], Reason.literal(name, self.tracer.module_path or ""),
                    kind="literal")

    def _sizes(self, name, args, kwargs, out) -> None:
        sizes = _int_args(args[1:]) or list(kwargs.get("shape", ()))
        for d, size in enumerate(sizes):
            if isinstance(size, int) and size > 1:
                self._mark(out, d, name)

    def _expand(self, name, args, kwargs, out) -> None:
        x, sizes = args[0], _int_args(args[1:])
        offset = len(sizes) - x.dim()
        for d, size in enumerate(sizes):
            if isinstance(size, int) and size > 1 and d >= offset and x.shape[d - offset] == size:
                self._mark(out, d, name)

    def _unflatten(self, name, args, kwargs, out) -> None:
        dim, sizes = args[1], list(args[2])
        dim = dim + args[0].dim() if dim < 0 else dim
        for k, size in enumerate(sizes):
            if isinstance(size, int) and size > 1:
                self._mark(out, dim + k, name)

    def _split(self, name, args, kwargs, out) -> None:
        x = args[0]
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        self._mark(x, dim + x.dim() if dim < 0 else dim, name)

    def _narrow(self, name, args, kwargs, out) -> None:
        x, dim = args[0], args[1]
        self._mark(x, dim + x.dim() if dim < 0 else dim, name)

    def _getitem(self, name, args, kwargs, out) -> None:
        x, index = args[0], args[1]
        items = list(index) if isinstance(index, tuple) else [index]
        if Ellipsis in items:
            at = items.index(Ellipsis)
            fill = x.dim() - sum(1 for i in items if i is not None and i is not Ellipsis)
            items = items[:at] + [slice(None)] * fill + items[at + 1:]
        d = 0
        for item in items:
            if item is None:
                continue
            if isinstance(item, slice) and (item.start not in (None, 0) or item.stop is not None
                                            and item.stop < x.shape[d] or item.step not in
                                            (None, 1)):
                self._mark(x, d, "slicing")
            d += 1


class _ModuleHooks:
    """Forward hooks that keep the module stack and run module-level rules."""

    def __init__(self, tracer: Tracer, model: nn.Module, rules: Any) -> None:
        self.tracer = tracer
        self.rules = rules
        self.handles: list[Any] = []
        self.pending: list[tuple[str, Any, inspect.BoundArguments | None]] = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            self.tracer.modules.append(name)
            rule = None if self.tracer.suspended else self.rules.module_rule(module)
            bound = None
            if rule is not None:
                bound = inspect.signature(module.forward).bind(*args, **kwargs)
                bound.apply_defaults()
                self.tracer.suspended += 1
            self.pending.append((name, rule, bound))

        return hook

    def _post(self, name: str):
        def hook(module, args, kwargs, output):
            _, rule, bound = self.pending.pop()
            if rule is not None:
                self.tracer.suspended -= 1
                call = ModuleCall(self.tracer, module, name, bound.arguments, output)
                try:
                    rule(call)
                except AxisError as e:
                    call.block_everything(f"dimensions that cannot be aligned ({e})")
                except Exception as e:  # never blame the model for a rule's own failure
                    call.block_everything(_rule_failed(call.name, e))
                for t in flatten_tensors(output):
                    self.tracer.axes_of(t, call.where)
                self.tracer._note_module(call)
            self.tracer.modules.pop()

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class ModuleCall(Call):
    """A call of a module followed as one step by a module-level rule."""

    def __init__(self, tracer: Tracer, module: nn.Module, name: str, inputs: dict,
                 out: Any) -> None:
        self.tracer = tracer
        self.graph = tracer.graph
        self.func = type(module).__name__
        self.args = ()
        self.kwargs = inputs
        self.out = out
        self.module = name
        self.mod = module

    @property
    def name(self) -> str:
        return f"{self.func} (module rule)"

    def param(self, local: str) -> tuple[Axis, ...] | None:
        """Axes of a parameter of this module by its local name (``None`` if absent)."""
        t = getattr(self.mod, local, None)
        return None if t is None else self.axes(t)

    def block_everything(self, why: str) -> None:
        for t in [*self.tensor_args(), *self.mod.parameters()]:
            for a in self.axes(t):
                self.block(a, why)
        for t in self.outs():
            self.set(t, [self.fresh(s, why + " (its output)") for s in t.shape])


@contextlib.contextmanager
def _tracing_state(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradients, no fused fast paths; the model's modes are restored after."""
    modes = {m: m.training for m in model.modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, mode in modes.items():
            m.training = mode


def build_graph(model: nn.Module, example_inputs: Any, rules: Any, *,
                flip: int | None = None) -> Graph:
    """Trace ``model`` on ``example_inputs`` and return its graph (see :func:`prunekit.trace`).

    With ``flip``, the ``flip``-th ``bool(tensor)`` of the forward pass is answered the
    other way (to trace the path that other inputs take; no further path checks).
    """
    graph = Graph(model, example_inputs)
    tracer = Tracer(graph, rules)
    _seed_tensors(graph, tracer, model)
    for t in flatten_tensors(example_inputs):
        tracer.seed(t, tuple(ax.new(s, _MODEL_INPUT) for s in t.shape))
        tracer.input_sizes.update(s for s in t.shape if s > 1)
    hooks = _ModuleHooks(tracer, model, rules)
    start = time.perf_counter()
    try:
        flipped = _FlipBool(flip) if flip is not None else contextlib.nullcontext()
        with _tracing_state(model), tracer, _Literals(tracer), flipped:
            out = run_model(model, example_inputs)
    except Exception as e:
        if _raised_by_prunekit(e):
            raise TraceError(
                f"prunekit's tracer failed internally ({type(e).__name__}: {e}); this is not "
                "the model's fault: please report it with the model's code"
            ) from e
        raise TraceError(
            f"the model failed on the example inputs while tracing ({type(e).__name__}: {e}); "
            "check that example_inputs is what model(...) accepts (tensor, tuple or dict)"
        ) from e
    finally:
        hooks.remove()
    outputs = flatten_tensors(out)
    if not outputs:
        raise TraceError("the model returned no tensors; structured pruning needs tensor outputs")
    for t in outputs:
        for a in tracer.axes_of(t, "model output"):
            ax.mark(a, Reason("size of a model output", kind="model_output"))
    graph.output_shapes = [tuple(t.shape) for t in outputs]
    graph.trace_seconds = time.perf_counter() - start
    _block_unused(graph, tracer, model)
    graph.finalize()
    if flip is None:
        check_paths(graph, model, example_inputs, tracer.ops, tracer.reads, tracer.bools,
                    rules)
    return graph


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _raised_by_prunekit(e: BaseException) -> bool:
    """Whether the innermost frame of ``e`` is prunekit's own code (not the model's, not torch)."""
    tb, last = e.__traceback__, None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and os.path.abspath(last).startswith(_PACKAGE)


def _block_unused(graph: Graph, tracer: Tracer, model: nn.Module) -> None:
    """Tensors the forward pass never read keep their shapes."""
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    for name, axes in graph.param_axes.items():
        if id(named[name]) not in tracer.used:
            for a in axes:
                ax.mark(a, Reason(f"{name} is not used by the traced forward pass",
                                  kind="unused"))


def _seed_tensors(graph: Graph, tracer: Tracer, model: nn.Module) -> None:
    seen: dict[int, str] = {}
    computed = _recomputed_buffers(model)
    named = [(n, t, True) for n, t in model.named_parameters(remove_duplicate=False)]
    named += [(n, t, False) for n, t in model.named_buffers(remove_duplicate=False)]
    for name, t, is_param in named:
        if t is None:
            continue
        if id(t) in seen:
            graph.aliases[name] = seen[id(t)]
            continue
        seen[id(t)] = name
        axes = tuple(ONE if s == 1 else ax.Axis(s) for s in t.shape)
        if not (t.is_floating_point() or t.is_complex()):
            for a in axes:
                ax.mark(a, Reason(f"integer buffer {name}", kind="int_buffer"))
        elif name in computed:
            for a in axes:
                ax.mark(a, f"buffer {name} is rebuilt by the model's code (non-persistent)")
        graph.param_axes[name] = axes
        graph.param_shapes[name] = tuple(t.shape)
        graph.is_param[name] = is_param
        tracer.seed(t, axes)
        tracer.tensors.add(id(t))


def _recomputed_buffers(model: nn.Module) -> set[str]:
    """Qualified names of non-persistent buffers that the model's code reassigns outside
    ``__init__``: caches rebuilt for each input size (timm's ConViT ``rel_indices``).

    Their shapes come from code, so a cut of them could not be replayed on a freshly
    built model; constant buffers set once in ``__init__`` (BEiT's zero ``k_bias``) are
    ordinary tensors and may be cut.
    """
    found = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        names = getattr(module, "_non_persistent_buffers_set", ())
        code = _methods_source(type(module)) if names else ""
        for name in names:
            if re.search(rf"self\.{re.escape(name)}\s*=(?!=)", code):
                found.add(f"{prefix}.{name}" if prefix else name)
    return found


@functools.cache
def _methods_source(cls: type) -> str:
    """The source of ``cls``'s own methods but ``__init__`` (empty where it is unavailable)."""
    parts = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        for attr, value in vars(klass).items():
            if attr != "__init__" and inspect.isfunction(value):
                with contextlib.suppress(OSError, TypeError):
                    parts.append(inspect.getsource(value))
    return "\n".join(parts)
