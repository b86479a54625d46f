"""Operator rules: how each ATen operator maps input dimensions to output dimensions.

A rule receives a :class:`~prunekit.graph._tracer.Call` and couples axes
(``call.unify``), gives outputs their axes (``call.set``), and blocks or marks
dimensions it cannot follow. An operator without a rule is never guessed at:
the tracer blocks every dimension it touches.

Adding an operator is one decorated function::

    @register_op("aten.my_op")
    def my_op(call):
        x = call.args[0]
        call.set(call.out, call.axes(x))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .. import _macs
from .._registry import Registry
from . import _axes as ax
from ._axes import ONE, Axis
from ._tracer import Call, ModuleCall
from .graph import Binding
from .reasons import Reason

OpRule = Callable[[Call], None]
_OPS: Registry[OpRule] = Registry("operator rule")
SPATIAL = Reason("spatial size", kind="spatial")
_MODULES: Registry[Callable[[ModuleCall], None]] = Registry("module rule")
_POINTWISE_CACHE: dict[str, bool] = {}


def register_op(*names: str) -> Callable[[OpRule], OpRule]:
    """Register a rule for operators given by packet name (``"aten.view"``)."""

    def add(fn: OpRule) -> OpRule:
        for name in names:
            _OPS.register(name)(fn)
        return fn

    return add


def register_module(cls_name: str) -> Callable:
    """Register a module-level rule by the module class's qualified name."""
    return _MODULES.register(cls_name)


def _is_pointwise(func: Any) -> bool:
    name = func._schema.name  # e.g. "aten::gelu_"
    if name not in _POINTWISE_CACHE:
        base = name.split("::")[-1].rstrip("_")
        packet = getattr(torch.ops.aten, base, None)
        tagged = torch.Tag.pointwise in func.tags or (
            packet is not None
            and any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())
        )
        _POINTWISE_CACHE[name] = tagged
    return _POINTWISE_CACHE[name]


class Rules:
    """Lookup of operator and module rules (what the tracer consults)."""

    def lookup(self, func: Any) -> OpRule | None:
        name = str(func).rsplit(".", 1)[0]
        if name in _OPS:
            return _OPS.get(name)
        if hasattr(func, "tags") and _is_pointwise(func):
            return pointwise
        return None

    def module_rule(self, module: nn.Module) -> Callable | None:
        for cls in type(module).__mro__:
            key = f"{cls.__module__}.{cls.__qualname__}"
            if key in _MODULES:
                return _MODULES.get(key)
        return None


RULES = Rules()


def list_op_rules() -> list[str]:
    """Names of the operators that have a rule."""
    return _OPS.names()


