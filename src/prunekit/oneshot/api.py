"""``pk.oneshot``: data-aware one-shot pruning of a pretrained model, one block at a time.

The model's repeated blocks (decoder layers of a causal LM, encoder layers of a
BERT) are pruned in order. Block ``i`` is run on its captured inputs with hooks
that gather each Linear layer's input statistics; every Linear of the block is
pruned (Wanda / SparseGPT / magnitude); the pruned block is run again to make
block ``i + 1``'s inputs. Peak memory is the model, one block's statistics
(SparseGPT: an ``in x in`` Gram matrix per Linear) and the calibration hidden
states (``samples x seq_len x hidden`` floats, twice with OWL), never the
activations of the whole model. Layers outside the blocks (embeddings, the
LM head) stay dense.

This is the sequential scheme of the SparseGPT and Wanda reference code
(Frantar & Alistarh 2023; Sun et al. 2023).

Example:
    >>> ids = calibration_ids(tokenizer, texts, samples=32, seq_len=512)
    >>> result = pk.oneshot(model, ids, method="sparsegpt", pattern="2:4")
    >>> result.sparsity, result.seconds, result.peak_rss_bytes
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import mask as _mask
from .._calls import to_device
from .._utils import match_any
from ..errors import ConfigError
from ..importance.activation import InputStats
from ..mask.targets import find_targets
from ._memory import PeakMemory
from .blocks import Captured, capture, find_blocks, run_block
from .config import OneShotConfig
from .methods import LayerTarget, Method, get_method
from .owl import outlier_ratio, owl_sparsities


@dataclass(frozen=True)
class OneShotResult:
    """What a one-shot run did and what it cost.

    Attributes:
        config: the resolved configuration.
        blocks: dotted name of the block list that was pruned.
        block_sparsity: target sparsity of each block (OWL varies it; None with N:M).
        layer_sparsity: qualified weight name -> measured fraction of zeros.
        sparsity: zeros over all pruned weights.
        seconds: wall-clock time of the call.
        peak_rss_bytes: peak resident memory of the process during the call.
        peak_cuda_bytes: peak CUDA memory allocated, when CUDA is available.
    """

    config: OneShotConfig
    blocks: str
    block_sparsity: tuple[float | None, ...]
    layer_sparsity: dict[str, float] = field(repr=False)
    sparsity: float
    seconds: float
    peak_rss_bytes: int
    peak_cuda_bytes: int | None = None


def oneshot(
    model: nn.Module,
    calibration: Any,
    config: OneShotConfig | None = None,
    **options: Any,
) -> OneShotResult:
    """Prune ``model``'s blocks in place, in one shot, from calibration data.

    Args:
        model: a Hugging Face decoder (Llama, Mistral, Qwen2, Gemma-3 ...), an encoder,
            or any model with a ModuleList of repeated blocks holding Linear layers.
        calibration: token ids ``(samples, seq_len)`` (split into ``batch_size`` batches),
            a dict of such tensors (``input_ids``, ``attention_mask``), or a list of
            batches (tensors or dicts of keyword inputs). Unused by ``magnitude``
            with uniform allocation.
        config: a :class:`OneShotConfig`; or give its fields as keywords
            (``method="wanda", sparsity=0.5, pattern=None, allocation="owl"``).

    Returns:
        A :class:`OneShotResult` (sparsities, time, peak memory).

    Raises:
        ConfigError: bad options, no recognisable blocks, N:M on a width that M does
            not divide, empty or unusable calibration. The model is unchanged.

    Example:
        >>> pk.oneshot(model, ids, method="wanda", sparsity=0.5, allocation="owl")
    """
    cfg = _resolve(config, options)
    method = get_method(cfg.method)
    path, blocks = find_blocks(model, cfg.blocks)
    layers = _block_layers(model, path, blocks, cfg)
    _check_loaded(layers)
    needs_data = method.needs is not None or cfg.allocation == "owl"
    batches = _batches(calibration, cfg.batch_size, _device(model)) if needs_data else []
    start = time.perf_counter()
    undo = _Undo(enabled=cfg.rollback)
    training = model.training
    model.eval()
    try:
        with PeakMemory() as mem, torch.no_grad():
            run = _run(model, blocks, layers, batches, method, cfg, undo, needs_data, Resident())
    except BaseException:
        undo.restore()
        raise
    finally:
        model.train(training)
    return _result(cfg, path, run, time.perf_counter() - start, mem)


@dataclass
class _Run:
    """What :func:`_run` measured: block targets and each pruned weight's (zeros, size)."""

    targets: list[float | None]
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def _result(cfg: OneShotConfig, path: str, run: _Run, seconds: float,
            mem: PeakMemory) -> OneShotResult:
    per_layer = {name: zeros / max(size, 1) for name, (zeros, size) in run.counts.items()}
    zeros = sum(z for z, _ in run.counts.values())
    total = sum(n for _, n in run.counts.values())
    return OneShotResult(cfg, path, tuple(run.targets), per_layer, zeros / max(total, 1),
                         seconds, mem.peak_rss, mem.peak_cuda)


