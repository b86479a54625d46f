"""Batch-norm recalibration: running statistics that fit the pruned network again.

After a cut, every batch-norm layer still holds the mean and variance of the
*original* network's activations, which no longer match; a few batches of
forward passes, without any gradient step, put them right. This alone recovers
much of the accuracy lost by a structured cut (e.g. Li et al. 2020, "EagleEye").

Example:
    >>> recalibrate_bn(pruned, calibration_loader, batches=20)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._registry import Registry
from ..errors import ConfigError, DataError

_MODES: Registry = Registry("bn recalibration mode")


def list_bn_modes() -> list[str]:
    """Names accepted by ``recalibrate_bn(mode=...)``: ``cumulative``, ``exact``."""
    return _MODES.names()


def recalibrate_bn(
    model: nn.Module,
    data: Iterable,
    *,
    batches: int | None = None,
    mode: str = "exact",
) -> int:
    """Recompute the running mean and variance of every batch-norm layer on ``data``.

    Modes:

    - ``"exact"`` (default): layer by layer in forward order, with the model in
      eval mode and every earlier batch norm already recalibrated, each layer's
      statistics are the exact mean and (unbiased) variance of its inputs over
      all calibration samples, i.e. of what it sees at inference. One pass per
      layer, stopped at that layer.
    - ``"cumulative"``: the usual one-pass recipe: reset the statistics, batch
      norms in training mode with ``momentum=None`` (a cumulative average of the
      per-batch statistics), everything else in eval mode.

    No parameter changes; no gradient is computed; train/eval modes and momenta
    are restored. Under ``torch.distributed`` the exact statistics are summed
    over all ranks, so every rank ends with the same values.

    Args:
        model: the network (e.g. after pruning).
        data: batches of inputs, or of ``(inputs, targets)`` pairs.
        batches: use at most this many batches (None: all of ``data``).
        mode: ``"exact"`` or ``"cumulative"``.

    Returns:
        The number of batch-norm layers recalibrated.
    """
    recalibrate = _MODES.get(mode)
    if batches is not None and (
        isinstance(batches, bool) or int(batches) != batches or batches < 1
    ):
        raise ConfigError(f"batches must be a positive integer or None, got {batches!r}")
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    inputs = [_inputs(b) for b in itertools.islice(data, batches)]
    if not inputs:
        raise DataError("calibration data is empty; pass at least one batch")
    device = next(model.parameters()).device
    inputs = [x.to(device) for x in inputs]
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            recalibrate(model, norms, inputs)
    finally:
        for m, training in modes.items():
            m.training = training
    return len(norms)


@_MODES.register("cumulative")
def _cumulative(model: nn.Module, norms: list[_BatchNorm], inputs: list[torch.Tensor]) -> None:
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for x in inputs:
            model(x)
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest was seen."""


@_MODES.register("exact")
def _exact(model: nn.Module, norms: list[_BatchNorm], inputs: list[torch.Tensor]) -> None:
    model.eval()
    for bn in _forward_order(model, norms, inputs[0]):
        count, total, squares = 0, 0.0, 0.0
        for x in inputs:
            seen = _input_of(model, bn, x)  # (N, C, *) -> per channel below
            flat = seen.transpose(0, 1).reshape(seen.shape[1], -1).double()  # (C, N*...)
            count += flat.shape[1]
            total = total + flat.sum(dim=1)
            squares = squares + flat.pow(2).sum(dim=1)
        count, total, squares = _all_reduce(count, total, squares)
        mean = total / count
        var = (squares - count * mean.pow(2)) / max(count - 1, 1)
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.clamp_min(0).to(bn.running_var.dtype))
        bn.num_batches_tracked.fill_(len(inputs))


def _forward_order(model: nn.Module, norms: list[_BatchNorm], x: torch.Tensor) -> list[_BatchNorm]:
    """Batch norms in the order a forward pass first calls them (uncalled ones left out)."""
    order: list[_BatchNorm] = []
    handles = [
        bn.register_forward_pre_hook(lambda m, args: order.append(m) if m not in order else None)
        for bn in norms
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def _input_of(model: nn.Module, bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    caught: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple) -> None:
        caught.append(args[0])
        raise _Stop

    handle = bn.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return caught[0]


def _all_reduce(count: int, total: torch.Tensor, squares: torch.Tensor):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return count, total, squares
    head = torch.tensor([float(count)], dtype=torch.float64, device=total.device)
    packed = torch.cat([head, total, squares])  # (1 + 2C,) one collective for all three
    dist.all_reduce(packed)
    c = len(total)
    return int(packed[0]), packed[1 : 1 + c], packed[1 + c :]


def _inputs(batch: object) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise DataError(
        f"calibration batches must be input tensors or (inputs, targets) pairs, "
        f"got {type(batch).__name__}"
    )
