"""Least-squares reconstruction: re-solve a layer so its outputs match the original's.

For a Linear or Conv2d layer of the pruned network, collect its inputs ``X`` in
the pruned network and the outputs ``Y`` of the same-named layer in the
original on calibration data, then solve in closed form::

    min_W,b  || X W^T + b - Y ||^2 + lambda * || W ||^2

(ridge-regularized normal equations; a convolution is a matrix product on
unfolded patches). A masked layer keeps its zeros: each output row is solved
over its kept inputs only. Layers are done one at a time in forward order, each
seeing the inputs produced by the layers already rebuilt, so errors do not pile
up. J.-H. Luo, J. Wu, W. Lin, "ThiNet", ICCV 2017; Y. He, X. Zhang, J. Sun,
"Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017.

Example:
    >>> original = copy.deepcopy(model)
    >>> pk.sparsify(model, sparsity=0.9)
    >>> errors = reconstruct(model, original, calibration_loader, batches=8)
    >>> errors["fc1"]        # relative output error before and after
    {'before': 0.31, 'after': 0.04}
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import mask as _mask
from ..errors import ConfigError, DataError
from ..oneshot.sparsegpt import sparsegpt_prune

SUPPORTED = (nn.Linear, nn.Conv2d)
SOLVERS = ("exact", "obs")


def _ridges(ridge, has_heldout: bool) -> tuple[float, ...]:
    values = (ridge,) if isinstance(ridge, (int, float)) else tuple(ridge)
    if not values or not all(isinstance(r, (int, float)) and r >= 0 for r in values):
        raise ConfigError(f"ridge must be >= 0 (or a list of such values), got {ridge!r}")
    if len(values) > 1 and not has_heldout:
        raise ConfigError("several ridge values need heldout=<batches> to choose among them")
    return tuple(float(r) for r in values)


@dataclass(frozen=True)
class _Solve:
    ridges: tuple[float, ...]
    chunk: int
    solver: str


def reconstruct(
    model: nn.Module,
    original: nn.Module,
    data: Iterable,
    *,
    layers: Sequence[str] | None = None,
    batches: int = 8,
    ridge: float | Sequence[float] = 1e-4,
    out_index: Mapping[str, Sequence[int]] | None = None,
    chunk: int = 32,
    heldout: Iterable | None = None,
    heldout_batches: int | None = None,
    solver: str = "exact",
) -> dict[str, dict[str, float]]:
    """Re-solve the weights (and biases) of layers of ``model`` in place, in forward order.

    Args:
        model: the pruned network (masked, or structurally smaller).
        original: the network before pruning; only read.
        data: batches of inputs, ``(inputs, targets)`` pairs, or dicts of keyword
            inputs (``input_ids``, ``attention_mask``: Hugging Face models).
        layers: qualified names of Linear / Conv2d layers to rebuild (default:
            every such layer with the same name and type in both networks).
        batches: calibration batches used.
        ridge: ``lambda`` relative to the mean diagonal of ``X^T X`` (0 for plain
            least squares; a singular system then falls back to the pseudo-inverse). A
            sequence of values (with ``heldout``): each layer takes the one with the
            lowest held-out error.
        out_index: for a layer whose outputs were cut too, the original output
            indices it kept, in order (a structural plan knows them).
        chunk: output rows solved together for masked layers (memory vs speed).
        heldout: batches never fitted on (same forms as ``data``). Each layer's error is
            also measured on them, the ridge is chosen on them, and a layer whose
            held-out error would rise keeps its weights.
        heldout_batches: held-out batches used (default: ``batches``).
        solver: ``"exact"`` (each masked row solved over its kept inputs) or ``"obs"``
            (one ridge solve for the layer, then the optimal-brain-surgeon update of
            SparseGPT with the mask fixed: no solve per row, exact when a row's pruned
            inputs all precede its kept ones, close otherwise; Frantar & Alistarh 2023).

    Returns:
        Layer name -> ``{"before": e0, "after": e1}``, the relative squared error
        ``||X W^T + b - Y||^2 / ||Y||^2`` on the calibration data; with ``heldout``
        also ``heldout_before``, ``heldout_after``, the chosen ``ridge`` and
        ``kept_old`` (1.0 when the layer kept its weights).

    Raises:
        ConfigError: an unknown or unsupported layer, output sizes that differ
            without ``out_index``, a bad ``ridge``; raised before any change.
    """
    ridges = _ridges(ridge, heldout is not None)
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    inputs = _calibration_inputs(data, batches, model)
    held = None if heldout is None else _calibration_inputs(
        heldout, batches if heldout_batches is None else heldout_batches, model)
    names = _layer_names(model, original, layers, inputs[0])
    out_index = dict(out_index or {})
    pairs = {name: _Pair.make(model, original, name, out_index.get(name)) for name in names}
    errors = {}
    modes = [(m, m.training) for m in (*model.modules(), *original.modules())]
    model.eval()
    original.eval()
    try:
        with torch.no_grad():
            for name in names:
                errors[name] = _rebuild(model, original, pairs[name], inputs, held,
                                        _Solve(ridges, chunk, solver))
    finally:
        for m, training in modes:
            m.training = training
    return errors


@dataclass
class _Pair:
    """One layer of the pruned network and its twin in the original."""

    name: str
    layer: nn.Module
    twin: nn.Module
    out_index: torch.Tensor | None

    @staticmethod
    def make(model: nn.Module, original: nn.Module, name: str, index) -> _Pair:
        layer, twin = _module(model, name, "model"), _module(original, name, "original")
        out, out_twin = _out_features(layer), _out_features(twin)
        if index is not None:
            index = torch.as_tensor(list(index), dtype=torch.long)
            if len(index) != out or (len(index) and (index.min() < 0 or index.max() >= out_twin)):
                raise ConfigError(
                    f"out_index[{name!r}] must list {out} indices into the original's "
                    f"{out_twin} outputs"
                )
        elif out != out_twin:
            raise ConfigError(
                f"layer {name!r} has {out} outputs in the pruned model but {out_twin} in the "
                "original; pass out_index={name: kept output indices} or rebuild the layer "
                "after it (as ThiNet does)"
            )
        if isinstance(layer, nn.Conv2d):
            _check_conv(layer, twin, name)
        return _Pair(name, layer, twin, index)


def _rebuild(model, original, pair: _Pair, inputs, held, how: _Solve) -> dict[str, float]:
    stats = _stats(model, original, pair, inputs)
    held_stats = None if held is None else _stats(model, original, pair, held)
    old, keep = _weight_rows(pair.layer)  # (o, d) current weights incl. bias column, keep mask
    fits = [(r, _solve_groups(stats, old, keep, pair, r, how)) for r in how.ridges]
    if held_stats is None:
        ridge, new = fits[0]
    else:
        ridge, new = min(fits, key=lambda f: _relative(held_stats, f[1]))
    out = {"before": _relative(stats, old), "after": _relative(stats, new)}
    if held_stats is not None:
        out.update(heldout_before=_relative(held_stats, old), ridge=ridge)
        out["heldout_after"] = _relative(held_stats, new)
        out["kept_old"] = float(out["heldout_after"] >= out["heldout_before"])
        if out["kept_old"]:
            new, out["after"], out["heldout_after"] = old, out["before"], out["heldout_before"]
    _write(pair.layer, new)
    return out


def _stats(model, original, pair: _Pair, inputs) -> list[_Normal]:
    """Normal equations of the layer's inputs in ``model`` against the original's outputs."""
    groups = getattr(pair.layer, "groups", 1)
    stats = [_Normal() for _ in range(groups)]
    for x in inputs:
        seen = _patches(pair.layer, _caught(model, pair.layer, x, output=False))  # (rows, d)
        target = _targets(pair.layer, _caught(original, pair.twin, x, output=True))  # (rows, o)
        if pair.out_index is not None:
            target = target[:, pair.out_index]
        for g, (xg, yg) in enumerate(_split_groups(seen, target, groups)):
            stats[g].add(xg, yg, bias=pair.layer.bias is not None)
    for s in stats:
        s.all_reduce()
    return stats


def _solve_groups(stats, old, keep, pair: _Pair, ridge: float, how: _Solve) -> torch.Tensor:
    new = torch.empty_like(old)
    rows = old.shape[0] // len(stats)
    n_weights = old.shape[1] - (pair.layer.bias is not None)
    for g, s in enumerate(stats):
        block = slice(g * rows, (g + 1) * rows)
        solve = _solve if how.solver == "exact" else _solve_obs
        new[block] = solve(s, keep[block], ridge, how.chunk, n_weights=n_weights)
    return new


def _relative(stats: list[_Normal], w: torch.Tensor) -> float:
    """||X W^T - Y||^2 / ||Y||^2 summed over the groups."""
    rows = w.shape[0] // len(stats)
    err = sum(s.error(w[g * rows : (g + 1) * rows]) for g, s in enumerate(stats))
    return err / max(sum(s.yy for s in stats), 1e-30)


class _Normal:
    """Running X^T X, X^T Y and ||Y||^2 in float64 (X with a ones column for the bias)."""

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.yy = 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor, *, bias: bool) -> None:
        x, y = x.double(), y.double()
        if bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        gram, cross = x.T @ x, x.T @ y  # (d+1, d+1), (d+1, o)
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.yy += float(y.pow(2).sum())

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        yy = torch.tensor([self.yy], dtype=torch.float64, device=self.gram.device)
        for t in (self.gram, self.cross, yy):
            dist.all_reduce(t)
        self.yy = float(yy)

    def error(self, w: torch.Tensor) -> float:
        """||X w^T - Y||^2 from the sums, for w of shape (o, d[+1])."""
        w = w.double()
        fit = (w @ self.gram * w).sum() - 2 * (w * self.cross.T).sum()
        return float(fit) + self.yy


def _solve(
    s: _Normal, keep: torch.Tensor, ridge: float, chunk: int, *, n_weights: int
) -> torch.Tensor:
    """Rows (o, d) minimizing the ridge objective, zero where ``keep`` is False.

    Columns past ``n_weights`` (the bias) are not regularized. A masked row ``i``
    solves ``(G * m_i m_i^T + diag(1 - m_i) + lambda diag(m_i)) w = (X^T y_i) * m_i``:
    the kept block is the normal equations over the kept inputs, the rest is 0.
    """
    gram, cross = s.gram, s.cross  # (d, d), (d, o)
    reg = torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
    if n_weights:
        reg[:n_weights] = ridge * float(torch.diagonal(gram)[:n_weights].mean())
    if bool(keep.all()):
        return _linear_solve(gram + torch.diag(reg), cross).T  # (o, d)
    out = []
    for start in range(0, keep.shape[0], chunk):
        m = keep[start : start + chunk].to(gram.dtype)  # (r, d), 1 = kept
        a = gram * (m[:, :, None] * m[:, None, :]) + torch.diag_embed(1 - m + reg * m)  # (r, d, d)
        b = cross.T[start : start + chunk] * m  # (r, d)
        out.append(_linear_solve(a, b[..., None])[..., 0] * m)
    return torch.cat(out)


def _solve_obs(
    s: _Normal, keep: torch.Tensor, ridge: float, chunk: int, *, n_weights: int
) -> torch.Tensor:
    """Masked rows without a solve per row: the unmasked ridge solution ``W*``, then the
    OBS update with the mask fixed and Hessian ``G + R`` (the objective is
    ``||X (W - W*)^T||^2`` plus a constant), as SparseGPT updates its kept weights."""

    gram = s.gram
    reg = torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
    if n_weights:
        reg[:n_weights] = ridge * float(torch.diagonal(gram)[:n_weights].mean())
    hessian = gram + torch.diag(reg)
    dense = _linear_solve(hessian, s.cross).T  # (o, d)
    if bool(keep.all()):
        return dense
    new, _ = sparsegpt_prune(dense, hessian, mask=keep, dampening=0.0)
    return new.to(dense.dtype) * keep


def _linear_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.solve(a, b)
    except RuntimeError:  # singular (dead inputs with ridge=0): minimum-norm solution
        return torch.linalg.pinv(a) @ b


def _weight_rows(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Current weights as rows (o, d[+1]) with the bias last, and the matching keep mask."""
    w = layer.weight.detach()
    rows = w.reshape(w.shape[0], -1).double()  # (o, in/groups * kh * kw)
    keep = _mask.get_mask(layer, "weight")
    keep = torch.ones_like(w, dtype=torch.bool) if keep is None else keep
    keep = keep.reshape(w.shape[0], -1)  # (o, d)
    if layer.bias is not None:
        bias_keep = _mask.get_mask(layer, "bias")
        bias_keep = (
            torch.ones_like(layer.bias, dtype=torch.bool) if bias_keep is None else bias_keep
        )
        rows = torch.cat([rows, layer.bias.detach().double()[:, None]], dim=1)
        keep = torch.cat([keep, bias_keep[:, None]], dim=1)
    return rows, keep