class Resident:
    """Where the blocks' weights live during a run: here, in memory all along.

    :func:`prunekit.oneshot.stream.oneshot_streamed` overrides the three steps to read a
    block's weights from safetensors shards before it is used, to write it out once it
    is pruned and to drop it from memory afterwards.
    """

    def load(self, index: int) -> None:
        """Make block ``index``'s weights real (before it runs)."""

    def pruned(self, index: int) -> None:
        """Block ``index`` is pruned for good (its masks are attached)."""

    def release(self, index: int) -> None:
        """Block ``index`` was only read (a dense pass); its memory may go."""


def _resolve(config: OneShotConfig | None, options: dict) -> OneShotConfig:
    if config is not None and options:
        raise ConfigError(f"give a OneShotConfig or keywords, not both (got {', '.join(options)})")
    if config is not None and not isinstance(config, OneShotConfig):
        raise ConfigError(f"config must be a OneShotConfig, got {type(config).__name__}")
    return config or OneShotConfig.from_kwargs(**options)


def _run(model, blocks, layers, batches, method, cfg, undo, needs_data, where: Resident) -> _Run:
    if needs_data:
        where.load(0)  # capture runs block 0 once to learn what blocks return
    captured = capture(model, blocks, batches) if needs_data else None
    sparsities: list[float | None]
    if cfg.nm is not None:
        sparsities = [None] * len(blocks)
    elif cfg.allocation == "owl":
        sparsities = _owl(blocks, layers, captured, cfg, where)
    else:
        sparsities = [cfg.target_sparsity] * len(blocks)
    run = _Run(sparsities)
    hidden = list(captured.hidden) if captured else []
    for i in _progress(range(len(blocks)), cfg, f"oneshot {cfg.method}"):
        where.load(i)
        target = LayerTarget(sparsities[i] or 0.0, cfg.nm, cfg.blocksize, cfg.dampening)
        dense_out: list[torch.Tensor] = []
        keep_out = not cfg.sequential and i + 1 < len(blocks)
        stats = _gather(blocks[i], layers[i], hidden, captured, i, method.needs,
                        outputs=dense_out if keep_out else None)
        for name, module in layers[i]:
            _prune_layer(name, module, stats.get(name), method, target, undo)
            w = module.weight
            run.counts[f"{name}.weight"] = (int((w == 0).sum()), w.numel())
        if dense_out:
            hidden = dense_out
        elif captured is not None and i + 1 < len(blocks):
            hidden = _advance(blocks[i], hidden, captured.calls[i])
        where.pruned(i)
    return run


def _gather(block, layers, hidden, captured, index, needs, *,
            outputs: list | None = None) -> dict[str, InputStats]:
    """Run the block on its inputs with statistics hooks on its Linear layers (its outputs
    are appended to ``outputs`` when given)."""
    if needs is None:
        return {}
    stats = {name: InputStats(m, gram=needs == "gram") for name, m in layers}
    try:
        for h, call in zip(hidden, captured.calls[index], strict=True):
            out = run_block(block, h, call)
            if outputs is not None:
                outputs.append(out)
    finally:
        for s in stats.values():
            s.remove()
    return stats


def _advance(block: nn.Module, hidden: list, calls: list) -> list[torch.Tensor]:
    return [run_block(block, h, c) for h, c in zip(hidden, calls, strict=True)]


def _prune_layer(name: str, module: nn.Module, stats, method: Method, target, undo) -> None:
    old = _mask.get_mask(module, "weight")
    new, keep = method.fn(module.weight.detach(), stats, old, target)
    if old is not None:
        keep = keep & old
    undo.save(module)
    module.weight.copy_(new.to(module.weight.dtype))
    _mask.attach_mask(module, "weight", keep)


