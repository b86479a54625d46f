"""Layer surgeons: after a cut, every size attribute the forward pass reads is right."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit import structured as S
from prunekit.surgery.surgeons import surgeon_for


class Everything(nn.Module):
    """One of each layer type, chained so that each one's channels can be cut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn_conv = nn.Conv2d(8, 12, 1)
        self.gn = nn.GroupNorm(3, 12)
        self.act = nn.PReLU(12)
        self.up = nn.ConvTranspose2d(12, 10, 2, stride=2)
        self.inorm = nn.InstanceNorm2d(10, affine=True)
        self.conv1d = nn.Conv1d(10, 6, 1)
        self.ln = nn.LayerNorm(6)
        self.rms = nn.RMSNorm(6)
        self.lin = nn.Linear(6, 9)
        self.out = nn.Linear(9, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.act(self.gn(self.gn_conv(x)))
        x = self.inorm(self.up(x))  # (B, 10, 2H, 2W)
        x = self.conv1d(x.flatten(2))  # (B, 6, 4HW)
        x = self.rms(self.ln(x.transpose(1, 2)))  # (B, 4HW, 6)
        return self.out(torch.relu(self.lin(x))).mean(1)


def test_every_layer_type_gets_consistent_attributes():
    torch.manual_seed(0)
    model = Everything().eval()
    x = torch.randn(2, 3, 4, 4)
    original = copy.deepcopy(model)
    plan = S.prune(model, x, ratio=0.5)
    m = model
    assert m.conv.out_channels == m.bn.num_features == m.conv.weight.shape[0] == 4
    assert m.gn_conv.out_channels == m.gn.num_channels == m.act.num_parameters == 8
    assert m.gn.num_channels % m.gn.num_groups == 0 and m.gn.num_groups == 2  # whole groups
    assert m.up.in_channels == 8 and m.up.out_channels == m.inorm.num_features == 5
    assert m.conv1d.in_channels == 5 and m.conv1d.out_channels == 3
    assert m.ln.normalized_shape == (3,) and m.rms.normalized_shape == (3,)
    assert m.lin.in_features == 3 and m.lin.out_features == 4 == m.out.in_features
    result = S.verify(original, model, plan, x)
    assert result.ok, result.message
    assert result.emulated == {"ln": "LayerNorm", "rms": "RMSNorm"}  # checked over kept units


def test_multihead_attention_loses_whole_heads(zoo):
    case = zoo("mha")
    S.prune(case.model, case.inputs, ratio=0.5)
    attn = case.model.attn
    assert attn.num_heads == 2 and attn.head_dim == 8 and attn.embed_dim == 16
    assert attn.in_proj_weight.shape == (48, 16)
    assert case.model(case.inputs).shape == (2, 5)


@pytest.mark.parametrize("kind, layers, bidirectional", [("LSTM", 2, True), ("GRU", 1, False),
                                                         ("RNN", 3, True)])
def test_recurrent_layers_lose_hidden_units(kind, layers, bidirectional):
    torch.manual_seed(0)
    dirs = 2 if bidirectional else 1

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(30, 12)
            self.rnn = getattr(nn, kind)(12, 16, num_layers=layers, bidirectional=bidirectional)
            self.fc = nn.Linear(16 * dirs, 3)

        def forward(self, tokens):  # (T, B)
            out, _ = self.rnn(self.embed(tokens))
            return self.fc(out[-1])

    model = Net().eval()
    tokens = torch.randint(0, 30, (5, 2))
    original = copy.deepcopy(model)
    plan = S.prune(model, tokens, ratio=0.5)
    rnn = model.rnn
    assert rnn.hidden_size == 8 and rnn.input_size == 6
    assert model.fc.in_features == 8 * dirs
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    assert rnn.weight_hh_l0.shape == (8 * gates, 8)
    if layers > 1:
        assert rnn.weight_ih_l1.shape == (8 * gates, 8 * dirs)
    assert S.verify(original, model, plan, tokens).ok


def test_surgeons_are_found_along_the_class_hierarchy():
    class MyConv(nn.Conv2d):
        pass

    assert surgeon_for(MyConv(2, 2, 1)) is surgeon_for(nn.Conv2d(2, 2, 1))
    assert surgeon_for(nn.ReLU()) is None
