"""Random small networks and the oracles that judge a structured cut of them (issue 12).

:func:`make_case` builds, from one integer seed, a small network out of the operator
families pruning has to follow (convolutions of every kind, norms, residuals,
concatenation and splits, gating, hand-written and ``nn.MultiheadAttention``
attention, LSTM/GRU, embeddings with position tables, reshapes), its example inputs,
other inputs the network accepts (batch sizes, sequence lengths, image sizes), and
random planning options (ratio, criterion, ``round_to``, scope, ignored layers).

:func:`check_prunekit` prunes a case and classifies the result with oracles that do
not use :func:`prunekit.verify`:

- the **dead-unit oracle**: the units the plan removes are made truly dead in the
  original (every slice of every tensor the plan cuts is zeroed); removing them must
  not move the outputs, on the traced inputs and on every other input;
- the **shape oracle**: the pruned network accepts every input the original accepts
  and returns outputs of the same shapes;
- the **plan round trip**: the plan through JSON, replayed on a fresh copy with the
  pruned weights, gives the pruned network's outputs.

``tests/fuzz`` runs a short slice by default and a long one with ``-m slow``;
``benchmarks/fuzz.py`` runs thousands of cases side by side with Torch-Pruning.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from zoolib.runner import ZooTimeout, time_limit

CRITERIA = ("l1", "l2", "random", "lamp", "bn_scale", "magnitude")
OUTCOMES = ("pass", "refused", "wrong_verify_ok", "wrong_caught", "internal_error", "timeout")


@dataclass
class FuzzCase:
    """One random network with its inputs and planning options.

    Attributes:
        seed: the seed that rebuilds it (``make_case(seed)``).
        kind: ``"image"``, ``"tokens"`` or ``"features"``.
        model: the network, in eval mode.
        inputs: the inputs it is traced with.
        others: other inputs it accepts (other batch sizes, lengths, image sizes, values).
        options: keywords for :func:`prunekit.plan`.
        blocks: what it is made of, for reports.
        head: qualified name of the output layer (ignored by peers as well).
    """

    seed: int
    kind: str
    model: nn.Module
    inputs: Any
    others: list[Any]
    options: dict[str, Any]
    blocks: list[str]
    head: str = "head"

    def describe(self) -> str:
        """One line: seed, kind, blocks and options."""
        return f"seed {self.seed} ({self.kind}): {' > '.join(self.blocks)}; {self.options}"


# ============================================================================ image blocks
_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "hardswish": F.hardswish,
    "leaky": F.leaky_relu, "relu6": F.relu6, "tanh": torch.tanh, "none": lambda x: x,
}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class ChannelsLastNorm(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt style)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)


def _norm2d(rng: random.Random, c: int) -> nn.Module:
    kind = rng.choice(["bn", "bn", "gn", "in", "ln", "none"])
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(rng.choice([g for g in _divisors(c) if g < c] or [1]), c)
    if kind == "in":
        return nn.InstanceNorm2d(c, affine=True)
    if kind == "ln":
        return ChannelsLastNorm(c)
    return nn.Identity()


class ConvUnit(nn.Module):
    """One convolution of a random kind, a norm and an activation."""

    def __init__(self, rng: random.Random, cin: int, cout: int, size: int) -> None:
        super().__init__()
        kinds = ["plain", "pointwise", "grouped", "depthwise", "dilated", "asym", "conv1x3"]
        if size >= 8:
            kinds.append("strided")
        if size <= 8:
            kinds.append("transposed")
        self.kind = rng.choice(kinds)
        common = [g for g in _divisors(math.gcd(cin, cout)) if g > 1]
        if self.kind == "grouped" and not common:
            self.kind = "plain"
        self.size = size
        bias = rng.random() < 0.5
        if self.kind == "depthwise":
            cout = cin * rng.choice([1, 1, 2])
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=cin, bias=bias)
        elif self.kind == "grouped":
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=rng.choice(common), bias=bias)
        elif self.kind == "pointwise":
            self.conv = nn.Conv2d(cin, cout, 1, bias=bias)
        elif self.kind == "dilated":
            self.conv = nn.Conv2d(cin, cout, 3, padding=2, dilation=2, bias=bias)
        elif self.kind in ("asym", "conv1x3"):
            self.conv = nn.Conv2d(cin, cout, (1, 3), padding=(0, 1), bias=bias)
        elif self.kind == "strided":
            self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=bias)
            self.size = (size + 1) // 2
        elif self.kind == "transposed":
            groups = rng.choice([1, 1] + common[:1])
            self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2, groups=groups, bias=bias)
            self.size = size * 2
        else:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.out_ch = cout
        self.norm = _norm2d(rng, cout)
        self.act = rng.choice(list(_ACTS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ACTS[self.act](self.norm(self.conv(x)))


class ResidualUnit(nn.Module):
    """x + conv-norm-act-conv-norm(x), with a 1x1 projection when widths differ."""

    def __init__(self, rng: random.Random, c: int, size: int) -> None:
        super().__init__()
        mid = rng.choice([4, 6, 8, 12, 16])
        cout = rng.choice([c, c, c * 2 if c <= 16 else c])
        self.a = nn.Conv2d(c, mid, 3, padding=1, bias=False)
        self.na = _norm2d(rng, mid)
        self.b = nn.Conv2d(mid, cout, 3, padding=1, bias=rng.random() < 0.3)
        self.nb = _norm2d(rng, cout)
        self.proj = nn.Conv2d(c, cout, 1, bias=False) if cout != c else None
        self.act = rng.choice(["relu", "gelu", "silu"])
        self.out_ch, self.size = cout, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.nb(self.b(_ACTS[self.act](self.na(self.a(x)))))
        return _ACTS[self.act](y + (x if self.proj is None else self.proj(x)))


class ConcatUnit(nn.Module):
    """Two branches (or the input and a branch) concatenated along channels."""

    def __init__(self, rng: random.Random, c: int, size: int) -> None:
        super().__init__()
        self.dense = rng.random() < 0.4  # DenseNet: cat([x, f(x)])
        self.a = ConvUnit(rng, c, rng.choice([4, 6, 8, 12]), size)
        self.a.size = size
        if self.a.kind in ("strided", "transposed"):
            self.a = nn.Sequential(nn.Conv2d(c, 8, 1), nn.ReLU())
        width_a = self.a.out_ch if isinstance(self.a, ConvUnit) else 8
        self.b = None if self.dense else nn.Conv2d(c, rng.choice([4, 8, 10]), 3, padding=1)
        self.out_ch = width_a + (c if self.dense else self.b.out_channels)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x if self.dense else self.b(x), self.a(x)], dim=1)


class SplitUnit(nn.Module):
    """Channels split in two parts; one goes through a conv; concatenated or added back."""

    def __init__(self, rng: random.Random, c: int, size: int) -> None:
        super().__init__()
        self.even = c % 2 == 0 and rng.random() < 0.6
        self.k = c // 2 if self.even else rng.randint(1, c - 1)
        self.add = self.even and rng.random() < 0.4
        self.conv = nn.Conv2d(self.k, self.k if self.add else rng.choice([4, 8]), 3, padding=1)
        self.out_ch = c - self.k if self.add else self.conv.out_channels + c - self.k
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.even:
            a, b = x.chunk(2, dim=1)
        else:
            a, b = x.split([self.k, x.shape[1] - self.k], dim=1)
        y = F.relu(self.conv(a))
        return y + b if self.add else torch.cat([y, b], dim=1)


class GateUnit(nn.Module):
    """Squeeze-and-excitation (Linear or 1x1 conv) or a GLU over channels."""

    def __init__(self, rng: random.Random, c: int, size: int) -> None:
        super().__init__()
        self.kind = rng.choice(["se_linear", "se_conv", "glu"])
        mid = max(2, c // 4)
        if self.kind == "se_linear":
            self.fc1, self.fc2 = nn.Linear(c, mid), nn.Linear(mid, c)
        elif self.kind == "se_conv":
            self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)
        else:
            self.fc1 = nn.Conv2d(c, 2 * c, 1)
        self.out_ch, self.size = c, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "se_linear":
            s = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))  # (B, C)
            return x * torch.sigmoid(s)[:, :, None, None]
        if self.kind == "se_conv":
            s = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))  # (B, C, 1, 1)
            return x * torch.sigmoid(s)
        a, b = self.fc1(x).chunk(2, dim=1)
        return a * torch.sigmoid(b)


class PoolUnit(nn.Module):
    def __init__(self, rng: random.Random, c: int, size: int) -> None:
        super().__init__()
        self.kind = rng.choice(["max", "avg", "up"] if size <= 8 else ["max", "avg"])
        self.out_ch = c
        self.size = size * 2 if self.kind == "up" else size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, 2)
        if self.kind == "avg":
            return F.avg_pool2d(x, 2)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ImageNet(nn.Module):
    """Stem, random blocks, a head: global pooling, a flattening Linear or a 1x1 conv."""

    def __init__(self, rng: random.Random, size: int, classes: int) -> None:
        super().__init__()
        c = rng.choice([4, 6, 8, 12, 16])
        self.stem = ConvUnit(rng, 3, c, size)
        size, c = self.stem.size, self.stem.out_ch
        blocks, self.names = [], [f"stem:{self.stem.kind}"]
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["conv", "conv", "residual", "concat", "split", "gate", "pool"])
            if kind == "pool" and size < 4:
                kind = "conv"
            if kind == "conv":
                unit = ConvUnit(rng, c, rng.choice([4, 6, 8, 12, 16, 24]), size)
                if unit.size > 16 or unit.size < 2:
                    unit = ConvUnit(rng, c, 8, 4)  # keep the feature maps small
                    unit.size = size
                    if unit.kind in ("strided", "transposed"):
                        unit = ResidualUnit(rng, c, size)
            else:
                unit = {"residual": ResidualUnit, "concat": ConcatUnit, "split": SplitUnit,
                        "gate": GateUnit, "pool": PoolUnit}[kind](rng, c, size)
            blocks.append(unit)
            self.names.append(kind + (f":{unit.kind}" if isinstance(unit, ConvUnit) else ""))
            c, size = unit.out_ch, unit.size
        self.blocks = nn.Sequential(*blocks)
        self.head_kind = rng.choice(["gap", "gap", "flat", "conv"])
        if self.head_kind == "flat":
            self.head = nn.Linear(c * size * size, classes)
        elif self.head_kind == "conv":
            self.head = nn.Conv2d(c, classes, 1)
        else:
            self.head = nn.Linear(c, classes)
        self.names.append(f"head:{self.head_kind}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if self.head_kind == "flat":
            return self.head(x.flatten(1))  # (B, C*H*W) -> classes
        if self.head_kind == "conv":
            return self.head(x).mean((2, 3))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ============================================================================ token blocks
class RMSNormLite(nn.Module):
    """A hand-written RMS norm (LLaMA style)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def _norm1d(rng: random.Random, d: int) -> nn.Module:
    kind = rng.choice(["ln", "ln", "rms", "rms_hand", "none"])
    if kind == "ln":
        return nn.LayerNorm(d, elementwise_affine=rng.random() < 0.9)
    if kind == "rms":
        return nn.RMSNorm(d)
    if kind == "rms_hand":
        return RMSNormLite(d)
    return nn.Identity()