# -- helpers -------------------------------------------------------------------------------
def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _broadcast(call: Call, out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[Axis]:
    """Right-aligned broadcasting: equal-sized dimensions are coupled."""
    axes: list[Axis | None] = [None] * out.dim()
    for t in inputs:
        t_axes = call.axes(t)
        offset = out.dim() - t.dim()
        for i, s in enumerate(t.shape):
            o = i + offset
            if o < 0 or s != out.shape[o] or s == 1:
                continue
            if axes[o] is None:
                axes[o] = t_axes[i]
            else:
                call.unify(axes[o], t_axes[i])
    return [a if a is not None else (ONE if s == 1 else call.fresh(s, "broadcast size"))
            for a, s in zip(axes, out.shape, strict=True)]


def reshape_axes(call: Call, axes: Sequence[Axis], shape: Sequence[int]) -> list[Axis]:
    """Axes after a row-major reshape to ``shape``; splits refine axes into products."""
    pending = [f for a in axes for f in ax.factors(a)]
    out: list[Axis] = []
    for s in shape:
        taken: list[Axis] = []
        size = 1
        while size < s:
            if not pending:
                raise ax.AxisError("reshape to more elements")
            f = ax.find(pending.pop(0))
            if s % (size * f.size) == 0:
                taken.append(f)
                size *= f.size
                continue
            need = s // size
            if s % size or f.size % need:
                raise ax.AxisError(f"reshape of {f.size} does not line up with {s}")
            head, rest = ax.split_prod(f, [need, f.size // need])
            call.head_split(f, [head, rest])
            taken.append(head)
            pending.insert(0, rest)
            size *= need
        out.append(ax.prod(taken) if taken else ONE)
    if pending:
        raise ax.AxisError("reshape to fewer elements")
    return out


# -- elementwise -----------------------------------------------------------------------------
@register_op(
    "aten._to_copy", "aten.clone", "aten.contiguous", "aten.copy_", "aten.copy", "aten.detach",
    "aten.alias", "aten.lift_fresh", "aten.lift_fresh_copy", "aten._prelu_kernel",
    "aten.native_dropout", "aten.dropout", "aten.feature_dropout", "aten.alpha_dropout",
    "aten.hardswish", "aten.hardswish_", "aten.fill_", "aten.zero_", "aten.zeros_like",
    "aten.ones_like", "aten.empty_like", "aten.full_like", "aten.rand_like", "aten.randn_like",
    "aten.bernoulli", "aten.bernoulli_", "aten.masked_fill_", "aten.gelu_", "aten.hardtanh_",
    "aten.relu_", "aten.sigmoid_", "aten.tanh_", "aten.silu_", "aten.leaky_relu_", "aten.elu_",
    "aten.clamp_", "aten.clamp_min_", "aten.clamp_max_", "aten.add_", "aten.sub_", "aten.mul_",
    "aten.div_", "aten.hardsigmoid_", "aten.threshold_", "aten.masked_fill", "aten.where",
    "aten._conj", "aten.resolve_conj", "aten.resolve_neg", "aten.positive", "aten.relu6",
)
def pointwise(call: Call) -> None:
    """Elementwise with broadcasting: every output dimension equals the inputs' dimensions."""
    inputs = [t for t in call.tensor_args() if t.dim() > 0]
    for out in call.outs():
        same = [t for t in inputs if t.dim() <= out.dim()]
        call.set(out, _broadcast(call, out, same))


@register_op("aten._softmax", "aten._log_softmax", "aten._safe_softmax", "aten.softmax",
             "aten.log_softmax")
def softmax(call: Call) -> None:
    """Elementwise shape; the normalized dimension cannot be checked by zero-out."""
    x = call.args[0]
    axes = call.axes(x)
    call.set(call.out, axes)
    if x.dim():
        call.unchecked(axes[_dim(call.arg(1, "dim"), x.dim())], "softmax over the dimension")


@register_op("aten.tril", "aten.triu", "aten.tril_", "aten.triu_")
def triangular(call: Call) -> None:
    """Position-dependent on the last two dimensions: those are blocked."""
    axes = call.axes(call.args[0])
    for a in axes[-2:]:
        call.block(a, "triangular mask")
    call.set(call.out, axes)


# -- views and layout -------------------------------------------------------------------------
@register_op(
    "aten.view", "aten._unsafe_view", "aten.reshape", "aten._reshape_alias", "aten.squeeze",
    "aten.unsqueeze", "aten.flatten", "aten.unflatten", "aten.view_copy", "aten.squeeze_copy",
    "aten.unsqueeze_copy", "aten._reshape_copy", "aten.squeeze_", "aten.unsqueeze_",
    "aten.view_as", "aten.reshape_as",
)
def reshape(call: Call) -> None:
    """Row-major reshape: merged dimensions become products, split ones are refined."""
    x, out = call.args[0], call.out
    if x.numel() == 0:
        return
    call.set(out, reshape_axes(call, call.axes(x), out.shape))


@register_op("aten.as_strided", "aten.as_strided_", "aten.as_strided_copy")
def as_strided(call: Call) -> None:
    """Restriding to the same shape (a memory-format change) keeps every dimension; else blocked."""
    x, out = call.args[0], call.outs()[0]
    axes = call.axes(x)  # for the in-place form, ``x`` already has the new strides
    if [ax.find(a).size for a in axes] == list(out.shape):
        call.set(out, axes)
        return
    for a in axes:
        call.block(a, "arbitrary strides")
    call.set(out, [call.fresh(s, "strided view") for s in out.shape])


@register_op("aten.permute", "aten.permute_copy")
def permute(call: Call) -> None:
    axes = call.axes(call.args[0])
    call.set(call.out, [axes[_dim(d, len(axes))] for d in call.args[1]])


@register_op("aten.transpose", "aten.transpose_copy", "aten.swapaxes", "aten.swapdims",
             "aten.transpose_")
def transpose(call: Call) -> None:
    axes = list(call.axes(call.args[0]))
    if axes:
        i, j = (_dim(d, len(axes)) for d in (call.args[1], call.args[2]))
        axes[i], axes[j] = axes[j], axes[i]
    call.set(call.out, axes)


@register_op("aten.t", "aten.t_copy", "aten.numpy_T", "aten.mT", "aten.t_")
def t(call: Call) -> None:
    call.set(call.out, list(reversed(call.axes(call.args[0]))))


@register_op("aten.movedim")
def movedim(call: Call) -> None:
    x = call.args[0]
    src = [call.args[1]] if isinstance(call.args[1], int) else list(call.args[1])
    dst = [call.args[2]] if isinstance(call.args[2], int) else list(call.args[2])
    order = list(range(x.dim()))
    perm = [None] * x.dim()
    for s, d in zip(src, dst, strict=True):
        perm[_dim(d, x.dim())] = _dim(s, x.dim())
        order.remove(_dim(s, x.dim()))
    it = iter(order)
    axes = call.axes(x)
    call.set(call.out, [axes[p if p is not None else next(it)] for p in perm])


@register_op("aten.expand", "aten.expand_copy", "aten.expand_as", "aten.broadcast_to")
def expand(call: Call) -> None:
    """Same-sized dimensions pass through; broadcast ones are new and blocked."""
    x, out = call.args[0], call.out
    axes = call.axes(x)
    offset = out.dim() - x.dim()
    new = []
    for o, s in enumerate(out.shape):
        i = o - offset
        if i >= 0 and x.shape[i] == s:
            new.append(axes[i])
        else:
            new.append(call.fresh(s, "size of an expand"))
    call.set(out, new)


@register_op("aten.repeat")
def repeat(call: Call) -> None:
    """Each dimension becomes (repeats x original): a blocked factor times the axis."""
    x, out = call.args[0], call.out
    reps = list(call.args[1])
    axes = call.axes(x)
    offset = out.dim() - x.dim()
    new = []
    for o, r in enumerate(reps):
        i = o - offset
        if i < 0:
            new.append(call.fresh(out.shape[o], "size of a repeat"))
        else:
            new.append(ax.prod([call.fresh(r, "repeat count"), axes[i]]))
    call.set(out, new)


@register_op("aten.cat", "aten.concat", "aten.concatenate", "aten._cat")
def concat(call: Call) -> None:
    """Concatenation: the dimension becomes the concatenation of the inputs' axes."""
    tensors = [t for t in call.args[0] if not (t.dim() == 1 and t.numel() == 0)]
    out = call.out
    d = _dim(call.arg(1, "dim", 0), out.dim())
    axes = [call.axes(t) for t in tensors]
    new = list(axes[0])
    for other in axes[1:]:
        for i in range(out.dim()):
            if i != d:
                call.unify(new[i], other[i])
    new[d] = ax.cat([a[d] for a in axes])
    call.set(out, new)


@register_op("aten.stack")
def stack(call: Call) -> None:
    tensors = list(call.args[0])
    out = call.out
    d = _dim(call.arg(1, "dim", 0), out.dim())
    axes = [list(call.axes(t)) for t in tensors]
    for other in axes[1:]:
        for a, b in zip(axes[0], other, strict=True):
            call.unify(a, b)
    new = list(axes[0])
    new.insert(d, call.fresh(len(tensors), "stacked dimension"))
    call.set(out, new)


def _split_outputs(call: Call, x: torch.Tensor, d: int, outs: Sequence[torch.Tensor]) -> None:
    axes = call.axes(x)
    pieces = ax.split_cat(axes[d], [o.shape[d] for o in outs])
    pieces = iter(pieces)
    for o in outs:
        new = list(axes)
        new[d] = next(pieces) if o.shape[d] > 0 else ONE
        call.set(o, new)


@register_op("aten.split", "aten.split_with_sizes", "aten.unsafe_split",
             "aten.unsafe_split_with_sizes", "aten.chunk", "aten.unsafe_chunk",
             "aten.tensor_split", "aten.split_copy", "aten.split_with_sizes_copy")
def split(call: Call) -> None:
    """Split along a dimension: the axis is refined into a concatenation of pieces."""
    x = call.args[0]
    d = _dim(call.arg(2, "dim", 0), x.dim())
    outs = call.outs()
    _split_outputs(call, x, d, outs)
    if isinstance(call.arg(1, "split_size"), int) and len(outs) > 1:
        # equal pieces (split by size, chunk): they must keep equal sizes, so cut them alike
        size = outs[0].shape[d]
        same = [call.axes(o)[d] for o in outs if o.shape[d] == size]
        for a in same[1:]:
            call.unify(same[0], a)
        for o in outs:
            if o.shape[d] != size:
                call.block(call.axes(o)[d], "shorter last piece of an even split")


@register_op("aten.unbind", "aten.unbind_copy")
def unbind(call: Call) -> None:
    x = call.args[0]
    d = _dim(call.arg(1, "dim", 0), x.dim())
    axes = call.axes(x)
    for piece, o in zip(ax.split_cat(axes[d], [1] * x.shape[d]), call.outs(), strict=True):
        call.unify(piece, ONE)
        call.set(o, [a for i, a in enumerate(axes) if i != d])


@register_op("aten.slice", "aten.slice_copy", "aten.narrow", "aten.narrow_copy")
def slice_(call: Call) -> None:
    """A contiguous slice refines the axis into (before | slice | after); strides are blocked."""
    x, out = call.args[0], call.out
    d = _dim(call.arg(1, "dim", 0), x.dim())
    axes = list(call.axes(x))
    n = x.shape[d]
    if call.name.startswith("aten.narrow"):
        start, step = call.args[2], 1
        end = start + call.args[3]
    else:
        start, end, step = call.arg(2, "start"), call.arg(3, "end"), call.arg(4, "step", 1)
    start = 0 if start is None else (start + n if start < 0 else start)
    end = n if end is None else (end + n if end < 0 else end)
    start, end = max(0, min(start, n)), max(0, min(end, n))
    if step == 1 and start == 0 and end >= n:
        call.set(out, axes)
        return
    if step != 1:
        call.block(axes[d], "strided slice")
        axes[d] = call.fresh(out.shape[d], "strided slice")
    elif _runtime_slice(call, x, start, end):
        call.block(axes[d], "positions read up to a runtime size (pos[:, :L]) are not channels; "
                            "the rows past the traced length are used by longer inputs")
        axes[d] = call.fresh(out.shape[d], "runtime-sized slice")
    else:
        sizes = [start, end - start, n - end]
        pieces = ax.split_cat(axes[d], [s for s in sizes if s > 0])
        axes[d] = pieces[1 if start > 0 else 0] if end > start else ONE
    call.set(out, axes)


def _runtime_slice(call: Call, x: torch.Tensor, start: int, end: int) -> bool:
    """Whether a slice reads a parameter or buffer up to a size that may change at run time.

    A table sliced directly (``self.pos[:, :L]``, the minGPT pattern) is indexed by
    positions; so is any tensor cut at a length that equals a dimension of the model's
    inputs. The rows past the slice are unused only at the traced length.
    """
    if id(x) in call.tracer.tensors:
        return True
    return start == 0 and end in call.tracer.input_sizes


@register_op("aten.select", "aten.select_copy")
def select(call: Call) -> None:
    """Taking one index: positions before it would shift under pruning, so the axis is blocked."""
    x = call.args[0]
    d = _dim(call.args[1], x.dim())
    axes = call.axes(x)
    call.block(axes[d], "select of a fixed index")
    call.set(call.out, [a for i, a in enumerate(axes) if i != d])


@register_op("aten.index")
def index(call: Call) -> None:
    """Advanced indexing: indexed dimensions are blocked; the others pass through."""
    x, indices, out = call.args[0], list(call.args[1]), call.out
    axes = call.axes(x)
    used = [i for i, t in enumerate(indices) if t is not None]
    for i in used:
        call.block(axes[i], "indexing by tensor")
    rest = [a for i, a in enumerate(axes) if i not in used]
    n_idx = out.dim() - len(rest)
    at = used[0] if used and used == list(range(used[0], used[-1] + 1)) else 0
    kept_before = len([i for i in range(at) if i not in used])
    new_idx = [call.fresh(s, "index result") for s in out.shape[kept_before:kept_before + n_idx]]
    call.set(out, rest[:kept_before] + new_idx + rest[kept_before:])


@register_op("aten.index_select", "aten.gather", "aten.take_along_dim")
def index_select(call: Call) -> None:
    x, out = call.args[0], call.out
    d = _dim(call.args[1], x.dim())
    axes = list(call.axes(x))
    call.block(axes[d], "indexing by tensor")
    if out.dim() == x.dim():
        axes[d] = call.fresh(out.shape[d], "index result")
        if call.name == "aten.gather":
            axes = [a if out.shape[i] == x.shape[i] else call.fresh(out.shape[i])
                    for i, a in enumerate(axes)]
        call.set(out, axes)


@register_op("aten.flip", "aten.roll", "aten.cumsum", "aten.cumprod", "aten.cummax",
             "aten.cummin", "aten.sort", "aten.argsort", "aten.topk", "aten.kthvalue",
             "aten.logcumsumexp")
def positional(call: Call) -> None:
    """Operators whose result depends on positions along some dimensions: those are blocked."""
    x = call.args[0]
    axes = call.axes(x)
    dims = call.arg(1, "dims", None)
    if call.name in ("aten.flip", "aten.roll"):
        dims = call.arg(1 if call.name == "aten.flip" else 2, "dims", None)
    dims = [dims] if isinstance(dims, int) else list(dims) if dims else list(range(x.dim()))
    if call.name in ("aten.topk", "aten.kthvalue"):
        dims = [call.arg(2, "dim", -1)]
    for d in dims:
        if x.dim():
            call.block(axes[_dim(d, x.dim())], "position-dependent operator")
    for o in call.outs():
        if o.shape == x.shape:
            call.set(o, axes)


# -- reductions ----------------------------------------------------------------------------
_SUMS = {"aten.sum", "aten.nansum", "aten.any", "aten.all", "aten.count_nonzero"}
_ARG = {"aten.argmax", "aten.argmin"}


@register_op("aten.sum", "aten.nansum", "aten.mean", "aten.amax", "aten.amin", "aten.max",
             "aten.min", "aten.var", "aten.std", "aten.var_mean", "aten.std_mean",
             "aten.linalg_vector_norm", "aten.norm", "aten.logsumexp", "aten.prod", "aten.any",
             "aten.all", "aten.argmax", "aten.argmin", "aten.count_nonzero", "aten.median",
             "aten.nanmedian", "aten.mode")
def reduction(call: Call) -> None:
    """Reduced dimensions disappear; a mean/norm/max over a unit dimension is unchecked."""
    if len([t for t in call.args if isinstance(t, torch.Tensor)]) > 1:  # max.other, min.other
        pointwise(call)
        return
    x = call.args[0]
    axes = call.axes(x)
    dims = _reduced_dims(call, x)
    for d in dims:
        if call.name in _ARG or call.name in ("aten.median", "aten.nanmedian", "aten.mode"):
            call.block(axes[d], "position-dependent reduction")
        elif call.name not in _SUMS:
            call.unchecked(axes[d], f"{call.name.split('.')[-1]} over the dimension")
    for o in call.outs():
        if o.dim() == x.dim() and dims:  # keepdim
            call.set(o, [ONE if d in dims else a for d, a in enumerate(axes)])
        elif o.dim() == x.dim() - len(dims):
            call.set(o, [a for d, a in enumerate(axes) if d not in dims])


def _reduced_dims(call: Call, x: torch.Tensor) -> list[int]:
    if x.dim() == 0:
        return []
    dim = call.named("dim")
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(x.dim()))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted({_dim(d, x.dim()) for d in dims})


# -- linear algebra ---------------------------------------------------------------------------
def _head_siblings(call: Call, batch_axes: Sequence[Axis], keep: Sequence[Axis] = ()) -> None:
    """Heads are cut whole: factors split off a batch (head) axis are blocked.

    In batched matmuls over heads (B, H, T, D) the head dimension is a batch
    dimension; the head_dim that was split off with it must keep its size.
    """
    batch_leaves = {leaf for a in batch_axes for leaf in ax.leaves(a)}
    for leaf in batch_leaves:
        for group in leaf.siblings:
            for s in group:
                r = ax.find(s)
                if r not in batch_leaves and all(r is not ax.find(k) for k in keep):
                    ax.mark(r, f"head_dim of attention heads (heads are cut whole) at {call.where}")


@register_op("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.matmul",
             "aten._addmm_activation")
def matmul(call: Call) -> None:
    """(..., n, k) @ (..., k, m) -> (..., n, m): k is contracted, batch dims coupled."""
    has_bias = call.name in ("aten.addmm", "aten.baddbmm", "aten._addmm_activation")
    a, b = (call.args[1], call.args[2]) if has_bias else (call.args[0], call.args[1])
    out = call.out
    aa, ba = call.axes(a), call.axes(b)
    call.unify(aa[-1], ba[-2])
    batch = _broadcast_batch(call, out, [(a, aa[:-2]), (b, ba[:-2])])
    new = [*batch, aa[-2], ba[-1]]
    if has_bias:
        bias = call.args[0]
        for o, bias_axis in zip(new[out.dim() - bias.dim():], call.axes(bias), strict=True):
            if ax.find(bias_axis).size == ax.find(o).size:
                call.unify(o, bias_axis)
    call.set(out, new)
    if batch and a.dim() >= 3 and b.dim() >= 3:
        _head_siblings(call, batch)
        if not {id(a), id(b)} & call.tracer.tensors:  # two activations: q @ k^T
            call.block(aa[-1], "contracted dimension of a product of activations (attention "
                               "scores: head_dim usually sets the scale, read from a shape)")
    n_batch = 1
    for s in out.shape[:-2]:
        n_batch *= s
    call.macs(_macs.product(n_batch * a.shape[-2], a.shape[-1], b.shape[-1]),
              [*batch, aa[-2], aa[-1], ba[-1]])


def _broadcast_batch(call: Call, out: torch.Tensor, parts: list) -> list[Axis]:
    n = out.dim() - 2
    axes: list[Axis | None] = [None] * n
    for t, t_axes in parts:
        offset = n - len(t_axes)
        for i, a in enumerate(t_axes):
            o = i + offset
            if t.shape[i] != out.shape[o] or t.shape[i] == 1:
                continue
            if axes[o] is None:
                axes[o] = a
            else:
                call.unify(axes[o], a)
    return [a if a is not None else ONE for a in axes]


@register_op("aten.mv", "aten.addmv")
def mv(call: Call) -> None:
    has_bias = call.name == "aten.addmv"
    m, v = (call.args[1], call.args[2]) if has_bias else (call.args[0], call.args[1])
    ma, va = call.axes(m), call.axes(v)
    call.unify(ma[1], va[0])
    if has_bias and call.args[0].dim() == 1:
        call.unify(ma[0], call.axes(call.args[0])[0])
    call.set(call.out, [ma[0]])
    call.macs(m.numel(), list(ma))


@register_op("aten.dot", "aten.vdot")
def dot(call: Call) -> None:
    a, b = call.args[0], call.args[1]
    call.unify(call.axes(a)[0], call.axes(b)[0])
    call.macs(a.numel(), [call.axes(a)[0]])


@register_op("aten.linear")
def linear(call: Call) -> None:
    x, w, b = call.args[0], call.args[1], call.arg(2, "bias")
    xa, wa = call.axes(x), call.axes(w)
    call.unify(xa[-1], wa[1])
    if b is not None:
        call.unify(wa[0], call.axes(b)[0])
    call.set(call.out, [*xa[:-1], wa[0]])
    call.macs(_macs.product(x.numel() // x.shape[-1], w.shape[1], w.shape[0]),
              [*xa[:-1], wa[0], wa[1]])


def _group_split(a: Axis, groups: int, per: int) -> tuple[Axis, Axis]:
    """Channels as (groups x channels-per-group); ONE stands for a size-1 factor."""
    if groups == 1:
        return ONE, a
    if per == 1:
        return a, ONE
    g, p = ax.split_prod(a, [groups, per])
    return g, p


@register_op("aten.convolution", "aten._convolution", "aten.conv1d", "aten.conv2d",
             "aten.conv3d", "aten.mkldnn_convolution")
def convolution(call: Call) -> None:
    """Convolution, grouped and transposed: channels = groups x channels-per-group."""
    x, w, b = call.args[0], call.args[1], call.arg(2, "bias")
    transposed = bool(call.named("transposed", False))
    groups = int(call.named("groups", 1))
    out = call.out
    xa, wa = call.axes(x), call.axes(w)
    for k in wa[2:]:
        call.block(k, Reason("kernel size of a convolution", kind="kernel"))
    unbatched = x.dim() == w.dim() - 1
    c_in, n_in = (xa[0], x.shape[0]) if unbatched else (xa[1], x.shape[1])
    x_group, x_per = _group_split(c_in, groups, n_in // groups)
    if transposed:  # weight (C_in, C_out/g, k...), output channels = g x C_out/g
        call.unify(wa[0], c_in)
        out_ch = ax.prod([x_group, wa[1]])
    else:  # weight (C_out, C_in/g, k...), C_out = g x C_out/g
        call.unify(wa[1], x_per)
        w_group, _ = _group_split(wa[0], groups, w.shape[0] // groups)
        call.unify(w_group, x_group)
        out_ch = wa[0]
    if groups > 1:
        _bind_owner(call, w, "groups", x_group)
    if b is not None:
        call.unify(out_ch, call.axes(b)[0])
    spatial = [call.fresh(s, SPATIAL) for s in out.shape[-(w.dim() - 2):]]
    new = [out_ch, *spatial] if unbatched else [xa[0], out_ch, *spatial]
    call.set(out, new)
    # as torch.utils.flop_counter: batch x weight size x output (input, if transposed) positions
    n_sp = w.dim() - 2
    positions = (x if transposed else out).shape[-n_sp:]
    count = 1 if unbatched else x.shape[0]
    for s in positions:
        count *= s
    call.macs(_macs.conv(w.numel(), count), [*([] if unbatched else [xa[0]]), wa[0], wa[1]])


def _bind_owner(call: Call, t: torch.Tensor, attr: str, axis: Axis) -> None:
    """Bind ``attr`` of the module that owns parameter ``t`` (else the current module)."""

    owner = call.module
    name = _param_name(call, t)
    if name is not None:
        owner = name.rpartition(".")[0]
    call.graph.bindings.append(Binding(owner, attr, [axis]))


def _param_name(call: Call, t: torch.Tensor) -> str | None:
    axes = call.tracer.table.get(id(t))
    for name, p_axes in call.graph.param_axes.items():
        if p_axes is axes:
            return name
    return None


# -- normalization -------------------------------------------------------------------------
def _channel_norm(call: Call, x: torch.Tensor, tensors: Sequence[Any]) -> list[Axis]:
    """Per-channel (dim 1) tensors: weight, bias, running stats all equal the channel axis."""
    xa = call.axes(x)
    ch = xa[1] if x.dim() > 1 else xa[0]
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() == x.shape[1]:
            call.unify(ch, call.axes(t)[0])
    return list(xa)


@register_op("aten.native_batch_norm", "aten._native_batch_norm_legit",
             "aten._native_batch_norm_legit_no_training",
             "aten._native_batch_norm_legit_functional",
             "aten.batch_norm", "aten._batch_norm_impl_index", "aten.cudnn_batch_norm",
             "aten.miopen_batch_norm", "aten._batch_norm_with_update",
             "aten._batch_norm_no_update")
def batch_norm(call: Call) -> None:
    """Batch norm normalizes each channel on its own: everything per channel is coupled.

    With batch statistics (training mode, or weight standardization written as a batch
    norm of the reshaped weight, as timm's StdConv2d does), the statistics run over every
    other dimension: cutting units there changes them, so those dimensions are unchecked.
    """
    x = call.args[0]
    xa = _channel_norm(call, x, call.args[1:5])
    if _uses_batch_statistics(call):
        for d, a in enumerate(xa):
            if d != 1:
                call.unchecked(a, "batch norm statistics over the dimension")
    outs = call.outs()
    call.set(outs[0], xa)
    for o in outs[1:]:
        if o.dim() == 1 and x.dim() > 1 and o.numel() == x.shape[1]:
            call.set(o, [xa[1]])


def _uses_batch_statistics(call: Call) -> bool:
    """Whether a batch-norm operator normalizes with the statistics of its input."""
    if call.name.endswith(("_no_training", "_no_update")):
        return False
    if call.name.endswith("_with_update"):
        return True
    flags = [a for a in call.args[1:] if isinstance(a, bool)]  # the first is `training`
    return bool(flags and flags[0])


@register_op("aten.native_layer_norm", "aten.layer_norm")
def layer_norm(call: Call) -> None:
    """Layer norm: the normalized (last) dimensions are unchecked (statistics over them)."""
    x, shape = call.args[0], list(call.args[1])
    w, b = call.arg(2, "weight"), call.arg(3, "bias")
    xa = call.axes(x)
    k = len(shape)
    for t in (w, b):
        if isinstance(t, torch.Tensor):
            for a, ta in zip(xa[-k:], call.axes(t), strict=True):
                call.unify(a, ta)
    for a in xa[-k:]:
        call.unchecked(a, "layer norm over the dimension")
    outs = call.outs()
    call.set(outs[0], xa)
    for o in outs[1:]:
        call.set(o, [*xa[:-k], *[ONE] * k])
    _bind(call, "normalized_shape", list(xa[-k:]), as_tuple=True)


def _bind(call: Call, attr: str, axes: list[Axis], *, as_tuple: bool = False) -> None:
    """Bind ``attr`` of the current module to the kept size(s) of ``axes``."""

    call.graph.bindings.append(Binding(call.module, attr, axes, as_tuple))


@register_op("aten._fused_rms_norm", "aten.rms_norm")
def rms_norm(call: Call) -> None:
    x, shape = call.args[0], list(call.args[1])
    w = call.arg(2, "weight")
    xa = call.axes(x)
    k = len(shape)
    if isinstance(w, torch.Tensor):
        for a, ta in zip(xa[-k:], call.axes(w), strict=True):
            call.unify(a, ta)
    for a in xa[-k:]:
        call.unchecked(a, "RMS norm over the dimension")
    outs = call.outs()
    call.set(outs[0], xa)
    for o in outs[1:]:
        if o.dim() == x.dim():
            call.set(o, [*xa[:-k], *[ONE] * k])
    _bind(call, "normalized_shape", list(xa[-k:]), as_tuple=True)


@register_op("aten.native_group_norm", "aten.group_norm")
def group_norm(call: Call) -> None:
    """Group norm: channels = groups x channels-per-group; whole groups stay checkable."""
    x = call.args[0]
    native = call.name == "aten.native_group_norm"
    groups = int(call.args[6] if native else call.args[1])
    w, b = (call.arg(1, "weight"), call.arg(2, "bias")) if native else (
        call.arg(2, "weight"), call.arg(3, "bias"))
    xa = list(call.axes(x))
    g, per = _group_split(xa[1], groups, x.shape[1] // groups)
    for t in (w, b):
        if isinstance(t, torch.Tensor):
            call.unify(xa[1], call.axes(t)[0])
    call.unchecked(per, "group norm statistics within a group")
    outs = call.outs()
    call.set(outs[0], xa)
    for o in outs[1:]:
        call.set(o, [xa[0], g] if o.dim() == 2 else [call.fresh(s) for s in o.shape])
    _bind(call, "num_groups", [g])


@register_op("aten.embedding", "aten._embedding_bag", "aten.embedding_bag")
def embedding(call: Call) -> None:
    """Rows are looked up by index (blocked); the embedding dimension passes through."""
    w, idx = call.args[0], call.args[1]
    wa = call.axes(w)
    call.block(wa[0], Reason("rows looked up by index", kind="index"))
    outs = call.outs()
    if call.name == "aten.embedding":
        call.set(outs[0], [*call.axes(idx), wa[1]])
    else:
        call.set(outs[0], [call.fresh(outs[0].shape[0], "bags"), wa[1]])


# -- pooling, resampling, padding ----------------------------------------------------------
@register_op(
    "aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d", "aten.max_pool1d", "aten.max_pool2d",
    "aten.max_pool3d", "aten.max_pool2d_with_indices", "aten.max_pool3d_with_indices",
    "aten.max_pool1d_with_indices", "aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d",
    "aten.adaptive_avg_pool3d", "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d",
    "aten.adaptive_max_pool1d", "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d",
    "aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
    "aten.upsample_bilinear2d", "aten.upsample_bicubic2d", "aten.upsample_linear1d",
    "aten.upsample_trilinear3d", "aten._upsample_nearest_exact1d", "aten._upsample_nearest_exact2d",
    "aten._upsample_bilinear2d_aa", "aten._upsample_bicubic2d_aa", "aten.reflection_pad1d",
    "aten.reflection_pad2d", "aten.reflection_pad3d", "aten.replication_pad1d",
    "aten.replication_pad2d", "aten.replication_pad3d", "aten.mkldnn_max_pool2d",
    "aten.fractional_max_pool2d", "aten.lp_pool2d",
)
def spatial(call: Call) -> None:
    """Pooling/resampling/padding of the trailing spatial dimensions: channels pass through."""
    x = call.args[0]
    xa = call.axes(x)
    for o in call.outs():
        n_sp = _spatial_dims(call.name)
        keep = o.dim() - n_sp if n_sp else 0
        keep = min(keep, x.dim())
        new = list(xa[:keep]) + [call.fresh(s, SPATIAL) for s in o.shape[keep:]]
        call.set(o, new)


def _spatial_dims(name: str) -> int:
    for k in ("3d", "2d", "1d"):
        if k in name:
            return int(k[0])
    return 2


@register_op("aten.constant_pad_nd", "aten.pad")
def pad(call: Call) -> None:
    """Padded dimensions shift positions (blocked); the others pass through."""
    x, widths, out = call.args[0], list(call.args[1]), call.out
    xa = list(call.axes(x))
    for i in range(0, len(widths), 2):
        d = x.dim() - 1 - i // 2
        if widths[i] or widths[i + 1]:
            call.block(xa[d], "padding")
            xa[d] = call.fresh(out.shape[d], "padded size")
    call.set(out, xa)


@register_op("aten._pack_padded_sequence", "aten._pad_packed_sequence")
def packed_sequence(call: Call) -> None:
    """Packing/unpacking variable-length sequences: the feature (last) dimension passes."""
    x = call.args[0]
    feature = call.axes(x)[-1]
    outs = call.outs()
    call.set(outs[0], [*[call.fresh(s, "packed sequence") for s in outs[0].shape[:-1]], feature])
    for o in outs[1:]:
        call.set(o, [call.fresh(s, "packed sequence") for s in o.shape])


@register_op("aten.pixel_shuffle", "aten.pixel_unshuffle", "aten.channel_shuffle",
             "aten.native_channel_shuffle")
def channel_mixing(call: Call) -> None:
    """Operators that move channels into space or interleave them: channels are blocked."""
    x = call.args[0]
    for a in call.axes(x):
        call.block(a, "channel rearrangement")
    call.set(call.out, [call.fresh(s, "rearranged channels") for s in call.out.shape])


# -- attention -------------------------------------------------------------------------------
@register_op(
    "aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
    "aten.scaled_dot_product_attention", "aten._scaled_dot_product_attention_math",
    "aten._scaled_dot_product_fused_attention_overrideable",
)
def sdpa(call: Call) -> None:
    """softmax(q k^T) v over heads: q/k head_dim contracted, heads are batch dimensions."""
    q, k, v = call.args[0], call.args[1], call.args[2]
    qa, ka, va = call.axes(q), call.axes(k), call.axes(v)
    call.unify(qa[-1], ka[-1])
    call.unify(ka[-2], va[-2])
    if call.kwargs.get("scale") is None:
        call.block(qa[-1], "head_dim sets the attention scale 1/sqrt(head_dim)")
    for i in range(q.dim() - 3):
        call.unify(qa[i], ka[i])
        call.unify(qa[i], va[i])
    q_heads, kv_heads = q.shape[-3], k.shape[-3]
    if q_heads == kv_heads:
        call.unify(qa[-3], ka[-3])
    elif q_heads % kv_heads == 0:  # grouped-query attention: query heads = kv heads x group
        kv, per_kv = _group_split(qa[-3], kv_heads, q_heads // kv_heads)
        call.unify(kv, ka[-3])
        call.block(per_kv, "query heads per key/value head")
    call.unify(ka[-3], va[-3])
    mask = call.kwargs.get("attn_mask", call.args[3] if len(call.args) > 3 and isinstance(
        call.args[3], torch.Tensor) else None)
    if isinstance(mask, torch.Tensor):  # broadcast to (..., heads, L, S): a bias per head follows
        target = [*qa[:-1], ka[-2]]
        sizes = [*q.shape[:-1], k.shape[-2]]
        for i, a in enumerate(call.axes(mask)):
            o = len(target) - mask.dim() + i
            if o >= 0 and mask.shape[i] == sizes[o] and sizes[o] > 1:
                call.unify(a, target[o])
    outs = call.outs()
    call.set(outs[0], [*qa[:-1], va[-1]])
    for o in outs[1:]:
        if o.dim() >= 3 and tuple(o.shape[:-1]) == tuple(q.shape[:-1]):
            call.set(o, list(qa[:-1]))
    _head_siblings(call, [*qa[:-2]])
    scores, weighted = _macs.attention(q.numel() // q.shape[-1], k.shape[-2], q.shape[-1],
                                       v.shape[-1])
    call.macs(scores, [*qa[:-1], ka[-2], qa[-1]])
    call.macs(weighted, [*qa[:-1], ka[-2], va[-1]])


# -- module rules ------------------------------------------------------------------------------
@register_module("torch.nn.modules.activation.MultiheadAttention")
def multihead_attention(call: ModuleCall) -> None:
    """nn.MultiheadAttention: its inner width equals embed_dim, so heads cut the embedding.

    ``head_dim = embed_dim // num_heads`` is computed from the input, so the
    embedding axis is heads x head_dim; heads are cut whole (head_dim blocked).
    """
    m = call.mod
    q, k, v = call.kwargs["query"], call.kwargs["key"], call.kwargs["value"]
    qa, ka, va = call.axes(q), call.axes(k), call.axes(v)
    e = qa[-1]
    heads, head_dim = _group_split(e, m.num_heads, m.embed_dim // m.num_heads)
    call.block(head_dim, "head_dim of nn.MultiheadAttention (heads are cut whole)")
    ow = call.axes(m.out_proj.weight)
    ob = call.axes(m.out_proj.bias) if m.out_proj.bias is not None else None
    call.unify(ow[0], e)
    call.unify(ow[1], e)
    if ob is not None:
        call.unify(ob[0], e)
    if m._qkv_same_embed_dim:
        w = call.axes(m.in_proj_weight)
        three = ax.split_prod(w[0], [3, m.embed_dim])
        call.block(three[0], "q/k/v packed in in_proj_weight")
        call.unify(three[1], e)
        call.unify(w[1], e)
        call.unify(ka[-1], e)
        call.unify(va[-1], e)
    else:
        for local, x_axes in (("q_proj_weight", qa), ("k_proj_weight", ka), ("v_proj_weight", va)):
            w = call.axes(getattr(m, local))
            call.unify(w[0], e)
            call.unify(w[1], x_axes[-1])
    if m.in_proj_bias is not None:
        bias = call.axes(m.in_proj_bias)[0]
        three = ax.split_prod(bias, [3, m.embed_dim])
        call.block(three[0], "q/k/v packed in in_proj_bias")
        call.unify(three[1], e)
    for local in ("bias_k", "bias_v"):
        t = getattr(m, local)
        if t is not None:
            call.unify(call.axes(t)[-1], e)
    for t in (call.kwargs.get("attn_mask"), call.kwargs.get("key_padding_mask")):
        if isinstance(t, torch.Tensor):
            for a in call.axes(t):
                call.block(a, "attention mask")
    _bind(call, "num_heads", [heads])
    out, weights = call.out
    call.set(out, qa)
    if isinstance(weights, torch.Tensor):
        call.set(weights, [call.fresh(s, "attention weights") for s in weights.shape])
    _mha_macs(call, q, k, v, e)


def _mha_macs(call: ModuleCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              e: Axis) -> None:
    """Projections (q, k, v, out) and the two attention products, scaling with embed_dim."""
    tq, tk = q.numel() // q.shape[-1], k.numel() // k.shape[-1]
    ka, va = call.axes(k)[-1], call.axes(v)[-1]
    width = q.shape[-1]
    call.macs(2 * _macs.product(tq, width, width), [e, e])  # q and out projections
    call.macs(_macs.product(tk, k.shape[-1], width), [e, ka])
    call.macs(_macs.product(tk, v.shape[-1], width), [e, va])
    batch = q.shape[1] if q.dim() == 3 and not call.mod.batch_first else (
        q.shape[0] if q.dim() == 3 else 1)
    call.macs(sum(_macs.attention(tq, tk // max(1, batch), width, width)), [e])


@register_module("torch.nn.modules.rnn.RNNBase")
def rnn(call: ModuleCall) -> None:
    """LSTM/GRU/RNN: hidden units span the gate chunks; all layers share ``hidden_size``.

    Every layer and direction keeps the same units (the module has one
    ``hidden_size``); a bidirectional layer's output is [forward | reverse].
    """
    m = call.mod
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    hidden = ax.Axis(m.hidden_size)
    proj = ax.Axis(m.proj_size) if m.proj_size > 0 else None
    out_unit = proj if proj is not None else hidden
    dirs = 2 if m.bidirectional else 1
    x = call.kwargs["input"]
    x_data = x.data if type(x).__name__ == "PackedSequence" else x
    x_feat = call.axes(x_data)[-1]
    layer_in = x_feat
    for layer in range(m.num_layers):
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            _rnn_layer(call, sfx, gates, hidden, out_unit, layer_in, proj is not None)
        layer_in = ax.cat([out_unit] * dirs) if dirs > 1 else out_unit
    seq = call.out[0]
    seq_data = seq.data if type(seq).__name__ == "PackedSequence" else seq
    call.set(seq_data, [*[call.fresh(s, "sequence/batch") for s in seq_data.shape[:-1]],
                        layer_in])
    units = [out_unit, hidden] if m.mode == "LSTM" else [out_unit]
    for states in (call.kwargs.get("hx"), call.out[1]):
        states = list(states) if isinstance(states, (tuple, list)) else [states]
        for t, unit in zip(states, units, strict=False):
            if isinstance(t, torch.Tensor):
                call.set(t, [*[call.fresh(s, "layers/batch") for s in t.shape[:-1]], unit])
    _bind(call, "hidden_size", [hidden])
    if proj is not None:
        _bind(call, "proj_size", [proj])
    _bind(call, "input_size", [x_feat])
    steps = seq_data.numel() // max(1, seq_data.shape[-1])
    call.macs(_macs.product(steps, gates * m.hidden_size, m.input_size + m.hidden_size) * dirs,
              [hidden, x_feat])


def _rnn_layer(call: ModuleCall, sfx: str, gates: int, hidden: Axis, out_unit: Axis,
               layer_in: Axis, has_proj: bool) -> None:
    m = call.mod
    w_ih, w_hh = call.axes(getattr(m, "weight_ih" + sfx)), call.axes(getattr(m, "weight_hh" + sfx))
    for w in (w_ih, w_hh):
        gate, unit = ax.split_prod(w[0], [gates, m.hidden_size]) if gates > 1 else (ONE, w[0])
        call.block(gate, "gate chunks of an RNN")
        call.unify(unit, hidden)
    call.unify(w_ih[1], layer_in)
    call.unify(w_hh[1], out_unit)
    for local in ("bias_ih" + sfx, "bias_hh" + sfx):
        b = getattr(m, local, None)
        if b is not None:
            gate, unit = ax.split_prod(call.axes(b)[0], [gates, m.hidden_size]) if gates > 1 \
                else (ONE, call.axes(b)[0])
            call.block(gate, "gate chunks of an RNN")
            call.unify(unit, hidden)
    if has_proj:
        w_hr = call.axes(getattr(m, "weight_hr" + sfx))
        call.unify(w_hr[0], out_unit)
        call.unify(w_hr[1], hidden)
