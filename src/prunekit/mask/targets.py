"""Which parameters of which modules are prunable weights, and their unit dimensions.

Table-driven: each module type maps to its weight parameters with the output
(neuron / filter) dimension and the input (reduction) dimension. Supporting a new
layer type is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class WeightSpec:
    """A prunable weight of a module: its name, output dimension and input dimension."""

    param: str
    out_dim: int
    in_dim: int
    bias: str | None = None  # bias indexed like out_dim, masked with whole neurons


@dataclass(frozen=True)
class Target:
    """One prunable weight tensor in a model."""

    module_name: str
    module: nn.Module
    spec: WeightSpec

    @property
    def name(self) -> str:
        """Qualified parameter name, e.g. ``features.0.weight``."""
        prefix = f"{self.module_name}." if self.module_name else ""
        return prefix + self.spec.param

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.spec.param)


SpecFn = Callable[[nn.Module], list[WeightSpec]]

_conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_conv_t = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _rnn_specs(m: nn.RNNBase) -> list[WeightSpec]:
    return [WeightSpec(n, 0, 1) for n in m._flat_weights_names if n.startswith("weight_")]


def _mha_specs(m: nn.MultiheadAttention) -> list[WeightSpec]:
    names = (
        ["in_proj_weight"]
        if m.in_proj_weight is not None
        else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    )
    return [WeightSpec(n, 0, 1) for n in names]


# Order matters only for subclasses: the first matching entry wins.
_SPECS: list[tuple[tuple[type, ...], SpecFn]] = [
    ((nn.Linear,), lambda m: [WeightSpec("weight", 0, 1, "bias")]),
    (_conv, lambda m: [WeightSpec("weight", 0, 1, "bias")]),
    (_conv_t, lambda m: [WeightSpec("weight", 1, 0, "bias")]),
    ((nn.RNNBase,), _rnn_specs),
    ((nn.MultiheadAttention,), _mha_specs),
]

PRUNABLE_TYPES = tuple(t for types, _ in _SPECS for t in types)


def weight_specs(module: nn.Module) -> list[WeightSpec]:
    """The prunable weights of ``module`` itself (not of its children)."""
    for types, fn in _SPECS:
        if isinstance(module, types):
            return [s for s in fn(module) if getattr(module, s.param, None) is not None]
    return []


def find_targets(model: nn.Module) -> list[Target]:
    """Every prunable weight of ``model`` in registration order (a shared weight once)."""
    seen: set[int] = set()
    out = []
    for name, module in model.named_modules():
        for spec in weight_specs(module):
            key = id(getattr(module, spec.param))
            if key not in seen:
                seen.add(key)
                out.append(Target(name, module, spec))
    return out