class MLPBlock(nn.Module):
    def __init__(self, rng: random.Random, d: int) -> None:
        super().__init__()
        self.norm = _norm1d(rng, d)
        self.swiglu = rng.random() < 0.4
        hidden = rng.choice([8, 12, 16, 24, 32, 48])
        self.up = nn.Linear(d, hidden, bias=rng.random() < 0.7)
        self.gate = nn.Linear(d, hidden, bias=False) if self.swiglu else None
        self.down = nn.Linear(hidden, d)
        self.act = rng.choice(["relu", "gelu", "silu"])
        self.kind = "swiglu" if self.swiglu else "mlp"
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h = F.silu(self.gate(h)) * self.up(h) if self.swiglu else _ACTS[self.act](self.up(h))
        return x + self.down(h)


class HandAttention(nn.Module):
    """Hand-written multi-head attention in one of several common spellings."""

    SPELLINGS = ("fused_attrs", "fused_literal", "separate", "chunked", "gqa", "fixed_out")

    def __init__(self, rng: random.Random, d: int) -> None:
        super().__init__()
        self.kind = rng.choice(self.SPELLINGS)
        heads = [h for h in _divisors(d) if h < d and d // h >= 2]
        self.num_heads = rng.choice(heads)
        self.h = self.num_heads  # the same count under a name prunekit does not know
        self.head_dim = d // self.num_heads
        self.dim = d
        self.causal = rng.random() < 0.3
        self.sdpa = rng.random() < 0.5
        self.norm = _norm1d(rng, d)
        if self.kind in ("fused_attrs", "fused_literal", "chunked", "fixed_out"):
            self.qkv = nn.Linear(d, 3 * d, bias=rng.random() < 0.7)
        else:
            kv_heads = self.num_heads
            if self.kind == "gqa":
                kv_heads = rng.choice([k for k in _divisors(self.num_heads)])
            self.num_kv_heads = kv_heads
            self.q = nn.Linear(d, d)
            self.k = nn.Linear(d, kv_heads * self.head_dim)
            self.v = nn.Linear(d, kv_heads * self.head_dim)
        self.out = nn.Linear(d, d)
        self.out_dim = d

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        if self.kind in ("fused_attrs", "fixed_out"):
            qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, L, 3, H, hd)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, hd) each
        elif self.kind == "fused_literal":
            qkv = self.qkv(x).view(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)  # (3, B, h, L, hd)
            q, k, v = qkv[0], qkv[1], qkv[2]
        elif self.kind == "chunked":
            q, k, v = (t.view(b, n, self.num_heads, -1).transpose(1, 2)  # (B, H, L, hd)
                       for t in self.qkv(x).chunk(3, dim=-1))
        else:
            q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)  # (B, H, L, hd)
            k = self.k(x).view(b, n, self.num_kv_heads, -1).transpose(1, 2)  # (B, Hkv, L, hd)
            v = self.v(x).view(b, n, self.num_kv_heads, -1).transpose(1, 2)
            if self.num_kv_heads != self.num_heads:
                rep = self.num_heads // self.num_kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._qkv(self.norm(x))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L, L)
            if self.causal:
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~mask, float("-inf"))
            y = scores.softmax(-1) @ v  # (B, H, L, hd)
        if self.kind == "fixed_out":
            y = y.transpose(1, 2).reshape(b, n, self.dim)  # (B, L, D) with D an attribute
        else:
            y = y.transpose(1, 2).reshape(b, n, -1)  # (B, L, H*hd)
        return x + self.out(y)


