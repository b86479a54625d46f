"""Carry out a plan on a model: slice tensors, fix module attributes, all or nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import surgeons
from .plan import Plan


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, local = name.rpartition(".")
    try:
        return (model.get_submodule(path) if path else model), local
    except AttributeError:
        raise ConfigError(
            f"the plan names {name!r}, which this model does not have; "
            "replay a plan only on the architecture it was made for"
        ) from None


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module, local = _owner(model, name)
    t = module._parameters.get(local, module._buffers.get(local))
    if t is None:
        raise ConfigError(f"the plan names tensor {name!r}, which this model does not have; "
                          "replay a plan only on the architecture it was made for")
    return t


def _cut(t: torch.Tensor, kept: Mapping[int, list[int]]) -> torch.Tensor:
    data = t.detach()
    for d, idx in sorted(kept.items()):
        data = data.index_select(d, torch.tensor(idx, dtype=torch.long, device=data.device))
    if isinstance(t, nn.Parameter):
        return nn.Parameter(data.clone() if data is t else data, requires_grad=t.requires_grad)
    return data


def new_tensors(model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """The sliced tensors of ``plan`` (the model is not changed)."""
    out = {}
    for name, cut in plan.tensors.items():
        t = _tensor(model, name)
        if tuple(t.shape) != tuple(cut.shape):
            raise ConfigError(
                f"{name} has shape {tuple(t.shape)} but the plan expects {tuple(cut.shape)}; "
                "the plan was made for a different model (or this one was already pruned)"
            )
        _check_kept(name, cut.shape, cut.kept)
        out[name] = _cut(t, cut.kept)
    return out


def _check_kept(name: str, shape: tuple[int, ...], kept: Mapping[int, list[int]]) -> None:
    """Kept indices must be sorted, unique and inside the dimension (a damaged plan is not)."""
    for d, idx in kept.items():
        entry = f"the plan's entry tensors[{name!r}].kept[{d}]"
        if not isinstance(d, int) or not 0 <= d < len(shape):
            raise ConfigError(f"{entry} names dimension {d!r} of a {len(shape)}-d tensor; "
                              "the plan file is damaged: save the plan again")
        ok = all(isinstance(i, int) and 0 <= i < shape[d] for i in idx)
        if not idx or not ok or any(a >= b for a, b in zip(idx, idx[1:], strict=False)):
            raise ConfigError(f"{entry} is not a sorted, non-empty list of indices below "
                              f"{shape[d]}; the plan file is damaged: save the plan again")


def module_attrs(model: nn.Module, plan: Plan) -> dict[str, dict[str, Any]]:
    """Attribute values after ``plan``: surgeons' answers, overridden by the plan's own."""
    shapes = {n: tuple(t.shape) for n, t in model.named_parameters(remove_duplicate=False)}
    shapes.update({n: tuple(t.shape) for n, t in model.named_buffers(remove_duplicate=False)})
    for name, cut in plan.tensors.items():
        shapes[name] = cut.new_shape
    for alias, name in plan.aliases.items():
        if name in plan.tensors:
            shapes[alias] = plan.tensors[name].new_shape
    changed = set(plan.tensors) | {a for a, n in plan.aliases.items() if n in plan.tensors}
    above = {""} | {n[:i] for n in changed for i, c in enumerate(n) if c == "."}
    out: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        explicit = dict(plan.attrs.get(path, {}))
        fn = surgeons.surgeon_for(module)
        touched = path in above
        values = dict(fn(module, lambda local, p=prefix: shapes.get(p + local), explicit)) \
            if fn is not None and touched else {}
        values.update(explicit)
        values = {a: v for a, v in values.items() if not _same(getattr(module, a, None), v)}
        if values:
            out[path] = values
    return out


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        return tuple(old) == tuple(new)
    return old == new


def _config_of(model: nn.Module, path: str) -> Any:
    module = model.get_submodule(path) if path else model
    config = getattr(module, "config", None)
    if config is None:
        raise ConfigError(f"the plan changes a config at {path!r}, which has none; "
                          "replay a plan only on the architecture it was made for")
    return config


def _check_before(model: nn.Module, plan: Plan) -> None:
    """Refuse a model whose attributes differ from those the plan was made on."""
    for key, values in plan.before.items():
        is_config = key.startswith("config:")
        path = key.partition(":")[2] if is_config else key
        try:
            obj = _config_of(model, path) if is_config else (
                model.get_submodule(path) if path else model)
        except AttributeError:
            raise ConfigError(f"the plan names module {path!r}, which this model does not have; "
                              "replay a plan only on the architecture it was made for") from None
        for attr, old in values.items():
            now = getattr(obj, attr, None)
            if not _same(now, old):
                raise ConfigError(
                    f"{key}.{attr} is {now!r} but the plan was made where it was {old!r}; "
                    "build the fresh model from the original (unpruned) configuration"
                )


def _set_attr(obj: Any, attr: str, value: Any) -> None:
    if isinstance(getattr(obj, attr, None), tuple) and isinstance(value, list):
        value = tuple(value)
    setattr(obj, attr, value)


def apply_plan(model: nn.Module, plan: Plan) -> None:
    """Apply ``plan`` to ``model`` in place; on any error the model is restored exactly.

    Everything is computed first (new tensors, attribute values), then swapped in;
    an exception during the swap undoes every change made so far.
    """
    _apply(model, plan)


def apply_undoable(model: nn.Module, plan: Plan) -> Callable[[], None]:
    """Like :func:`apply_plan`, returning a function that restores the model exactly."""
    return _apply(model, plan)


def _apply(model: nn.Module, plan: Plan) -> Callable[[], None]:
    _check_before(model, plan)
    tensors = new_tensors(model, plan)
    attrs = module_attrs(model, plan)
    configs = {path: (_config_of(model, path), fields) for path, fields in plan.config.items()}
    undo: list[tuple[Any, str, Any, str]] = []
    touched: list[nn.Module] = []
    try:
        for name, new in tensors.items():
            for full in [name, *[a for a, n in plan.aliases.items() if n == name]]:
                module, local = _owner(model, full)
                store = "_parameters" if local in module._parameters else "_buffers"
                undo.append((module, local, getattr(module, store)[local], store))
                getattr(module, store)[local] = new
                touched.append(module)
        for path, values in attrs.items():
            module = model.get_submodule(path) if path else model
            for attr, value in values.items():
                undo.append((module, attr, getattr(module, attr, None), "attr"))
                _set_attr(module, attr, value)
            touched.append(module)
        for config, fields in configs.values():
            for attr, value in fields.items():
                undo.append((config, attr, getattr(config, attr, None), "attr"))
                _set_attr(config, attr, value)
        for module in dict.fromkeys(touched):
            surgeons.finalize(module)
    except BaseException:
        _undo(undo, touched)
        raise
    return lambda: _undo(undo, touched)


def _undo(undo: list[tuple[Any, str, Any, str]], touched: list[nn.Module]) -> None:
    for obj, key, old, store in reversed(undo):
        if store == "attr":
            setattr(obj, key, old)
        else:
            getattr(obj, store)[key] = old
    for module in dict.fromkeys(touched):
        surgeons.finalize(module)
