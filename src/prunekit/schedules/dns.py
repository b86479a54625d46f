"""Dynamic network surgery: pruned weights keep learning and are spliced back when they matter.

Y. Guo, A. Yao, Y. Chen, "Dynamic Network Surgery for Efficient DNNs", NeurIPS 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import mask as _mask
from ..config import as_items
from ..errors import ConfigError
from ..mask.targets import Target
from ..sparsify import select_targets
from ._state import broadcast_masks, set_masks, unwrap


@dataclass(frozen=True)
class Thresholds:
    """Per-layer thresholds on |w|: prune below ``prune``, splice back above ``splice``."""

    prune: float
    splice: float


class Surgery:
    """Masks that both prune and splice during training (dynamic network surgery).

    Every weight ``W`` has a mask ``T``; the forward pass uses ``W * T`` (masked
    entries are exactly zero, as with every prunekit mask), but gradients reach
    all entries, so a pruned weight keeps a "shadow" value that the optimizer
    keeps updating. With probability ``sigma(t) = (1 + gamma * t) ** -power``,
    every ``frequency`` steps, each layer's mask is revised::

        T = 0  where |W| < a   (prune)
        T = 1  where |W| > b   (splice: the shadow value comes back)
        T unchanged where a <= |W| <= b

    Thresholds are fixed per layer from the weights when the surgery starts:
    ``r = max(mean|W| + c * std|W|, 0)`` (the paper's rule, ``c_rate``), or ``r``
    the ``sparsity``-quantile of ``|W|``; then ``a = r`` and
    ``b = (1 + margin) * r``. The reference implementation used ``a = 0.9r`` and
    ``b = 1.1r``, the same ratio as ``margin=0.22``.

    Call :meth:`step` right after every optimizer step (before the next forward
    pass); :meth:`finish` turns the masks into ordinary fixed masks for a final
    fine-tune. Weight decay sees masked entries as zero (a small departure from
    the paper, where it also shrinks the shadow values).

    Args:
        model: the trained network.
        sparsity: per-layer initial sparsity that sets ``r`` (exclusive with ``c_rate``).
        c_rate: ``r = mean + c_rate * std`` of ``|W|`` per layer.
        margin: ``b = (1 + margin) * a``.
        gamma, power: decay of the mask-update probability.
        frequency: revise masks every this many steps.
        stop: no more revisions after this step (None: never stop).
        ignore, protect_output: as in :func:`prunekit.sparsify` (``exclude`` is the older
            spelling of ``ignore``).
        seed: seed of the update draws.

    Example:
        >>> surgery = Surgery(model, sparsity=0.9)
        >>> train(model, loader, epochs=5, lr=0.01, after_step=surgery.step)
        >>> surgery.finish()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float | None = None,
        c_rate: float | None = None,
        margin: float = 0.2,
        gamma: float = 1e-4,
        power: float = 1.0,
        frequency: int = 1,
        stop: int | None = None,
        ignore: Sequence[str] = (),
        exclude: Sequence[str] = (),
        protect_output: bool = False,
        seed: int = 0,
    ) -> None:
        _check(sparsity, c_rate, margin, gamma, power, frequency, stop)
        self.model = unwrap(model)
        self.targets: list[Target] = select_targets(
            self.model, [*as_items(ignore), *as_items(exclude)], protect_output)
        self.options = dict(gamma=gamma, power=power, frequency=frequency, stop=stop)
        self.thresholds = {
            t.name: _thresholds(t.weight.detach(), sparsity, c_rate, margin) for t in self.targets
        }
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.shadows = {t.name: t.weight.detach().clone() for t in self.targets}
        for t in self.targets:
            keep = t.weight.detach().abs() >= self.thresholds[t.name].prune
            old = _mask.get_mask(t.module, t.spec.param)
            _mask.attach_mask(t.module, t.spec.param, keep if old is None else keep & old)
            _mask.pass_gradients(t.module, t.spec.param)
        broadcast_masks(self.model)
        self.finished = False

    def probability(self, step: int) -> float:
        """``sigma(step) = (1 + gamma * step) ** -power``: chance of revising the masks."""
        return (1.0 + self.options["gamma"] * step) ** -self.options["power"]

    @torch.no_grad()
    def step(self) -> None:
        """Take in the optimizer's update of every weight; maybe revise the masks."""
        if self.finished:
            raise ConfigError("the surgery has finished; make a new Surgery to continue")
        self.step_count += 1
        for t in self.targets:
            self._absorb(t)
        stop = self.options["stop"]
        revise = self.step_count % self.options["frequency"] == 0 and (
            stop is None or self.step_count <= stop
        )
        draw = torch.rand((), generator=self.generator).item()  # drawn every step: resumable
        if revise and draw < self.probability(self.step_count):
            for t in self.targets:
                self._revise(t)
            broadcast_masks(self.model)
        _mask.enforce(self.model)

    def finish(self) -> None:
        """Freeze the masks: gradients stop reaching pruned weights; shadows are dropped."""
        for t in self.targets:
            _mask.pass_gradients(t.module, t.spec.param, enabled=False)
        self.shadows = {}
        self.finished = True

    @property
    def sparsity(self) -> float:
        """Fraction of masked weights over the layers under surgery."""
        masks = [_mask.get_mask(t.module, t.spec.param) for t in self.targets]
        return sum(int((~m).sum()) for m in masks) / max(sum(m.numel() for m in masks), 1)

    def state_dict(self) -> dict[str, Any]:
        """Step, draw generator, shadows and masks, for an exact resume."""
        return {
            "step": self.step_count,
            "generator": self.generator.get_state(),
            "thresholds": {k: (v.prune, v.splice) for k, v in self.thresholds.items()},
            "shadows": {k: v.clone() for k, v in self.shadows.items()},
            "masks": {t.name: _mask.get_mask(t.module, t.spec.param).clone() for t in self.targets},
            "finished": self.finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; load this before the model's state dict."""
        names = {t.name for t in self.targets}
        if set(state["masks"]) != names:
            raise ConfigError(
                "this surgery state covers other layers; build the Surgery with the same "
                "model, exclude and protect_output"
            )
        set_masks(self.model, state["masks"])
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])
        self.thresholds = {k: Thresholds(*v) for k, v in state["thresholds"].items()}
        self.shadows = {k: v.clone() for k, v in state["shadows"].items()}
        self.finished = bool(state["finished"])
        for t in self.targets:
            _mask.pass_gradients(t.module, t.spec.param, enabled=not self.finished)

    def _absorb(self, t: Target) -> None:
        """Kept entries: shadow = weight. Masked entries were 0 before the step: add the move."""
        weight, keep = t.weight.detach(), _mask.get_mask(t.module, t.spec.param)
        shadow = self.shadows[t.name]
        shadow.copy_(torch.where(keep, weight, shadow + weight))

    def _revise(self, t: Target) -> None:
        limits, shadow = self.thresholds[t.name], self.shadows[t.name]
        keep = _mask.get_mask(t.module, t.spec.param)
        size = shadow.abs()
        keep = (keep | (size > limits.splice)) & ~(size < limits.prune)
        _mask.attach_mask(t.module, t.spec.param, keep)
        t.weight.detach().copy_(shadow * keep)