class MHABlock(nn.Module):
    """``nn.MultiheadAttention`` (1 to 8 heads, batch first or not, with or without biases)."""

    def __init__(self, rng: random.Random, d: int) -> None:
        super().__init__()
        heads = rng.choice([h for h in _divisors(d) if h <= 8])
        self.batch_first = rng.random() < 0.6
        self.attn = nn.MultiheadAttention(d, heads, bias=rng.random() < 0.8,
                                          batch_first=self.batch_first,
                                          add_bias_kv=rng.random() < 0.15)
        self.norm = _norm1d(rng, d)
        self.kind = f"mha{heads}"
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if not self.batch_first:
            h = h.transpose(0, 1)  # (L, B, D)
        y = self.attn(h, h, h, need_weights=False)[0]
        if not self.batch_first:
            y = y.transpose(0, 1)
        return x + y


class RNNBlock(nn.Module):
    """LSTM or GRU (1-2 layers, maybe bidirectional), then a Linear back to the width."""

    def __init__(self, rng: random.Random, d: int) -> None:
        super().__init__()
        mode = rng.choice(["LSTM", "GRU"])
        hidden = rng.choice([6, 8, 12, 16])
        self.dirs = 2 if rng.random() < 0.4 else 1
        cls = nn.LSTM if mode == "LSTM" else nn.GRU
        self.rnn = cls(d, hidden, num_layers=rng.choice([1, 2]), batch_first=True,
                       bidirectional=self.dirs == 2)
        self.out_dim = rng.choice([d, d, 8, 16])
        self.proj = nn.Linear(hidden * self.dirs, self.out_dim)
        self.residual = self.out_dim == d and rng.random() < 0.5
        self.kind = mode.lower()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.rnn(x)[0])
        return x + y if self.residual else y


