"""Run a zoo source through a structured-pruning tool and record, per model, what happened.

For prunekit a model passes when 50% of the channels of every group are pruned, ``pk.verify``
finds the pruned network equal to the original with the removed units zeroed, and the plan
replayed on a freshly built model with the saved weights gives the pruned model's outputs.
Every failure is recorded with its stage and reason; nothing is retried or skipped quietly.

Example:
    >>> results = run_zoo("rnn", progress=False)          # doctest: +SKIP
    >>> print(format_results(results))                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._io import save_safetensors, write_json
from prunekit._registry import Registry
from prunekit.errors import ConfigError
from prunekit.models.catalog import Inputs, ZooModel, call_model, get_source, output_tensors


@dataclass
class ZooResult:
    """What one tool did to one model.

    Attributes:
        source, model, tool: What was run.
        passed: Whether every check held.
        stage: The last stage reached (``build``, ``prune``, ``verify``, ``round trip``,
            ``forward``, ``done``); on a failure, the stage that failed.
        reason: Why it failed: the exception type and the first line of its message, or the
            check that did not hold. Empty on a pass.
        params_before, params_after: Parameter counts of the original and pruned model.
        macs_before, macs_after: Multiply-accumulates of one forward pass on the example inputs.
        prune_s: Seconds the pruning itself took (trace, choose, cut).
        wall_s: Seconds for the whole model: build, measure, prune and every check.
        groups_checked: Groups ``pk.verify`` checked by zero-out equivalence (prunekit only).
        groups_unchecked: Cut groups it could not check that way (a norm over the cut).
        groups_left_whole: Groups the plan left whole because cutting them broke the forward.
        notes: Remarks that do not decide the result (which groups, which MAC counter).
    """

    source: str
    model: str
    tool: str
    passed: bool = False
    stage: str = "build"
    reason: str = ""
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    prune_s: float | None = None
    wall_s: float = 0.0
    groups_checked: int | None = None
    groups_unchecked: int | None = None
    groups_left_whole: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZooResult:
        """The inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ZooResult keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


class CheckFailed(Exception):
    """A check of the pruned model did not hold; the message says which and by how much."""


class ZooTimeout(Exception):
    """A model ran past its time limit."""


Tool = Callable[..., None]
"""``tool(zoo_model, *, ratio, record)``: prunes and checks one model, filling in ``record``;
raises on any failure (a :class:`CheckFailed` for a check that did not hold)."""

TOOLS: Registry[Tool] = Registry("zoo tool")


def list_tools() -> list[str]:
    """Names of the registered pruning tools (prunekit and its peers)."""
    _load_peers()
    return TOOLS.names()


def _load_peers() -> None:
    from . import peers  # noqa: F401  (registers the peer tools)


# --------------------------------------------------------------------------- measuring


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, with prunekit.measure's counter where it exists."""
    try:
        from prunekit.measure import count_params as measure_params
    except ImportError:
        return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return int(measure_params(model))


def count_macs(model: nn.Module, inputs: Inputs) -> tuple[int, str]:
    """MACs of one forward pass and the name of the counter that measured them.

    prunekit.measure.count_macs when it exists, else half the FLOPs that
    ``torch.utils.flop_counter`` sees.
    """
    with torch.no_grad():
        try:
            from prunekit.measure import count_macs as measure_macs
        except ImportError:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                call_model(model, inputs)
            return counter.get_total_flops() // 2, "torch.utils.flop_counter"
        return int(measure_macs(model, inputs).dense), "prunekit.measure"


def measure(record: ZooResult, model: nn.Module, inputs: Inputs, *, when: str) -> None:
    """Fill in params and MACs ``before`` or ``after`` pruning; a MAC counter failure is a note."""
    setattr(record, f"params_{when}", count_params(model))
    try:
        macs, counter = count_macs(model, inputs)
    except Exception as exc:  # a counter's failure must not decide the pruning result
        record.notes.append(f"MACs {when}: not counted ({describe(exc)})")
        return
    setattr(record, f"macs_{when}", macs)
    note = f"MACs counted by {counter}"
    if note not in record.notes:
        record.notes.append(note)


def describe(exc: BaseException) -> str:
    """An exception as ``"Type: first line of its message"``.

    An exception without a message (a bare ``assert``) is named by where it was raised.
    """
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if first:
        return f"{type(exc).__name__}: {first}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if not frames:
        return type(exc).__name__
    where = frames[-1]
    path = "/".join(Path(where.filename).parts[-2:])
    line = where.line if len(where.line or "") <= 80 else where.line[:77] + "..."
    return f"{type(exc).__name__} at {path}:{where.lineno} ({line})"


# --------------------------------------------------------------------------- checks


