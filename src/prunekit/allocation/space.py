"""Search spaces: the units an allocation gives ratios to, what a choice costs, and the
pruned network it builds.

- :class:`ChannelSpace`: one unit per prunable channel group of the traced graph
  (structured pruning through ``pk.plan`` / ``pk.apply``). Costs are exact for
  parameters, MACs and bytes (counted on the graph) and predicted by a
  :class:`~prunekit.allocation.latency.LatencyTable` for latency.
- :class:`MaskSpace`: one unit per prunable layer (unstructured masks through
  ``pk.sparsify``). Shapes stay, so latency is not a budget masks can meet.

Both build pruned *copies*; the user's model is never changed.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from .._utils import match_any
from ..errors import ConfigError
from ..graph import trace
from ..importance.group import group_importance
from ..mask.targets import find_targets
from ..measure import count_macs, size_bytes
from ..sparsify import sparsify
from ..structured import plan
from ..surgery import apply_plan
from ..surgery.build import build_plan
from ..surgery.surgeons import input_dims
from .channels import keep_count
from .latency import LatencyTable


def fingerprint(model: nn.Module, example_inputs: Any, *extra: Any) -> str:
    """A hash of the model's class, weights and buffers, the inputs' shapes and ``extra``."""
    from torch.utils._pytree import tree_leaves

    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.device.type != "meta":
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    shapes = [tuple(t.shape) for t in tree_leaves(example_inputs) if isinstance(t, torch.Tensor)]
    h.update(repr((shapes, extra)).encode())
    return h.hexdigest()[:20]


class _Space:
    """What both spaces share: units, sizes, blocks, ratios by name."""

    granularity = ""
    units: list[str]
    sizes: list[int]
    round_to_choices: tuple[int, ...] = (1,)

    def ratios_dict(self, ratios: Sequence[float]) -> dict[str, float]:
        """Unit name -> ratio, exactly as evaluated (a ratio rounded for reading can land on
        the other side of a half unit and make ``pk.plan`` keep one unit more)."""
        return {u: float(r) for u, r in zip(self.units, ratios, strict=True)}

    def blocks(self, depth: int) -> dict[str, list[int]]:
        """Units by the first ``depth`` parts of their name (``layer1``), at least two blocks
        when the names allow it."""
        while True:
            out: dict[str, list[int]] = {}
            for i, u in enumerate(self.units):
                out.setdefault(".".join(u.split(".")[:depth]), []).append(i)
            deepest = max(len(u.split(".")) for u in self.units)
            if len(out) >= 2 or depth >= deepest:
                return out
            depth += 1

    def check_metrics(self, metrics: Iterable[str]) -> None:
        """Refuse budget metrics this space cannot predict."""

    @contextmanager
    def exact(self) -> Iterator[None]:
        """Costs computed inside are exact: latency widths off the table's grid are measured
        rather than interpolated (nothing changes for spaces without a latency table)."""
        with ExitStack() as stack:
            for table in getattr(self, "tables", {}).values():
                stack.enter_context(table.exact())
            yield


class ChannelSpace(_Space):
    """Channel groups of a traced network; each unit's ratio goes to ``pk.plan(ratios=...)``.

    Args:
        model: the dense network (left unchanged).
        example_inputs: inputs for tracing and timing.
        criterion: channel importance for the plans (``l2``, ``l1``, ``taylor``, ...).
        ignore: modules (name patterns) whose outputs keep their size.
        round_to_choices: ``round_to`` values a search may pick from.
        plan_options: more keywords for ``pk.plan`` (``data``, ``loss_fn`` for taylor).
    """

    granularity = "channel"

    def __init__(self, model: nn.Module, example_inputs: Any, *, criterion: str = "l2",
                 ignore: Sequence[str] = (), round_to_choices: Sequence[int] = (1,),
                 plan_options: Mapping[str, Any] | None = None) -> None:
        self.model, self.example_inputs = model, example_inputs
        self.criterion, self.ignore = criterion, list(ignore)
        self.round_to_choices = _check_round_to(round_to_choices)
        self.plan_options = dict(plan_options or {})
        self.graph = trace(model, example_inputs)
        probe = plan(self.graph, ratio=0.5, ignore=self.ignore, criterion="l2")
        self.groups, self.units = [], []
        for cut in probe.groups:
            group = self.graph.groups[cut.id]
            key = self._key(group)
            if cut.removed > 0 and key not in self.units:  # one unit per producing module
                self.groups.append(group)
                self.units.append(key)
        if not self.groups:
            raise ConfigError("no channel group of this model can be pruned; run "
                              "pk.inspect_model to see the groups and why they are kept")
        self.sizes = [g.size for g in self.groups]
        self.tables: dict[int, Any] = {}
        self.latency_options: dict[str, Any] = {}
        self._dense = self._cost_of({}, latency=False)

    def _key(self, group: Any) -> str:
        """The first module whose outputs the group cuts: the name ``pk.plan`` matches."""

        for m in group.members:
            path, _, local = m.name.rpartition(".")
            module = self.graph.model.get_submodule(path) if path else self.graph.model
            if m.is_param and m.dim not in input_dims(module, local):
                return path
        raise ConfigError(f"group {group.name} has no producing module to name it by")

    def counts(self, ratios: Sequence[float], round_to: int) -> dict[int, int]:
        """Group id -> kept units."""
        return {g.id: keep_count(g.size, float(r), round_to)
                for g, r in zip(self.groups, ratios, strict=True)}

    def plan_kwargs(self, ratios: Sequence[float], round_to: int) -> dict[str, Any]:
        """Keywords for ``pk.plan(graph, **kwargs)`` that cut exactly these ratios."""
        return {"ratio": 0.0, "ratios": self.ratios_dict(ratios), "round_to": round_to,
                "criterion": self.criterion, "ignore": list(self.ignore), **self.plan_options}

    def build(self, ratios: Sequence[float], round_to: int = 1) -> nn.Module:
        """A pruned copy of the model: the plan ``pk.plan(graph, **plan_kwargs)`` makes,
        with the unit scores computed once."""

        scores = self._scores()
        kept = {gid: torch.sort(torch.topk(scores[gid], k).indices).values
                for gid, k in self.counts(ratios, round_to).items()
                if k < self.graph.groups[gid].size}
        made = build_plan(self.graph, kept, info={"criterion": self.criterion,
                                                  "round_to": round_to})
        pruned = copy.deepcopy(self.graph.model)
        apply_plan(pruned, made)
        return pruned

    def _scores(self) -> dict[int, torch.Tensor]:
        if getattr(self, "_unit_scores", None) is None:

            extra = {k: v for k, v in self.plan_options.items()
                     if k in ("data", "loss_fn", "batches", "seed")}
            self._unit_scores = group_importance(self.graph, self.groups,
                                                 criterion=self.criterion, **extra)
        return self._unit_scores

    def build_counts(self, counts: Mapping[int, int]) -> nn.Module:
        """A pruned copy keeping ``counts[gid]`` units of each group (round_to 1)."""
        ratios = [1.0 - counts.get(g.id, g.size) / g.size for g in self.groups]
        return self.build([min(r, 0.999) for r in ratios], 1)

    # -- costs --------------------------------------------------------------------------------
    def use_latency(self, *, batch_size: int = 1, threads: int = 1, timer: Any = None,
                    clock: str = "wall", cache_dir: Any = None,
                    grid: Sequence[float] = (), runtime: str = "eager") -> None:
        """Build the latency table for ``batch_size`` (widths of every grid ratio and
        ``round_to`` choice), timed in ``runtime``."""

        ratios = sorted(set(grid) | {0.0})
        widths = {g.id: sorted({keep_count(g.size, r, rt) for r in ratios
                                for rt in self.round_to_choices}) for g in self.groups}
        self.tables[batch_size] = LatencyTable(self.graph, widths=widths, batch_size=batch_size,
                                               timer=timer, threads=threads, clock=clock,
                                               cache_dir=cache_dir,
                                               build=self.build_counts,
                                               network_key=self.fingerprint(),
                                               runtime=runtime)
        self.latency_options = {"batch_size": batch_size}
        self._dense = self._cost_of({}, latency=True)

    def check_metrics(self, metrics: Iterable[str]) -> None:
        if "latency_ms" in metrics and not self.tables:
            raise ConfigError("a latency budget needs the latency table: call use_latency first")

    def dense_cost(self) -> dict[str, float]:
        """Costs of the dense network."""
        return dict(self._dense)

    def cost(self, ratios: Sequence[float], round_to: int = 1) -> dict[str, float]:
        """Costs once each unit loses its ratio: params, macs, bytes, sparsity, latency_ms."""
        return self._cost_of(self.counts(ratios, round_to), latency=bool(self.tables))

    def _cost_of(self, counts: dict[int, int], *, latency: bool) -> dict[str, float]:
        g = self.graph
        params = g.params_after(counts)
        out = {"params": float(params), "macs": float(g.macs_after(counts)),
               "bytes": float(self._bytes(counts))}
        dense = getattr(self, "_dense", None)
        out["sparsity"] = 1.0 - params / dense["params"] if dense else 0.0
        if latency:
            table = self.tables[self.latency_options["batch_size"]]
            out["latency_ms"] = table.predict(counts)
        return out

    def _bytes(self, counts: dict[int, int]) -> int:
        state = self.graph.model.state_dict()
        total = 0
        for name, axes in self.graph.param_axes.items():
            t = state.get(name)
            size = t.element_size() if t is not None else 4
            total += math.prod(self.graph.kept_size(a, counts) for a in axes) * size
        return total

    def fingerprint(self) -> str:
        return fingerprint(self.graph.model, self.example_inputs, "channel", self.criterion,
                           self.units)


class MaskSpace(_Space):
    """Prunable layers for unstructured masks; each unit's ratio is its sparsity.

    Args:
        model: the dense network (left unchanged).
        example_inputs: inputs for counting MACs.
        criterion: weight importance for ``pk.sparsify`` (``magnitude`` ...).
        exclude: module name patterns to leave dense.
    """

    granularity = "mask"

    def __init__(self, model: nn.Module, example_inputs: Any, *, criterion: str = "magnitude",
                 exclude: Sequence[str] = ()) -> None:

        self.model, self.example_inputs = model, example_inputs
        self.criterion, self.exclude = criterion, list(exclude)
        targets = find_targets(model)
        self.all_weights = sum(t.weight.numel() for t in targets)
        kept = [t for t in targets if not match_any(t.module_name, self.exclude)]
        if not kept:
            raise ConfigError("no prunable layer is left once `exclude` is applied")
        self.units = list(dict.fromkeys(t.module_name for t in kept))
        self.sizes = [sum(t.weight.numel() for t in kept if t.module_name == u) for u in self.units]
        macs = count_macs(model, example_inputs)
        self.macs = [macs.per_module.get(u, (0, 0))[0] for u in self.units]
        self._dense = {"params": float(sum(p.numel() for p in model.parameters())),
                       "macs": float(macs.dense), "bytes": float(size_bytes(model)),
                       "sparsity": 0.0}

    def check_metrics(self, metrics: Iterable[str]) -> None:
        if "latency_ms" in metrics:
            raise ConfigError("masks keep every shape, so dense kernels take as long as before: "
                              "a latency budget needs granularity='channel'")

    def dense_cost(self) -> dict[str, float]:
        return dict(self._dense)

    def cost(self, ratios: Sequence[float], round_to: int = 1) -> dict[str, float]:
        """Non-zero params, effective MACs, estimated sparse bytes and sparsity."""
        removed = sum(float(r) * n for r, n in zip(ratios, self.sizes, strict=True))
        macs = sum(float(r) * m for r, m in zip(ratios, self.macs, strict=True))
        # sparse encoding of a pruned layer: a bitmask (n/8 bytes) plus its non-zeros
        saved = sum(4 * n - (n / 8 + 4 * n * (1 - float(r)))
                    for r, n in zip(ratios, self.sizes, strict=True) if r > 0)
        d = self._dense
        return {"params": d["params"] - removed, "macs": d["macs"] - macs,
                "bytes": d["bytes"] - saved, "sparsity": removed / self.all_weights}

    def build(self, ratios: Sequence[float], round_to: int = 1) -> nn.Module:
        """A masked copy of the model (layer ``i`` at sparsity ``ratios[i]``)."""
        pruned = copy.deepcopy(self.model)
        mask_layers(pruned, dict(zip(self.units, ratios, strict=True)),
                    criterion=self.criterion, exclude=self.exclude)
        return pruned

    def fingerprint(self) -> str:
        return fingerprint(self.model, self.example_inputs, "mask", self.criterion, self.units)


def mask_layers(model: nn.Module, ratios: Mapping[str, float], *, criterion: str = "magnitude",
                exclude: Sequence[str] = ()) -> dict[str, float]:
    """Mask each layer of ``model`` in place at its own sparsity (``pk.sparsify`` per ratio).

    Returns:
        Qualified weight name -> sparsity after the call.
    """
    exact = {u: "re:" + re.escape(u) for u in ratios}
    out: dict[str, float] = {}
    for r in sorted({float(r) for r in ratios.values() if r > 0}):
        others = [exact[u] for u, x in ratios.items() if float(x) != r]
        out.update(sparsify(model, sparsity=r, criterion=criterion, scope="layer",
                               ignore=[*exclude, *others]))
    return out


def _check_round_to(choices: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(choices, int):
        choices = (choices,)
    out = tuple(dict.fromkeys(choices))
    if not out or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in out):
        raise ConfigError(f"round_to must be positive integers, got {list(choices)!r}")
    return out
