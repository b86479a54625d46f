"""ONNX export of (pruned) networks, checked in onnxruntime before the file is written.

:func:`export_onnx` exports with PyTorch's exporter (``torch.onnx.export``, the
``torch.export``-based path), loads the result in onnxruntime, runs it on the
example inputs and compares every output with PyTorch's relative to that output's
scale: ``max|ort - torch| <= rtol * max|torch| + atol``. Only a file that passes is
written, atomically. :func:`quantize_onnx` adds onnxruntime's dynamic int8
(``MatMul`` / ``Gemm`` weights), the better int8 path for transformer encoders on a
CPU; :func:`onnx_latency` times an ONNX file in onnxruntime next to
:func:`prunekit.measure.measure_latency` for the PyTorch model.

Example:
    >>> import prunekit as pk
    >>> report = pk.export_onnx(model, torch.randn(1, 3, 224, 224), "model.onnx")
    >>> report.max_abs_diff, report.tolerance
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .._io import load_safetensors, write_bytes
from ..errors import ConfigError, DataError
from ..mask import bake, masked_params
from .pruned import load_pruned


@dataclass(frozen=True)
class OnnxReport:
    """What :func:`export_onnx` wrote and how well onnxruntime matches PyTorch.

    Attributes:
        path: The ONNX file.
        size_bytes: Its size on disk.
        input_names: ONNX graph inputs, in order.
        output_names: ONNX graph outputs, in order (PyTorch's outputs flattened).
        max_abs_diff: Largest absolute difference over all outputs.
        max_rel_diff: Largest of ``max|ort - torch| / max|torch|`` over the outputs.
        tolerance: The relative tolerance ``rtol`` the check used (``atol`` beside it).
        opset: The ONNX opset of the file.
    """

    path: Path
    size_bytes: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    opset: int


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    check: bool = True,
) -> OnnxReport:
    """Export ``model`` to ONNX, check it in onnxruntime, then write ``path`` atomically.

    The model is exported in eval mode (its train/eval flags are restored); weight
    masks are baked into a copy first, the model itself is not changed.

    Args:
        model: A CPU float model: a plain network, a structured-pruned one (an
            ordinary smaller module), or a torchvision / timm / Hugging Face model.
        example_inputs: A tensor, a tuple of positional tensors, or a dict of keyword
            tensors (``{"input_ids": ..., "attention_mask": ...}`` for a HF encoder).
            Their names become the ONNX input names (``input``, ``input_1`` for
            positional ones).
        path: The ``.onnx`` file to write.
        opset: ONNX opset version.
        dynamic_batch: Export dimension 0 of every input as a symbolic batch size.
        rtol: Relative tolerance of the check, against each output's largest magnitude.
        atol: Absolute tolerance added to it (outputs that are all near zero).
        check: Run the onnxruntime check (needs ``onnxruntime``); without it the
            report's differences are NaN.

    Returns:
        An :class:`OnnxReport`.

    Raises:
        ConfigError: onnx / onnxscript / onnxruntime is missing, the path does not end
            in ``.onnx``, the model does not export (the exporter's first line is
            quoted), or onnxruntime's outputs differ from PyTorch's beyond the
            tolerance. Nothing is written then.
    """
    _check_args(model, path, rtol=rtol, atol=atol)
    args, kwargs = _split_inputs(example_inputs)
    work = _exportable(model)
    with _eval(work), torch.no_grad():
        expected = [
            t.detach().cpu() for t in tree_leaves(work(*args, **kwargs)) if torch.is_tensor(t)
        ]
        data = _export_bytes(work, args, kwargs, opset=opset, dynamic_batch=dynamic_batch)
    names, outputs = _session_io(data) if check else ((), ())
    abs_diff, rel_diff = (float("nan"),) * 2
    if check:
        actual = run_onnx(data, example_inputs)
        abs_diff, rel_diff = _compare(expected, actual, outputs, rtol=rtol, atol=atol)
    write_bytes(path, data)
    return OnnxReport(
        path=Path(path),
        size_bytes=Path(path).stat().st_size,
        input_names=tuple(names),
        output_names=tuple(outputs),
        max_abs_diff=abs_diff,
        max_rel_diff=rel_diff,
        tolerance=rtol,
        opset=opset,
    )


def run_onnx(
    model: bytes | str | os.PathLike[str], inputs: Any, *, threads: int = 0
) -> list[np.ndarray]:
    """Run an ONNX model (bytes or file) in onnxruntime on PyTorch-style ``inputs``.

    Inputs are matched to the graph's inputs by name for a dict, by position otherwise.
    """
    session = _session(model, threads=threads)
    return session.run(None, _feed(session, inputs))


def onnx_latency(
    model: bytes | str | os.PathLike[str],
    inputs: Any,
    *,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 20,
) -> float:
    """Median wall-clock ms of one onnxruntime run on ``inputs`` (``threads`` intra-op threads).

    The counterpart of :func:`prunekit.measure.measure_latency` (same warm-up and
    median), so the two can be put side by side.
    """
    if threads < 1 or runs < 1 or warmup < 0:
        raise ConfigError("threads and runs must be at least 1 and warmup at least 0")
    session = _session(model, threads=threads)
    feed = _feed(session, inputs)
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def quantize_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    op_types: Sequence[str] = ("MatMul", "Gemm"),
    per_channel: bool = True,
) -> int:
    """onnxruntime dynamic int8 of an ONNX file's ``op_types`` weights; returns ``dst``'s bytes.

    Dynamic int8 of MatMul/Gemm (transformer encoders, MLP heads) is what
    onnxruntime runs fastest on x86 CPUs; convolutions are left in float by default
    (``ConvInteger`` is slower than float Conv there). ``dst`` is written atomically.

    Raises:
        ConfigError: onnxruntime is missing or ``src`` is not a readable ONNX file.
    """
    quantization = _import("onnxruntime.quantization", "onnxruntime")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConfigError(f"ONNX file {src} does not exist; export it first with export_onnx")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with _quiet():
            quantization.quantize_dynamic(
                src,
                tmp,
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                weight_type=quantization.QuantType.QInt8,
            )
        write_bytes(dst, tmp.read_bytes())
    except Exception as exc:  # onnxruntime raises plain Exceptions for bad graphs
        raise ConfigError(
            f"onnxruntime could not quantize {src}: {str(exc).splitlines()[0][:200]}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dst.stat().st_size


def export_run(
    run_dir: str | os.PathLike[str],
    *,
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> OnnxReport:
    """Export the pruned model of a ``prunekit run`` folder to ONNX.

    The folder holds ``pruned.safetensors`` and, for a structured run, ``plan.json``;
    ``model`` is a freshly built instance of the recipe's network (the caller builds
    it, as ``prunekit export RUN_DIR --format onnx`` does from ``recipe.yaml``). The
    plan is replayed on it, the weights are loaded, and :func:`export_onnx` writes
    ``path`` (default ``RUN_DIR/pruned.onnx``).

    Raises:
        ConfigError: The folder has no pruned weights, or they do not fit ``model``.
    """

    run_dir = Path(run_dir)
    weights = run_dir / "pruned.safetensors"
    if not weights.is_file():
        raise ConfigError(
            f"{run_dir} has no pruned.safetensors; pass the output folder of a finished "
            "`prunekit run`"
        )
    plan = run_dir / "plan.json"
    if plan.is_file():
        load_pruned(model, plan, weights)
    else:
        _load_plain(model, weights)
    return export_onnx(model, example_inputs, path or run_dir / "pruned.onnx", **options)


# --- helpers ---------------------------------------------------------------------------


def _check_args(model: Any, path: Any, *, rtol: float, atol: float) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    if Path(path).suffix != ".onnx":
        raise ConfigError(f"ONNX path {os.fspath(path)!r} should end in .onnx")
    if not (rtol >= 0 and atol >= 0):
        raise ConfigError(f"rtol and atol must be non-negative, got {rtol} and {atol}")
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    if devices - {"cpu"}:
        raise ConfigError(f"the model is on {sorted(devices)}; call model.cpu() before exporting")


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise ConfigError(
        f"example_inputs is a {type(example_inputs).__name__}; pass a tensor, a tuple of "
        "tensors or a dict of keyword tensors"
    )


def _exportable(model: nn.Module) -> nn.Module:
    """The model, or a copy with its masks baked when it carries prunekit masks."""

    if next(masked_params(model), None) is None:
        return model
    return bake(copy.deepcopy(model))


def _export_bytes(
    model: nn.Module, args: tuple, kwargs: dict, *, opset: int, dynamic_batch: bool
) -> bytes:
    _import("onnx", "onnx")
    _import("onnxscript", "onnxscript")
    dynamic = _dynamic_shapes(args, kwargs) if dynamic_batch else None
    try:
        with _quiet(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                model,
                args,
                None,
                kwargs=kwargs or None,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the user needs the reason
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ConfigError(
            f"{type(model).__name__} does not export to ONNX "
            f"({type(exc).__name__}: {first[:300]}); "
            "make its forward traceable by torch.export (no data-dependent Python control "
            "flow), or try dynamic_batch=False"
        ) from None
    return program.model_proto.SerializeToString()


def _dynamic_shapes(args: tuple, kwargs: dict) -> Any:
    from torch.export import Dim

    def spec(t: Any) -> Any:
        return {0: Dim.AUTO} if isinstance(t, torch.Tensor) and t.dim() > 0 else None

    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(a) for a in args)


def _session(model: bytes | str | os.PathLike[str], *, threads: int) -> Any:
    ort = _import("onnxruntime", "onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DataError(
            f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:200]}"
        ) from None


def _session_io(data: bytes) -> tuple[list[str], list[str]]:
    session = _session(data, threads=1)
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


def _feed(session: Any, inputs: Any) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, dict):
        missing = sorted(set(names) - set(inputs))
        if missing:
            raise ConfigError(f"inputs lack {missing}; the ONNX graph takes {names}")
        return {n: _numpy(inputs[n]) for n in names}
    values = [inputs] if isinstance(inputs, torch.Tensor | np.ndarray) else list(inputs)
    tensors = [v for v in values if isinstance(v, torch.Tensor | np.ndarray)]
    if len(tensors) != len(names):
        raise ConfigError(f"{len(tensors)} input tensors given; the ONNX graph takes {names}")
    return dict(zip(names, map(_numpy, tensors), strict=True))


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _compare(
    expected: list[torch.Tensor],
    actual: list[np.ndarray],
    names: Sequence[str],
    *,
    rtol: float,
    atol: float,
) -> tuple[float, float]:
    if len(expected) != len(actual):
        raise ConfigError(
            f"the ONNX model has {len(actual)} outputs but PyTorch returned {len(expected)} "
            "tensors; return tensors (not Python numbers) from forward"
        )
    worst_abs, worst_rel = 0.0, 0.0
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        e = e.numpy().astype(np.float64)
        a = np.asarray(a, dtype=np.float64)
        if e.shape != a.shape:
            raise ConfigError(f"ONNX output {names[i]!r} has shape {a.shape}, PyTorch's {e.shape}")
        diff = float(np.abs(e - a).max()) if e.size else 0.0
        scale = float(np.abs(e).max()) if e.size else 0.0
        if diff > rtol * scale + atol:
            raise ConfigError(
                f"onnxruntime's output {names[i]!r} differs from PyTorch's by {diff:.3g} "
                f"(output scale {scale:.3g}, allowed {rtol:g} x scale + {atol:g}); the export "
                "is not faithful: report the model, or export with check=False at your own risk"
            )
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale else 0.0)
    return worst_abs, worst_rel


def _load_plain(model: nn.Module, weights: Path) -> None:
    state = load_safetensors(weights)
    own = model.state_dict()
    # An unbaked masked checkpoint carries <param>_mask buffers: its weights are already zero there.
    state = {k: v for k, v in state.items() if k in own or not k.endswith("_mask")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{weights} does not fit the model ({str(exc).splitlines()[0][:200]}); build the "
            "recipe's network, or pass plan.json for a structured run"
        ) from None


def _import(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"ONNX export needs {package}: pip install onnx onnxscript onnxruntime"
        ) from None


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.train(mode)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "root")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