def _write(layer: nn.Module, rows: torch.Tensor) -> None:
    w = layer.weight
    n = w[0].numel()
    w.detach().copy_(rows[:, :n].reshape(w.shape).to(w.dtype))
    if layer.bias is not None:
        layer.bias.detach().copy_(rows[:, n].to(layer.bias.dtype))
    for name in ("weight", "bias"):
        mask = _mask.get_mask(layer, name)
        if mask is not None:
            _mask.attach_mask(layer, name, mask)


def _patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of a matrix product with the weight rows."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])  # (B*..., in)
    cols = F.unfold(
        x, layer.kernel_size, dilation=layer.dilation, padding=_padding(layer), stride=layer.stride
    )  # (B, C*kh*kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B*L, C*kh*kw)


def _targets(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return y.reshape(-1, y.shape[-1])  # (B*..., out)
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])  # (B*H'*W', out)


def _split_groups(x: torch.Tensor, y: torch.Tensor, groups: int):
    if groups == 1:
        return [(x, y)]
    return list(zip(x.chunk(groups, dim=1), y.chunk(groups, dim=1), strict=True))


def _padding(layer: nn.Conv2d):
    if isinstance(layer.padding, str):
        return 0  # "valid" (checked); "same" is rejected in _check_conv
    return layer.padding