def output_shapes(out: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in a model output, by path."""
    return {name: tuple(t.shape) for name, t in output_tensors(out)}


def check_same_shapes(expected: dict[str, tuple[int, ...]], out: Any) -> None:
    """Raise :class:`CheckFailed` unless ``out`` has exactly the expected tensors and shapes."""
    got = output_shapes(out)
    if got.keys() != expected.keys():
        raise CheckFailed(f"outputs changed: {sorted(expected)} -> {sorted(got)}")
    for name, shape in expected.items():
        if got[name] != shape:
            raise CheckFailed(f"output shape changed: {name} {shape} -> {got[name]}")


def check_close(reference: Any, out: Any, *, what: str, rtol: float = 1e-4,
                atol: float = 1e-5) -> None:
    """Raise :class:`CheckFailed` unless every output tensor matches the reference's."""
    check_same_shapes(output_shapes(reference), out)
    got = dict(output_tensors(out))
    for name, ref in output_tensors(reference):
        if not torch.allclose(got[name].float(), ref.float(), rtol=rtol, atol=atol):
            diff = (got[name].float() - ref.float()).abs().max().item()
            raise CheckFailed(f"{what}: {name} differs by up to {diff:.3g}")


def check_pruned(record: ZooResult) -> None:
    """Raise :class:`CheckFailed` when the tool removed nothing at all (a prune failure)."""
    record.stage = "prune"
    if record.params_after is not None and record.params_after >= (record.params_before or 0):
        raise CheckFailed("nothing was pruned: the parameter count did not go down")


# --------------------------------------------------------------------------- prunekit


@TOOLS.register("prunekit")
def prunekit_tool(zoo_model: ZooModel, *, ratio: float, record: ZooResult) -> None:
    """Prune with ``pk.prune``, then ``pk.verify`` and the plan round trip."""
    import prunekit as pk

    model, inputs = zoo_model.create(), zoo_model.example_inputs()
    measure(record, model, inputs, when="before")
    original = copy.deepcopy(model)
    ignore = [model.get_submodule(name) for name in zoo_model.ignored(model)]
    record.stage = "prune"
    start = time.perf_counter()
    plan = pk.prune(model, inputs, ratio=ratio, ignore=ignore)
    record.prune_s = time.perf_counter() - start
    _note_plan(plan, record)
    measure(record, model, inputs, when="after")
    check_pruned(record)
    record.stage = "verify"
    _check_verify(pk.verify(original, model, plan, inputs), record)
    del original
    gc.collect()
    record.stage = "round trip"
    _round_trip(zoo_model, model, plan, inputs)


def _check_verify(result: Any, record: ZooResult) -> None:
    """Fail on a :class:`~prunekit.structured.VerifyResult` that did not hold; note the rest."""
    record.groups_checked, record.groups_unchecked = len(result.checked), len(result.unchecked)
    if result.unchecked:
        names = _short(list(result.unchecked))
        record.notes.append(f"verify could not check {len(result.unchecked)} groups "
                            f"(normalized over the cut): {names}")
    if not result.ok:
        raise CheckFailed(f"verify: {result.message}")


def _note_plan(plan: Any, record: ZooResult) -> None:
    """Note the groups the plan left out because cutting them breaks the forward pass."""
    excluded = plan.info.get("excluded") if isinstance(getattr(plan, "info", None), dict) else None
    record.groups_left_whole = len(excluded or ())
    if excluded:
        record.notes.append(f"{len(excluded)} groups left whole (forward fails when cut): "
                            f"{_short(list(excluded))}")


def _round_trip(zoo_model: ZooModel, pruned: nn.Module, plan: Any, inputs: Inputs) -> None:
    """Save plan and weights, replay them on a fresh model, and compare outputs."""
    import prunekit as pk

    with torch.no_grad():
        expected = call_model(pruned, inputs)
    with tempfile.TemporaryDirectory(prefix="prunekit-zoo-") as tmp:
        plan_path, weights_path = Path(tmp, "plan.json"), Path(tmp, "weights.safetensors")
        plan.save(plan_path)
        save_safetensors(weights_path, untied_state_dict(pruned))
        fresh = zoo_model.create()
        pk.load_pruned(fresh, plan_path, weights_path)
    with torch.no_grad():
        check_close(expected, call_model(fresh.eval(), inputs), what="plan round trip")


def untied_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tensors that share storage (tied weights) copied apart.

    safetensors refuses tensors that share memory; loading both copies back into a tied
    model writes the same values twice, which keeps the tie.
    """
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
        out[name] = tensor.clone() if key in seen and tensor.numel() else tensor
        seen.add(key)
    return out


def _short(value: Any, limit: int = 200) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple, set)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`ZooTimeout` in the block after ``seconds`` (main thread on POSIX only).

    Elsewhere the block runs without a limit. A long native operation is interrupted when
    it returns to Python.
    """
    usable = (
        seconds is not None
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise ZooTimeout(f"ran past its time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(
    zoo_model: ZooModel, *, tool: str = "prunekit", ratio: float = 0.5,
    time_limit_s: float | None = 600.0,
) -> ZooResult:
    """Run one model through one tool; every exception becomes a recorded failure."""
    _load_peers()
    run = TOOLS.get(tool)
    record = ZooResult(source=zoo_model.source, model=zoo_model.name, tool=tool)
    start = time.perf_counter()
    try:
        with time_limit(time_limit_s):
            run(zoo_model, ratio=ratio, record=record)
        record.passed, record.stage = True, "done"
    except CheckFailed as exc:
        record.reason = str(exc)
    except Exception as exc:  # any failure of any model is a result, never a crash
        record.reason = describe(exc)
    finally:
        record.wall_s = time.perf_counter() - start
        gc.collect()
    return record


def run_models(
    models: Sequence[ZooModel], *, tool: str = "prunekit", ratio: float = 0.5,
    json_path: str | os.PathLike[str] | None = None, progress: bool = True,
    time_limit_s: float | None = 600.0,
) -> list[ZooResult]:
    """Run each model in turn; the JSON file (if any) is rewritten after every model."""
    _check_ratio(ratio)
    results: list[ZooResult] = []
    for i, zoo_model in enumerate(models, 1):
        result = run_one(zoo_model, tool=tool, ratio=ratio, time_limit_s=time_limit_s)
        results.append(result)
        if json_path is not None:
            write_json(json_path, [r.to_dict() for r in results])
        if progress:
            print(f"[{i}/{len(models)}] {_line(result)}", file=sys.stderr, flush=True)
    return results


def run_zoo(
    source: str, *, ratio: float = 0.5, names: Sequence[str] | None = None,
    json_path: str | os.PathLike[str] | None = None, progress: bool = True,
    tool: str = "prunekit", time_limit_s: float | None = 600.0,
) -> list[ZooResult]:
    """Prune every model of a zoo source and check each result.

    Args:
        source: ``torchvision``, ``timm``, ``transformers`` or ``rnn``.
        ratio: Fraction of the channels/heads/units of each group to remove.
        names: Only these models (exact names or shell patterns such as ``"resnet*"``).
        json_path: Where to write the results as JSON (rewritten after every model).
        progress: Print a line per model to stderr.
        tool: ``prunekit`` or a peer from :func:`list_tools` (``torch-pruning``).
        time_limit_s: Seconds allowed per model; ``None`` for no limit.

    Returns:
        One :class:`ZooResult` per model, in the source's order.

    Raises:
        ConfigError: Unknown source, tool or model name, or a ratio outside [0, 1).

    Example:
        >>> results = run_zoo("rnn", names=["char_lm"], progress=False)  # doctest: +SKIP
    """
    _load_peers()
    TOOLS.get(tool)
    models = select(get_source(source), names)
    return run_models(models, tool=tool, ratio=ratio, json_path=json_path, progress=progress,
                      time_limit_s=time_limit_s)


def select(models: Sequence[ZooModel], names: Sequence[str] | None) -> list[ZooModel]:
    """The models whose names match any of ``names`` (all when ``names`` is None)."""
    if names is None:
        return list(models)
    valid = [m.name for m in models]
    for pattern in names:
        if not fnmatch.filter(valid, pattern):
            raise ConfigError(f"no zoo model matches {pattern!r}; valid names: {', '.join(valid)}")
    return [m for m in models if any(fnmatch.fnmatch(m.name, p) for p in names)]


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio}; 0.5 removes half the channels")


# --------------------------------------------------------------------------- reporting


def load_results(path: str | os.PathLike[str]) -> list[ZooResult]:
    """Results written by :func:`run_zoo` with ``json_path``."""
    return [ZooResult.from_dict(d) for d in json.loads(Path(path).read_text())]


def _count(n: int | None, unit: str = "") -> str:
    if n is None:
        return "?"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n}{unit}"


def _line(r: ZooResult) -> str:
    status = "PASS" if r.passed else f"FAIL at {r.stage}: {r.reason}"
    return (f"{r.source}/{r.model} [{r.tool}] {status} "
            f"params {_count(r.params_before)} -> {_count(r.params_after)}, "
            f"MACs {_count(r.macs_before)} -> {_count(r.macs_after)}, {r.wall_s:.1f} s")


def format_results(results: Sequence[ZooResult]) -> str:
    """A plain-text table of results with a pass count, for the terminal."""
    header = ("model", "tool", "result", "params", "MACs", "prune s", "total s")
    rows = [header] + [
        (
            r.model, r.tool, "pass" if r.passed else f"FAIL ({r.stage})",
            f"{_count(r.params_before)} -> {_count(r.params_after)}",
            f"{_count(r.macs_before)} -> {_count(r.macs_after)}",
            "-" if r.prune_s is None else f"{r.prune_s:.2f}", f"{r.wall_s:.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    failures = [f"  {r.model} [{r.tool}]: {r.reason}" for r in results if not r.passed]
    passed = sum(r.passed for r in results)
    lines.append(f"\n{passed}/{len(results)} passed")
    if failures:
        lines += ["failures:", *failures]
    return "\n".join(lines)
