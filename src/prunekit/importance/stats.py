"""Calibration statistics for data-driven criteria: mean gradients and the empirical Fisher.

The model is left exactly as it was: it runs in eval mode (no batch-norm running
statistics change), its existing ``.grad`` fields are restored, and no
parameter is written.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .activation import collect_act_norms
from .criteria import ParamStats

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def collect_stats(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    data: Iterable | None,
    *,
    needs: Sequence[str],
    loss_fn: LossFn | None = None,
    batches: int = 8,
    fisher_samples: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, ParamStats]:
    """Gather what the criteria need for each named parameter.

    Args:
        model: the network; not modified.
        params: qualified name -> parameter of ``model`` to gather statistics for.
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader works).
        needs: any of ``"grad"`` (mean gradient over ``batches`` batches),
            ``"fisher"`` (mean squared per-sample gradient over ``fisher_samples`` samples)
            and ``"act_norm"`` (input-feature L2 norms over ``batches`` batches, which
            may hold inputs only: tensors, ``(inputs, ...)`` or dicts of keyword inputs).
        loss_fn: ``loss_fn(outputs, targets)``; cross-entropy by default.
        batches: number of batches used for the mean gradient.
        fisher_samples: number of single samples used for the Fisher diagonal.
        generator: random generator handed to stochastic criteria.
    """
    stats = {name: ParamStats(generator=generator) for name in params}
    if not needs:
        return stats
    if data is None:
        raise ConfigError(
            f"this criterion needs calibration data for {', '.join(needs)}; "
            "pass data=<DataLoader or list of (inputs, targets) batches>"
        )
    loss_fn = loss_fn or F.cross_entropy
    with _calibration_mode(model, params):
        if "grad" in needs:
            for name, g in _mean_grad(model, params, data, loss_fn, batches).items():
                stats[name].grad = g
        if "fisher" in needs:
            for name, f in _fisher_diag(model, params, data, loss_fn, fisher_samples).items():
                stats[name].fisher = f
    if "act_norm" in needs:

        modules = {name: _weight_owner(model, name) for name in params}
        for name, n in collect_act_norms(model, modules, data, batches=batches).items():
            stats[name].act_norm = n
    return stats


class _calibration_mode:
    """Eval mode, gradients on for the chosen parameters, old ``.grad`` values kept aside."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.model, self.params = model, list(params.values())

    def __enter__(self) -> None:
        self.training = self.model.training
        self.saved = [(p.grad, p.requires_grad) for p in self.params]
        self.model.eval()
        for p in self.params:
            p.grad = None
            p.requires_grad_(True)

    def __exit__(self, *exc: object) -> None:
        for p, (grad, req) in zip(self.params, self.saved, strict=False):
            p.grad = grad
            p.requires_grad_(req)
        self.model.train(self.training)


def _weight_owner(model: nn.Module, name: str) -> nn.Module:
    module_name, _, param = name.rpartition(".")
    if param != "weight":
        raise ConfigError(f"activation statistics score layer weights only, not {name}; exclude it")
    return model.get_submodule(module_name)


def _split(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise ConfigError(
            f"calibration data must yield (inputs, targets) batches; got {type(batch).__name__}"
        )
    return batch[0], batch[1]


def _mean_grad(model, params, data, loss_fn, batches: int) -> dict[str, torch.Tensor]:
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    for batch in itertools.islice(data, batches):
        x, y = _split(batch)
        grads = torch.autograd.grad(loss_fn(model(x), y), list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads, strict=False):
            if g is not None:
                sums[name] += g
        count += 1
    if count == 0:
        raise ConfigError("calibration data is empty; pass at least one (inputs, targets) batch")
    return {name: s / count for name, s in sums.items()}


def _fisher_diag(model, params, data, loss_fn, samples: int) -> dict[str, torch.Tensor]:
    """Mean over single samples of (dL_i/dw)^2, one backward pass per sample."""
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    for batch in data:
        x, y = _split(batch)
        for i in range(len(x)):
            grads = torch.autograd.grad(
                loss_fn(model(x[i : i + 1]), y[i : i + 1]),
                list(params.values()),
                allow_unused=True,
            )
            for (name, _), g in zip(params.items(), grads, strict=False):
                if g is not None:
                    sums[name] += g.pow(2)
            count += 1
            if count >= samples:
                return {name: s / count for name, s in sums.items()}
    if count == 0:
        raise ConfigError("calibration data is empty; pass at least one (inputs, targets) batch")
    return {name: s / count for name, s in sums.items()}
