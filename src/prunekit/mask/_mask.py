"""Weight masks as buffers beside the weights they mask.

A mask for ``module.weight`` is the boolean buffer ``module.weight_mask`` (True =
kept). The parameter keeps its name, so state-dict keys stay those of the dense
model plus the ``*_mask`` buffers. Three things keep masked entries exactly zero:

- the weight is zeroed when the mask is attached;
- a gradient hook zeroes the gradient at masked entries, so SGD (with momentum and
  weight decay), Adam and AdamW leave a zero weight at zero;
- a forward pre-hook re-applies the mask whenever the weight has been written
  since it was last masked (``load_state_dict`` of dense weights, an optimizer
  whose state predates the mask), so no forward pass ever sees a pruned weight.

``bake`` removes buffers and hooks and keeps the zeros: the model is then an
ordinary module again.

For dynamic network surgery (masks that grow back) a mask can let gradients
through (:func:`pass_gradients`): the optimizer then moves masked entries away
from zero, and whoever turned that on must read the moved values and re-zero
them before the next forward pass (the forward pre-hook does it otherwise).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
from torch import nn

SUFFIX = "_mask"
_NAMES_ATTR = "_pk_masked"  # tuple of parameter names masked on a module
_HOOK_ATTR = "_pk_mask_hook"  # handle of the forward pre-hook
_VERSIONS_ATTR = "_pk_mask_versions"  # parameter version counters at last masking
_PASS_ATTR = "_pk_mask_pass_grad"  # parameter names whose gradients are not masked


def get_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    """The mask buffer of ``module.<name>``, or None when it is not masked."""
    return module._buffers.get(name + SUFFIX)


def masked_params(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(module_name, module, param_name)`` for every masked parameter."""
    for mod_name, module in model.named_modules():
        for name in getattr(module, _NAMES_ATTR, ()):
            yield mod_name, module, name


def attach_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Mask ``module.<name>`` with the boolean ``mask`` (True = keep), replacing any old mask.

    The parameter is zeroed where the mask is False, in place.
    """
    param = getattr(module, name)
    if mask.shape != param.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {name} shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool)
    if get_mask(module, name) is None:
        module.register_buffer(name + SUFFIX, mask)
    else:
        module._buffers[name + SUFFIX] = mask
    names = getattr(module, _NAMES_ATTR, ())
    if name not in names:
        setattr(module, _NAMES_ATTR, (*names, name))
    if getattr(module, _HOOK_ATTR, None) is None:
        setattr(module, _HOOK_ATTR, module.register_forward_pre_hook(_pre_forward))
        setattr(module, _VERSIONS_ATTR, {})
    _mask_now(module, name)


def enforce(model: nn.Module) -> None:
    """Re-apply every mask in ``model`` now (zero masked weights, hook new parameters)."""
    for _, module, name in masked_params(model):
        _mask_now(module, name)


def remove_mask(module: nn.Module, name: str) -> None:
    """Drop the mask of ``module.<name>`` (and its hooks when it was the last); keep the values."""
    if get_mask(module, name) is None:
        return
    del module._buffers[name + SUFFIX]
    names = tuple(n for n in getattr(module, _NAMES_ATTR, ()) if n != name)
    setattr(module, _NAMES_ATTR, names)
    setattr(module, _PASS_ATTR, getattr(module, _PASS_ATTR, frozenset()) - {name})
    if not names:
        _unhook(module)


def pass_gradients(module: nn.Module, name: str, enabled: bool = True) -> None:
    """Let gradients reach the masked entries of ``module.<name>`` (or stop them again).

    The forward pass still sees masked entries as zero. Used by dynamic network
    surgery (Guo et al. 2016), whose pruned weights keep being updated.
    """
    if get_mask(module, name) is None:
        raise ValueError(f"{name} of {type(module).__name__} has no mask")
    passing = getattr(module, _PASS_ATTR, frozenset())
    setattr(module, _PASS_ATTR, passing | {name} if enabled else passing - {name})


def bake(model: nn.Module) -> nn.Module:
    """Make the zeros permanent and remove all mask buffers and hooks; returns ``model``.

    Example:
        >>> pk.sparsify(model, sparsity=0.9)
        >>> pk.bake(model)  # plain module again, same zeros, no *_mask keys
    """
    for _, module, name in list(masked_params(model)):
        _mask_now(module, name)
        del module._buffers[name + SUFFIX]
    for module in model.modules():
        _unhook(module)
    return model


def _unhook(module: nn.Module) -> None:
    handle = getattr(module, _HOOK_ATTR, None)
    if handle is not None:
        handle.remove()
    for attr in (_NAMES_ATTR, _HOOK_ATTR, _VERSIONS_ATTR, _PASS_ATTR):
        if attr in module.__dict__:
            delattr(module, attr)


def _mask_now(module: nn.Module, name: str) -> None:
    param = getattr(module, name)
    mask = get_mask(module, name)
    if param.device.type != "meta":
        with torch.no_grad():
            param.masked_fill_(~mask, 0.0)  # +0.0, where mul_ would leave -0.0
    if _needs_grad_hook(param):
        param.register_hook(_GradMask(module, name))
    getattr(module, _VERSIONS_ATTR)[name] = param._version


def _pre_forward(module: nn.Module, args: tuple) -> None:
    versions = getattr(module, _VERSIONS_ATTR, None)
    if versions is None:  # baked while a forward was pending
        return
    for name in getattr(module, _NAMES_ATTR, ()):
        param = getattr(module, name)
        if versions.get(name) != param._version or _needs_grad_hook(param):
            _mask_now(module, name)


def _needs_grad_hook(param: torch.Tensor) -> bool:
    # Looked up on the tensor itself: deepcopy and torch.load make fresh
    # Parameters without tensor hooks, and those must be hooked again.
    if not (isinstance(param, nn.Parameter) and param.requires_grad):
        return False
    hooks = getattr(param, "_backward_hooks", None) or {}
    return not any(isinstance(h, _GradMask) for h in hooks.values())


class _GradMask:
    """Gradient hook: zero the gradient where the (current) mask is False."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = weakref.ref(module)
        self.name = name

    def __call__(self, grad: torch.Tensor) -> torch.Tensor | None:
        module = self.module()
        mask = None if module is None else get_mask(module, self.name)
        if mask is None or self.name in getattr(module, _PASS_ATTR, ()):
            return None
        return grad * mask
