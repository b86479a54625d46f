"""Cost of a network: parameters, non-zeros, multiply-accumulates, latency, bytes.

None of these functions changes the model: train/eval flags, the thread count
and global backend switches are restored, gradients are never computed.

MACs are counted at the ATen operator level with a ``TorchDispatchMode``, so any
model that runs in PyTorch is counted without per-module code: a table of
formulas (``mac_rules``) maps operators such as ``aten.convolution`` or
``aten.addmm`` to their multiply-accumulates. One MAC is one multiply and one add;
FLOPs are ``2 * MACs``.
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from .. import _macs
from .._calls import eval_mode as _eval_mode
from .._calls import run_model, to_meta
from .._registry import Registry
from ..errors import ConfigError
from .sparse_io import encodings

# A term of an operator's cost: (MACs, operands that may be a weight). Every element
# of such an operand takes part in the same number of MACs, so a zero weight removes
# exactly MACs / numel of them.
Term = tuple[int, tuple[torch.Tensor, ...]]
MacRule = Callable[[dict[str, Any], Any], list[Term]]

mac_rules: Registry[MacRule] = Registry("MAC rule")

# Operators whose output holds the same values as an input: a weight stays a weight.
_PASSTHROUGH = frozenset(
    f"aten.{n}"
    for n in (
        "clone", "_to_copy", "contiguous", "_unsafe_view", "detach", "lift_fresh",
        "lift_fresh_copy", "alias_copy", "view_copy", "t_copy", "transpose_copy",
        "permute_copy", "expand_copy", "reshape", "_reshape_alias",
    )
)


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass.

    Attributes:
        dense: All MACs, zero weights included.
        effective: MACs whose weight operand is non-zero (equal to ``dense`` for
            operators without a weight, such as attention's ``q @ k^T``).
        per_module: Qualified module name (``""`` for the model itself) to
            ``(dense, effective)``, charged to the innermost module that ran the op.
        per_op: ATen operator (``"aten.addmm"``) to ``(dense, effective)``.
    """

    dense: int
    effective: int
    per_module: dict[str, tuple[int, int]] = field(default_factory=dict)
    per_op: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """Dense floating-point operations, ``2 * dense``."""
        return 2 * self.dense


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock time of one forward pass over ``runs`` timed repetitions, in ms."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int
    batch_size: int | None


