"""Weight sharing: per-layer k-means codebooks with trainable centroids (Deep Compression).

Each shared layer's weight becomes ``codebook[index]``, with ``index == -1`` where
the weight was pruned (those stay exactly zero). The codebook is an ``nn.Parameter``,
so an ordinary training loop fine-tunes the centroids: autograd's gather backward
adds up the gradients of every weight of a cluster into its centroid, which is
exactly the update of Han et al. The pruned positions and the cluster assignment do
not change while fine-tuning.

Reference: S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep Neural
Networks with Pruning, Trained Quantization and Huffman Coding", ICLR 2016 (linear
centroid initialisation, section 3.2; centroid gradients, equation 3).

Example:
    >>> from prunekit.compress import ShareConfig, share_weights, bake_sharing
    >>> share_weights(model, ShareConfig(bits=5, conv_bits=8))
    >>> train(model, loader, epochs=1, lr=0.01)   # fine-tunes the centroids
    >>> bake_sharing(model)                        # plain weights again, shared values kept
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._registry import Registry
from ..errors import ConfigError
from ..mask import bake

_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Init = Callable[[torch.Tensor, int], torch.Tensor]

inits: Registry[Init] = Registry("centroid initialisation")


@dataclass(frozen=True)
class ShareConfig:
    """How weights are shared.

    Attributes:
        bits: Index bits of Linear layers: at most ``2**bits`` shared values per layer.
        conv_bits: Index bits of convolutions (Han et al. use 8 for conv, 5 for fc).
        init: Centroid initialisation: ``"linear"`` (evenly spaced between the smallest
            and largest weight, the paper's best), ``"density"`` (quantiles of the
            weights) or ``"random"`` (weights drawn at random, seeded).
        iterations: At most this many k-means (Lloyd) iterations per layer.
        ignore: Qualified names of layers to leave unshared; ``"re:<pattern>"`` for a
            regular expression.
        seed: Seed of the ``"random"`` initialisation.
    """

    bits: int = 5
    conv_bits: int = 8
    init: str = "linear"
    iterations: int = 30
    ignore: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bits", "conv_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 16:
                raise ConfigError(f"ShareConfig.{name} is {value!r}; use an integer in [1, 16]")
        if self.iterations < 1:
            raise ConfigError(f"ShareConfig.iterations is {self.iterations}; use at least 1")
        inits.get(self.init)  # unknown names list the valid ones


class SharedWeight(nn.Module):
    """Parametrization ``weight = codebook[index]``, zero where ``index == -1``.

    Attributes:
        codebook: The centroids, ``(K,)``, trainable.
        index: Cluster of every weight, same shape as the weight (int64, -1 = pruned).
    """

    def __init__(self, codebook: torch.Tensor, index: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("index", index)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        kept = self.index >= 0
        values = self.codebook[self.index.clamp_min(0)]  # (*weight.shape)
        return torch.where(kept, values, torch.zeros((), dtype=values.dtype))


def share_weights(
    model: nn.Module, config: ShareConfig | None = None, **overrides: object
) -> dict[str, int]:
    """Cluster each Linear / Conv weight of ``model`` into a shared codebook, in place.

    Zero weights (pruned, e.g. by ``pk.sparsify``) stay zero and are not clustered;
    masks are baked first. Keywords override fields of ``config``.

    Args:
        model: The network; modified in place (``weight`` becomes a parametrization).
        config: A :class:`ShareConfig`; defaults when omitted.
        **overrides: ``ShareConfig`` fields, e.g. ``bits=4``.

    Returns:
        Qualified layer name to the number of clusters used.

    Raises:
        ConfigError: Bad settings, an ignored name that is not in the model, a layer
            that is already shared, or a model with no layer to share. The model is
            unchanged on error.
    """
    config = _config(config, overrides)
    targets = _targets(model, config.ignore)

    bake(model)
    plans = {
        name: _cluster(mod.weight.detach(), _bits(mod, config), config) for name, mod in targets
    }
    for name, mod in targets:
        codebook, index = plans[name]
        parametrize.register_parametrization(
            mod, "weight", SharedWeight(codebook, index), unsafe=True
        )
    return {name: int(plans[name][0].numel()) for name, _ in targets}


def bake_sharing(model: nn.Module) -> nn.Module:
    """Replace every :class:`SharedWeight` by a plain weight holding its shared values.

    Returns the model (changed in place). The baked weights are bit for bit
    ``codebook[index]`` (``+0.0`` where pruned).
    """
    for module in model.modules():
        if _is_shared(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def baked_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``model`` would have after :func:`bake_sharing`, model untouched.

    (Baking a deep copy is not an option: ``torch.nn.utils.parametrize`` shares the
    parametrized class between copies, so removing it from one breaks the other.)
    """
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    shared = shared_layers(model)
    for key, value in state.items():
        layer, sep, rest = key.partition("parametrizations.weight.")
        name = layer.removesuffix(".")
        if sep and name in shared:
            if rest == "original":
                with torch.no_grad():
                    out[f"{layer}weight"] = shared[name](value).detach()
            continue
        out[key] = value
    return out