def _check_conv(layer: nn.Conv2d, twin: nn.Module, name: str) -> None:
    if layer.padding_mode != "zeros" or layer.padding == "same":
        raise ConfigError(
            f"conv {name!r} uses padding {layer.padding!r}/{layer.padding_mode!r}; "
            "reconstruction supports zero padding given as numbers; leave it out of layers"
        )
    same = ("kernel_size", "stride", "padding", "dilation")
    if any(getattr(layer, a) != getattr(twin, a) for a in same):
        raise ConfigError(f"conv {name!r} differs from the original in kernel, stride or padding")


def _caught(net: nn.Module, module: nn.Module, x: torch.Tensor, *, output: bool) -> torch.Tensor:
    """The input (or output) of ``module``'s first call in ``net(x)``; the pass stops there."""
    caught: list[torch.Tensor] = []

    def grab(value: torch.Tensor) -> None:
        caught.append(value.detach())
        raise _Stop

    if output:
        handle = module.register_forward_hook(lambda m, args, out: grab(out))
    else:
        handle = module.register_forward_pre_hook(lambda m, args: grab(args[0]))
    try:
        _call(net, x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not caught:
        raise ConfigError(f"{type(module).__name__} was not called in the forward pass")
    return caught[0]


def _call(net: nn.Module, x) -> object:
    return net(**x) if isinstance(x, dict) else net(x)


class _Stop(Exception):
    """Ends a forward pass once the wanted tensor was caught."""


def _calibration_inputs(data: Iterable, batches: int, model: nn.Module) -> list:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ConfigError(f"batches must be a positive integer, got {batches!r}")
    device = next(model.parameters()).device
    out = []
    for batch in itertools.islice(data, batches):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, dict):
            out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v
                        for k, v in x.items()})
            continue
        if not isinstance(x, torch.Tensor):
            raise DataError("calibration batches must be inputs, (inputs, targets) pairs or "
                            "dicts of keyword inputs")
        out.append(x.to(device))
    if not out:
        raise DataError("calibration data is empty; pass at least one batch")
    return out