class Conv1dBlock(nn.Module):
    """A convolution over the sequence: (B, L, D) -> (B, D, L) -> conv -> (B, L, D')."""

    def __init__(self, rng: random.Random, d: int) -> None:
        super().__init__()
        out = rng.choice([d, 8, 12, 16])
        common = [g for g in _divisors(math.gcd(d, out)) if g > 1]
        groups = rng.choice([1, 1, *common[-1:], *([d] if out % d == 0 else [])])
        self.conv = nn.Conv1d(d, out, 3, padding=1, groups=groups)
        self.norm = nn.BatchNorm1d(out) if rng.random() < 0.5 else nn.Identity()
        self.kind = "dwconv1d" if groups == d else ("gconv1d" if groups > 1 else "conv1d")
        self.out_dim = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x.transpose(1, 2)))  # (B, D', L)
        return F.gelu(y).transpose(1, 2)


class WidthBlock(nn.Module):
    """Width changes: a projection, two concatenated projections, a split with one part
    projected, an interleave (``view(B, L, f, D // f).transpose(2, 3)``), or a gate."""

    def __init__(self, rng: random.Random, d: int) -> None:
        super().__init__()
        self.kind = rng.choice(["proj", "concat", "split", "interleave", "gate"])
        if self.kind == "interleave" and len(_divisors(d)) <= 2:
            self.kind = "proj"
        if self.kind == "proj":
            self.a = nn.Linear(d, rng.choice([8, 12, 16, 24]))
            self.out_dim = self.a.out_features
        elif self.kind == "concat":
            self.a, self.b = nn.Linear(d, rng.choice([4, 8])), nn.Linear(d, rng.choice([6, 8]))
            self.out_dim = self.a.out_features + self.b.out_features
        elif self.kind == "split":
            self.k = rng.randint(1, d - 1)
            self.a = nn.Linear(self.k, rng.choice([4, 8]))
            self.out_dim = self.a.out_features + d - self.k
        elif self.kind == "interleave":
            self.f = rng.choice([f for f in _divisors(d) if 1 < f < d])
            self.a = nn.Linear(d, d)
            self.out_dim = d
        else:
            self.a = nn.Linear(d, d)
            self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "proj":
            return F.relu(self.a(x))
        if self.kind == "concat":
            return torch.cat([self.a(x), torch.tanh(self.b(x))], dim=-1)
        if self.kind == "split":
            a, b = x.split([self.k, x.shape[-1] - self.k], dim=-1)
            return torch.cat([F.relu(self.a(a)), b], dim=-1)
        if self.kind == "interleave":
            y = self.a(x)
            b, n, d = y.shape
            return y.view(b, n, self.f, d // self.f).transpose(2, 3).reshape(b, n, d)  # (B, L, D)
        return x * torch.sigmoid(self.a(x))


class DataBranch(nn.Module):
    """Data-dependent control flow: the order of the features depends on their sum."""

    def __init__(self, rng: random.Random, d: int) -> None:
        super().__init__()
        self.a = nn.Linear(d, d)
        self.kind = "branch"
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = h.flip(-1)
        return F.relu(h)


class SinusoidalPositions(nn.Module):
    """A fixed sinusoidal table in a buffer, read up to the input's length."""

    def __init__(self, max_len: int, d: int) -> None:
        super().__init__()
        pos = torch.arange(max_len)[:, None] * torch.exp(-torch.arange(0, d, 2) / d)[None]
        table = torch.zeros(max_len, d)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos), torch.cos(pos[:, : d // 2])
        self.register_buffer("table", table)

    def forward(self, n: int) -> torch.Tensor:
        return self.table[:n]  # (L, D)


class TokenNet(nn.Module):
    """Token ids (or feature vectors) -> embedding + positions -> random blocks -> a head."""

    def __init__(self, rng: random.Random, kind: str, vocab: int, max_len: int,
                 classes: int) -> None:
        super().__init__()
        d = rng.choice([8, 12, 16, 24, 32])
        self.kind = kind
        self.embed = nn.Embedding(vocab, d) if kind == "tokens" else nn.Linear(5, d)
        self.pos_kind = rng.choice(["none", "param", "embedding", "sinusoidal"])
        if self.pos_kind == "param":
            self.pos = nn.Parameter(torch.randn(1, max_len, d) * 0.5)
        elif self.pos_kind == "embedding":
            self.pos = nn.Embedding(max_len, d)
        elif self.pos_kind == "sinusoidal":
            self.pos = SinusoidalPositions(max_len, d)
        self.names = [f"{kind}+pos:{self.pos_kind}"]
        blocks = []
        choices = [MLPBlock, MLPBlock, HandAttention, HandAttention, MHABlock, RNNBlock,
                   Conv1dBlock, WidthBlock, WidthBlock]
        for _ in range(rng.randint(1, 4)):
            cls = DataBranch if rng.random() < 0.02 else rng.choice(choices)
            if cls is HandAttention and len([h for h in _divisors(d) if h < d]) < 2:
                cls = MLPBlock
            unit = cls(rng, d)
            blocks.append(unit)
            self.names.append(unit.kind if cls is not WidthBlock else f"width:{unit.kind}")
            d = unit.out_dim
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = _norm1d(rng, d)
        self.pool = rng.choice(["none", "mean", "last"])
        self.head = nn.Linear(d, classes)
        self.names.append(f"head:{self.pool}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        h = self.embed(x)  # (B, L, D)
        if self.pos_kind == "param":
            h = h + self.pos[:, :n]
        elif self.pos_kind == "embedding":
            h = h + self.pos(torch.arange(n, device=x.device))
        elif self.pos_kind == "sinusoidal":
            h = h + self.pos(n)
        h = self.final_norm(self.blocks(h))
        if self.pool == "mean":
            h = h.mean(1)
        elif self.pool == "last":
            h = h[:, -1]
        return self.head(h)


# ============================================================================ cases
def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial norm statistics and affine parameters, so no unit is trivially dead."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            for name in ("weight", "bias"):
                t = getattr(m, name, None)
                if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
                                  nn.InstanceNorm2d, nn.RMSNorm, RMSNormLite)) \
                        and isinstance(t, torch.Tensor):
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.3 + (name == "weight"))


