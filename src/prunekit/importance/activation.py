"""Activation-aware criteria: weights scored together with the inputs they multiply.

``wanda`` scores a weight by ``|W_ij| * ||X_j||_2``: its magnitude times the L2
norm of input feature ``j`` over the calibration tokens (Sun, Liu, Bair, Kolter
2023, "A Simple and Effective Pruning Approach for Large Language Models").
Weights are compared within each output row (the paper's "per output"
comparison group), so ``pk.sparsify(model, sparsity=0.5, criterion="wanda",
data=batches)`` prunes half of every row by default.

The statistics come from :class:`InputStats`, a forward hook that sums, for a
Linear (or a convolution with ``groups=1``) layer, the squared inputs per input
feature and, when asked, the input Gram matrix ``X^T X`` that SparseGPT needs.

Example:
    >>> pk.sparsify(model, sparsity=0.5, criterion="wanda", data=[x1, x2])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from .criteria import ParamStats, register_criterion

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class InputStats:
    """Forward hook accumulating a layer's input statistics over calibration batches.

    Attributes:
        sq_sum: sum over tokens of ``x_j^2`` per input feature, shape ``(in,)``.
        gram: sum over tokens of ``x x^T``, shape ``(in, in)`` (only with ``gram=True``).
        rows: number of tokens (rows of ``X``) seen.
    """

    def __init__(self, module: nn.Module, *, gram: bool = False) -> None:
        if not supports(module):
            raise ConfigError(
                f"activation statistics need a Linear layer or a convolution with groups=1, "
                f"not {type(module).__name__}; exclude it"
            )
        self.module, self.want_gram = module, gram
        self.sq_sum: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None
        self.rows = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        x = _as_rows(module, args[0]).float()  # (tokens, in)
        if self.sq_sum is None:
            self.sq_sum = torch.zeros(x.shape[1], device=x.device)
            if self.want_gram:
                self.gram = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        self.sq_sum += x.pow(2).sum(dim=0)
        if self.want_gram:
            self.gram.addmm_(x.T, x)
        self.rows += x.shape[0]

    def remove(self) -> None:
        """Detach the hook from the layer."""
        self.handle.remove()

    def feature_norm(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature (zeros when no batch was seen)."""
        if self.sq_sum is None:
            raise ConfigError(
                f"{type(self.module).__name__} saw no calibration input; the data never "
                "reached this layer"
            )
        return self.sq_sum.sqrt()


def supports(module: nn.Module) -> bool:
    """Whether :class:`InputStats` can follow ``module``'s inputs."""
    return isinstance(module, nn.Linear) or (isinstance(module, _CONV) and module.groups == 1)


def _as_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return x.detach().reshape(-1, x.shape[-1])  # (tokens, in)
    return x.detach().movedim(1, -1).reshape(-1, x.shape[1])  # (B * spatial, C_in)


def weight_view(module: nn.Module, per_feature: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-input-feature tensor to the shape of ``module.weight``.

    A convolution's input channel ``c`` covers ``weight[:, c, ...]`` (every kernel
    position shares the channel's norm).
    """
    w = module.weight
    shape = [1] * w.dim()
    shape[1] = -1
    return per_feature.to(w.device).reshape(shape).expand(w.shape)


def collect_act_norms(
    model: nn.Module, modules: dict[str, nn.Module], data: Iterable, *, batches: int
) -> dict[str, torch.Tensor]:
    """Input-feature L2 norms of ``modules`` (name -> module) over ``batches`` of ``data``.

    Batches may be tensors, ``(inputs, targets)`` pairs or dicts of keyword
    inputs (Hugging Face ``input_ids`` / ``attention_mask``). The model runs in
    eval mode without gradients and is left as it was.

    Returns:
        name -> tensor of the module's weight shape holding ``||X_j||_2``.
    """
    hooks = {name: InputStats(m) for name, m in modules.items()}
    training = model.training
    model.eval()
    try:
        seen = 0
        with torch.no_grad():
            for batch in itertools.islice(data, batches):
                _run(model, batch)
                seen += 1
    finally:
        for h in hooks.values():
            h.remove()
        model.train(training)
    if seen == 0:
        raise ConfigError("calibration data is empty; pass at least one batch of inputs")
    return {name: weight_view(modules[name], h.feature_norm()) for name, h in hooks.items()}


def _run(model: nn.Module, batch: object) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(batch[0])
    else:
        model(batch)


@register_criterion("wanda", needs=("act_norm",), scope="row")
def wanda(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """|W_ij| * ||X_j||_2, compared within each output row (Sun et al. 2023, "Wanda")."""
    return weight.abs() * stats.act_norm
