"""A small model zoo shared by the tests: tiny networks with the structures pruning must handle.

Each entry builds a fresh model (eval mode, seeded weights, batch-norm statistics
that are not the identity) and example inputs. Use the ``zoo`` fixture
(name -> :class:`ZooCase` factory) or the ``zoo_case`` fixture, parametrized over
every entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ZooCase:
    """A model and inputs for it."""

    name: str
    model: nn.Module
    inputs: Any


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                                 nn.Linear(24, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBNReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        )
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class ConcatSplit(nn.Module):
    """Two branches concatenated, chunked, split unevenly and concatenated again."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(20)
        self.mix = nn.Conv2d(20, 16, 1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(16 + 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        p, q = torch.chunk(self.mix(y), 2, dim=1)  # (B, 8, H, W) each
        z = torch.cat([self.left(p), q], dim=1)
        u, _ = torch.split(y, [4, 16], dim=1)
        pooled = torch.cat([z.mean(dim=(2, 3)), u.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


class FlattenLinear(nn.Module):
    """conv -> flatten -> linear: a channel owns a block of the linear's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 20)
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.relu(self.conv(x)), 1)  # (B, C*H*W)
        return self.fc2(F.relu(self.fc1(x)))


class GroupedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.bn1 = nn.BatchNorm2d(32)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.bn2 = nn.BatchNorm2d(32)
        self.pointwise = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.bn1(self.grouped(x)))
        x = F.relu(self.bn2(self.depthwise(x)))
        x = self.pointwise(x)
        return self.fc(x.mean(dim=(2, 3)))


class AttentionBlock(nn.Module):
    """Hand-written multi-head self-attention + MLP, heads counted by ``self.num_heads``."""

    def __init__(self, dim: int = 32, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.norm1(x)
        q, k, v = (lin(h).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))  # (B, heads, T, head_dim)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, -1)  # (B, T, heads * head_dim)
        x = x + self.proj(y)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(dim=1))


class MHABlock(nn.Module):
    """nn.MultiheadAttention encoder block with a classifier."""

    def __init__(self, dim: int = 32, num_heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 64), nn.Linear(64, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm(h + a)
        h = h + self.fc2(F.relu(self.fc1(h)))
        return self.head(h[:, 0])


class TokenViT(nn.Module):
    """Patch embedding, class token, position embedding and layer scale as raw Parameters."""

    def __init__(self, dim: int = 24) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim))
        self.fc1, self.fc2 = nn.Linear(dim, 48), nn.Linear(48, dim)
        self.gamma = nn.Parameter(torch.rand(dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = x + self.gamma * self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


class RNNClassifier(nn.Module):
    def __init__(self, kind: str = "LSTM", layers: int = 2, bidirectional: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.rnn = getattr(nn, kind)(16, 24, num_layers=layers, batch_first=True,
                                     bidirectional=bidirectional)
        self.fc = nn.Linear(24 * (2 if bidirectional else 1), 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.fc(out[:, -1])


class TiedLM(nn.Module):
    """A language model whose output layer shares the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.lm_head = nn.Linear(32, 50, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.fc2(F.relu(self.fc1(h)))
        return self.lm_head(h)


def _image(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _tokens(*shape: int) -> torch.Tensor:
    return torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(1))


ZOO: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "mlp": lambda: (MLP(), _image(4, 16)),
    "conv_bn_relu": lambda: (ConvBNReLU(), _image(2, 3, 8, 8)),
    "residual": lambda: (ResidualNet(), _image(2, 3, 8, 8)),
    "concat_split": lambda: (ConcatSplit(), _image(2, 3, 6, 6)),
    "flatten_linear": lambda: (FlattenLinear(), _image(2, 3, 8, 8)),
    "grouped_depthwise": lambda: (GroupedConvNet(), _image(2, 3, 6, 6)),
    "attention": lambda: (AttentionBlock(), _image(2, 6, 32)),
    "mha": lambda: (MHABlock(), _image(2, 6, 8)),
    "token_vit": lambda: (TokenViT(), _image(2, 3, 8, 8)),
    "lstm": lambda: (RNNClassifier("LSTM"), _tokens(2, 7)),
    "gru": lambda: (RNNClassifier("GRU", layers=1, bidirectional=False), _tokens(2, 7)),
    "tied_lm": lambda: (TiedLM(), _tokens(2, 7)),
}


def make_case(name: str) -> ZooCase:
    """Build zoo entry ``name``: seeded weights, non-trivial batch-norm statistics, eval mode."""
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, (nn.LayerNorm,)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return ZooCase(name, model.eval(), inputs)


@pytest.fixture
def zoo() -> Callable[[str], ZooCase]:
    """Factory: ``zoo("residual")`` -> a fresh :class:`ZooCase`."""
    return make_case


@pytest.fixture(params=sorted(ZOO))
def zoo_case(request: pytest.FixtureRequest) -> ZooCase:
    """Every zoo entry in turn."""
    return make_case(request.param)


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from a second thread, and lose much when it is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
