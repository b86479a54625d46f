"""Mixture-of-experts: whole experts and each expert's hidden width as prunable units.

Hugging Face stores a layer's experts as two 3-D tensors, ``gate_up_proj`` (experts,
2 x width, hidden) and ``down_proj`` (experts, hidden, width), routed by a router whose
``weight`` has one row per expert. The tracer cannot follow the routing (``topk``,
grouped matmuls), so the experts are cut here directly, with statistics from
calibration data:

- experts are ranked by the routing mass they receive (the sum of their routing weights
  over calibration tokens, ``criterion="routing"``) or by how often they are chosen
  (``"frequency"``), the usage-based expert pruning of Muzio et al. 2024 ("SEER-MoE") and
  Lu et al. 2024 ("Not All Experts are Equal"); the same number is kept in every layer so
  that the config describes the result;
- each kept expert's hidden channels are ranked Wanda-style, ``||w_route * h_j||_2 *
  sum_i |W_down[i, j]|`` over the tokens routed to it, and the same number is kept in
  every expert (each expert keeps its own channels).

The router rows of removed experts go, ``num_experts`` / ``intermediate_dim`` attributes
and the config (``num_local_experts`` or ``num_experts``, ``intermediate_size`` or
``moe_intermediate_size``) follow, so ``save_pretrained`` / ``from_pretrained``
round-trips. Routing among the kept experts is the router's own: top-k of a softmax over
the kept experts' logits.

Example:
    >>> cut = prune_experts(model, batches, expert_ratio=0.5, width_ratio=0.25)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from ..errors import ConfigError
from ..importance.group_activation import model_inputs, run_model
from ._model import hf_config, take

_EXPERT_SCORES: Registry[str] = Registry("expert criterion")
_EXPERT_SCORES.register("routing")("mass")
_EXPERT_SCORES.register("frequency")("count")
_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")
_WIDTH_FIELDS = ("moe_intermediate_size", "intermediate_size")


@dataclass
class MoELayer:
    """One mixture-of-experts layer found in the model."""

    path: str
    experts: nn.Module
    router: nn.Module

    @property
    def count(self) -> int:
        return int(self.experts.gate_up_proj.shape[0])

    @property
    def width(self) -> int:
        return int(self.experts.down_proj.shape[2])


@dataclass
class MoECut:
    """What :func:`prune_experts` removed.

    Attributes:
        kept_experts: layer path -> kept expert indices.
        kept_channels: layer path -> per kept expert, its kept hidden channels.
        params_before: parameters of the model before.
        params_after: parameters after.
        config: config fields rewritten -> new value.
    """

    kept_experts: dict[str, list[int]] = field(default_factory=dict)
    kept_channels: dict[str, list[list[int]]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    config: dict[str, int] = field(default_factory=dict)


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every module holding fused 3-D expert weights, with the router beside it."""
    out = []
    for path, module in model.named_modules():
        gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if not (isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor)
                and gu.dim() == 3 and down.dim() == 3):
            continue
        _check_layout(path, module)
        out.append(MoELayer(path, module, _router(model, path, gu.shape[0])))
    return out


def _check_layout(path: str, experts: nn.Module) -> None:
    if (not getattr(experts, "is_concatenated", True) or getattr(experts, "is_transposed", False)
            or getattr(experts, "has_bias", False)):
        raise ConfigError(f"experts at {path} use a layout prunekit does not cut (interleaved, "
                          "transposed or biased expert weights); only [gate; up] x hidden "
                          "without bias is supported")


