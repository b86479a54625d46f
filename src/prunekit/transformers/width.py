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

Example:
    >>> from prunekit.transformers import prune_width
    >>> plan = prune_width(model, batches, attention_ratio=1/3, mlp_ratio=0.3,
    ...                    criterion="flap", compensate="bias")
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
from ._model import first_batch, hf_config, part_patterns, small_example, take

_COMPENSATIONS: Registry[Callable] = Registry("compensation")


@dataclass
class _Undo:
    """What to put back if a later step fails."""

    biases: list[nn.Linear] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    tensors: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __call__(self, cfg: Any) -> None:
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
    """Remove attention heads (whole key/value groups under GQA) and MLP channels, in place.

    The residual width (``hidden_size``) is kept. Scores come from calibration activations
    (``criterion``: ``flap`` or ``wanda``, see :mod:`prunekit.importance.group_activation`).

    Args:
        model: a Hugging Face decoder (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ...).
        data: calibration batches: token ids ``(B, T)`` or dicts of model inputs.
        ratio: fraction of heads and of MLP channels removed in each block (0.2 default).
        attention_ratio: fraction of heads (key/value groups) removed; overrides ``ratio``.
        mlp_ratio: fraction of MLP channels removed; overrides ``ratio``.
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
    ratios = _ratios(ratio, attention_ratio, mlp_ratio, target_params)
    _check(criterion, scope, compensate, damp)
    cfg = hf_config(model)
    batch_list = take(data, batches)
    parts = part_patterns(model)
    ignore = _ignored(model, parts, ratios)
    undo = _Undo()
    example = small_example(first_batch(batch_list))
    try:
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
    except BaseException:
        undo(cfg)
        raise
    plan.info["compensation"] = {"method": compensate, **notes,
                                 **({"bias_switched_on": sorted(undo.flags)} if undo.flags else {})}
    return plan


def _ratios(ratio, attention_ratio, mlp_ratio, target_params) -> dict[str, float]:
    if target_params is not None:
        if any(r is not None for r in (ratio, attention_ratio, mlp_ratio)):
            raise ConfigError("give either target_params or ratios, not both")
        if not isinstance(target_params, (int, float)) or not 0 < target_params < 1:
            raise ConfigError(f"target_params must be a fraction in (0, 1), got {target_params!r}")
        return {"target": float(target_params)}
    base = 0.2 if ratio is None else ratio
    out = {"attention": base if attention_ratio is None else attention_ratio,
           "mlp": base if mlp_ratio is None else mlp_ratio}
    for k, r in out.items():
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConfigError(f"{k} ratio must be a fraction in [0, 1), got {r!r}")
    return out


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
