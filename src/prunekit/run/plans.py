"""Structured plans as recipes use them: several cuts as one plan (:func:`compose`, from
:mod:`prunekit.surgery.compose`), kept output indices, and the classifier's guard."""

from __future__ import annotations

import torch
from torch import nn

from ..mask.targets import find_targets
from ..structured import trace
from ..surgery import Plan
from ..surgery.compose import compose
from ..surgery.surgeons import input_dims

__all__ = ["classifier_feeders", "compose", "out_index"]


def out_index(model: nn.Module, plan: Plan) -> dict[str, list[int]]:
    """Linear / Conv2d layer -> the original output indices it kept, for layers whose
    outputs ``plan`` cut (``prunekit.recovery.reconstruct``'s ``out_index``)."""
    out = {}
    for name, module in model.named_modules():
        cut = plan.tensors.get(f"{name}.weight")
        if isinstance(module, (nn.Linear, nn.Conv2d)) and cut is not None and 0 in cut.kept:
            out[name] = list(cut.kept[0])
    return out


def classifier_feeders(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Modules whose outputs are the classifier's inputs: ignoring them keeps it whole.

    The classifier is the last prunable layer (as for ``pk.sparsify(protect_output=True)``).
    ``pk.plan(ignore=...)`` keeps an ignored module's outputs; the classifier's inputs
    are cut together with the layers that produce them (for a ResNet, every layer of the
    last stage's residual stream), so those are what must be ignored.
    """

    head = find_targets(model)[-1].module_name
    graph = trace(model, example_inputs)
    feeders: set[str] = set()
    for group in graph.groups:
        if not any(m.module == head for m in group.members):
            continue
        for m in group.members:
            module = model.get_submodule(m.module)
            if m.module != head and m.dim not in input_dims(module, m.name.rpartition(".")[2]):
                feeders.add(m.module)
    return sorted(feeders)
