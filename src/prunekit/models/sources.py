"""Your own model: built by name from torchvision, timm or transformers, made by a Python
factory, or loaded from a Hugging Face folder, with weights from a checkpoint file.

Checkpoints are safetensors files, or ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` state dicts
read with ``torch.load(weights_only=True)``: a file that holds a pickled module (what
``torch.save(model)`` writes) is refused, never unpickled. A checkpoint that does not fit
the model is an error naming the first keys that differ; a classifier head whose class
count differs from ``num_classes`` is an error that offers both ways out (keep the
checkpoint's classes, or ``new_head=True`` for a fresh head). The libraries are imported
only when a model of theirs is built.

Example:
    >>> from prunekit.models.sources import load_model
    >>> user = load_model({"source": "torchvision", "name": "mobilenet_v2",
    ...                    "checkpoint": "mobilenet_v2-b0353104.pth"})
    >>> user.num_classes, user.heads
    (1000, ('classifier.1',))
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import load_safetensors
from .._registry import Registry
from ..errors import ConfigError

__all__ = [
    "HF_AUTO_CLASSES",
    "MODEL_SOURCES",
    "SPEC_KEYS",
    "UserModel",
    "find_heads",
    "list_model_sources",
    "load_checkpoint",
    "load_model",
    "read_state_dict",
]

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Keys a model spec may hold; anything else is a typo and an error.
SPEC_KEYS = ("source", "name", "path", "python", "kwargs", "config", "num_classes",
             "checkpoint", "new_head", "auto", "input_shape", "gguf_file")
_SHOWN = 5  # how many key names an error quotes


@dataclass
class UserModel:
    """A model built from a spec, with what a run needs to know about it.

    Attributes:
        model: the network, in eval mode.
        source: ``torchvision``, ``timm``, ``transformers`` or ``python``.
        heads: qualified names of output layers (classifier, LM head) to keep whole.
        num_classes: output classes of the classifier, when the model has one.
        input_shape: shape of one input without the batch dimension, when known
            (``(3, 224, 224)``); data loaders give it otherwise.
        folder: the Hugging Face folder the model came from (its tokenizer lives there).
        gguf_file: the GGUF file in ``folder`` the model (and its tokenizer) came from.
    """

    model: nn.Module
    source: str
    heads: tuple[str, ...] = ()
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    folder: Path | None = None
    gguf_file: str | None = None


ModelBuilder = Callable[..., nn.Module]
MODEL_SOURCES: Registry[ModelBuilder] = Registry("model source")

# ``auto:`` name -> transformers Auto class for folders and configs.
HF_AUTO_CLASSES = {
    "model": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "image-classification": "AutoModelForImageClassification",
}


def list_model_sources() -> list[str]:
    """Names accepted as ``source``: ``timm``, ``torchvision``, ``transformers``."""
    return MODEL_SOURCES.names()


# --- the entry point ---------------------------------------------------------------------


def load_model(spec: Mapping[str, Any]) -> UserModel:
    """Build the model a recipe's ``model:`` section describes.

    Three forms:

    - ``{source: torchvision|timm, name: NAME, num_classes: N, checkpoint: PATH, kwargs: {}}``
    - ``{source: transformers, path: FOLDER, auto: sequence-classification}`` (a local
      ``from_pretrained`` folder) or ``{source: transformers, name: MODEL_TYPE, config: {}}``
      (random weights from a config, e.g. ``name: bert``)
    - ``{python: "package.module:factory", kwargs: {}, checkpoint: PATH}``

    ``new_head: true`` loads every checkpoint weight except a classifier head whose class
    count differs from ``num_classes``; that head starts fresh. ``input_shape`` (one
    input, without the batch) is kept for the example inputs.

    Raises:
        ConfigError: an unknown key or source, a name the library does not have, a missing
            or unreadable checkpoint, or one that does not fit the model.
    """
    spec = dict(spec)
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(
            f"model: unknown key {unknown[0]!r}{_close(unknown[0], SPEC_KEYS)}; "
            f"valid keys: {', '.join(SPEC_KEYS)}"
        )
    if ("python" in spec) == ("source" in spec):
        raise ConfigError(
            "model: give exactly one of source: (torchvision, timm, transformers) or "
            "python: 'package.module:factory'"
        )
    options = _options(spec)
    if "python" in spec:
        _refuse(spec, ("name", "path", "config", "auto"), "python")
        model = build_python_model(spec["python"], kwargs=spec.get("kwargs"))
        return _finish(model, "python", options)
    source = spec["source"]
    builder = MODEL_SOURCES.get(source)
    extra = {}
    if spec.get("gguf_file") is not None:
        if source != "transformers":
            raise ConfigError(f"model.gguf_file goes with source transformers, not {source}")
        extra["gguf_file"] = spec["gguf_file"]
    model, folder = builder(**{k: spec.get(k) for k in ("name", "path", "kwargs", "config",
                                                        "auto", "num_classes", "new_head")},
                            **extra)
    user = _finish(model, source, options)
    user.folder, user.gguf_file = folder, extra.get("gguf_file")
    return user


def _options(spec: Mapping[str, Any]) -> dict[str, Any]:
    num_classes = spec.get("num_classes")
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"model.num_classes must be a positive integer, got {num_classes!r}")
    shape = spec.get("input_shape")
    if shape is not None:
        if not isinstance(shape, Sequence) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise ConfigError(
                f"model.input_shape must be a list of positive integers such as [3, 224, 224], "
                f"got {shape!r}"
            )
        shape = tuple(shape)
    new_head = spec.get("new_head", False)
    if not isinstance(new_head, bool):
        raise ConfigError(f"model.new_head must be true or false, got {new_head!r}")
    return {"num_classes": num_classes, "input_shape": shape, "new_head": new_head,
            "checkpoint": spec.get("checkpoint")}


def _refuse(spec: Mapping[str, Any], keys: Sequence[str], form: str) -> None:
    given = [k for k in keys if k in spec]
    if given:
        raise ConfigError(f"model: {given[0]!r} does not go with {form}:; remove it")


def _finish(model: nn.Module, source: str, options: Mapping[str, Any]) -> UserModel:
    """Load the checkpoint, find the heads, put the model in eval mode."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"the {source} model builder returned {type(model).__name__}, not a torch.nn.Module"
        )
    if options["checkpoint"] is not None:
        load_checkpoint(model, options["checkpoint"], new_head=options["new_head"])
    num_classes = _classes_of(model, options["num_classes"])
    return UserModel(
        model=model.eval(),
        source=source,
        heads=find_heads(model, num_classes),
        num_classes=num_classes,
        input_shape=options["input_shape"] or _default_input_shape(model, source),
    )


