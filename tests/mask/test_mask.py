import copy
import io

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.mask import attach_mask, get_mask, masked_params


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 5))


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 5) -> None:
    x, y = torch.randn(16, 12), torch.randint(0, 5, (16,))
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v == 0) for k, v in model.state_dict().items() if k.endswith("weight")}


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=0.05),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adam", "adamw"],
)
def test_masked_weights_stay_exactly_zero_after_optimizer_steps(make_opt):
    model = _net()
    pk.sparsify(model, sparsity=0.7)
    before = _zeros(model)
    _steps(model, make_opt(model.parameters()))
    # checked right after the last step, before any forward could re-mask
    for name, zero in before.items():
        w = dict(model.named_parameters())[name]
        assert torch.all(w[zero] == 0), name
        assert torch.any(w[~zero] != 0)
    assert pk.sparsity_of(model) == pytest.approx(0.7, abs=1e-3)


def test_state_dict_round_trip_restores_masks_and_zeros():
    a = _net()
    pk.sparsify(a, sparsity=0.8, scope="global")
    _steps(a, torch.optim.SGD(a.parameters(), lr=0.1))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)

    b = _net()
    pk.sparsify(b, sparsity=0.3, criterion="random")  # different masks first
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(get_mask(b[0], "weight"), get_mask(a[0], "weight"))
    x = torch.randn(4, 12)
    assert torch.equal(a(x), b(x))
    _steps(b, torch.optim.Adam(b.parameters(), lr=0.05))
    assert torch.all(b[0].weight[~get_mask(b[0], "weight")] == 0)


def test_dense_weights_loaded_into_masked_model_are_masked_before_use():
    model = _net()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    pk.sparsify(model, sparsity=0.5)
    masks = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_mask")}
    model.load_state_dict({**dense, **masks})
    assert torch.any(model[0].weight[~masks["0.weight_mask"]] != 0)  # dense again...
    x = torch.randn(3, 12)
    expected = nn.functional.linear(x, dense["0.weight"] * masks["0.weight_mask"], dense["0.bias"])
    torch.testing.assert_close(model[0](x), expected)  # ...but never used unmasked
    assert torch.all(model[0].weight[~masks["0.weight_mask"]] == 0)


def test_deepcopy_keeps_masks_working():
    model = _net()
    pk.sparsify(model, sparsity=0.6)
    clone = copy.deepcopy(model)
    zero = clone[0].weight == 0
    _ = clone(torch.randn(2, 12))  # first forward hooks the fresh parameters
    _steps(clone, torch.optim.SGD(clone.parameters(), lr=0.5, momentum=0.9))
    assert torch.all(clone[0].weight[zero] == 0)


def test_bake_removes_machinery_and_keeps_zeros():
    model = _net()
    pk.sparsify(model, sparsity=0.75)
    zeros = _zeros(model)
    assert pk.bake(model) is model
    assert not any(k.endswith("_mask") for k in model.state_dict())
    assert list(masked_params(model)) == []
    assert not any(m._forward_pre_hooks for m in model.modules())
    for k, z in _zeros(model).items():
        assert torch.equal(z, zeros[k])
    # the model is ordinary again: training may now revive pruned weights
    _steps(model, torch.optim.SGD(model.parameters(), lr=0.5), n=2)
    assert pk.sparsity_of(model) < 0.75


def test_attach_mask_rejects_wrong_shape():
    model = _net()
    with pytest.raises(ValueError, match="mask shape"):
        attach_mask(model[0], "weight", torch.ones(3, 3, dtype=torch.bool))
