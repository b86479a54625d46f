import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.compress import (
    ShareConfig,
    bake_sharing,
    baked_state_dict,
    kmeans_1d,
    share_weights,
    shared_layers,
)
from prunekit.errors import ConfigError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 6))


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([-1.0, 0.2, 3.0])
    x = centers.repeat_interleave(200) + 0.01 * torch.randn(600, generator=g)
    centroids, assign = kmeans_1d(x, 3)
    assert torch.allclose(centroids, centers, atol=0.01)
    assert torch.equal(assign, torch.arange(3).repeat_interleave(200))


def test_shared_weights_take_few_values_and_keep_zeros():
    model = _mlp()
    pk.sparsify(model, sparsity=0.7, scope="global")
    zeros = {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    clusters = share_weights(model, bits=3)
    assert clusters == {"0": 8, "2": 8}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            w = mod.weight.detach()
            assert torch.equal(w == 0, zeros[name])
            assert torch.unique(w[w != 0]).numel() <= 8


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    model = _mlp()
    x = torch.randn(5, 20, generator=torch.Generator().manual_seed(2))
    share_weights(model, bits=2)
    layer = shared_layers(model)["0"]
    # Oracle: gradient w.r.t. the shared weight itself, summed per cluster by hand.
    weight = model[0].weight.detach().clone().requires_grad_(True)
    out = torch.nn.functional.linear(x, weight, model[0].bias)
    model[2](torch.relu(out)).square().sum().backward()
    expected = torch.zeros(4).index_add_(0, layer.index.reshape(-1), weight.grad.reshape(-1))
    model(x).square().sum().backward()
    assert torch.allclose(layer.codebook.grad, expected, rtol=1e-5, atol=1e-6)


def test_training_moves_centroids_not_assignments_and_zeros_stay():
    model = _mlp()
    pk.sparsify(model, sparsity=0.5)
    share_weights(model, bits=2)
    index = shared_layers(model)["0"].index.clone()
    before = shared_layers(model)["0"].codebook.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 20)).square().mean().backward()
        opt.step()
    layer = shared_layers(model)["0"]
    assert not torch.equal(layer.codebook.detach(), before)
    assert torch.equal(layer.index, index)
    assert torch.equal(model[0].weight == 0, index == -1)


def test_bake_keeps_outputs_and_baked_state_dict_matches():
    model = _mlp()
    share_weights(model, ShareConfig(bits=4, init="density"))
    x = torch.randn(3, 20)
    before = model(x).detach()
    predicted = baked_state_dict(model)
    bake_sharing(model)
    assert not shared_layers(model)
    assert torch.equal(model(x), before)
    state = model.state_dict()
    assert list(state) == list(predicted)
    assert all(torch.equal(state[k], predicted[k]) for k in state)


def test_conv_layers_use_conv_bits_and_ignore_works(zoo):
    case = zoo("conv_bn_relu")
    clusters = share_weights(case.model, bits=2, conv_bits=3, ignore=("re:features\\.3",))
    assert clusters == {"features.0": 8, "fc": 4}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(bits=0), "bits"),
        (dict(init="kmeans++"), "unknown centroid initialisation"),
        (dict(ignore=("nope",)), "not modules of the model"),
        (dict(colour=1), "unknown ShareConfig field"),
    ],
)
def test_bad_settings_are_config_errors_and_leave_the_model(kwargs, match):
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        share_weights(model, **kwargs)
    assert not shared_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sharing_twice_is_refused():
    model = _mlp()
    share_weights(model)
    with pytest.raises(ConfigError, match="already shared"):
        share_weights(model)