def _close(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- sources -----------------------------------------------------------------------------


def _need(what: Any, key: str, source: str) -> None:
    if not isinstance(what, str) or not what:
        raise ConfigError(f"model: source {source} needs {key}: (a string)")


def _class_kwargs(num_classes: int | None, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(kwargs or {})
    if num_classes is not None:
        out["num_classes"] = num_classes
    return out


@MODEL_SOURCES.register("torchvision")
def _torchvision(*, name: str | None, path: Any = None, kwargs: Mapping | None = None,
                 config: Any = None, auto: Any = None, num_classes: int | None = None,
                 new_head: bool = False) -> tuple[nn.Module, None]:
    """``torchvision.models.get_model(name, weights=None)``: random weights, nothing downloaded."""
    _need(name, "name", "torchvision")
    _unused("torchvision", path=path, config=config, auto=auto)
    try:
        import torchvision
    except ImportError:
        raise ConfigError("source torchvision needs torchvision: pip install torchvision") from None
    names = torchvision.models.list_models()
    if name not in names:
        raise ConfigError(f"torchvision has no model {name!r}{_close(name, names)}; "
                          "list them with torchvision.models.list_models()")
    with _wrong_kwargs("torchvision", name):
        return torchvision.models.get_model(
            name, weights=None, **_class_kwargs(num_classes, kwargs)), None


@MODEL_SOURCES.register("timm")
def _timm(*, name: str | None, path: Any = None, kwargs: Mapping | None = None,
          config: Any = None, auto: Any = None, num_classes: int | None = None,
          new_head: bool = False) -> tuple[nn.Module, None]:
    """``timm.create_model(name, pretrained=False)``: random weights, nothing downloaded."""
    _need(name, "name", "timm")
    _unused("timm", path=path, config=config, auto=auto)
    try:
        import timm
    except ImportError:
        raise ConfigError("source timm needs timm: pip install timm") from None
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}{_close(name, timm.list_models())}; "
                          "list them with timm.list_models('pattern*')")
    with _wrong_kwargs("timm", name):
        return timm.create_model(name, pretrained=False,
                                 **_class_kwargs(num_classes, kwargs)), None


