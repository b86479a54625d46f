"""Dynamic network surgery: pruned weights keep learning, come back above the splice threshold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.mask import get_mask
from prunekit.schedules import Surgery


def two_weight_layer() -> nn.Linear:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.1]]))
    return layer


def test_masked_weight_grows_in_the_shadows_and_is_spliced_back():
    layer = two_weight_layer()
    surgery = Surgery(layer, sparsity=0.5, margin=0.2, gamma=0.0)  # revise at every step
    limits = surgery.thresholds["weight"]
    assert limits.prune == pytest.approx(0.55) and limits.splice == pytest.approx(0.66)
    assert get_mask(layer, "weight").tolist() == [[True, False]]
    opt = torch.optim.SGD(layer.parameters(), lr=0.2)
    x = torch.ones(1, 2)
    outputs, masks = [], []
    for _ in range(4):
        out = layer(x)
        outputs.append(out.item())
        opt.zero_grad()
        (-out.sum()).backward()  # d/dw = -x: every weight, masked or not, grows by 0.2
        assert layer.weight.grad.tolist() == [[-1.0, -1.0]]
        opt.step()
        surgery.step()
        masks.append(get_mask(layer, "weight").tolist())
    # shadow of w2: 0.1 -> 0.3 -> 0.5 -> 0.7 > 0.66: spliced at the third step, value kept
    assert masks == [[[True, False]]] * 2 + [[[True, True]]] * 2
    assert outputs[:3] == pytest.approx([1.0, 1.2, 1.4])  # the masked weight is 0 in forward
    assert outputs[3] == pytest.approx(1.6 + 0.7)
    assert layer.weight[0].tolist() == pytest.approx([1.8, 0.9])


def test_weight_falling_below_the_prune_threshold_is_pruned_and_stays_zero_in_forward():
    layer = two_weight_layer()
    surgery = Surgery(layer, c_rate=0.0, margin=0.1, gamma=0.0)  # r = mean |w| = 0.55
    opt = torch.optim.SGD(layer.parameters(), lr=0.25)
    x = torch.tensor([[1.0, 0.0]])
    for _ in range(2):  # w1: 1.0 -> 0.75 -> 0.5 < 0.55
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
        surgery.step()
    assert get_mask(layer, "weight").tolist() == [[False, False]]
    assert layer(torch.ones(1, 2)).item() == 0.0
    assert surgery.shadows["weight"][0].tolist() == pytest.approx([0.5, 0.1])
    surgery.finish()
    opt.zero_grad()
    layer(torch.ones(1, 2)).sum().backward()
    assert layer.weight.grad.tolist() == [[0.0, 0.0]]  # ordinary masks after finish


def train_steps(model, surgery, opt, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        surgery.step()


def test_resume_gives_identical_masks_and_weights():
    def fresh():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        surgery = Surgery(model, sparsity=0.7, gamma=0.5, seed=3)
        return model, surgery, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)

    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(12)
    ]
    model, surgery, opt = fresh()
    train_steps(model, surgery, opt, data)

    model1, surgery1, opt1 = fresh()
    train_steps(model1, surgery1, opt1, data[:5])
    saved = (model1.state_dict(), opt1.state_dict(), surgery1.state_dict())
    model2, surgery2, opt2 = fresh()
    surgery2.load_state_dict(saved[2])
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    train_steps(model2, surgery2, opt2, data[5:])
    for key, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key]), key
    assert 0.0 < surgery.sparsity < 1.0


def test_probability_decays_and_bad_options_fail():
    surgery = Surgery(nn.Linear(3, 3), sparsity=0.5, gamma=0.1, power=2.0)
    assert surgery.probability(0) == 1.0
    assert surgery.probability(10) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="exactly one of sparsity"):
        Surgery(nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="frequency"):
        Surgery(nn.Linear(3, 3), sparsity=0.5, frequency=0)