def _criterion(name: str) -> str:
    """``name`` if this prunekit has it, else ``l2`` (the draw stays the same per seed)."""
    from prunekit.errors import ConfigError
    from prunekit.importance.group import check_criterion

    try:
        check_criterion(name)
    except ConfigError:
        return "l2"
    return name


def _options(rng: random.Random, model: nn.Module) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ratio": round(rng.uniform(0.1, 0.7), 2),
        "criterion": _criterion(rng.choice(CRITERIA)),
        "round_to": rng.choice([1, 1, 1, 2, 4, 8]),
        "scope": rng.choice(["layer", "layer", "global"]),
        "seed": rng.randint(0, 99),
    }
    layers = [n for n, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and n != "head"]
    if layers and rng.random() < 0.2:
        options["ignore"] = [rng.choice(layers)]
    return options


def make_case(seed: int, *, check_others: bool = True) -> FuzzCase:
    """The random network, inputs and options of ``seed`` (the same on every machine).

    With ``check_others`` the other inputs are run through the network once and those it
    does not accept are dropped (none, by construction; this keeps the oracles honest).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    kind = rng.choice(["image", "image", "tokens", "tokens", "features"])
    batch = rng.choice([1, 2, 3])
    if kind == "image":
        size = rng.choice([8, 12, 16])
        model = ImageNet(rng, size, classes=rng.choice([3, 5]))
        inputs = torch.randn(batch, 3, size, size, generator=gen)
        others = [torch.randn(b, 3, s, s, generator=gen) for b, s in
                  [(batch + 2, size), (1, size * 2), (2, size + 4)]]
    else:
        max_len, length = 24, rng.choice([4, 6, 8])
        model = TokenNet(rng, kind, vocab=23, max_len=max_len, classes=rng.choice([3, 5]))

        def make(b: int, n: int) -> torch.Tensor:
            if kind == "tokens":
                return torch.randint(0, 23, (b, n), generator=gen)
            return torch.randn(b, n, 5, generator=gen)

        inputs = make(batch, length)
        others = [make(batch + 2, length), make(1, max_len), make(2, length + 5), make(3, 2)]
    _randomize(model, gen)
    model.eval()
    if check_others:
        others = [o for o in others if _accepts(model, o)]
    return FuzzCase(seed, kind, model, inputs, others, _options(rng, model), model.names)


def _accepts(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
        return True
    except Exception:
        return False


# ============================================================================ oracles
@dataclass
class Outcome:
    """How one tool did on one case.

    Attributes:
        kind: one of :data:`OUTCOMES`.
        detail: the reason (refusal message, oracle that failed, error).
        seconds: time of trace + plan + apply (``None`` when it did not finish).
        cut: whether anything was removed.
        verify_ok: what ``pk.verify`` said (``None`` when not run).
    """

    kind: str
    detail: str = ""
    seconds: float | None = None
    cut: bool = False
    verify_ok: bool | None = None
    notes: list[str] = field(default_factory=list)


# one time limit for the benchmark harnesses (SIGALRM, main thread)
Timeout = ZooTimeout



def outputs(model: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def close(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    """Equal within a tolerance relative to the outputs' scale; also the difference."""
    if a.shape != b.shape:
        return False, math.inf
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if a.numel() else 0.0
    return diff <= 1e-5 + 1e-4 * scale, diff