@MODEL_SOURCES.register("transformers")
def _transformers(*, name: str | None = None, path: str | None = None,
                  kwargs: Mapping | None = None, config: Mapping | None = None,
                  auto: str | None = None, num_classes: int | None = None,
                  new_head: bool = False, gguf_file: str | None = None
                  ) -> tuple[nn.Module, Path | None]:
    """A local ``from_pretrained`` folder (``path``; with ``gguf_file``, a GGUF file in it,
    dequantized to float32 unless ``kwargs`` give a ``dtype``) or a model type built from
    ``config``."""
    if (name is None) == (path is None):
        raise ConfigError(
            "model: source transformers needs exactly one of path: (a local folder saved with "
            "save_pretrained) or name: (a model type such as bert, built with random weights)"
        )
    auto_cls = _auto_class(auto or ("sequence-classification" if num_classes else "model"))
    if path is not None:
        if config:
            raise ConfigError("model: config: goes with name:, not with path: (the folder has one)")
        if gguf_file is not None:
            return _hf_gguf(Path(path), gguf_file, auto_cls, kwargs), Path(path)
        return _hf_folder(Path(path), auto_cls, num_classes, new_head, kwargs), Path(path)
    return _hf_config(name, auto_cls, num_classes, config, kwargs), None


def _unused(source: str, **given: Any) -> None:
    for key, value in given.items():
        if value is not None:
            raise ConfigError(f"model: {key}: does not go with source {source}; remove it")


def _auto_class(auto: str) -> Any:
    if auto not in HF_AUTO_CLASSES:
        raise ConfigError(f"model.auto: unknown {auto!r}{_close(auto, list(HF_AUTO_CLASSES))}; "
                          f"valid: {', '.join(HF_AUTO_CLASSES)}")
    try:
        import transformers
    except ImportError:
        raise ConfigError("source transformers needs transformers: "
                          "pip install transformers") from None
    return getattr(transformers, HF_AUTO_CLASSES[auto])


def _hf_folder(folder: Path, auto_cls: Any, num_classes: int | None, new_head: bool,
               kwargs: Mapping | None) -> nn.Module:
    if not folder.is_dir():
        raise ConfigError(f"model.path {folder} is not a folder; give the folder that "
                          "save_pretrained wrote (it holds config.json and the weights)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.path {folder} has no config.json; it is not a Hugging Face "
                          "model folder (save one with model.save_pretrained(folder))")
    extra = dict(kwargs or {})
    if num_classes is not None and auto_cls.__name__.endswith(_CLASSIFIERS):
        saved = _hf_label_count(config_file)
        if saved is not None and saved != num_classes and not new_head:
            raise ConfigError(
                f"the model in {folder} has {saved} classes but num_classes is {num_classes}; "
                f"set num_classes: {saved} to keep its head, or new_head: true for a fresh "
                f"{num_classes}-class head"
            )
        extra.update(num_labels=num_classes, ignore_mismatched_sizes=new_head)
    with _wrong_kwargs("transformers", str(folder)):
        return auto_cls.from_pretrained(str(folder), **extra)


def _hf_gguf(folder: Path, gguf_file: str, auto_cls: Any, kwargs: Mapping | None) -> nn.Module:
    if not (folder / gguf_file).is_file():
        raise ConfigError(f"model.gguf_file {gguf_file!r} is not a file in {folder}; give the "
                          "folder in path: and the file's name in gguf_file:")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF with it)
    except ImportError:
        raise ConfigError("model.gguf_file needs the gguf package: pip install gguf "
                          "accelerate") from None
    extra = {"dtype": torch.float32, **dict(kwargs or {})}
    with _wrong_kwargs("transformers", str(folder / gguf_file)):
        return auto_cls.from_pretrained(str(folder), gguf_file=gguf_file, **extra)


