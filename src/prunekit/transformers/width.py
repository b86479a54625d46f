"""Attention heads and MLP channels of a pretrained decoder, scored on calibration data,
cut through the plan / apply engine, with the removed units' contribution compensated.

Compensation (``compensate=``) changes the layer that consumes the removed units
(``o_proj``, ``down_proj``), on the dense model's calibration statistics:

- ``"bias"``: the removed inputs' mean contribution ``W[:, R] @ E[x_R]`` is added to the
  layer's bias (FLAP's bias compensation, An et al. 2024, "Fluctuation-based Adaptive
  Structured Pruning for Large Language Models").
- ``"lstsq"``: the kept columns (and the bias) are refitted by ridge-damped least squares
  to the dense layer's outputs, ``min ||W~ x~ - W'_S x~_S||^2`` over calibration tokens,
  with ``x~ = [x; 1]`` when the layer has or may get a bias.
- ``"none"``: no change.

A layer without a bias gets one only when the model's config has a switch that builds
it (``mlp_bias``, ``attention_bias``): the switch is turned on, so that
``save_pretrained`` / ``from_pretrained`` round-trips, and the other layers it adds a bias
to get zeros. Otherwise the bias part is skipped and ``plan.info["compensation"]`` says so.

Query heads inside key/value groups (``query_ratio``) are cut by
:mod:`prunekit.transformers.query_heads` before the engine's cut of whole groups and MLP
channels; the two plans are composed into one.

Example:
    >>> from prunekit.transformers import prune_width
    >>> plan = prune_width(model, batches, attention_ratio=1/3, mlp_ratio=0.3,
    ...                    criterion="flap", compensate="bias")
    >>> plan = prune_width(model, batches, query_ratio=1/3)  # 9/3 heads -> 6/3
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import structured as _st
from .._registry import Registry
from ..errors import ConfigError
from ..importance.group_activation import InputStats, collect_input_stats, list_group_activation
from ..surgery import Plan
from ..surgery.apply import apply_undoable
from ..surgery.compose import compose
from . import query_heads as _qh
from ._model import first_batch, hf_config, part_patterns, small_example, take

_COMPENSATIONS: Registry[Callable] = Registry("compensation")


@dataclass
class _Undo:
    """What to put back if a later step fails."""

    biases: list[nn.Linear] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    tensors: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    applied: list[Callable[[], None]] = field(default_factory=list)

    def __call__(self, cfg: Any) -> None:
        for restore in reversed(self.applied):  # the old tensors first, then their values
            restore()
        with torch.no_grad():
            for t, old in self.tensors:
                t.copy_(old)
        for m in self.biases:
            m.bias = None
        for k, v in self.flags.items():
            setattr(cfg, k, v)


def prune_width(
    model: nn.Module,
    data: Iterable,
    *,
    ratio: float | None = None,
    attention_ratio: float | None = None,
    mlp_ratio: float | None = None,
    query_ratio: float | None = None,
    target_params: float | None = None,
    criterion: str = "flap",
    scope: str = "layer",
    max_ratio: float = 0.9,
    compensate: str = "bias",
    damp: float = 0.01,
    round_to: int = 1,
    batches: int | None = None,
    check: bool | str = True,
) -> Plan:
    """Remove attention heads (key/value groups, or query heads inside them) and MLP
    channels, in place.

    The residual width (``hidden_size``) is kept. Scores come from calibration activations
    (``criterion``: ``flap`` or ``wanda``, see :mod:`prunekit.importance.group_activation`).

    Args:
        model: a Hugging Face decoder (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ...).
        data: calibration batches: token ids ``(B, T)`` or dicts of model inputs.
        ratio: fraction of heads and of MLP channels removed in each block (0.2 default).
        attention_ratio: fraction of heads (key/value groups) removed; overrides ``ratio``.
        mlp_ratio: fraction of MLP channels removed; overrides ``ratio``.
        query_ratio: under grouped-query attention, the fraction of query heads removed
            inside every key/value group (the same count in every group and block; the
            key/value heads stay): ``1/3`` takes SmolLM2 from 9/3 to 6/3 heads. Cut first,
            then ``attention_ratio`` / ``mlp_ratio`` on what is left; given alone (no
            ``ratio``), nothing else is cut. Refused for models without GQA (use
            ``attention_ratio``) and with ``target_params``.
        target_params: instead of ratios, the fraction of the model's parameters to remove
            (one ratio for heads and channels, searched).
        criterion: ``flap`` (default) or ``wanda``.
        scope: ``"layer"`` (the same ratio in every block: the result reloads with
            ``from_pretrained``) or ``"global"`` (units ranked across blocks).
        max_ratio: with ``scope="global"`` or a target, the most any group loses.
        compensate: ``"bias"``, ``"lstsq"`` or ``"none"`` (see the module docstring).
        damp: ridge dampening of ``lstsq``, relative to the mean diagonal of the Gram matrix.
        round_to: kept channel counts are multiples of this (8 suits CPU and GPU kernels).
        batches: use at most this many calibration batches.
        check: as for :func:`prunekit.plan`.

    Returns:
        The applied :class:`~prunekit.Plan`; ``plan.info["compensation"]`` says what was
        compensated and where a bias could not be added.
    """
    ratios = _ratios(ratio, attention_ratio, mlp_ratio, target_params, query_ratio)
    _check(criterion, scope, compensate, damp)
    cfg = hf_config(model)
    batch_list = take(data, batches)
    undo = _Undo()
    cuts: list[tuple[Plan, dict[str, Any]]] = []
    try:
        if ratios.get("query"):
            cuts.append(_cut_query_heads(model, batch_list, ratios["query"], criterion,
                                         compensate, damp, undo))
        if not cuts or any(ratios.get(k) for k in ("attention", "mlp", "target")):
            cuts.append(_cut_groups(model, batch_list, ratios, criterion, scope, max_ratio,
                                    compensate, damp, round_to, check, undo))
    except BaseException:
        undo(cfg)
        raise
    plan = cuts[0][0]
    if len(cuts) == 2:  # query heads, then groups and channels: one plan from the original
        plan = compose(cuts[0][0], cuts[1][0])
    notes = [n for _, n in cuts]
    plan.info["compensation"] = {"method": compensate, **_merged_notes(notes),
                                 **({"bias_switched_on": sorted(undo.flags)} if undo.flags else {})}
    return plan


def _cut_query_heads(model: nn.Module, batches: list, ratio: float, criterion: str,
                     compensate: str, damp: float, undo: _Undo) -> tuple[Plan, dict[str, Any]]:
    """Remove the same number of query heads from every key/value group; applied."""
    heads = _qh.heads_of(model)
    keep = _qh.keep_per_group(heads, ratio)
    paths = _qh.check_modules(model, heads)
    consumers = [f"{p}.o_proj" for p in paths]
    stats = collect_input_stats(model, consumers, batches, gram=compensate == "lstsq")
    _reached(stats, consumers)
    kept = {p: _qh.kept_heads(model.get_submodule(c), stats[c], heads, keep, criterion)
            for p, c in zip(paths, consumers, strict=True)}
    if compensate != "none":
        _add_biases(model, consumers, undo)
    plan = _qh.query_plan(model, kept, heads, keep, {
        "criterion": criterion, "ratio": ratio, "scope": "layer",
        "model": type(model).__name__, "unit": _qh.UNIT})
    notes = _COMPENSATIONS.get(compensate)(model, plan, stats, consumers, undo=undo, damp=damp)
    undo.applied.append(apply_undoable(model, plan))
    return plan, notes


def _cut_groups(model, batch_list, ratios, criterion, scope, max_ratio, compensate, damp,
                round_to, check, undo) -> tuple[Plan, dict[str, Any]]:
    """Whole key/value groups and MLP channels through the plan / apply engine; applied."""
    parts = part_patterns(model)
    ignore = _ignored(model, parts, ratios)
    example = small_example(first_batch(batch_list))
    graph = _st.trace(model, example)
    consumers = _consumers(model, _probe(graph, ratios, parts, ignore))
    stats = collect_input_stats(model, consumers, batch_list, gram=compensate == "lstsq")
    if compensate != "none":
        _add_biases(model, consumers, undo)
    if undo.biases:  # the new biases are cut with their heads: trace them too
        graph = _st.trace(model, example)
    plan = _plan(graph, ratios, parts, ignore, criterion, scope, max_ratio, batch_list,
                 check, round_to)
    cut = _consumers(model, plan)
    notes = _COMPENSATIONS.get(compensate)(model, plan, stats, cut, undo=undo, damp=damp)
    _st.apply(model, plan)
    return plan, notes


def _reached(stats: dict[str, InputStats], paths: list[str]) -> None:
    missing = [p for p in paths if p not in stats]
    if missing:
        raise ConfigError(f"calibration data never reached {', '.join(missing[:3])}; pass "
                          "batches that run through the whole model")


def _merged_notes(notes: list[dict[str, Any]]) -> dict[str, Any]:
    """Compensation notes of several cuts as one."""
    out: dict[str, Any] = {"biased_layers": sum(n.get("biased_layers", 0) for n in notes)}
    skipped = [p for n in notes for p in n.get("bias_not_possible", [])]
    if skipped:
        out["bias_not_possible"] = list(dict.fromkeys(skipped))
        out["note"] = next(n["note"] for n in notes if "note" in n)
    return out


def _ratios(ratio, attention_ratio, mlp_ratio, target_params, query_ratio) -> dict[str, float]:
    query = {} if query_ratio is None else {"query": _fraction("query", query_ratio)}
    if query and target_params is not None:
        raise ConfigError("query_ratio cannot be combined with target_params (a searched "
                          "ratio); cut the query heads first with prune_width(query_ratio=...), "
                          "then call prune_width(target_params=...) on the result")
    if target_params is not None:
        if any(r is not None for r in (ratio, attention_ratio, mlp_ratio)):
            raise ConfigError("give either target_params or ratios, not both")
        if not isinstance(target_params, (int, float)) or not 0 < target_params < 1:
            raise ConfigError(f"target_params must be a fraction in (0, 1), got {target_params!r}")
        return {"target": float(target_params)}
    base = ratio if ratio is not None else 0.0 if query else 0.2
    out = {"attention": base if attention_ratio is None else attention_ratio,
           "mlp": base if mlp_ratio is None else mlp_ratio}
    return {k: _fraction(k, r) for k, r in out.items()} | query


def _fraction(kind: str, r: Any) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
        raise ConfigError(f"{kind} ratio must be a fraction in [0, 1), got {r!r}")
    return float(r)


def _check(criterion: str, scope: str, compensate: str, damp: float) -> None:
    if criterion not in list_group_activation():
        raise ConfigError(f"unknown criterion {criterion!r} for prune_width; valid: "
                          f"{', '.join(list_group_activation())}")
    _COMPENSATIONS.get(compensate)
    if scope not in ("layer", "global"):
        raise ConfigError(f"unknown scope {scope!r}; valid scopes: layer, global")
    if not isinstance(damp, (int, float)) or damp < 0:
        raise ConfigError(f"damp must be a non-negative number, got {damp!r}")


def _ignored(model: nn.Module, parts: dict[str, str], ratios: dict[str, float]) -> list:
    """The embeddings (keeps the residual width) and the parts whose ratio is 0."""
    ignore: list = [model.get_input_embeddings()]
    for kind, pattern in parts.items():
        if ratios.get(kind, 1.0) == 0:
            ignore.append(pattern)
    missing = [k for k in ("attention", "mlp") if k not in parts and ratios.get(k, 1.0) > 0]
    if missing and len(missing) == 2:
        raise ConfigError(f"no attention or MLP found in the blocks of {type(model).__name__}")
    return ignore


def _consumers(model: nn.Module, plan: Plan) -> list[str]:
    """Linears whose input columns the plan cuts (o_proj, down_proj, ...)."""
    out = []
    for name, cut in plan.tensors.items():
        path, _, local = name.rpartition(".")
        if local == "weight" and 1 in cut.kept and len(cut.kept[1]) < cut.shape[1] and \
                isinstance(model.get_submodule(path), nn.Linear):
            out.append(path)
    return sorted(out)


def _probe(graph: Any, ratios: dict[str, float], parts: dict[str, str], ignore: list) -> Plan:
    """A cheap plan that cuts every candidate group, to learn which layers consume them."""
    live = {k: 0.5 for k in ("attention", "mlp") if k in parts and ratios.get(k, 1.0) > 0}
    return _st.plan(graph, ratio=0.0, ratios={parts[k]: r for k, r in live.items()},
                    criterion="random", ignore=ignore, check=False)


def _plan(graph, ratios, parts, ignore, criterion, scope, max_ratio, batches, check,
          round_to) -> Plan:
    common = {"criterion": criterion, "ignore": ignore, "data": batches, "round_to": round_to,
              "batches": len(batches), "check": check, "max_ratio": max_ratio}
    if "target" in ratios:
        return _st.plan(graph, target={"params": ratios["target"]}, **common)
    if scope == "global":
        live = [r for r in (ratios.get("attention"), ratios.get("mlp")) if r]
        return _st.plan(graph, ratio=max(live) if live else 0.0, scope="global", **common)
    per = {parts[k]: ratios[k] for k in ("attention", "mlp") if k in parts}
    return _st.plan(graph, ratio=0.0, ratios=per, **common)


# -- biases ---------------------------------------------------------------------------------
def bias_switches(model: nn.Module, paths: Iterable[str]) -> dict[str, str]:
    """Config switches that give each Linear of ``paths`` a bias: path -> switch name.

    A switch is a boolean config field ending in ``_bias`` that is off; it counts when a
    model of the same class built (on the meta device) with it on has a bias there.
    """
    cfg = hf_config(model)
    paths = [p for p in paths if model.get_submodule(p).bias is None]
    out: dict[str, str] = {}
    for flag in _off_switches(cfg):
        built = _built_with(model, flag)
        if built is None:
            continue
        for p in paths:
            if p not in out and _has_bias(built, p):
                out[p] = flag
    return out


def _off_switches(cfg: Any) -> list[str]:
    return sorted(k for k, v in cfg.to_dict().items() if k.endswith("_bias") and v is False)


def _built_with(model: nn.Module, flag: str) -> nn.Module | None:
    cfg = copy.deepcopy(hf_config(model))
    setattr(cfg, flag, True)
    try:
        with torch.device("meta"):
            return type(model)(cfg)
    except Exception:  # a class that cannot be built from its config: no switch to use
        return None


def _has_bias(model: nn.Module, path: str) -> bool:
    try:
        return getattr(model.get_submodule(path), "bias", None) is not None
    except AttributeError:
        return False


def _add_biases(model: nn.Module, consumers: list[str], undo: _Undo) -> None:
    """Turn on the switches the consumers need and add zero biases where they build one."""
    cfg = hf_config(model)
    for flag in sorted(set(bias_switches(model, consumers).values())):
        built = _built_with(model, flag)
        for path, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.bias is None and _has_bias(built, path):
                w = module.weight
                module.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype,
                                                       device=w.device))
                undo.biases.append(module)
        undo.flags[flag] = getattr(cfg, flag)
        setattr(cfg, flag, True)


# -- compensation ---------------------------------------------------------------------------
def _removed_columns(plan: Plan, path: str, size: int) -> tuple[list[int], list[int]] | None:
    cut = plan.tensors.get(f"{path}.weight")
    if cut is None or 1 not in cut.kept or len(cut.kept[1]) == size:
        return None
    kept = cut.kept[1]
    keep_set = set(kept)
    return kept, [i for i in range(size) if i not in keep_set]


def _write(undo: _Undo, target: torch.Tensor, value: torch.Tensor) -> None:
    undo.tensors.append((target, target.detach().clone()))
    with torch.no_grad():
        target.copy_(value.to(target.dtype))


@_COMPENSATIONS.register("none")
def _no_compensation(model, plan, stats, consumers, *, undo, damp) -> dict[str, Any]:
    return {}


@_COMPENSATIONS.register("bias")
def fold_bias(model: nn.Module, plan: Plan, stats: dict[str, InputStats], consumers: list[str],
              *, undo: _Undo, damp: float = 0.0) -> dict[str, Any]:
    """Add the removed inputs' mean contribution to each consumer's bias (FLAP)."""
    folded, skipped = [], []
    for path in consumers:
        layer = model.get_submodule(path)
        cols = _removed_columns(plan, path, layer.in_features)
        if cols is None:
            continue
        if layer.bias is None:
            skipped.append(path)
            continue
        _, removed = cols
        w = layer.weight.detach().to("cpu", torch.float64)
        shift = w[:, removed] @ stats[path].mean[removed]  # (out,)
        _write(undo, layer.bias, layer.bias.detach().double().cpu().add(shift))
        folded.append(path)
    return _notes(folded, skipped)


@_COMPENSATIONS.register("lstsq")
def least_squares(model: nn.Module, plan: Plan, stats: dict[str, InputStats],
                  consumers: list[str], *, undo: _Undo, damp: float = 0.01) -> dict[str, Any]:
    """Refit each consumer's kept columns (and bias) to the dense outputs, ridge-damped."""
    folded, skipped = [], []
    for path in consumers:
        layer = model.get_submodule(path)
        cols = _removed_columns(plan, path, layer.in_features)
        if cols is None:
            continue
        kept, _ = cols
        w_new, b_new = _refit(layer, stats[path], kept, damp)
        full = layer.weight.detach().to("cpu", torch.float64).clone()
        full[:, kept] = w_new
        _write(undo, layer.weight, full)
        if b_new is not None:
            _write(undo, layer.bias, b_new)
            folded.append(path)
        else:
            skipped.append(path)
    return _notes(folded, skipped)


