"""Verification of a structural cut by zero-out equivalence.

A copy of the original network gets the removed units zeroed; its outputs must equal the
pruned network's. A normalization over the cut dimension (layer, RMS and group norm modules)
is replaced in that copy by the same normalization over the kept units only, computed here
and not by the surgery, so a wrong cut of a normalized group shows as a difference. Other
statistics over a cut dimension (a softmax or a mean written in the code) cannot be emulated
that way; those groups are cut structurally in the reference too and reported as unchecked.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
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
        checked: names of groups checked by zero-out equivalence (with any normalization
            over their cut computed over the kept units; see ``emulated``).
        unchecked: group name -> why exact equivalence cannot hold (these groups were
            cut structurally in the reference as well, so they are not checked).
        emulated: norm modules the reference replaced by a normalization over the kept
            units (module path -> class name).
        failed: names of groups whose cut changes the outputs.
        message: one sentence for people.
    """

    ok: bool
    max_abs_diff: float
    checked: list[str] = field(default_factory=list)
    unchecked: dict[str, list[str]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    message: str = ""
    emulated: dict[str, str] = field(default_factory=dict)

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
    ``pruned``'s. Layer, RMS and group norm modules normalizing over a cut dimension are
    replaced in the copy by the same normalization over the kept units, computed
    independently of the surgery (each emulation is first checked against the module on
    its real input). Groups whose equivalence cannot be built that way (a softmax or a
    mean over the cut dimension written in the code, a norm of a class not known here)
    are cut structurally in the copy too and reported as unchecked.

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
    structural = {g.id for g in cut if g.unchecked}
    norms: dict[str, torch.Tensor] = {}
    if structural:  # which norm formulas hold is measured once, on the original
        modules = dict(original.named_modules())
        candidates = {g.id: _norm_paths(g, modules) for g in cut if g.unchecked}
        agree = _formulas_agree(original, set().union(*filter(None, candidates.values())),
                                example_inputs)
        structural, norms = _emulated_norms(modules, cut, candidates, agree, set())
    unchecked = {g.name: list(g.unchecked) for g in cut if g.id in structural}
    expected = _outputs(pruned, example_inputs, "the pruned model")
    while True:
        checked = [g for g in cut if g.id not in structural]
        reference = None
        try:
            reference = _reference(original, plan, structural, checked, norms)
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
            structural, norms = _emulated_norms(modules, cut, candidates, agree, structural)
    diff, rel, ok = _judge(got, expected, atol, rtol)
    failed: list[str] = []
    if not ok and locate:
        failed = _locate(original, plan, example_inputs, checked, structural, norms, atol, rtol)
    if ok:
        msg = f"zero-out equivalence holds for {len(checked)} groups (max |diff| {diff:.2e})"
    else:
        msg = (f"outputs differ by {diff:.2e} ({rel:.2e} of the output's scale, tolerance "
               f"{rtol:.0e})" + (f"; groups responsible: {', '.join(failed)}" if failed else ""))
    if norms:
        msg += f"; {len(norms)} norm modules normalized over the kept units"
    if unchecked:
        msg += f"; {len(unchecked)} groups not checkable by zero-out (normalized over the cut)"
    emulated = {p: type(original.get_submodule(p)).__name__ for p in norms}
    return VerifyResult(ok, diff, [g.name for g in checked], unchecked, failed, msg, emulated)


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


def _reference(original: nn.Module, plan: Plan, structural: set[int], zero: list,
               norms: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``original`` with ``structural`` groups cut, ``zero`` groups zeroed and the
    norm modules in ``norms`` normalizing over their kept units only."""
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
    for path, keep in norms.items():
        parent, _, leaf = path.rpartition(".")
        owner = ref.get_submodule(parent) if parent else ref
        setattr(owner, leaf, _KeptNorm(getattr(owner, leaf), keep))
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


def _locate(original, plan: Plan, inputs, checked, structural, norms, atol,
            rtol) -> list[str]:
    """Checked groups whose cut alone (with the structural ones) changes the outputs; a
    group whose partial model does not even run is named with why."""
    failed = []
    for g in checked:
        try:
            cut_model = copy.deepcopy(original)
            apply_plan(cut_model, plan.subset(structural | {g.id}))
            ref = _outputs(_reference(original, plan, structural, [g], _only(norms, g)),
                           inputs)
            ok = _judge(ref, _outputs(cut_model, inputs), atol, rtol)[2]
        except Exception as e:  # groups that share a size attribute cannot be cut alone
            failed.append(f"{g.name} (cannot be checked alone: {type(e).__name__})")
            continue
        if not ok:
            failed.append(g.name)
    return failed


def _only(norms: dict[str, torch.Tensor], group) -> dict[str, torch.Tensor]:
    """The norm emulations ``group`` alone needs: its kept units (others stay)."""
    out = {}
    for path, keep in norms.items():
        mask = _kept_mask(tuple(keep.shape), path, [group])
        if not bool(mask.all()):
            out[path] = mask
    return out


# -- normalization over the kept units ---------------------------------------------------
#
# A norm over a cut dimension computes its statistics over fewer units after the cut, so
# zeroing the removed units in the original does not reproduce it. The reference replaces
# such a norm by the same formula with its statistics taken over the kept units only. The
# formulas are written here, independent of the surgery, and each one is first checked
# against its module on the input that module really receives (with nothing removed): a norm
# of a class whose formula differs (Gemma's ``1 + weight``, say) falls back to a
# structural cut in the reference and its groups are reported as unchecked.


def _layer_norm(m: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(-keep.dim(), 0))
    k = keep.to(x.dtype)
    n = k.sum()
    mean = (x * k).sum(dims, keepdim=True) / n
    var = ((x - mean) * k).pow(2).sum(dims, keepdim=True) / n
    y = (x - mean) * torch.rsqrt(var + m.eps)
    if m.weight is not None:
        y = y * m.weight
    if getattr(m, "bias", None) is not None:
        y = y + m.bias
    return y * k


def _layer_norm_2d(m: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A layer norm over the channels of an (N, C, ...) tensor (timm's and torchvision's
    ``LayerNorm2d``): the channels-last formula on a permuted view."""
    last = x.movedim(1, -1)
    return _layer_norm(m, last, keep).movedim(-1, 1)


def _rms_norm(m: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(-keep.dim(), 0))
    eps = getattr(m, "eps", None)
    if eps is None:
        eps = getattr(m, "variance_epsilon", None)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    k = keep.to(torch.float32)
    h = x.float()
    ms = (h * k).pow(2).sum(dims, keepdim=True) / k.sum()
    y = (h * torch.rsqrt(ms + eps)).to(x.dtype)
    if getattr(m, "weight", None) is not None:
        y = m.weight * y
    return y * keep.to(y.dtype)


def _group_norm(m: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    g = m.num_groups
    rest = x.shape[2:]
    xs = x.reshape(n, g, c // g, *rest)
    k = keep.to(x.dtype).reshape(1, g, c // g, *([1] * len(rest)))
    dims = tuple(range(2, xs.dim()))
    count = (k * torch.ones_like(xs[:1])).sum(dims, keepdim=True).clamp_min(1)
    mean = (xs * k).sum(dims, keepdim=True) / count
    var = ((xs - mean) * k).pow(2).sum(dims, keepdim=True) / count
    y = ((xs - mean) * torch.rsqrt(var + m.eps) * k).reshape(x.shape)
    shape = (1, c, *([1] * len(rest)))
    if m.weight is not None:
        y = y * m.weight.reshape(shape)
    if m.bias is not None:
        y = y + m.bias.reshape(shape)
    return y * keep.to(y.dtype).reshape(shape)


def _formula(module: nn.Module) -> Callable[..., torch.Tensor] | None:
    """The kept-units formula for a norm module, or None for one not known here."""
    if isinstance(module, nn.LayerNorm):  # checked on the module's input before use
        return _layer_norm_2d if type(module).__name__.endswith("2d") else _layer_norm
    if isinstance(module, nn.GroupNorm):
        return _group_norm
    if (isinstance(getattr(module, "weight", None), torch.Tensor)
            and type(module).__name__.endswith("RMSNorm")):
        return _rms_norm  # torch's and the Llama-family ones; checked before use
    return None


class _KeptNorm(nn.Module):
    """A norm module computing its statistics over the kept units ``keep`` only."""

    def __init__(self, inner: nn.Module, keep: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.formula = _formula(inner)
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.formula(self.inner, x, self.keep.to(x.device))


def _weight_of(path: str) -> str:
    return f"{path}.weight" if path else "weight"


def _weight_shape(module: nn.Module) -> tuple[int, ...] | None:
    w = getattr(module, "weight", None)
    return tuple(w.shape) if isinstance(w, torch.Tensor) else None


def _kept_mask(shape: tuple[int, ...], path: str, groups: list) -> torch.Tensor:
    """Kept units of the norm at ``path`` (weight of ``shape``) under ``groups``."""
    name = _weight_of(path)
    mask = torch.ones(shape, dtype=torch.bool)
    for g in groups:
        for d, kept in g.members.get(name, {}).items():
            gone = torch.ones(shape[d], dtype=torch.bool)
            gone[kept] = False
            mask[(slice(None),) * d + (gone,)] = False
    return mask


def _norm_paths(group, modules: dict[str, nn.Module]) -> set[str] | None:
    """The norm modules behind every statistic over ``group``'s cut, or None when one of
    them is not a norm module whose formula is known here (or a plan read from JSON, whose
    reasons are plain text)."""
    paths = {getattr(r, "module", None) for r in group.unchecked}
    known = all(getattr(r, "kind", "") == "unchecked" for r in group.unchecked) and all(
        p in modules and _formula(modules[p]) is not None and _weight_of(p) in group.members
        for p in paths)
    return paths if known else None


def _emulated_norms(modules: dict[str, nn.Module], cut: list,
                    candidates: dict[int, set[str] | None], agree: set[str],
                    structural: set[int]) -> tuple[set[int], dict[str, torch.Tensor]]:
    """Which unchecked groups the reference can check with norms over the kept units.

    A group qualifies when its norm modules (``candidates``) have formulas that agree with
    them (``agree``) and no group cut structurally in the reference touches those modules.
    Returns the groups still cut structurally and, per emulated norm module, its mask of
    kept units.
    """
    structural = set(structural)
    needs = {i: ps for i, ps in candidates.items() if i not in structural}
    structural.update(i for i, ps in needs.items() if ps is None or not ps <= agree)
    while True:
        live_norms = {p for i, ps in needs.items() if i not in structural for p in ps}
        touched = {p for p in live_norms
                   if any(_weight_of(p) in g.members for g in cut if g.id in structural)}
        bad = [i for i, ps in needs.items() if i not in structural and ps & touched]
        if not bad:
            break
        structural.update(bad)
    live = [g for g in cut if g.id not in structural]
    return structural, {p: _kept_mask(_weight_shape(modules[p]), p, live)
                        for p in sorted(live_norms)}


def _formulas_agree(original: nn.Module, paths: set[str], inputs: Any) -> set[str]:
    """Norm modules whose kept-units formula, with every unit kept, reproduces the module
    on the input it receives from ``inputs``."""
    if not paths:
        return set()
    seen: dict[str, bool] = {}

    def hook(path):
        def check(module, args, out):
            if path in seen:  # the first call decides
                return
            x = args[0] if args else None
            seen[path] = isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and \
                _agrees(_formula(module)(module, x, torch.ones(
                    _weight_shape(module), dtype=torch.bool, device=x.device)), out)
        return check

    handles = [original.get_submodule(p).register_forward_hook(hook(p)) for p in paths]
    try:
        with torch.no_grad():
            _outputs(original, inputs)
    except Exception:
        return set()
    finally:
        for h in handles:
            h.remove()
    return {p for p, ok in seen.items() if ok}


def _agrees(mine: torch.Tensor, want: torch.Tensor) -> bool:
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    return mine.shape == want.shape and float((mine - want).detach().abs().max()) \
        <= 1e-6 + 1e-5 * scale