def _router(model: nn.Module, path: str, count: int) -> nn.Module:
    parent_path = path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    for name, child in parent.named_children():
        w = getattr(child, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == count and \
                name in ("gate", "router"):
            return child
    raise ConfigError(f"no router found beside the experts at {path} (expected a 'gate' or "
                      f"'router' child with {count} weight rows)")


def prune_experts(
    model: nn.Module,
    data: Iterable,
    *,
    expert_ratio: float = 0.5,
    width_ratio: float = 0.0,
    criterion: str = "routing",
    round_to: int = 8,
    batches: int | None = None,
) -> MoECut:
    """Remove experts and expert hidden channels of every MoE layer, in place.

    Args:
        model: a Hugging Face mixture-of-experts model (Mixtral, Qwen2-MoE, ...).
        data: calibration batches (token ids or dicts of model inputs).
        expert_ratio: fraction of each layer's experts removed (at least ``top_k`` stay).
        width_ratio: fraction of each kept expert's hidden channels removed.
        criterion: ``"routing"`` (routing mass) or ``"frequency"`` (times chosen).
        round_to: kept expert widths are a multiple of this (8 by default: the grouped
            matmul kernels transformers uses for experts need rows of 16-byte multiples).
        batches: use at most this many calibration batches.

    Returns:
        A :class:`MoECut`.
    """
    cfg = hf_config(model)
    _EXPERT_SCORES.get(criterion)
    for name, r in (("expert_ratio", expert_ratio), ("width_ratio", width_ratio)):
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConfigError(f"{name} must be a fraction in [0, 1), got {r!r}")
    layers = moe_layers(model)
    if not layers:
        raise ConfigError(f"no mixture-of-experts layers recognised in {type(model).__name__} "
                          "(fused gate_up_proj / down_proj expert weights)")
    count, width = layers[0].count, layers[0].width
    keep_e = count - round(count * expert_ratio)
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    keep_w = _rounded(width - width * width_ratio, width, round_to)
    top_k = int(getattr(layers[0].router, "top_k", getattr(cfg, "num_experts_per_tok", 1)))
    if keep_e < top_k:
        raise ConfigError(f"expert_ratio {expert_ratio} keeps {keep_e} experts, fewer than the "
                          f"{top_k} each token is routed to; lower it")
    stats = _calibrate(model, layers, take(data, batches), want_width=keep_w < width)
    before = sum(p.numel() for p in model.parameters())
    cut = MoECut(params_before=before)
    new = {}
    for layer in layers:
        kept = _top(stats[layer.path][_EXPERT_SCORES.get(criterion)], keep_e)
        channels = [_top(stats[layer.path]["width"][e], keep_w) if keep_w < width
                    else list(range(width)) for e in kept]
        cut.kept_experts[layer.path], cut.kept_channels[layer.path] = kept, channels
        new[layer.path] = _new_tensors(layer, kept, channels)
    cut.config = _config_changes(cfg, count, width, keep_e, keep_w)
    for layer in layers:  # nothing above changed the model; from here on nothing can fail
        _swap(layer, new[layer.path], keep_e, keep_w)
    for k, v in cut.config.items():
        setattr(cfg, k, v)
    cut.params_after = sum(p.numel() for p in model.parameters())
    return cut


def _rounded(keep: float, width: int, round_to: int) -> int:
    """``keep`` rounded to a multiple of ``round_to`` (at least one multiple, at most width)."""
    if keep >= width:
        return width
    return min(width, max(round_to, int(round(keep / round_to)) * round_to))


def _top(scores: torch.Tensor, k: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def _calibrate(model: nn.Module, layers: list[MoELayer], batches: list, *,
               want_width: bool) -> dict[str, dict[str, Any]]:
    stats = {m.path: {"mass": torch.zeros(m.count, dtype=torch.float64),
                      "count": torch.zeros(m.count, dtype=torch.float64),
                      "width": torch.zeros(m.count, m.width, dtype=torch.float64)}
             for m in layers}
    hooks = [m.experts.register_forward_pre_hook(_usage_hook(m, stats[m.path], want_width),
                                                 with_kwargs=True) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                run_model(model, model_inputs(batch))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m in layers:
        st = stats[m.path]
        down = m.experts.down_proj.detach().to("cpu", torch.float64).abs().sum(1)  # (E, width)
        st["width"] = st["width"].sqrt() * down
    return stats


def _usage_hook(layer: MoELayer, st: dict[str, Any], want_width: bool):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        names = ("hidden_states", "top_k_index", "top_k_weights")
        values = list(args) + [kwargs[n] for n in names[len(args):]]
        x, index, weights = values[:3]  # (N, H), (N, k), (N, k)
        idx, w = index.reshape(-1).cpu(), weights.reshape(-1).double().cpu()
        st["mass"].index_add_(0, idx, w)
        st["count"].index_add_(0, idx, torch.ones_like(w))
        if want_width:
            _width_stats(module, x, index, weights, st["width"])
    return hook


def _width_stats(experts: nn.Module, x: torch.Tensor, index: torch.Tensor,
                 weights: torch.Tensor, out: torch.Tensor) -> None:
    """Sum over routed tokens of (routing weight x hidden activation)^2 per expert channel."""
    for e in index.unique().tolist():
        token, slot = torch.where(index == e)
        h = x[token]  # (n, H)
        gate, up = nn.functional.linear(h, experts.gate_up_proj[e]).chunk(2, dim=-1)  # (n, width)
        act = experts.act_fn(gate) * up * weights[token, slot, None]  # (n, width)
        out[e] += act.double().pow(2).sum(0).cpu()


def _new_tensors(layer: MoELayer, kept: list[int], channels: list[list[int]]) -> dict:
    width = layer.width
    gu, down = layer.experts.gate_up_proj.detach(), layer.experts.down_proj.detach()
    rows = torch.tensor([[c for c in ch] + [width + c for c in ch] for ch in channels],
                        device=gu.device)  # (E', 2 x width') gate rows then up rows
    cols = torch.tensor(channels, device=down.device)  # (E', width')
    sel = torch.tensor(kept, device=gu.device)
    new_gu = torch.gather(gu[sel], 1, rows[:, :, None].expand(-1, -1, gu.shape[2]))
    new_down = torch.gather(down[sel], 2, cols[:, None, :].expand(-1, down.shape[1], -1))
    out = {"gate_up_proj": new_gu.clone(), "down_proj": new_down.clone(),
           "router.weight": layer.router.weight.detach()[sel].clone()}
    bias = getattr(layer.router, "bias", None)
    if isinstance(bias, torch.Tensor):
        out["router.bias"] = bias.detach()[sel].clone()
    return out


def _swap(layer: MoELayer, new: dict, keep_e: int, keep_w: int) -> None:
    ex, router = layer.experts, layer.router
    for name in ("gate_up_proj", "down_proj"):
        old = getattr(ex, name)
        setattr(ex, name, nn.Parameter(new[name], requires_grad=old.requires_grad))
    for key in ("router.weight", "router.bias"):
        if key in new:
            attr = key.split(".")[1]
            setattr(router, attr, nn.Parameter(new[key],
                                               requires_grad=getattr(router, attr).requires_grad))
    for obj, attr, value in ((ex, "num_experts", keep_e), (router, "num_experts", keep_e),
                             (ex, "intermediate_dim", keep_w)):
        if isinstance(getattr(obj, attr, None), int):
            setattr(obj, attr, value)


def _config_changes(cfg: Any, count: int, width: int, keep_e: int, keep_w: int) -> dict[str, int]:
    out = {}
    field_e = next((f for f in _COUNT_FIELDS if getattr(cfg, f, None) == count), None)
    if field_e is None:
        raise ConfigError(f"no config field holds the expert count {count} "
                          f"(looked at {', '.join(_COUNT_FIELDS)})")
    if keep_e != count:
        out[field_e] = keep_e
    if keep_w != width:
        field_w = next((f for f in _WIDTH_FIELDS if getattr(cfg, f, None) == width), None)
        if field_w is None:
            raise ConfigError(f"no config field holds the expert width {width} "
                              f"(looked at {', '.join(_WIDTH_FIELDS)})")
        out[field_w] = keep_w
    return out
