"""int8 on top of pruning: one verb, :func:`quantize`, and a typed config per method.

Three methods, each delegated to a well-kept library rather than re-implemented:

- :class:`DynamicInt8Config`: int8 weights (per output channel by default), activations
  quantized per batch at run time; ``nn.Linear``, ``nn.LSTM`` and ``nn.GRU``.
  ``torch.ao.quantization.quantize_dynamic``. Its activations are quantized per
  *tensor*, which is fine for CNN heads, MLPs and RNNs but breaks large language
  models whose activations have outliers: use weight-only int8 for those.
- :class:`WeightOnlyInt8Config`: int8 weights per output channel, float activations;
  ``nn.Linear`` only. torchao's ``quantize_(model, Int8WeightOnlyConfig())``. The
  safe choice for transformers and LLMs.
- :class:`StaticInt8Config`: post-training static int8 (weights per channel,
  activations per tensor with scales calibrated on data) of convolutions, linear
  layers and their fused batch-norm / ReLU; torch.ao's FX graph mode
  (``prepare_fx`` / ``convert_fx``) with the ``x86`` (fbgemm) or ``qnnpack`` engine.
  The model must be traceable by ``torch.fx``.

Pruned zeros survive: an int8 zero-point is exactly 0 for symmetric weight
quantization, so a weight that was 0 stays 0 (see :func:`int8_state_dict`).

Reference: Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018.

Example:
    >>> import prunekit as pk
    >>> from prunekit.compress import DynamicInt8Config, quantize
    >>> qmodel = quantize(model, DynamicInt8Config())      # model itself is untouched
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .._io import write_bytes
from .._registry import Registry
from ..errors import ConfigError, DataError
from ..mask import bake
from .sharing import shared_layers

_ENGINES = ("x86", "fbgemm", "qnnpack")
_DYNAMIC_TYPES = {"linear": nn.Linear, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class DynamicInt8Config:
    """Dynamic int8: int8 weights, activations quantized per batch at run time.

    Attributes:
        modules: Layer kinds to quantize, from ``"linear"``, ``"lstm"``, ``"gru"``.
        per_channel: One scale per output row of a Linear (else one per tensor).
            Recurrent layers always use one scale per weight tensor (torch.ao's only choice).
    """

    kind: ClassVar[str] = "dynamic"
    modules: tuple[str, ...] = ("linear", "lstm", "gru")
    per_channel: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.modules if m not in _DYNAMIC_TYPES]
        if bad or not self.modules:
            raise ConfigError(
                f"DynamicInt8Config.modules {list(self.modules)!r} is not a non-empty list of "
                f"{sorted(_DYNAMIC_TYPES)}; pick from those"
            )


@dataclass(frozen=True)
class WeightOnlyInt8Config:
    """Weight-only int8 of ``nn.Linear`` layers (torchao), activations stay float.

    Attributes:
        skip: Qualified names of Linear layers to leave in float (e.g. ``("lm_head",)``).
    """

    kind: ClassVar[str] = "weight-only"
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaticInt8Config:
    """Post-training static int8 of convolutions and linear layers (torch.ao FX mode).

    Attributes:
        engine: Quantized kernel library: ``"x86"`` (default on Intel/AMD CPUs),
            ``"fbgemm"`` or ``"qnnpack"`` (ARM).
        calibration_batches: Batches of calibration data run through the observers.
        skip: Qualified module names to leave in float (e.g. the first conv or ``"fc"``).
    """

    kind: ClassVar[str] = "static"
    engine: str = "x86"
    calibration_batches: int = 8
    skip: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.engine not in _ENGINES:
            raise ConfigError(
                f"StaticInt8Config.engine {self.engine!r} is unknown; valid engines: "
                f"{', '.join(_ENGINES)}"
            )
        if self.calibration_batches < 1:
            raise ConfigError(
                f"StaticInt8Config.calibration_batches is {self.calibration_batches}; "
                "use at least 1"
            )


QuantConfig = DynamicInt8Config | WeightOnlyInt8Config | StaticInt8Config
Quantizer = Callable[[nn.Module, Any, "_Inputs"], nn.Module]

quantizers: Registry[Quantizer] = Registry("quantization method")
_CONFIGS: dict[str, type] = {
    c.kind: c for c in (DynamicInt8Config, WeightOnlyInt8Config, StaticInt8Config)
}


@dataclass(frozen=True)
class _Inputs:
    example_inputs: Any
    calibration: Iterable | None


def list_quantizers() -> list[str]:
    """Names of the quantization methods: ``["dynamic", "static", "weight-only"]``."""
    return quantizers.names()


def quantize(
    model: nn.Module,
    config: QuantConfig | str = "dynamic",
    *,
    example_inputs: Any = None,
    calibration: Iterable | None = None,
) -> nn.Module:
    """Return an int8 copy of ``model``; the model passed in is left unchanged.

    A copy rather than in place, because static int8 rewrites the forward graph.
    Weight masks (``pk.sparsify``) are baked into the copy first; their zeros stay
    zero in int8. The copy is in eval mode and runs on the CPU.

    Args:
        model: A float32 network on the CPU (pruned or not).
        config: A config object, or a method name (``"dynamic"``, ``"weight-only"``,
            ``"static"``) for its defaults.
        example_inputs: Inputs of one forward pass (a tensor, tuple or dict); needed by
            ``"static"``, which traces the model with them.
        calibration: Batches for static calibration: tensors, tuples whose first item
            is the input (``(x, y)`` loader batches), or dicts of keyword inputs.

    Returns:
        The quantized model.

    Raises:
        ConfigError: An unknown method, a model on another device than the CPU, a
            model without layers the method quantizes, missing calibration data, or a
            model ``torch.fx`` cannot trace (static); the message says what to do.

    Example:
        >>> qmodel = quantize(model, StaticInt8Config(), example_inputs=x, calibration=loader)
    """
    config = _resolve_config(config)
    _check_model(model)
    work = copy.deepcopy(model).eval()
    _bake_masks(work)
    with _quiet():
        return quantizers.get(config.kind)(work, config, _Inputs(example_inputs, calibration))


def _resolve_config(config: Any) -> QuantConfig:
    if isinstance(config, str):
        if config not in _CONFIGS:
            quantizers.get(config)  # raises ConfigError listing the valid names
        return _CONFIGS[config]()
    if not isinstance(config, tuple(_CONFIGS.values())):
        raise ConfigError(
            f"config is a {type(config).__name__}; pass DynamicInt8Config, WeightOnlyInt8Config, "
            f"StaticInt8Config or one of the names {', '.join(sorted(_CONFIGS))}"
        )
    return config


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    if devices - {"cpu"}:
        raise ConfigError(
            f"the model is on {sorted(devices)}; int8 kernels here run on the CPU: "
            "call model.cpu() first"
        )

    if shared_layers(model):
        raise ConfigError(
            "the model has shared weights (share_weights), which the int8 converters do not "
            "see as Linear / Conv layers; call prunekit.compress.bake_sharing(model) first"
        )


def _bake_masks(model: nn.Module) -> None:
    bake(model)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation warnings (the FX and eager flows still work)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        yield


@quantizers.register("dynamic")
def _dynamic(model: nn.Module, config: DynamicInt8Config, inputs: _Inputs) -> nn.Module:
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    linear_qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    spec = {
        _DYNAMIC_TYPES[m]: (linear_qconfig if m == "linear" else default_dynamic_qconfig)
        for m in config.modules
    }
    _require_layers(model, tuple(spec), config.kind)
    holder = nn.Sequential(model)  # quantize_dynamic swaps children only
    return quantize_dynamic(holder, spec, dtype=torch.qint8)[0]


@quantizers.register("weight-only")
def _weight_only(model: nn.Module, config: WeightOnlyInt8Config, inputs: _Inputs) -> nn.Module:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ConfigError(
            "weight-only int8 needs torchao: pip install torchao (0.18 is tested)"
        ) from None
    _require_layers(model, (nn.Linear,), config.kind)
    skip = set(config.skip)
    _check_names(model, skip, "WeightOnlyInt8Config.skip")

    def wanted(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and fqn not in skip

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=wanted)
    return model


@quantizers.register("static")
def _static(model: nn.Module, config: StaticInt8Config, inputs: _Inputs) -> nn.Module:
    from torch.ao.quantization import QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if inputs.example_inputs is None or inputs.calibration is None:
        raise ConfigError(
            "static int8 needs example_inputs (to trace the model) and calibration batches "
            "(to set activation scales); pass both, or use DynamicInt8Config"
        )
    _require_layers(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear), config.kind)
    _check_names(model, set(config.skip), "StaticInt8Config.skip")
    mapping: QConfigMapping = get_default_qconfig_mapping(config.engine)
    for name in config.skip:
        mapping = mapping.set_module_name(name, None)
    example = _as_args(inputs.example_inputs)
    with _engine(config.engine):
        try:
            prepared = prepare_fx(model, mapping, example)
        except Exception as exc:  # torch.fx raises many types for untraceable code
            raise ConfigError(
                f"static int8 could not trace the model with torch.fx ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); use DynamicInt8Config or "
                "WeightOnlyInt8Config, or export to ONNX and quantize there"
            ) from None
        _calibrate(prepared, inputs.calibration, config.calibration_batches)
        return convert_fx(prepared)


@contextlib.contextmanager
def _engine(engine: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise ConfigError(
            f"quantized engine {engine!r} is not in this PyTorch build ({supported}); pick one"
        )
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def _calibrate(prepared: nn.Module, batches: Iterable, limit: int) -> None:
    seen = 0
    with torch.no_grad():
        for batch in batches:
            if seen >= limit:
                break
            _run(prepared, _batch_inputs(batch))
            seen += 1
    if seen == 0:
        raise DataError("the calibration data yielded no batches; pass a non-empty loader")


def _batch_inputs(batch: Any) -> Any:
    """The model input of a calibration batch: ``x`` of ``(x, y)``, or the batch itself."""
    if isinstance(batch, list | tuple) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return batch[0]
    return batch


def _as_args(inputs: Any) -> tuple:
    if isinstance(inputs, dict):
        raise ConfigError(
            "static int8 traces positional inputs only; pass example_inputs as a tensor or tuple"
        )
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _run(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _require_layers(model: nn.Module, types: tuple[type, ...], kind: str) -> None:
    if not any(isinstance(m, types) for m in model.modules()):
        names = ", ".join(t.__name__ for t in types)
        raise ConfigError(
            f"the model has no layer that {kind} int8 quantizes ({names}); "
            f"pick another method (valid: {', '.join(list_quantizers())})"
        )


def _check_names(model: nn.Module, names: set[str], what: str) -> None:
    missing = sorted(names - {n for n, _ in model.named_modules()})
    if missing:
        raise ConfigError(f"{what} names {missing}, which are not modules of the model")


# --- bytes, plain int8 tensors and round trips ----------------------------------------


def serialized_bytes(model_or_state_dict: nn.Module | Mapping[str, Any]) -> bytes:
    """``torch.save`` bytes of a (quantized) model's state dict: what a checkpoint holds."""
    state = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    buf = io.BytesIO()
    with _quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        torch.save(state, buf)
    return buf.getvalue()


def save_quantized(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write a quantized model's state dict to ``path`` atomically; return the bytes written.

    Rebuild it with :func:`load_quantized` from a fresh float model and the same config.
    """
    data = serialized_bytes(model)
    write_bytes(path, data)
    return len(data)


def load_quantized(
    model: nn.Module,
    config: QuantConfig | str,
    path: str | os.PathLike[str],
    *,
    example_inputs: Any = None,
) -> nn.Module:
    """Rebuild a quantized model from a fresh float ``model`` and a :func:`save_quantized` file.

    The float model is quantized with ``config`` (static int8 without calibration: its
    scales come from the file), then the file's state dict is loaded, so the result
    computes exactly what the saved model computed.

    Raises:
        DataError: The file is missing or does not match the quantized model.
    """
    config = _resolve_config(config)
    try:
        with torch.serialization.safe_globals([torch.ScriptObject]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read quantized weights {path}: {exc}") from None
    skeleton = _skeleton(model, config, example_inputs)
    try:
        skeleton.load_state_dict(state, assign=config.kind == "weight-only")
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise DataError(
            f"{path} does not match the model quantized with {type(config).__name__} "
            f"({str(exc).splitlines()[0][:200]}); use the config the file was made with"
        ) from None
    return skeleton


def _skeleton(model: nn.Module, config: QuantConfig, example_inputs: Any) -> nn.Module:
    if config.kind != "static":
        return quantize(model, config)
    batch = [example_inputs]  # observers need one pass; the loaded state overwrites scales
    return quantize(model, config, example_inputs=example_inputs, calibration=batch)


def int8_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors of a quantized model: int8 weights, their scales and zero-points.

    Quantized tensors and torch.ao's packed parameters are unpacked into ordinary
    tensors (``<name>.weight`` int8, ``<name>.weight.scale``, ``.zero_point``), so the
    state can be measured or stored with :func:`prunekit.measure.save_sparse`, whose
    bitmask encoding then skips the pruned zeros of the int8 weights too.

    Example:
        >>> from prunekit.measure import size_bytes
        >>> size_bytes(int8_state_dict(qmodel), encoding="sparse")
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        out.update(_module_tensors(module, prefix))
    return out


def _module_tensors(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for attr in ("weight", "bias"):
        value = getattr(module, attr, None)
        if callable(value) and not isinstance(value, nn.Module):
            with contextlib.suppress(Exception):
                value = value()
        if isinstance(value, torch.Tensor) and attr not in module._parameters:
            out.update(_plain(prefix + attr, value))
    for key, value in [*module._parameters.items(), *module._buffers.items()]:
        if isinstance(value, torch.Tensor):
            out.update(_plain(prefix + key, value))
    if hasattr(module, "_all_weight_values") and hasattr(module, "_weight_bias"):
        for group in module._weight_bias().values():  # dynamic LSTM / GRU: packed weights
            for key, value in group.items():
                out.update(_plain(prefix + key, value))
    return out


def _plain(name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    t = t.detach()
    if hasattr(t, "qdata") and hasattr(t, "scale"):  # torchao Int8Tensor
        return {name: t.qdata.clone(), f"{name}.scale": t.scale.clone()}
    if not t.is_quantized:
        return {name: t.clone()}
    out = {name: t.int_repr().clone()}
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        out[f"{name}.scale"] = t.q_per_channel_scales().float()
        out[f"{name}.zero_point"] = t.q_per_channel_zero_points().to(torch.int32)
    else:
        out[f"{name}.scale"] = torch.tensor([t.q_scale()], dtype=torch.float32)
        out[f"{name}.zero_point"] = torch.tensor([t.q_zero_point()], dtype=torch.int32)
    return out