def _owl(blocks, layers, captured: Captured, cfg: OneShotConfig,
         where: Resident) -> list[float]:
    """A dense pass that measures every block's outlier ratio (OWL), then the sparsities."""
    hidden, ratios = list(captured.hidden), []
    for i in _progress(range(len(blocks)), cfg, "owl ratios"):
        where.load(i)
        stats = _gather(blocks[i], layers[i], hidden, captured, i, "norm")
        weights = [m.weight for _, m in layers[i]]
        ratios.append(outlier_ratio(weights, [stats[n] for n, _ in layers[i]],
                                    threshold=cfg.owl_threshold))
        if i + 1 < len(blocks):
            hidden = _advance(blocks[i], hidden, captured.calls[i])
        where.release(i)
    return owl_sparsities(ratios, sparsity=cfg.target_sparsity, lam=cfg.owl_lambda)


def _progress(items: Iterable, cfg: OneShotConfig, desc: str) -> Iterable:
    """A tqdm bar per block (no bar when quiet or when tqdm is not installed)."""
    if cfg.quiet:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="block", leave=False)


def _block_layers(model, path, blocks, cfg) -> list[list[tuple[str, nn.Linear]]]:
    """Per block, the qualified names and modules of the Linear layers to prune."""
    names = [n for n, _ in model.named_modules()]
    for pattern in cfg.exclude:
        if not any(match_any(n, [pattern]) for n in names):
            raise ConfigError(f"exclude pattern {pattern!r} matches no module; blocks are "
                              f"named like {path}.0")
    out = []
    for i, block in enumerate(blocks):
        prefix = f"{path}.{i}" if path else str(i)
        found = [(f"{prefix}.{t.module_name}" if t.module_name else prefix, t.module)
                 for t in find_targets(block) if isinstance(t.module, nn.Linear)]
        out.append([(n, m) for n, m in found if not match_any(n, cfg.exclude)])
    if not any(out):
        raise ConfigError("every Linear layer of the blocks is excluded; nothing left to prune")
    _check_widths(out, cfg)
    return out


def _check_loaded(layers: list) -> None:
    for name, module in (x for block in layers for x in block):
        if module.weight.device.type == "meta":
            raise ConfigError(f"{name} is on the meta device; load real weights first, or "
                              "prune the checkpoint from its files with "
                              "prunekit.oneshot.oneshot_streamed")


def _check_widths(layers: list, cfg: OneShotConfig) -> None:
    nm = cfg.nm
    for name, module in (x for block in layers for x in block):
        if nm is not None and module.in_features % nm[1]:
            raise ConfigError(f"pattern {cfg.pattern} needs input widths that are multiples of "
                              f"{nm[1]}; {name} has {module.in_features}: exclude it")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device


def _batches(calibration: Any, batch_size: int, device: torch.device) -> list:
    """Calibration as a list of batches (tensors or dicts), on the model's device."""
    if calibration is None:
        raise ConfigError("this method needs calibration data; pass token ids (samples, seq_len)")
    if isinstance(calibration, torch.Tensor):
        batches = list(calibration.split(batch_size)) if calibration.dim() else []
    elif isinstance(calibration, dict):
        batches = _split_dict(calibration, batch_size)
    elif isinstance(calibration, (str, bytes)):
        raise ConfigError("calibration must be token ids, not text; tokenize it first "
                          "(prunekit.oneshot.calibration_ids)")
    else:
        batches = list(calibration)
    if not batches or any(_is_empty(b) for b in batches):
        raise ConfigError("calibration is empty; pass at least one sample of token ids "
                          "(prunekit.oneshot.calibration_ids makes them from text)")
    return [to_device(b, device) for b in batches]


def _split_dict(batch: dict, batch_size: int) -> list[dict]:
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        return []
    n = len(next(iter(tensors.values())))
    return [{k: (v[i : i + batch_size] if k in tensors else v) for k, v in batch.items()}
            for i in range(0, n, batch_size)]


def _is_empty(batch: Any) -> bool:
    if isinstance(batch, torch.Tensor):
        return batch.numel() == 0
    if isinstance(batch, dict):
        return not any(isinstance(v, torch.Tensor) and v.numel() for v in batch.values())
    return False


class _Undo:
    """Originals of the weights and masks changed so far, to put back on failure."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = []

    def save(self, module: nn.Module) -> None:
        if self.enabled:
            old = _mask.get_mask(module, "weight")
            self.saved.append((module, module.weight.detach().to("cpu", copy=True),
                               None if old is None else old.clone()))

    def restore(self) -> None:
        with torch.no_grad():
            for module, weight, old in reversed(self.saved):
                if old is None:
                    _mask.remove_mask(module, "weight")
                module.weight.copy_(weight.to(module.weight.device))
                if old is not None:
                    _mask.attach_mask(module, "weight", old)
        self.saved.clear()
