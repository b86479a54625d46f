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
    atol: float = 1e-6,
    rtol: float = 1e-4,
    locate: bool = True,
) -> VerifyResult:
    """Check a structural cut by zero-out equivalence.

    A copy of ``original`` gets the removed units zeroed (every tensor slice of every
    cut group: producers, norms and what they feed); its outputs must equal
    ``pruned``'s. Groups whose equivalence cannot hold exactly (a norm or mean over
    the cut dimension) are cut structurally in the copy too and reported as unchecked.

    Each output is compared relative to its own scale: ``|diff| <= atol + rtol * max|ref|``,
    so a change of small outputs is not hidden by an absolute tolerance.

    Args:
        original: the model before pruning (not changed).
        pruned: the pruned model.
        plan: the plan that was applied.
        example_inputs: inputs for both models.
        atol: absolute floor of the tolerance (float noise of outputs near zero).
        rtol: tolerance relative to the largest magnitude of each reference output.
        locate: on a mismatch, find the groups responsible (one extra run per group).

    Returns:
        A :class:`VerifyResult` (truthy when the check passed).

    Raises:
        ConfigError: the arguments do not fit together (a model the plan was not made
            for, inputs the original does not accept, NaN or infinite weights), named.
    """
    _check_args(original, pruned, plan, example_inputs)
    cut = [g for g in plan.groups if g.removed]
    unchecked = {g.name: list(g.unchecked) for g in cut if g.unchecked}
    structural = {g.id for g in cut if g.unchecked}
    expected = _outputs(pruned, example_inputs, "the pruned model")
    while True:
        checked = [g for g in cut if g.id not in structural]
        reference = None
        try:
            reference = _reference(original, plan, structural, checked)
            got = _outputs(reference, example_inputs)
            break
        except Exception as e:  # sizes in the code tie some checked groups to structural ones
            tied = _tied_groups(e, reference or original, checked)
            if not tied:
                return _not_ok(f"the reference with the removed units zeroed does not run "
                               f"({type(e).__name__}: {_first_line(e)})", cut, unchecked)
            for g in tied:
                structural.add(g.id)
                unchecked[g.name] = [f"cut together with groups normalized over their cut "
                                     f"({type(e).__name__} without it)"]
    diff, rel, ok = _judge(got, expected, atol, rtol)
    failed: list[str] = []
    if not ok and locate:
        failed = _locate(original, plan, example_inputs, checked, structural, atol, rtol)
    if ok:
        msg = f"zero-out equivalence holds for {len(checked)} groups (max |diff| {diff:.2e})"
    else:
        msg = (f"outputs differ by {diff:.2e} ({rel:.2e} of the output's scale, tolerance "
               f"{rtol:.0e})" + (f"; groups responsible: {', '.join(failed)}" if failed else ""))
    if unchecked:
        msg += f"; {len(unchecked)} groups not checkable by zero-out (normalized over the cut)"
    return VerifyResult(ok, diff, [g.name for g in checked], unchecked, failed, msg)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _not_ok(why: str, cut: list, unchecked: dict) -> VerifyResult:
    names = [g.name for g in cut]
    return VerifyResult(False, math.inf, [], unchecked, names,
                        f"{why}; groups cut: {', '.join(names) or 'none'}")


def _check_args(original: Any, pruned: Any, plan: Any, inputs: Any) -> None:
    """Refuse arguments that do not fit together, naming the mismatch."""
    for what, m in (("original", original), ("pruned", pruned)):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"verify needs the {what} model as an nn.Module, got "
                              f"{type(m).__name__}")
    if not isinstance(plan, Plan):
        raise ConfigError(f"verify needs the Plan that was applied, got {type(plan).__name__}")
    for what, model, new in (("original", original, False), ("pruned", pruned, True)):
        tensors = _tensors(model)
        for name, cut in plan.tensors.items():
            want = cut.new_shape if new else tuple(cut.shape)
            t = tensors.get(plan.aliases.get(name, name))
            if t is None or tuple(t.shape) != want:
                got = "missing" if t is None else f"of shape {tuple(t.shape)}"
                raise ConfigError(
                    f"the {what} model does not match the plan: {name} is {got}, the plan "
                    f"expects {want}; pass the model the plan was made for"
                    + (" (before pruning)" if not new else " (after pk.apply)"))
        bad = next((n for n, t in tensors.items() if t.is_floating_point()
                    and t.device.type != "meta" and not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            raise ConfigError(f"the {what} model has NaN or infinite values in {bad}; "
                              "zero-out equivalence cannot be checked on them")


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(dict(model.named_buffers(remove_duplicate=False)))
    return out


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


def _outputs(model: nn.Module, inputs: Any, what: str | None = None) -> list[torch.Tensor]:
    """Floating outputs; with ``what``, a failure or a NaN output is a ConfigError naming it."""
    try:
        with tracing_state(model):
            out = [t.detach().float() for t in flatten_tensors(run_model(model, inputs))
                   if t.is_floating_point()]
    except Exception as e:
        if what is None:
            raise
        raise ConfigError(f"{what} fails on example_inputs ({type(e).__name__}: "
                          f"{_first_line(e)}); pass inputs the original model accepts") from e
    if what is not None and any(not bool(torch.isfinite(t).all()) for t in out):
        raise ConfigError(f"{what} returns NaN or infinite outputs on example_inputs; "
                          "check the inputs (zero-out equivalence needs finite outputs)")
    return out


def _tied_groups(error: Exception, model: nn.Module, checked: list) -> list:
    """Checked groups whose tensors live in the module where ``error`` was raised (else all;
    none when nothing is left to tie)."""
    paths = {id(m): n for n, m in model.named_modules()}
    where, tb = None, error.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in paths:
            where = paths[id(obj)]
        tb = tb.tb_next
    if not checked:
        return []
    if where is None or not where:
        return checked
    prefix = f"{where}." if where else ""
    near = [g for g in checked if any(n.startswith(prefix) for n in g.members)]
    return near or checked


def _judge(ref: list[torch.Tensor], got: list[torch.Tensor], atol: float,
           rtol: float) -> tuple[float, float, bool]:
    """Largest absolute difference, largest difference relative to its output's scale, and
    whether every output is within ``atol + rtol * max|ref|``."""
    if [t.shape for t in ref] != [t.shape for t in got]:
        return math.inf, math.inf, False
    diff = rel = 0.0
    ok = True
    for r, g in zip(ref, got, strict=True):
        if not r.numel():
            continue
        d, scale = float((r - g).abs().max()), float(r.abs().max())
        diff, rel = max(diff, d), max(rel, d / scale if scale else (0.0 if d == 0 else math.inf))
        ok = ok and d <= atol + rtol * scale
    return diff, rel, ok


def _locate(original, plan: Plan, inputs, checked, structural, atol, rtol) -> list[str]:
    """Checked groups whose cut alone (with the structural ones) changes the outputs; a
    group whose partial model does not even run is named with why."""
    failed = []
    for g in checked:
        try:
            cut_model = copy.deepcopy(original)
            apply_plan(cut_model, plan.subset(structural | {g.id}))
            ref = _outputs(_reference(original, plan, structural, [g]), inputs)
            ok = _judge(ref, _outputs(cut_model, inputs), atol, rtol)[2]
        except Exception as e:  # groups that share a size attribute cannot be cut alone
            failed.append(f"{g.name} (cannot be checked alone: {type(e).__name__})")
            continue
        if not ok:
            failed.append(g.name)
    return failed