def _refit(layer: nn.Linear, st: InputStats, kept: list[int], damp: float
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Solve ``(G_SS + lam I) W'_S^T = G_S: W~^T`` on augmented inputs ``x~ = [x; 1]``."""
    n = layer.in_features
    gram = torch.zeros(n + 1, n + 1, dtype=torch.float64)  # E[x~ x~^T], (in+1, in+1)
    gram[:n, :n] = st.gram
    gram[:n, n] = gram[n, :n] = st.total
    gram[n, n] = st.rows
    gram /= max(st.rows, 1)
    w = layer.weight.detach().to("cpu", torch.float64)
    b = (layer.bias.detach().to("cpu", torch.float64) if layer.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    w_aug = torch.cat([w, b[:, None]], dim=1)  # (out, in+1)
    sel = list(kept) + ([n] if layer.bias is not None else [])
    g_ss = gram[sel][:, sel]
    lam = damp * float(g_ss.diagonal()[: len(kept)].mean())
    g_ss = g_ss + lam * torch.eye(len(sel), dtype=torch.float64)
    rhs = gram[sel] @ w_aug.T  # (|S|, out)
    sol = torch.linalg.solve(g_ss, rhs).T  # (out, |S|)
    return sol[:, : len(kept)], (sol[:, len(kept)] if layer.bias is not None else None)


def _notes(folded: list[str], skipped: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"biased_layers": len(folded)}
    if skipped:
        out["bias_not_possible"] = skipped
        out["note"] = ("these layers have no bias and the model's config has no switch that "
                       "builds one, so their removed inputs' mean was not folded")
    return out