def dead_copy(model: nn.Module, plan: Any) -> nn.Module:
    """``model`` with every position the plan removes set to zero (shapes unchanged)."""
    dead = copy.deepcopy(model)
    tensors = dict(dead.named_parameters())
    tensors.update(dict(dead.named_buffers()))
    with torch.no_grad():
        for name, cut in plan.tensors.items():
            t = tensors[plan.aliases.get(name, name)]
            for d, kept in cut.kept.items():
                mask = torch.ones(t.shape[d], dtype=torch.bool)
                mask[kept] = False
                t.index_fill_(d, torch.nonzero(mask).flatten(), 0)
    return dead


def _oracles(case: FuzzCase, pruned: nn.Module, plan: Any) -> list[str]:
    """Problems found by the shape, dead-unit and round-trip oracles (empty: none)."""
    import prunekit as pk

    problems: list[str] = []
    inputs = [case.inputs, *case.others]
    for x in inputs:
        try:
            got, want = outputs(pruned, x), outputs(case.model, x)
        except Exception as e:
            problems.append(f"shape oracle: input {tuple(x.shape)} fails ({type(e).__name__}: "
                            f"{str(e)[:120]})")
            continue
        if got.shape != want.shape:
            problems.append(f"shape oracle: input {tuple(x.shape)} gives {tuple(got.shape)}, "
                            f"not {tuple(want.shape)}")
    if problems:
        return problems
    if not any(g.unchecked for g in plan.groups if g.removed):
        dead = dead_copy(case.model, plan)
        cut = copy.deepcopy(dead)
        pk.apply(cut, plan)
        for x in inputs:
            ok, diff = close(outputs(dead, x), outputs(cut, x))
            if not ok:
                problems.append(f"dead-unit oracle: removing dead units moves the outputs by "
                                f"{diff:.3g} on input {tuple(x.shape)}")
                break
    replay = pk.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    fresh = copy.deepcopy(case.model)
    pk.load_pruned(fresh, replay, pruned.state_dict())
    for x in inputs:
        ok, diff = close(outputs(pruned, x), outputs(fresh, x))
        if not ok:
            problems.append(f"round trip: the replayed plan differs by {diff:.3g}")
            break
    return problems