def _module(net: nn.Module, name: str, role: str) -> nn.Module:
    module = dict(net.named_modules()).get(name)
    if not isinstance(module, SUPPORTED):
        found = "not found" if module is None else f"a {type(module).__name__}"
        raise ConfigError(
            f"layer {name!r} is {found} in the {role}; reconstruction rebuilds Linear and "
            "Conv2d layers present in both networks under the same name"
        )
    return module


def _out_features(layer: nn.Module) -> int:
    return layer.weight.shape[0]


def _layer_names(model, original, layers, x: torch.Tensor) -> list[str]:
    if layers is not None:
        names = [layers] if isinstance(layers, str) else list(layers)
        for name in names:
            _module(model, name, "model")
            _module(original, name, "original")
    else:
        twins = dict(original.named_modules())
        names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, SUPPORTED) and type(twins.get(n)) is type(m)
        ]
    if not names:
        raise ConfigError("no Linear or Conv2d layer shares its name with the original")
    return _in_forward_order(model, names, x)


def _in_forward_order(model: nn.Module, names: list[str], x: torch.Tensor) -> list[str]:
    modules = dict(model.named_modules())
    order: list[str] = []
    handles = [
        modules[n].register_forward_pre_hook(
            lambda m, args, n=n: order.append(n) if n not in order else None
        )
        for n in names
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _call(model, x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in order]
    if missing:
        raise ConfigError(f"layers {missing} are not called in the forward pass; leave them out")
    return order
