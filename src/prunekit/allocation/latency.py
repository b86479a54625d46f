"""A per-layer latency table: each prunable layer timed at each candidate width, once.

The table predicts the latency of a whole network pruned to any widths without
building or timing it, which is what lets a search try thousands of allocations
against **measured** latency (the idea of NetAdapt, Yang et al. 2018, "NetAdapt:
Platform-Aware Neural Network Adaptation for Mobile Applications", and of the
latency lookup tables of ProxylessNAS / FBNet).

How it works:

1. One forward pass with hooks records, for every convolution, linear and
   batch-norm layer, its input shape; the traced graph says which group of
   channels each layer's input and output width belongs to.
2. Each such layer is rebuilt alone at every (input width, output width) pair the
   search can produce and timed in the runtime the budget holds in: eager PyTorch
   (``prunekit.measure.measure_latency``), frozen TorchScript or onnxruntime
   (:func:`prunekit.export.runtimes.compiled`; batch norm is not timed there, since
   both fold it into the convolution before it). Entries are keyed by the layer's
   configuration, so identical layers are timed once, and cached on disk per machine,
   runtime (and its version), torch version and thread count.
3. A network's prediction is the sum of its layers' entries (bilinear interpolation
   between measured widths) plus the time the table does not see (activations,
   pooling, additions, Python), interpolated by the kept fraction of activations
   between its values measured on the dense network and, when a builder is given, on
   uniform cuts down to 5% of every width.

Example:
    >>> table = LatencyTable(graph, widths={gid: [8, 16] for gid in ids}, batch_size=1)
    >>> table.predict({gid: 8 for gid in ids})  # milliseconds
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._calls import eval_mode as _eval_mode
from .._calls import run_model
from .._io import write_json
from .._utils import cpu_name
from ..errors import ConfigError
from ..graph import axes as ax
from ..measure import measure_latency
from ..measure.cost import resize_batch

Timer = Callable[[nn.Module, Any], float]
Counts = Mapping[int, int]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CALIBRATION = (0.75, 0.5, 0.3, 0.15, 0.05)  # uniform cuts the rest is measured on


def default_cache_dir() -> Path:
    """``$PRUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``."""
    if os.environ.get("PRUNEKIT_CACHE"):
        return Path(os.environ["PRUNEKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prunekit"


FOLDS_NORMS = ("torchscript", "onnxruntime")  # runtimes that fold batch norm into convs


def machine_key(threads: int, runtime: str = "eager") -> dict[str, str]:
    """What a latency entry depends on besides the layer: CPU, torch version, threads,
    and the runtime (with onnxruntime's version)."""
    cpu = cpu_name()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    key = {"cpu": cpu, "arch": platform.machine(), "torch": torch.__version__,
           "threads": str(threads), "device": device}
    if runtime != "eager":
        key["runtime"] = runtime
    if runtime == "onnxruntime":
        from ..export.onnx import _import

        key["onnxruntime"] = _import("onnxruntime", "onnxruntime").__version__
    return key


def measured_timer(*, threads: int = 1, warmup: int = 3, runs: int = 15, stat: str = "min",
                   clock: str = "wall", runtime: str = "eager") -> Timer:
    """A timer that returns a module's forward-pass milliseconds over ``runs`` timed runs.

    Args:
        threads: intra-op threads while timing.
        warmup: untimed runs first.
        runs: timed runs.
        stat: ``"min"`` (default: other jobs on a shared machine only ever add time, so the
            fastest run is the steadiest estimate) or ``"median"``.
        clock: ``"wall"`` (eager PyTorch: ``prunekit.measure.measure_latency``) or
            ``"cpu"``: the CPU time of the calling thread, which with ``threads=1`` is the
            latency on an idle core even while other jobs share the machine (time spent
            descheduled is not counted).
        runtime: ``"eager"``, ``"torchscript"`` or ``"onnxruntime"``: the module is timed
            as :func:`prunekit.export.runtimes.compiled` prepares it (each call of the
            timer prepares it again: exports and traces are not cached).
    """
    from ..export.runtimes import RUNTIMES, compiled

    if stat not in ("min", "median"):
        raise ConfigError(f"stat must be 'min' or 'median', got {stat!r}")
    if clock not in ("wall", "cpu"):
        raise ConfigError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ConfigError("clock='cpu' counts one thread's CPU time: use threads=1")
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    pick = min if stat == "min" else (lambda xs: float(np.median(xs)))

    def timer(module: nn.Module, inputs: Any) -> float:
        if runtime != "eager" or clock == "cpu":
            run = compiled(module, inputs, runtime, threads=threads)
            return pick(call_times(run, warmup=warmup, runs=runs, clock=clock))
        stats = measure_latency(module, inputs, threads=threads, warmup=warmup, runs=runs)
        return float(stats.min_ms if stat == "min" else stats.median_ms)

    timer.__qualname__ = (f"measured(threads={threads},warmup={warmup},runs={runs},{stat},"
                          f"{clock}{'' if runtime == 'eager' else ',' + runtime})")
    return timer


def call_times(fn: Callable[[], Any], *, warmup: int, runs: int, clock: str = "cpu"
               ) -> list[float]:
    """Milliseconds per call of ``fn`` (after ``warmup`` calls): the calling thread's CPU
    time (``clock="cpu"``: what an idle core takes, even while other jobs share the
    machine) or wall-clock time (``"wall"``)."""
    import time

    now = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = now()
        fn()
        out.append((now() - start) * 1e3)
    return out


@dataclass
class _Layer:
    """A timed layer of the network: how to rebuild it at other widths."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    out_axis: Any
    in_axis: Any  # None when the input width follows the output (depthwise, batch norm)
    dense_out: int
    out_numel: int

    def signature(self) -> str:
        m = self.module
        if isinstance(m, _CONV):
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            return (f"{type(m).__name__}|k{m.kernel_size}|s{m.stride}|p{m.padding}|d{m.dilation}"
                    f"|g{'dw' if dw else m.groups}|b{m.bias is not None}|{m.padding_mode}"
                    f"|x{self.input_shape[2:]}|n{self.input_shape[0]}")
        if isinstance(m, nn.Linear):
            return f"Linear|b{m.bias is not None}|x{self.input_shape[:-1]}"
        return f"{type(m).__name__}|x{self.input_shape[2:]}|n{self.input_shape[0]}"

    def build(self, cin: int, cout: int) -> tuple[nn.Module, torch.Tensor]:
        """A fresh layer of this configuration with ``cin`` inputs and ``cout`` outputs,
        and a random input for it."""
        m, shape = self.module, list(self.input_shape)
        if isinstance(m, _CONV):
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            groups = cout if dw else m.groups
            layer = type(m)(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups,
                            m.bias is not None, m.padding_mode)
            shape[1] = cin
        elif isinstance(m, nn.Linear):
            layer, shape[-1] = nn.Linear(cin, cout, bias=m.bias is not None), cin
        else:
            layer, shape[1] = type(m)(cout), cout
        return layer.eval(), torch.randn(shape)


class LatencyTable:
    """Per-layer latencies at candidate widths, predicting a whole network's latency.

    Args:
        graph: from ``pk.trace`` on the dense model (its example inputs give the shapes).
        widths: group id -> candidate kept widths (the dense width is always added).
        batch_size: batch the latency is for (the example inputs are resized to it).
        runtime: where layers and networks are timed: ``"eager"``, ``"torchscript"`` or
            ``"onnxruntime"`` (:func:`measured_timer`); the latter two fold batch norm
            into the convolutions, so norms get no entry there.
        timer: ``timer(module, inputs) -> ms``; by default :func:`measured_timer` in
            ``runtime`` with ``threads`` threads. Tests pass a deterministic one.
        threads: intra-op threads of the default timer (part of the cache key).
        clock: ``"wall"`` or ``"cpu"`` (thread CPU time, ``threads=1``) for the default timer.
        cache_dir: folder of the on-disk cache (one JSON file per machine, torch
            version, thread count and timer); ``None`` keeps entries in memory only.
        build: ``build(counts) -> model`` pruned to ``counts``; when given, the part of
            the latency the table does not see is measured on uniformly pruned networks too.
        network_key: names the network; with a cache, its rest (measured on the dense
            network and uniform cuts to 75, 50, 30, 15 and 5% of every width, whatever
            ``widths`` holds) is stored under it and read back next time, so every call,
            with any candidate widths, predicts the same dense latency.
    """

    def __init__(self, graph: Any, *, widths: Mapping[int, Sequence[int]],
                 batch_size: int = 1, timer: Timer | None = None, threads: int = 1,
                 clock: str = "wall", cache_dir: str | os.PathLike[str] | None = None,
                 build: Callable[[Counts], nn.Module] | None = None,
                 network_key: str | None = None, runtime: str = "eager") -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        from ..export.runtimes import RUNTIMES

        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
        self.graph, self.batch_size, self.runtime = graph, batch_size, runtime
        self.timer = timer or measured_timer(threads=threads, clock=clock, runtime=runtime)
        self.threads = threads
        self.widths = {int(g): sorted({int(w) for w in ws} | {graph.groups[g].size})
                       for g, ws in widths.items()}
        self.align = {g: math.gcd(*ws) for g, ws in self.widths.items()}
        self.cache_path = None if cache_dir is None else self._cache_file(Path(cache_dir))
        self.entries: dict[str, float] = self._load_cache()
        self.layers = self._record_layers()
        self.measured = 0
        self.on_demand = False
        self._measure_all()
        self.rest = self._fit_rest(build, network_key)

    # -- public ---------------------------------------------------------------------------------
    def predict(self, counts: Counts) -> float:
        """Predicted milliseconds of one forward pass once groups keep ``counts`` units."""
        return self.layers_ms(counts) + self.rest_ms(self.activation_fraction(counts))

    def rest_ms(self, fraction: float) -> float:
        """What the layer entries miss (activations, additions, pooling, Python), at a kept
        fraction of the timed layers' output elements: interpolated between the measured
        calibration cuts, the nearest one's value beyond them."""
        fractions, rests = zip(*self.rest, strict=True)
        return float(np.interp(fraction, fractions, rests))  # held at the ends

    def layers_ms(self, counts: Counts) -> float:
        """Sum of the table's layer entries at ``counts`` (interpolated between widths)."""
        return sum(self._lookup(layer, *self._widths_of(layer, counts)) for layer in self.layers)

    def activation_fraction(self, counts: Counts) -> float:
        """Kept fraction of the timed layers' output elements."""
        total = sum(layer.out_numel for layer in self.layers) or 1
        kept = sum(layer.out_numel * self._kept(layer.out_axis, counts) / layer.dense_out
                   for layer in self.layers)
        return kept / total

    def grid_entries(self) -> int:
        """How many layer entries this network's grid needs (identical layers share them;
        the cache may hold more, for other networks and widths measured on demand)."""
        return len({(layer.signature(), *pair) for layer in self.layers
                    for pair in self._grid_pairs(layer)})

    def network_ms(self, model: nn.Module) -> float:
        """This table's timer on a whole network at this table's batch size."""
        return float(self.timer(model, self._inputs()))

    # -- recording ------------------------------------------------------------------------------
    def _inputs(self) -> Any:

        return resize_batch(self.graph.example_inputs, self.batch_size)

    def _record_layers(self) -> list[_Layer]:
        model, shapes = self.graph.model, {}
        hooks = [m.register_forward_hook(self._hook(name, shapes))
                 for name, m in model.named_modules() if isinstance(m, (*_CONV, nn.Linear, *_NORM))]
        try:
            with _eval_mode(model), torch.no_grad():
                run_model(model, self._inputs())
        finally:
            for h in hooks:
                h.remove()
        folded = _NORM if self.runtime in FOLDS_NORMS else ()
        return [layer for name, (i, o) in shapes.items()
                if not isinstance(module := model.get_submodule(name), folded)
                and (layer := self._layer(name, module, i, o)) is not None]

    @staticmethod
    def _hook(name: str, shapes: dict) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            if name not in shapes and args and isinstance(args[0], torch.Tensor) \
                    and isinstance(out, torch.Tensor):
                shapes[name] = (tuple(args[0].shape), tuple(out.shape))
        return hook

    def _layer(self, name: str, m: nn.Module, in_shape: tuple, out_shape: tuple) -> _Layer | None:
        axes = self.graph.param_axes.get(f"{name}.weight")
        if axes is None:
            return None
        dw = isinstance(m, _CONV) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
        in_axis = axes[1] if isinstance(m, (*_CONV, nn.Linear)) and not dw else None
        if isinstance(m, _CONV) and m.groups > 1 and not dw:
            in_axis = None  # grouped convolutions are timed at their dense input width
        numel = int(np.prod(out_shape))
        return _Layer(name, m, in_shape, axes[0], in_axis, int(m.weight.shape[0]), numel)

    def _kept(self, axis: Any, counts: Counts) -> int:
        return self.graph.kept_size(axis, dict(counts))

    def _widths_of(self, layer: _Layer, counts: Counts) -> tuple[int, int]:
        out = self._kept(layer.out_axis, counts)
        if layer.in_axis is None:
            return (out if _follows_output(layer.module) else _in_width(layer.module)), out
        return self._kept(layer.in_axis, counts) * getattr(layer.module, "groups", 1), out

    def _axis_widths(self, axis: Any) -> list[int]:
        """Candidate widths of an axis: its size when each group in it keeps each candidate."""

        leaves = {ax.find(leaf) for leaf in ax.leaves(axis)}
        gids = [g for g in self.widths if ax.find(self.graph.groups[g].leaf) in leaves]
        if not gids:
            return [self._kept(axis, {})]
        depth = max(len(self.widths[g]) for g in gids)
        out = set()
        for i in range(depth):
            counts = {g: self.widths[g][min(i, len(self.widths[g]) - 1)] for g in gids}
            out.add(self._kept(axis, counts))
        return sorted(out)

    def _grid(self, layer: _Layer) -> tuple[list[int], list[int]]:
        outs = self._axis_widths(layer.out_axis)
        if layer.in_axis is None:
            ins = outs if _follows_output(layer.module) else [_in_width(layer.module)]
        else:
            groups = getattr(layer.module, "groups", 1)
            ins = [w * groups for w in self._axis_widths(layer.in_axis)]
        return ins, outs

    # -- measuring ------------------------------------------------------------------------------
    def _measure_all(self) -> None:
        self._grids: dict[str, tuple[list[int], list[int]]] = {}
        for layer in self.layers:
            ins, outs = self._grid(layer)
            sig = layer.signature()
            old = self._grids.get(sig, ([], []))
            self._grids[sig] = (sorted(set(old[0]) | set(ins)), sorted(set(old[1]) | set(outs)))
        for layer in self.layers:
            for cin, cout in self._grid_pairs(layer):
                if _key(layer.signature(), cin, cout) not in self.entries:
                    self._measure(layer, cin, cout)
        self._save_cache()

    def _grid_pairs(self, layer: _Layer) -> list[tuple[int, int]]:
        """The (input, output) widths the grid measures for ``layer``."""
        ins, outs = self._grids[layer.signature()]
        if _diagonal(layer):
            return [(o, o) for o in outs]
        return [(i, o) for i in ins for o in outs]

    def _measure(self, layer: _Layer, cin: int, cout: int) -> float:
        """Time ``layer`` alone at these widths and keep the entry."""
        module, x = layer.build(cin, cout)
        key = _key(layer.signature(), cin, cout)
        self.entries[key] = float(self.timer(module, x))
        self.measured += 1
        return self.entries[key]

    @contextmanager
    def exact(self) -> Iterator[None]:
        """Inside, a width the table has not measured is measured (once, then cached) instead
        of interpolated: for the last steps of a search, whose widths are off the grid."""
        before, self.on_demand = self.on_demand, True
        try:
            yield
        finally:
            self.on_demand = before
            self._save_cache()

    def _lookup(self, layer: _Layer, cin: int, cout: int) -> float:
        sig = layer.signature()
        key = _key(sig, cin, cout)
        if key in self.entries:
            return self.entries[key]
        if self.on_demand:
            return self._measure(layer, cin, cout)
        ins, outs = self._grids[sig]
        if _diagonal(layer):
            return interp(outs, cout, lambda o: self.entries[_key(sig, o, o)])
        return interp(ins, cin, lambda i: interp(outs, cout,
                                                   lambda o: self.entries[_key(sig, i, o)]))

    def _fit_rest(self, build: Callable[[Counts], nn.Module] | None,
                  network_key: str | None) -> list[tuple[float, float]]:
        """The rest (``latency - layers``) as ``(activation fraction, rest ms)`` points, by
        fraction: measured on the dense network and, with a builder, on uniform cuts keeping
        75, 50, 30, 15 and 5% of every width. Deep cuts are measured, not extrapolated: a
        network's fixed per-operator cost weighs most there. The rest may be negative: each
        layer timed alone pays a call's fixed cost (an onnxruntime session run, a layout
        reorder around it) that the network pays once.

        With a cache and ``network_key``, the dense point is kept per network and batch size
        (a ``latency_ratio`` is the same milliseconds whatever grid or ``round_to`` a search
        uses), the cuts per width alignment: each cut's widths are multiples of what all
        candidate widths of a group share, since runtimes run some widths (not multiples of
        8 or 16) far slower than others, and the cuts should be the widths searched."""
        base = None if network_key is None else f"{network_key}|n{self.batch_size}"
        cuts = self._calibration_counts()
        aligned = hashlib.sha1(json.dumps(sorted(self.align.items())).encode()).hexdigest()[:12]
        keys = {} if base is None else {"dense": f"{base}|dense-rest",
                                        "cuts": f"{base}|uniform-rest|a{aligned}"}
        fitted: dict[str, list[list[float]]] = {}
        for part, points in (("dense", [{}]), ("cuts", cuts if build is not None else [])):
            stored = self.fits.get(keys[part]) if keys else None
            if stored is not None:
                fitted[part] = stored["rest"]
                continue
            fitted[part] = self._rests(points, build)
            if keys:
                self.fits[keys[part]] = {"rest": fitted[part]}
                self._save_cache(force=True)
        by_fraction: dict[float, list[float]] = {}
        for f, r in fitted["dense"] + fitted["cuts"]:
            by_fraction.setdefault(round(f, 9), []).append(r)
        return sorted((f, float(np.mean(r))) for f, r in by_fraction.items())

    def _calibration_counts(self) -> list[dict[int, int]]:
        """Uniform cuts keeping each of ``CALIBRATION`` of every width, rounded to the group's
        alignment (the greatest common divisor of its candidate widths); no cut twice."""
        out: list[dict[int, int]] = []
        for q in CALIBRATION:
            counts = {}
            for g, align in self.align.items():
                size = self.graph.groups[g].size
                counts[g] = min(size, max(align, round(q * size / align) * align))
            if counts not in out:
                out.append(counts)
        return out

    def _rests(self, points: Sequence[Counts], build: Callable[[Counts], nn.Module] | None
               ) -> list[list[float]]:
        """``[activation fraction, whole network - its layers]`` for each of ``points``
        (``{}`` is the dense network), the widths measured exactly."""
        rows = []
        with self.exact():  # the calibration widths are measured, whatever the grid
            for counts in points:
                model = self.graph.model if not counts else build(counts)
                rows.append([self.activation_fraction(counts),
                             self.network_ms(model) - self.layers_ms(counts)])
        return rows

    # -- cache ------------------------------------------------------------------------------
    def _cache_file(self, folder: Path) -> Path:
        key = {**machine_key(self.threads, self.runtime),
               "timer": getattr(self.timer, "__qualname__", "")}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self._cache_meta = key
        return folder / "latency" / f"{digest}.json"

    def _load_cache(self) -> dict[str, float]:
        self.fits: dict[str, dict[str, Any]] = {}
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            data = json.loads(self.cache_path.read_text())
            entries = {str(k): float(v) for k, v in data["entries"].items()}
            self.fits = dict(data.get("fits", {}))
            return entries
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # a damaged cache is measured again

    def _save_cache(self, *, force: bool = False) -> None:
        if self.cache_path is None or not (self.measured or force):
            return

        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.cache_path, {**self._cache_meta, "entries": self.entries,
                                     "fits": self.fits})


def _in_width(m: nn.Module) -> int:
    return int(m.in_channels if isinstance(m, _CONV) else getattr(m, "in_features",
                                                                  getattr(m, "num_features", 0)))


def _follows_output(m: nn.Module) -> bool:
    """Whether a layer's input width always equals its output width (norms, depthwise)."""
    return isinstance(m, _NORM) or (isinstance(m, _CONV) and m.groups > 1
                                    and m.groups == m.in_channels == m.out_channels)


def _key(signature: str, cin: int, cout: int) -> str:
    """A layer entry's name in the table (and its cache): the layer's signature and widths."""
    return f"{signature}|{cin}|{cout}"


def _diagonal(layer: _Layer) -> bool:
    return layer.in_axis is None and _follows_output(layer.module)


def interp(xs: Sequence[int], x: float, f: Callable[[int], float]) -> float:
    """Piecewise-linear interpolation of ``f`` over sorted ``xs`` (linear extrapolation)."""
    if len(xs) == 1:
        return f(xs[0])
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = f(x0), f(x1)
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
