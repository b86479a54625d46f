"""Masks and weights as plain data: snapshots, restores and cross-rank broadcasts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import mask as _mask
from ..errors import ConfigError
from ..mask import SUFFIX
from ..surgery.surgeons import finalize


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else ``model``)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def _qualified(module_name: str, param: str) -> str:
    return f"{module_name}.{param}" if module_name else param


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Qualified parameter name -> a copy of its mask, for every masked parameter."""
    return {
        _qualified(mod_name, name): _mask.get_mask(module, name).detach().clone()
        for mod_name, module, name in _mask.masked_params(model)
    }


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Make ``model``'s masks exactly ``masks``: attach those given, remove all others.

    Raises:
        ConfigError: a name is not a parameter of ``model`` or a shape differs;
            checked before anything changes.
    """
    modules = dict(model.named_modules())
    resolved = []
    for qualified, mask in masks.items():
        mod_name, _, param = qualified.rpartition(".")
        module = modules.get(mod_name)
        weight = getattr(module, param, None) if module is not None else None
        if not isinstance(weight, torch.Tensor) or weight.shape != mask.shape:
            raise ConfigError(
                f"saved mask {qualified!r} does not fit this model; build the same model "
                "(same architecture and layer names) before loading the state"
            )
        resolved.append((module, param, mask))
    for mod_name, module, name in list(_mask.masked_params(model)):
        if _qualified(mod_name, name) not in masks:
            _mask.remove_mask(module, name)
    for module, param, mask in resolved:
        _mask.attach_mask(module, param, mask.clone())


@dataclass
class Snapshot:
    """Weights, buffers, masks and sizes of a model at one moment.

    ``sizes`` holds each module's plain attributes (``in_features``, ``num_heads``, ...)
    and ``configs`` those of a module's ``config`` object (Hugging Face models), so a
    structural cut made after the snapshot can be undone too.
    """

    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


_PLAIN = (int, float, bool, str, tuple, type(None))


def _plain_attrs(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items() if not k.startswith("_") and isinstance(v, _PLAIN)}


def _config_of(module: nn.Module) -> Any:
    config = getattr(module, "config", None)
    return config if hasattr(config, "__dict__") and not isinstance(config, nn.Module) else None


def snapshot(model: nn.Module) -> Snapshot:
    """A deep copy of ``model``'s state dict, masks and size attributes."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    sizes = {name: _plain_attrs(m) for name, m in modules.items()}
    found = {name: _config_of(m) for name, m in modules.items()}
    configs = {name: _plain_attrs(c) for name, c in found.items() if c is not None}
    return Snapshot(state, masks_of(model), sizes, configs)


def _restore_shapes(model: nn.Module, snap: Snapshot) -> None:
    """Give tensors whose shape changed since ``snap`` (a structural cut) their old shapes,
    and modules (and their configs) their old size attributes.

    Tensors shared by several modules (tied weights) stay shared, and every module whose
    tensors changed gets the surgery's post-cut hook (RNN flat weights), as after a cut.
    """

    modules = dict(model.named_modules())
    touched: list[nn.Module] = []
    current = model.state_dict(keep_vars=True)
    swapped: dict[int, torch.Tensor] = {}
    for name, old in snap.state.items():
        now = current.get(name)
        if now is None or now.shape == old.shape:
            continue
        module_name, _, local = name.rpartition(".")
        owner = modules[module_name]
        if id(now) not in swapped:
            data = old.clone().to(now.device)
            swapped[id(now)] = (nn.Parameter(data, requires_grad=now.requires_grad)
                                if isinstance(now, nn.Parameter) else data)
        table = owner._parameters if local in owner._parameters else owner._buffers
        table[local] = swapped[id(now)]
        touched.append(owner)
    targets = [(modules.get(n), attrs) for n, attrs in snap.sizes.items()]
    targets += [(_config_of(modules[n]), attrs) for n, attrs in snap.configs.items()]
    for target, attrs in targets:
        for attr, value in attrs.items() if target is not None else ():
            setattr(target, attr, value)
    for module in dict.fromkeys(touched):
        finalize(module)


def restore(model: nn.Module, snap: Snapshot, *, keep_masks: bool = False) -> None:
    """Put ``snap``'s weights and buffers back into ``model``.

    With ``keep_masks`` the model's current masks stay (lottery-ticket rewinding:
    old weights, new masks) and the restored weights are masked by them;
    otherwise the snapshot's masks come back too.
    """
    if keep_masks:
        current = masks_of(model)
        suffix = SUFFIX
        state = {k: v for k, v in snap.state.items() if not k.endswith(suffix)}
        state.update({k + suffix: m for k, m in current.items()})
        model.load_state_dict(state)
        _mask.enforce(model)
        return
    set_masks(model, snap.masks)
    _restore_shapes(model, snap)
    model.load_state_dict(snap.state)
    _mask.enforce(model)


def broadcast_masks(model: nn.Module, *, src: int = 0) -> None:
    """Copy every mask, and the weight it masks, from rank ``src`` to all ranks.

    A no-op outside torch.distributed. Criteria that see data (gradient, taylor,
    obd) or draw random numbers may give each rank its own masks; attaching a
    mask zeroes the weight, so the weights are broadcast too, after which every
    rank holds the same masks and the same weights. Every rank must hold the
    same set of masked parameters.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    for _, module, name in list(_mask.masked_params(model)):
        flat = _mask.get_mask(module, name).to(torch.uint8)
        dist.broadcast(flat, src=src)
        with torch.no_grad():
            dist.broadcast(getattr(module, name).data, src=src)
        _mask.attach_mask(module, name, flat.bool())


def zero_fraction(weights: Iterable[torch.Tensor]) -> float:
    """Fraction of exact zeros over ``weights``."""
    total = zeros = 0
    for w in weights:
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0
