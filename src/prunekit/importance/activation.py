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
_LAST_BATCH: dict = {}  # the last input tensor seen by any hook and its sums


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
        sq, gram, rows = self._batch_sums(module, args[0])
        if self.sq_sum is None:
            self.sq_sum = torch.zeros_like(sq)
            if self.want_gram:
                self.gram = torch.zeros_like(gram)
        self.sq_sum += sq
        if self.want_gram:
            self.gram += gram
        self.rows += rows

    def _batch_sums(self, module: nn.Module, x_in: torch.Tensor) -> tuple:
        """Sums of one batch; layers fed the same tensor (q/k/v, gate/up) share them."""
        last = _LAST_BATCH
        if (last.get("x") is x_in and last["version"] == x_in._version
                and last["kind"] is type(module) and (last["gram"] is not None
                                                      or not self.want_gram)):
            return last["sq"], last["gram"], last["rows"]
        x = _as_rows(module, x_in).float()  # (tokens, in)
        gram = x.T @ x if self.want_gram else None
        last.update(x=x_in, version=x_in._version, kind=type(module), sq=x.pow(2).sum(dim=0),
                    gram=gram, rows=x.shape[0])
        return last["sq"], gram, x.shape[0]

    def remove(self) -> None:
        """Detach the hook from the layer (and drop the shared last batch)."""
        self.handle.remove()
        _LAST_BATCH.clear()

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
