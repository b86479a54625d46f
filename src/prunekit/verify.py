"""Verification of a structural cut by zero-out equivalence.

A copy of the original network gets the removed units zeroed; its outputs must equal the
pruned network's. Groups normalized over their cut cannot be checked that way and are cut
structurally in the reference too (reported as unchecked).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .graph import flatten_tensors, run_model, tracing_state
from .surgery import Plan, apply_plan

__all__ = ["VerifyResult", "verify"]


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`.

    Attributes:
        ok: zero-out equivalence held for every checked group (within tolerance).
        max_abs_diff: largest absolute difference between the outputs.
        checked: names of groups checked by zero-out equivalence.
        unchecked: group name -> why exact equivalence cannot hold (these groups were
            cut structurally in the reference as well, so they are not checked).
        failed: names of groups whose cut changes the outputs.
        message: one sentence for people.
    """

    ok: bool
    max_abs_diff: float
    checked: list[str] = field(default_factory=list)
    unchecked: dict[str, list[str]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return self.message


def verify(
    original: nn.Module,
    pruned: nn.Module,
    plan: Plan,
    example_inputs: Any,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    locate: bool = True,
) -> VerifyResult:
    """Check a structural cut by zero-out equivalence.

    A copy of ``original`` gets the removed units zeroed (every tensor slice of every
    cut group: producers, norms and what they feed); its outputs must equal
    ``pruned``'s. Groups whose equivalence cannot hold exactly (a norm or mean over
    the cut dimension) are cut structurally in the copy too and reported as unchecked.

    Args:
        original: the model before pruning (not changed).
        pruned: the pruned model.
        plan: the plan that was applied.
        example_inputs: inputs for both models.
        atol: absolute tolerance; rtol: relative tolerance (to the output scale).
        locate: on a mismatch, find the groups responsible (one extra run per group).

    Returns:
        A :class:`VerifyResult` (truthy when the check passed).
    """
    cut = [g for g in plan.groups if g.removed]
    unchecked = {g.name: list(g.unchecked) for g in cut if g.unchecked}
    structural = {g.id for g in cut if g.unchecked}
    expected = _outputs(pruned, example_inputs)
    while True:
        checked = [g for g in cut if g.id not in structural]
        reference = _reference(original, plan, structural, checked)
        try:
            got = _outputs(reference, example_inputs)
            break
        except Exception as e:  # sizes in the code tie some checked groups to structural ones
            tied = _tied_groups(e, reference, checked)
            for g in tied:
                structural.add(g.id)
                unchecked[g.name] = [f"cut together with groups normalized over their cut "
                                     f"({type(e).__name__} without it)"]
    diff, scale = _difference(got, expected)
    ok = diff <= atol + rtol * scale
    failed: list[str] = []
    if not ok and locate:
        failed = _locate(original, plan, example_inputs, checked, structural, atol, rtol)
    if ok:
        msg = f"zero-out equivalence holds for {len(checked)} groups (max |diff| {diff:.2e})"
    else:
        msg = (f"outputs differ by {diff:.2e} (> {atol + rtol * scale:.2e})"
               + (f"; groups responsible: {', '.join(failed)}" if failed else ""))
    if unchecked:
        msg += f"; {len(unchecked)} groups not checkable by zero-out (normalized over the cut)"
    return VerifyResult(ok, diff, [g.name for g in checked], unchecked, failed, msg)


def _reference(original: nn.Module, plan: Plan, structural: set[int], zero: list) -> nn.Module:
    """A copy of ``original`` with ``structural`` groups cut and ``zero`` groups zeroed."""
    ref = copy.deepcopy(original)
    everything = structural >= {g.id for g in plan.groups if g.removed}
    sub = plan if everything else plan.subset(structural)
    if structural:
        apply_plan(ref, sub)
    tensors = dict(ref.named_parameters())
    tensors.update(dict(ref.named_buffers()))
    with torch.no_grad():
        for g in zero:
            for name, dims in g.members.items():
                t = tensors[name]
                for d, kept in dims.items():
                    kept = _remap(sub, name, d, kept)
                    if t.device.type == "meta":
                        raise ConfigError("verify needs real weights; the model is on the meta "
                                          "device")
                    mask = torch.ones(t.shape[d], dtype=torch.bool, device=t.device)
                    mask[kept] = False
                    if name.endswith("running_var"):
                        continue
                    t.index_fill_(d, torch.nonzero(mask).flatten(), 0)
    return ref


def _remap(sub: Plan, name: str, dim: int, kept: list[int]) -> list[int]:
    """Positions of the original tensor mapped into a tensor already cut by ``sub``."""
    cut = sub.tensors.get(name)
    if cut is None or dim not in cut.kept:
        return kept
    where = {old: new for new, old in enumerate(cut.kept[dim])}
    keep_set = set(kept)
    # positions removed by ``sub`` are gone; the others keep their relative order
    return [where[p] for p in cut.kept[dim] if p in keep_set]


def _outputs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    with tracing_state(model):
        return [t.detach().float() for t in flatten_tensors(run_model(model, inputs))
                if t.is_floating_point()]


def _tied_groups(error: Exception, model: nn.Module, checked: list) -> list:
    """Checked groups whose tensors live in the module where ``error`` was raised (else all)."""
    paths = {id(m): n for n, m in model.named_modules()}
    where, tb = None, error.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in paths:
            where = paths[id(obj)]
        tb = tb.tb_next
    if not checked:
        raise error
    if where is None or not where:
        return checked
    prefix = f"{where}." if where else ""
    near = [g for g in checked if any(n.startswith(prefix) for n in g.members)]
    return near or checked


def _compare(a: nn.Module, b: nn.Module, inputs: Any) -> tuple[float, float]:
    return _difference(_outputs(a, inputs), _outputs(b, inputs))


def _difference(out_a: list[torch.Tensor], out_b: list[torch.Tensor]) -> tuple[float, float]:
    if [t.shape for t in out_a] != [t.shape for t in out_b]:
        return math.inf, 0.0
    diff = max((float((x - y).abs().max()) for x, y in zip(out_a, out_b, strict=True)
                if x.numel()), default=0.0)
    scale = max((float(x.abs().max()) for x in out_a if x.numel()), default=0.0)
    return diff, scale


def _locate(original, plan: Plan, inputs, checked, structural, atol, rtol) -> list[str]:
    failed = []
    for g in checked:
        cut_model = copy.deepcopy(original)
        apply_plan(cut_model, plan.subset(structural | {g.id}))
        diff, scale = _compare(_reference(original, plan, structural, [g]), cut_model, inputs)
        if diff > atol + rtol * scale:
            failed.append(g.name)
    return failed