def count_params(model: nn.Module) -> int:
    """Number of parameter elements; a Parameter shared by several modules counts once.

    Example:
        >>> count_params(nn.Linear(4, 3))
        15
    """
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Number of non-zero parameter elements (shared Parameters count once).

    Raises:
        ConfigError: The model is on the meta device, so its weights have no values.
    """
    params = list(model.parameters())
    if any(p.is_meta for p in params):
        raise ConfigError(
            "the model is on the meta device and its weights have no values; "
            "count non-zeros on a model with real weights"
        )
    return sum(int(torch.count_nonzero(p.detach())) for p in params)


def count_macs(model: nn.Module, example_inputs: Any) -> MacCount:
    """Count the multiply-accumulates of one forward pass, dense and effective.

    The model runs once in eval mode under ``torch.no_grad``; every ATen operator
    with a formula in ``mac_rules`` (matrix products, convolutions including grouped
    and transposed ones, fused oneDNN RNN layers, fused attention) is counted. Fused
    multi-head-attention fast paths are switched off while counting so that their
    arithmetic shows up as ordinary matrix products. Effective MACs scale each
    operator's MACs by the non-zero fraction of its weight operand (a model
    Parameter or a view or copy of one), which is exact for unstructured sparsity.
    A model on the meta device is counted too (inputs are moved to meta); its
    weights have no values there, so ``effective == dense``.

    Args:
        model: Any ``nn.Module``; it is left exactly as it was.
        example_inputs: A tensor, a tuple of positional inputs, or a dict of keyword
            inputs. MACs scale with their batch size.

    Returns:
        A :class:`MacCount`.

    Example:
        >>> count_macs(nn.Linear(4, 3), torch.randn(2, 4)).dense
        24
    """
    inputs = _inputs_for(model, example_inputs)
    counter = _MacCounter(model)
    with _eval_mode(model), _no_fastpath(), torch.no_grad(), counter.module_scope(), counter:
        run_model(model, inputs)
    return counter.result()


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 20,
) -> LatencyStats:
    """Time forward passes of ``model`` on ``example_inputs`` (eval mode, inference mode).

    ``torch.set_num_threads(threads)`` holds while timing and the previous count is
    restored afterwards. Report the median: it shrugs off the odd slow run that a
    shared machine produces. Use at least the default 20 runs for numbers you publish.

    Args:
        model: The network; its train/eval flags are restored afterwards.
        example_inputs: A tensor, a tuple of positional inputs, or a dict of keyword inputs.
        threads: Intra-op threads while timing (at least 1).
        warmup: Untimed passes first (caches, allocator, oneDNN kernels).
        runs: Timed passes (at least 1).

    Returns:
        A :class:`LatencyStats` in milliseconds.

    Raises:
        ConfigError: ``threads`` or ``runs`` below 1, ``warmup`` negative, or a meta model.

    Example:
        >>> stats = measure_latency(model, torch.randn(1, 1, 28, 28), threads=1)
        >>> stats.median_ms, stats.p90_ms
    """
    _check_latency_args(model, threads=threads, warmup=warmup, runs=runs)
    sync = _synchronizer(model)
    times = []
    with _num_threads(threads), _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            run_model(model, example_inputs)
        for _ in range(runs):
            sync()
            start = time.perf_counter()
            run_model(model, example_inputs)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    ms = np.asarray(times)
    return LatencyStats(
        median_ms=float(np.median(ms)), mean_ms=float(ms.mean()),
        min_ms=float(ms.min()), max_ms=float(ms.max()),
        p10_ms=float(np.percentile(ms, 10)), p90_ms=float(np.percentile(ms, 90)),
        runs=runs, threads=threads, batch_size=_batch_size(example_inputs),
    )


@dataclass(frozen=True)
class LatencyComparison:
    """Two networks timed together: both warmed, their runs interleaved.

    Attributes:
        before: latency of the first network (all rounds' runs together).
        after: latency of the second.
        speedup: ``before.median_ms / after.median_ms``.
        spread: how noisy the figures are: the larger of the two relative spreads
            ``(p90 - p10) / median``; quote it next to the speed-up.
        macs_ratio: dense MACs before / after (what the hardware really computes; masked
            zeros still cost), or ``None`` when not counted.
        unexplained: the speed-up is larger than the MACs can explain, even allowing for
            the spread: a warm-up, a cache or a measurement artifact, not the pruning.
    """

    before: LatencyStats
    after: LatencyStats
    speedup: float
    spread: float
    macs_ratio: float | None
    unexplained: bool

    def __str__(self) -> str:
        text = (f"{self.before.median_ms:.3g} ms -> {self.after.median_ms:.3g} ms "
                f"({self.speedup:.2f}x, spread +-{100 * self.spread:.0f}%)")
        if self.unexplained:
            text += (f"; the MACs explain at most {self.macs_ratio:.2f}x: treat this speed-up "
                     "as a measurement artifact")
        return text


def unexplained_speedup(speedup: float, macs_ratio: float | None, spread: float) -> bool:
    """Whether a speed-up exceeds what the ratio of dense MACs allows.

    Latency seldom falls faster than compute: a network doing ``r`` times fewer MACs is
    at most about ``r`` times faster. A quarter of slack and the measured spread are
    allowed on top; past that the figure says more about the measurement than the model.
    """
    if macs_ratio is None:
        return False
    return speedup > max(macs_ratio, 1.0) * 1.25 * (1.0 + spread)


def compare_latency(
    before: nn.Module,
    after: nn.Module,
    example_inputs: Any,
    *,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 20,
    rounds: int = 5,
    count: bool = True,
) -> LatencyComparison:
    """Time two networks fairly: both warmed first, then ``rounds`` rounds that alternate
    which goes first, ``runs // rounds`` timed passes each per round.

    Timing one network after the other charges the process's warm-up (allocator, oneDNN
    kernels: tens of ms) and any slow spell of a shared machine to one side only; a
    masked network whose shapes did not change once showed a "160x" speed-up that way.

    Args:
        before: e.g. the dense network.
        after: e.g. the pruned one.
        example_inputs: inputs for both.
        threads: intra-op threads while timing.
        warmup: untimed passes of each network before any timing.
        runs: timed passes of each network in all.
        rounds: interleaved rounds.
        count: count dense MACs of both to flag a speed-up they cannot explain.

    Returns:
        A :class:`LatencyComparison`.

    Example:
        >>> cmp = compare_latency(dense, pruned, torch.randn(64, 3, 32, 32))
        >>> print(cmp)  # 12.1 ms -> 6.3 ms (1.92x, spread +-4%)
    """
    _check_latency_args(before, threads=threads, warmup=warmup, runs=runs)
    _check_latency_args(after, threads=threads, warmup=warmup, runs=runs)
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    nets = {"before": before, "after": after}
    times: dict[str, list[float]] = {"before": [], "after": []}
    with _num_threads(threads), _eval_mode(before), _eval_mode(after), torch.inference_mode():
        for net in nets.values():
            for _ in range(warmup):
                run_model(net, example_inputs)
        for r, n in enumerate(per_round):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for key in order:
                times[key] += _timed(nets[key], example_inputs, n)
    stats = {k: _stats(v, threads, example_inputs) for k, v in times.items()}
    speedup = stats["before"].median_ms / max(stats["after"].median_ms, 1e-12)
    spread = max((s.p90_ms - s.p10_ms) / max(s.median_ms, 1e-12) for s in stats.values())
    ratio = None
    if count:
        dense = [count_macs(net, example_inputs).dense for net in (before, after)]
        ratio = dense[0] / dense[1] if dense[1] else None
    return LatencyComparison(stats["before"], stats["after"], speedup, spread, ratio,
                             unexplained_speedup(speedup, ratio, spread))


def _timed(model: nn.Module, inputs: Any, n: int) -> list[float]:
    sync = _synchronizer(model)
    out = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        run_model(model, inputs)
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def _stats(times: list[float], threads: int, inputs: Any) -> LatencyStats:
    ms = np.asarray(times)
    return LatencyStats(
        median_ms=float(np.median(ms)), mean_ms=float(ms.mean()),
        min_ms=float(ms.min()), max_ms=float(ms.max()),
        p10_ms=float(np.percentile(ms, 10)), p90_ms=float(np.percentile(ms, 90)),
        runs=len(times), threads=threads, batch_size=_batch_size(inputs),
    )


def size_bytes(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], *, encoding: str = "dense"
) -> int:
    """Bytes of the weights as a file: the length of their real serialization.

    A model is measured through its ``state_dict()``: parameters and persistent
    buffers (batch-norm statistics, and masks if the model still carries them;
    ``bake`` it first to measure only the weights). Tied tensors are stored once.

    Args:
        model_or_state_dict: A module or a name-to-tensor mapping.
        encoding: ``"dense"`` (plain safetensors) or ``"sparse"`` (the bitmask
            encoding of :func:`prunekit.measure.save_sparse`).

    Returns:
        The number of bytes the file would have, header included.

    Example:
        >>> nbytes = size_bytes(nn.Linear(4, 3))  # 15 float32 values plus a small header
    """
    encode = encodings.get(encoding)
    state = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    return len(encode(state))


def measure_cost(
    model: nn.Module,
    example_input: Any,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 2,
    runs: int = 20,
) -> dict[str, float | int]:
    """Every cost number of a model in one flat dict, for reports and ``metrics.json``.

    ``example_input`` is one example with a batch dimension of 1, or a batch: it is
    repeated or cut along dimension 0 to make each batch size (every tensor of a
    tuple or dict likewise).

    Args:
        model: The network; it is left as it was.
        example_input: A tensor, a tuple of tensors, or a dict of keyword tensors.
        batch_sizes: Batch sizes to time; batch 1 is always timed.
        threads: Intra-op threads while timing.
        runs: Timed passes per batch size (median reported).

    Returns:
        ``params``, ``nonzero_params``, ``macs`` and ``effective_macs`` (for one
        example), ``latency_ms`` (median at batch 1), ``latency_ms_batch<N>`` for
        every other batch size, ``threads``, ``size_bytes`` (dense safetensors of the
        state dict: parameters and persistent buffers) and ``sparse_size_bytes``
        (the same state dict in the sparse encoding).

    Example:
        >>> cost = measure_cost(model, torch.randn(1, 1, 28, 28), batch_sizes=(1, 32))
        >>> cost["macs"], cost["latency_ms"], cost["latency_ms_batch32"]
    """
    sizes = _check_batch_sizes(batch_sizes)
    one = resize_batch(example_input, 1)
    macs = count_macs(model, one)
    out: dict[str, float | int] = {
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "macs": macs.dense,
        "effective_macs": macs.effective,
        "latency_ms": measure_latency(model, one, threads=threads, runs=runs).median_ms,
    }
    for n in sizes:
        batch = resize_batch(example_input, n)
        stats = measure_latency(model, batch, threads=threads, runs=runs)
        out[f"latency_ms_batch{n}"] = stats.median_ms
    out["threads"] = threads
    out["size_bytes"] = size_bytes(model, encoding="dense")
    out["sparse_size_bytes"] = size_bytes(model, encoding="sparse")
    return out


def resize_batch(example_inputs: Any, n: int) -> Any:
    """The inputs with every tensor's dim 0 cut or cyclically repeated to length ``n``.

    Example:
        >>> resize_batch(torch.arange(3).reshape(3, 1), 5).flatten().tolist()
        [0, 1, 2, 0, 1]
    """

    def resize(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] == 0:
            return t
        idx = torch.arange(n, device=t.device) % t.shape[0]  # (n,)
        return t.index_select(0, idx)

    return tree_map(resize, example_inputs)


# --- MAC formulas ----------------------------------------------------------------


def _product_rule(left: str, right: str) -> MacRule:
    """Matrix, batched-matrix, matrix-vector and vector products: numel(left) x cols."""

    def rule(args: dict[str, Any], out: Any) -> list[Term]:
        x, y = args[left], args[right]
        cols = y.shape[-1] if y.dim() >= 2 else 1
        inner = x.shape[-1] if x.dim() else 1
        return [(_macs.product(x.numel() // max(1, inner), inner, cols), (x, y))]

    return rule


for _op, _left, _right in (
    ("mm", "self", "mat2"),
    ("bmm", "self", "mat2"),
    ("addmm", "mat1", "mat2"),
    ("addmm_", "mat1", "mat2"),
    ("_addmm_activation", "mat1", "mat2"),
    ("baddbmm", "batch1", "batch2"),
    ("baddbmm_", "batch1", "batch2"),
    ("addbmm", "batch1", "batch2"),
    ("mv", "self", "vec"),
    ("addmv", "mat", "vec"),
    ("addmv_", "mat", "vec"),
    ("dot", "self", "tensor"),
    ("vdot", "self", "other"),
):
    mac_rules.register(f"aten.{_op}")(_product_rule(_left, _right))


@mac_rules.register("aten.convolution")
@mac_rules.register("aten._convolution")
@mac_rules.register("aten.convolution_overrideable")
def _convolution(args: dict[str, Any], out: torch.Tensor) -> list[Term]:
    """Each weight element meets every (batch, position) of the output, or of the input
    for a transposed convolution; grouping is already in the weight's shape
    ``(C_out, C_in / groups, *kernel)`` (transposed: ``(C_in, C_out / groups, *kernel)``).
    """
    weight = args["weight"]
    source = args["input"] if args.get("transposed", False) else out
    channel_dim = source.dim() - (weight.dim() - 2) - 1
    positions = source.numel() // source.shape[channel_dim]  # batch x spatial
    return [(_macs.conv(weight.numel(), positions), (weight,))]


@mac_rules.register("aten.mkldnn_rnn_layer")
def _mkldnn_rnn_layer(args: dict[str, Any], out: Any) -> list[Term]:
    """oneDNN's fused RNN/LSTM/GRU layer (what ``nn.LSTM`` runs on the CPU): every
    time step multiplies the input by ``weight0`` (W_ih) and the hidden state by
    ``weight1`` (W_hh); gate arithmetic is elementwise and not counted."""
    x, w_ih, w_hh = args["input"], args["weight0"], args["weight1"]
    steps = x.numel() // x.shape[-1]  # time x batch (or packed rows)
    return [(_macs.product(steps, *w.shape), (w,)) for w in (w_ih, w_hh)]


@mac_rules.register("aten._scaled_dot_product_flash_attention_for_cpu")
@mac_rules.register("aten._scaled_dot_product_flash_attention")
@mac_rules.register("aten._scaled_dot_product_efficient_attention")
@mac_rules.register("aten._scaled_dot_product_cudnn_attention")
def _attention(args: dict[str, Any], out: Any) -> list[Term]:
    """Fused attention: ``q @ k^T`` then ``scores @ v``; q (..., Lq, E), k (..., Lk, E),
    v (..., Lk, Ev); masking and causality are ignored, as for the dense matmuls."""
    q, k, v = args["query"], args["key"], args["value"]
    rows = q.numel() // q.shape[-1]  # batch x heads x Lq
    return [(sum(_macs.attention(rows, k.shape[-2], q.shape[-1], v.shape[-1])), ())]


# --- counting machinery ------------------------------------------------------------


class _MacCounter(TorchDispatchMode):
    """Dispatch mode that applies ``mac_rules`` and tracks which tensors are weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.weights: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for name, p in model.named_parameters():
            self.weights[p] = name
        self.stack: list[str] = []
        self.per_module: dict[str, list[int]] = {}
        self.per_op: dict[str, list[int]] = {}

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = str(func.overloadpacket)
        if op in mac_rules:
            for macs, operands in mac_rules.get(op)(_bind(func, args, kwargs), out):
                self._add(op, macs, self._effective(macs, operands))
        elif func.is_view or op in _PASSTHROUGH:
            self._propagate((args, kwargs), out)
        return out

    def _effective(self, macs: int, operands: tuple[torch.Tensor, ...]) -> int:
        """MACs that meet a non-zero element of the first operand that is a weight."""
        for t in operands:
            if isinstance(t, torch.Tensor) and t in self.weights:
                if t.is_meta or t.numel() == 0:
                    return macs
                return macs * int(torch.count_nonzero(t)) // t.numel()
        return macs

    def _propagate(self, inputs: Any, out: Any) -> None:
        """Mark the outputs of a view or copy of a weight as that weight."""
        name = next(
            (self.weights[t] for t in tree_leaves(inputs)
             if isinstance(t, torch.Tensor) and t in self.weights),
            None,
        )
        if name is not None:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.weights[t] = name

    def _add(self, op: str, dense: int, effective: int) -> None:
        module = self.stack[-1] if self.stack else ""
        for table, key in ((self.per_module, module), (self.per_op, op)):
            entry = table.setdefault(key, [0, 0])
            entry[0] += dense
            entry[1] += effective

    @contextlib.contextmanager
    def module_scope(self) -> Iterator[None]:
        """Hooks that keep ``self.stack`` = the qualified names of the running modules."""
        handles = []
        for name, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(name)))
            handles.append(module.register_forward_hook(self._leave, always_call=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.stack.append(name)

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def result(self) -> MacCount:
        dense = sum(d for d, _ in self.per_op.values())
        effective = sum(e for _, e in self.per_op.values())
        return MacCount(
            dense=dense,
            effective=effective,
            per_module={k: (d, e) for k, (d, e) in self.per_module.items()},
            per_op={k: (d, e) for k, (d, e) in self.per_op.items()},
        )


def _bind(func: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Operator arguments by their schema names."""
    names = [a.name for a in func._schema.arguments]
    named = dict(zip(names[: len(args)], args, strict=True))
    named.update(kwargs)
    return named


# --- helpers -----------------------------------------------------------------------


def _is_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _inputs_for(model: nn.Module, inputs: Any) -> Any:
    """Inputs moved to the meta device when the model lives there."""
    return to_meta(inputs) if _is_meta(model) else inputs


@contextlib.contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _no_fastpath() -> Iterator[None]:
    """Switch off nn.MultiheadAttention / TransformerEncoderLayer fused fast paths."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _synchronizer(model: nn.Module) -> Callable[[], None]:
    """A function that waits for queued GPU work, or does nothing on the CPU."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    cuda = [d for d in devices if d.type == "cuda"]
    if cuda:
        return lambda: torch.cuda.synchronize(cuda[0])
    return lambda: None


def _batch_size(inputs: Any) -> int | None:
    for t in tree_leaves(inputs):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return None


def _check_latency_args(model: nn.Module, *, threads: int, warmup: int, runs: int) -> None:
    if runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}; the default is 20")
    if warmup < 0:
        raise ConfigError(f"warmup must be 0 or more, got {warmup}")
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if _is_meta(model):
        raise ConfigError(
            "the model is on the meta device and cannot run; time a model with real weights"
        )


def _check_batch_sizes(batch_sizes: Sequence[int]) -> list[int]:
    """The batch sizes other than 1, validated and in order, without repeats."""
    ok = all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
             for n in batch_sizes)
    if not ok:
        raise ConfigError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    return list(dict.fromkeys(int(n) for n in batch_sizes if n != 1))