def _hf_label_count(config_file: Path) -> int | None:
    config = json.loads(config_file.read_text())
    if "id2label" in config:
        return len(config["id2label"])
    return config.get("num_labels")


def _hf_config(name: str, auto_cls: Any, num_classes: int | None, config: Mapping | None,
               kwargs: Mapping | None) -> nn.Module:
    from transformers import AutoConfig

    settings = dict(config or {})
    if num_classes is not None:
        settings["num_labels"] = num_classes
    try:
        cfg = AutoConfig.for_model(name, **settings)
    except ValueError as err:
        raise ConfigError(f"transformers has no model type {name!r} ({err}); use a type such "
                          "as bert, llama, gpt2, vit, or path: to a local folder") from None
    with _wrong_kwargs("transformers", name):
        return auto_cls.from_config(cfg, **dict(kwargs or {}))


@contextlib.contextmanager
def _wrong_kwargs(source: str, name: str) -> Iterator[None]:
    """Turn a builder's TypeError on unknown keyword arguments into a ConfigError."""
    try:
        yield
    except TypeError as err:
        raise ConfigError(f"{source} model {name} refused its arguments: {err}; "
                          "check model.kwargs / model.config") from err


def build_python_model(target: str, *, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Call ``package.module:factory(**kwargs)``; the module must be importable.

    Raises:
        ConfigError: the target is not ``module:function``, the module or the function
            does not exist, or the call refuses ``kwargs``.
    """
    factory = import_target(target, key="model.python")
    with _wrong_kwargs("python", target):
        return factory(**dict(kwargs or {}))


def import_target(target: Any, *, key: str) -> Callable[..., Any]:
    """The callable named ``"package.module:attribute"`` (imported, never evaluated)."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ConfigError(f"{key} must look like 'package.module:function', got {target!r}")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}: cannot import {module_name!r} ({err}); install it, or run "
                          "from the folder that holds it (or add that folder to PYTHONPATH)"
                          ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"{key}: module {module_name!r} has no function {attr!r}"
                          f"{_close(attr, names)}")
    return factory