def _thresholds(
    weight: torch.Tensor, sparsity: float | None, c_rate: float | None, margin: float
) -> Thresholds:
    size = weight.abs().flatten().double()
    if sparsity is not None:
        ordered = size.sort().values
        k = int(round(sparsity * size.numel()))
        if k == 0:
            r = 0.0
        elif k >= size.numel():
            r = float(ordered[-1]) * (1 + 1e-6)
        else:
            r = float(ordered[k - 1] + ordered[k]) / 2
    else:
        r = max(float(size.mean() + c_rate * size.std(unbiased=False)), 0.0)
    return Thresholds(prune=r, splice=(1.0 + margin) * r)


def _check(sparsity, c_rate, margin, gamma, power, frequency, stop) -> None:
    if (sparsity is None) == (c_rate is None):
        raise ConfigError("give exactly one of sparsity (per-layer quantile) or c_rate")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if not margin >= 0:
        raise ConfigError(f"margin must be >= 0, got {margin!r}")
    if not (gamma >= 0 and power >= 0):
        raise ConfigError(f"gamma and power must be >= 0, got {gamma!r} and {power!r}")
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ConfigError(f"frequency must be an integer >= 1, got {frequency!r}")
    if stop is not None and (not isinstance(stop, int) or stop < 0):
        raise ConfigError(f"stop must be None or an integer >= 0, got {stop!r}")