def _internal(e: BaseException) -> bool:
    """Whether a prunekit refusal hides an internal failure (the model itself runs)."""
    text = str(e)
    return "failed on the example inputs" in text or "could not follow" in text


def check_prunekit(case: FuzzCase, *, limit_s: float = 60.0) -> Outcome:
    """Prune a copy of ``case.model`` with prunekit and classify the result."""
    import prunekit as pk
    from prunekit.errors import PrunekitError

    model = copy.deepcopy(case.model)
    try:
        with time_limit(limit_s):
            start = time.perf_counter()
            graph = pk.trace(model, case.inputs)
            plan = pk.plan(graph, **case.options)
            pk.apply(model, plan)
            seconds = time.perf_counter() - start
            internal = [r for g in graph.groups for r in g.blocked if "could not follow" in r]
            if internal:
                return Outcome("internal_error", internal[0], seconds)
            result = pk.verify(case.model, model, plan, case.inputs)
            problems = _oracles(case, model, plan)
    except Timeout as e:
        return Outcome("timeout", str(e))
    except PrunekitError as e:
        if isinstance(e.__cause__, Timeout):  # the tracer wraps what the model's run raised
            return Outcome("timeout", str(e.__cause__))
        kind = "internal_error" if _internal(e) else "refused"
        return Outcome(kind, f"{type(e).__name__}: {e}")
    except Exception as e:
        return Outcome("internal_error", f"{type(e).__name__}: {str(e)[:300]}")
    cut = plan.removed_units > 0
    if problems:
        kind = "wrong_verify_ok" if result.ok else "wrong_caught"
        return Outcome(kind, "; ".join(problems), seconds, cut, result.ok)
    if not result.ok:
        return Outcome("wrong_caught", f"verify: {result.message}", seconds, cut, False)
    return Outcome("pass", "", seconds, cut, True)