# --- checkpoints -------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``name -> tensor`` dict on the CPU.

    ``.safetensors`` files are read with safetensors; ``.pt`` / ``.pth`` / ``.bin`` /
    ``.ckpt`` with ``torch.load(weights_only=True)``. A training checkpoint that wraps the
    weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped.

    Raises:
        ConfigError: the file is missing, has another suffix, holds pickled objects
            (a whole module), or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; check model.checkpoint")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"checkpoint {path}: unknown file type {path.suffix!r}; "
                          f"prunekit reads {', '.join(CHECKPOINT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"checkpoint {path} holds pickled Python objects (a whole module saved with "
            "torch.save(model)?); prunekit never unpickles code. Save the weights instead: "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file"
        ) from None
    return _unwrap_state(loaded, path)


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "module", "net"):
            if _is_state(obj.get(key)):
                return dict(obj[key])
    top = ", ".join(map(str, list(obj)[:_SHOWN])) if isinstance(obj, Mapping) else type(obj)
    raise ConfigError(f"checkpoint {path} holds no state dict (found: {top}); save "
                      "model.state_dict() (or a dict with it under 'state_dict')")


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str], *,
                    new_head: bool = False) -> None:
    """Load a checkpoint file's weights into ``model``; the model is unchanged on error.

    Keys may carry a wrapper's prefix (``module.`` from DistributedDataParallel,
    ``model.`` from Lightning), which is removed when that makes them fit.

    Args:
        model: the freshly built network.
        path: a safetensors file or a ``torch.save``-d state dict.
        new_head: skip classifier weights whose shape differs (the head keeps its fresh
            initialization), for fine-tuning a pretrained body on other classes.

    Raises:
        ConfigError: keys that are missing or unexpected (the first few are named), or
            shapes that differ (a head whose class count differs names both ways out).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    state = _strip_prefix(state, own)
    skip = _check_shapes(model, state, own, path, new_head)
    state = {k: v for k, v in state.items() if k not in skip}
    missing = [k for k in own if k not in state and k not in skip
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {path} does not fit this {type(model).__name__}: "
            f"{_listing('missing from the checkpoint', missing)}"
            f"{'; ' if missing and unexpected else ''}"
            f"{_listing('not in the model', unexpected)}; build the model the checkpoint "
            "was saved from (same name, kwargs and num_classes)"
        )
    model.load_state_dict(state, strict=False)


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} keys {what} ({', '.join(keys[:_SHOWN])}{more})"


def _strip_prefix(state: dict[str, torch.Tensor], own: Mapping[str, Any]
                  ) -> dict[str, torch.Tensor]:
    """Drop a leading ``prefix.`` shared by every key when that makes the keys fit."""
    if any(k in own for k in state):
        return state
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) == 1 and all("." in k for k in state):
        stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
        if any(k in own for k in stripped):
            return stripped
    return state


def _check_shapes(model: nn.Module, state: Mapping[str, torch.Tensor], own: Mapping[str, Any],
                  path: Any, new_head: bool) -> set[str]:
    """Keys to skip (a replaced head); ConfigError for any other shape that differs."""
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if not wrong:
        return set()
    heads = find_heads(model, _classes_of(model, None))
    in_head = [k for k in wrong if any(k.startswith(h + ".") for h in heads)]
    body = [k for k in wrong if k not in in_head]
    if body:
        shown = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                          for k in body[:_SHOWN])
        raise ConfigError(f"checkpoint {path} does not fit this {type(model).__name__}: "
                          f"{len(body)} shapes differ (checkpoint vs model: {shown}); build "
                          "the model the checkpoint was saved from (same name and kwargs)")
    if new_head:
        return set(in_head)
    key = next(k for k in in_head if k.endswith("weight")) if any(
        k.endswith("weight") for k in in_head) else in_head[0]
    saved, built = state[key].shape[0], own[key].shape[0]
    raise ConfigError(
        f"checkpoint {path} has a {saved}-class head ({key}) but the model was built with "
        f"{built} classes; set num_classes: {saved} to keep its head, or new_head: true to "
        f"load everything else and start a fresh {built}-class head"
    )


# --- what a run needs to know about the model -------------------------------------------


def _out_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    return None


def _last_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    layers = [(n, m) for n, m in model.named_modules() if _out_width(m) is not None]
    return layers[-1] if layers else None


def _classes_of(model: nn.Module, given: int | None) -> int | None:
    """``given``, or the output width of the model's classifier when it has one."""
    if given is not None:
        return given
    config = getattr(model, "config", None)
    if config is not None:
        if type(model).__name__.endswith(_CLASSIFIERS):
            return int(config.num_labels)
        return None
    last = _last_layer(model)
    if last is None:
        return None
    name, module = last
    return _out_width(module) if isinstance(module, nn.Linear) else None


_CLASSIFIERS = ("SequenceClassification", "ImageClassification")
_HF_HEADS = ("classifier", "lm_head", "score", "cls", "qa_outputs")


def find_heads(model: nn.Module, num_classes: int | None) -> tuple[str, ...]:
    """Qualified names of the output layers a structured cut must leave whole.

    Every Linear / Conv whose output width is ``num_classes`` (the classifier, and an
    auxiliary classifier beside it), and a Hugging Face model's head modules
    (``classifier``, ``lm_head``, ``score``...).

    Example:
        >>> find_heads(torchvision.models.mobilenet_v2(num_classes=10), 10)
        ('classifier.1',)
    """
    names = []
    if num_classes is not None:
        names += [n for n, m in model.named_modules() if _out_width(m) == num_classes]
    if getattr(model, "config", None) is not None:
        names += [n for n, _ in model.named_children() if n in _HF_HEADS]
    return tuple(dict.fromkeys(names))


def _default_input_shape(model: nn.Module, source: str) -> tuple[int, ...] | None:
    if source == "timm":
        size = getattr(model, "pretrained_cfg", {}).get("input_size")
        return tuple(size) if size else None
    if source == "torchvision":
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        return (first.in_channels, 224, 224) if first is not None else None
    return None