def shared_layers(model: nn.Module) -> dict[str, SharedWeight]:
    """Qualified layer name to its :class:`SharedWeight`, for layers still shared."""
    return {
        name: module.parametrizations.weight[0]
        for name, module in model.named_modules()
        if _is_shared(module)
    }


def kmeans_1d(
    values: torch.Tensor, k: int, *, init: str = "linear", iterations: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D tensor: ``(centroids (k,), assignment (n,))``.

    In one dimension the nearest centroid is found by binary search between the
    sorted centroids' midpoints. Empty clusters keep their centroid.
    """
    x = values.detach().reshape(-1).to(torch.float64)
    k = max(1, min(k, x.numel()))
    centroids = inits.get(init)(x, k, seed).sort().values
    assign = _nearest(x, centroids)
    for _ in range(iterations):
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids).sort().values
        new = _nearest(x, centroids)
        if torch.equal(new, assign):
            break
        assign = new
    return centroids.to(values.dtype), assign


@inits.register("linear")
def _linear_init(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    return torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)


@inits.register("density")
def _density_init(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    q = torch.linspace(0, 1, k, dtype=torch.float64)
    return torch.quantile(x, q) if x.numel() <= 16_000_000 else _linear_init(x, k, seed)


@inits.register("random")
def _random_init(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.numel(), generator=g)[:k]].clone()


def _nearest(x: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    mids = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2  # (k - 1,)
    return torch.searchsorted(mids, x)


def _cluster(
    weight: torch.Tensor, bits: int, config: ShareConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    flat = weight.reshape(-1)
    kept = flat != 0
    index = torch.full(flat.shape, -1, dtype=torch.int64)
    if not bool(kept.any()):
        return torch.zeros(1, dtype=weight.dtype), index.reshape(weight.shape)
    centroids, assign = kmeans_1d(
        flat[kept], 2**bits, init=config.init, iterations=config.iterations, seed=config.seed
    )
    index[kept] = assign
    return centroids.to(weight.dtype).clone(), index.reshape(weight.shape)


def _config(config: ShareConfig | None, overrides: dict[str, object]) -> ShareConfig:
    if config is not None and not isinstance(config, ShareConfig):
        raise ConfigError(f"config is a {type(config).__name__}; pass a ShareConfig")
    base = config or ShareConfig()
    fields = set(ShareConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown ShareConfig field(s) {unknown}; valid: {sorted(fields)}")
    values = {f: getattr(base, f) for f in fields} | overrides
    if isinstance(values["ignore"], str | list):
        values["ignore"] = tuple(
            [values["ignore"]] if isinstance(values["ignore"], str) else values["ignore"]
        )
    return ShareConfig(**values)


def _targets(model: nn.Module, ignore: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    names = {n for n, _ in model.named_modules()}
    missing = [p for p in ignore if not p.startswith("re:") and p not in names]
    if missing:
        raise ConfigError(f"ShareConfig.ignore names {missing}, which are not modules of the model")
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, _KINDS) or _ignored(name, ignore):
            continue
        if _is_shared(mod):
            raise ConfigError(f"layer {name!r} is already shared; call bake_sharing first")
        if mod.weight.is_meta or not mod.weight.is_floating_point():
            raise ConfigError(f"layer {name!r} has no float weights with values to share")
        out.append((name, mod))
    if not out:
        raise ConfigError("the model has no Linear or Conv layer to share (or all are ignored)")
    return out


def _ignored(name: str, ignore: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p[3:], name) if p.startswith("re:") else p == name for p in ignore)


def _bits(module: nn.Module, config: ShareConfig) -> int:
    return config.bits if isinstance(module, nn.Linear) else config.conv_bits


def _is_shared(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, SharedWeight) for p in module.parametrizations.weight
    )
