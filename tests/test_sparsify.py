import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet()


def _data():
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(2)
    ]


def _weights(model):
    return {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}


@pytest.mark.parametrize("criterion", ["magnitude", "l2", "random", "gradient", "taylor", "obd"])
@pytest.mark.parametrize("scope", ["layer", "global", "lamp"])
def test_every_criterion_and_scope_reaches_the_target(criterion, scope):
    model = _model()
    out = pk.sparsify(
        model, sparsity=0.8, criterion=criterion, scope=scope, data=_data(), fisher_samples=8
    )
    assert set(out) == {"conv1.weight", "conv2.weight", "fc.weight"}
    assert pk.sparsity_of(model) == pytest.approx(0.8, abs=1e-3)
    if scope == "layer":
        for name, s in out.items():
            assert s == pytest.approx(0.8, abs=0.01), name
    assert model(_data()[0][0]).shape == (8, 10)


def test_magnitude_prunes_the_smallest_weights():
    model = _model()
    w = model.fc.weight.detach().clone()
    pk.sparsify(model, sparsity=0.5, exclude=["conv1", "conv2"])
    pruned = model.fc.weight == 0
    assert w.abs()[pruned].max() <= w.abs()[~pruned].min()
    assert torch.all(model.conv1.weight != 0)


def test_threshold_percentile_std_rules_on_a_model():
    model = _model()
    w = model.conv2.weight.detach().clone()
    pk.sparsify(model, threshold=0.05, exclude=["conv1", "fc"])
    assert torch.equal(model.conv2.weight == 0, w.abs() < 0.05)
    for kwargs in ({"percentile": 30.0}, {"std_k": 0.0}):
        m = _model()
        pk.sparsify(m, **kwargs)
        assert 0.05 < pk.sparsity_of(m) < 0.95


def test_biases_and_norms_untouched():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "bias" in k or "bn" in k}
    pk.sparsify(model, sparsity=0.9, scope="global")
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_neuron_granularity_masks_whole_rows_with_their_bias():
    model = _model()
    pk.sparsify(model, sparsity=0.5, granularity="neuron")
    rows = model.conv2.weight.flatten(1)
    dead = (rows == 0).all(1)
    assert int(dead.sum()) == 8
    assert torch.all(model.conv2.bias[dead] == 0)
    assert torch.all((rows[~dead] != 0).any(1))


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_pattern_on_linear_and_conv(pattern, n, m):
    model = _model()
    pk.sparsify(model, pattern=pattern, exclude=["conv1"])  # conv1 has 1 input channel
    fc = model.fc.weight.reshape(10, -1, m)  # (out, in/m, m)
    assert ((fc != 0).sum(-1) <= n).all()
    conv = model.conv2.weight.movedim(1, -1).reshape(16, 3, 3, -1, m)  # (out, kh, kw, in/m, m)
    assert ((conv != 0).sum(-1) <= n).all()
    assert pk.sparsity_of(model) > 0.4


def test_iterative_calls_keep_earlier_zeros():
    model = _model()
    pk.sparsify(model, sparsity=0.5, criterion="random", scope="global")
    first = {n: p == 0 for n, p in _weights(model).items()}
    pk.sparsify(model, sparsity=0.8, criterion="random", scope="global", seed=5)
    for n, p in _weights(model).items():
        assert torch.all(p[first[n]] == 0), n
    assert pk.sparsity_of(model) == pytest.approx(0.8, abs=1e-3)


def test_protect_output_and_exclude_patterns():
    model = _model()
    out = pk.sparsify(model, sparsity=0.9, protect_output=True, exclude=["re:conv[1]"])
    assert set(out) == {"conv2.weight"}
    assert torch.all(model.fc.weight != 0)


def test_rnn_and_attention_weights_are_prunable():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    out = pk.sparsify(lstm, sparsity=0.7)
    assert len(out) == 8 and all(s == pytest.approx(0.7, abs=0.01) for s in out.values())
    y, _ = lstm(torch.randn(2, 5, 8))
    assert y.shape == (2, 5, 32)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    out = pk.sparsify(mha, pattern="2:4")
    assert set(out) == {"in_proj_weight", "out_proj.weight"}
    x = torch.randn(2, 3, 16)
    assert mha(x, x, x)[0].shape == (2, 3, 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.0}, r"\[0, 1\)"),
        ({"sparsity": -0.2}, r"\[0, 1\)"),
        ({"sparsity": 0.5, "criterion": "nope"}, "magnitude"),
        ({"sparsity": 0.5, "scope": "nope"}, "lamp"),
        ({"sparsity": 0.5, "granularity": "nope"}, "neuron"),
        ({"sparsity": 0.5, "exclude": ["decoder"]}, "matches no module"),
        ({"pattern": "3:8"}, "multiple of 8"),  # conv1 has 1 input channel
        ({"pattern": "2:4", "sparsity": 0.5}, "drop sparsity"),
        ({}, "exactly one"),
        ({"sparsity": 0.5, "threshold": 0.1}, "exactly one"),
        ({"sparsity": 0.5, "criterion": "taylor"}, "data="),
    ],
)
def test_rejected_calls_leave_the_model_untouched(kwargs, match):
    model = _model()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        pk.sparsify(model, **kwargs)
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(m._forward_pre_hooks for m in model.modules())
