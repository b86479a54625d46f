"""Pruner: follows its schedule exactly, works with any method, resumes like an optimizer."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.mask import get_mask
from prunekit.schedules import AGP, MaskPruning, OneShot, Pruner, Steps


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)
    ]


def run(model, opt, pruner, data) -> None:
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()


def layer_sparsity(model) -> list[float]:
    return [float((m.weight == 0).float().mean()) for m in (model[0], model[2])]


def test_model_follows_the_schedule_after_every_step():
    model = net()
    schedule = AGP(final=0.75, start=2, end=12, frequency=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = Pruner(model, schedule)  # layer scope: every layer at exactly the target
    masks = []
    for t, (x, y) in enumerate(batches(16), start=1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        target = schedule(t)
        assert pruner.step_count == t and pruner.sparsity == target
        for layer, numel in zip((model[0], model[2]), (128, 64), strict=True):
            assert float((layer.weight == 0).sum()) == round(target * numel), t
        mask = get_mask(model[0], "weight")
        masks.append(torch.ones(16, 8, dtype=torch.bool) if mask is None else mask.clone())
    changed = [t for t in range(1, 16) if not torch.equal(masks[t], masks[t - 1])]
    assert [t + 1 for t in changed] == [7, 12]  # steps start + k * frequency after start


def test_oneshot_schedule_prunes_when_the_pruner_is_made():
    model = net()
    pruner = Pruner(model, OneShot(final=0.5), scope="global")
    assert pk.sparsity_of(model) == pytest.approx(0.5, abs=1 / 192)
    assert pruner.sparsity == 0.5


def test_pruner_drives_recovery_train_with_after_step():
    from prunekit.recovery import train

    model = net()
    data = batches(6)
    pruner = Pruner(model, AGP(final=0.8, end=10, frequency=2), scope="lamp")
    train(model, data_loader(data), epochs=2, lr=0.05, after_step=pruner.step, quiet=True)
    assert pruner.step_count == 12
    assert pk.sparsity_of(model) == pytest.approx(0.8, abs=1 / 192)


def data_loader(data):
    class Loader(list):
        pass

    return Loader(data)


def test_resume_mid_run_gives_identical_masks_and_weights():
    schedule = AGP(final=0.9, end=20, frequency=4)
    data = batches(30)

    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = Pruner(model, schedule, scope="global")
    run(model, opt, pruner, data)

    first = net()
    opt1 = torch.optim.SGD(first.parameters(), lr=0.05, momentum=0.9)
    pruner1 = Pruner(first, schedule, scope="global")
    run(first, opt1, pruner1, data[:13])
    buf = io.BytesIO()
    torch.save(
        {"model": first.state_dict(), "opt": opt1.state_dict(), "pruner": pruner1.state_dict()},
        buf,
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    resumed = net(seed=5)  # a fresh, differently initialized model
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    pruner2 = Pruner(resumed, schedule, scope="global")
    pruner2.load_state_dict(ckpt["pruner"])  # first: attaches the masks
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    run(resumed, opt2, pruner2, data[13:])

    assert pruner2.step_count == pruner.step_count == 30
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_gradual_n_m_tightens_to_the_pattern():
    model = net()
    schedule = AGP(final=0.5, end=6, frequency=2)  # 0, 0.35, 0.35, 0.48, 0.48, 0.5 at steps 1-6
    pruner = Pruner(model, schedule, pattern="2:4")
    kept = []
    for t in range(1, 7):
        pruner.step()
        blocks = (model[0].weight != 0).reshape(16, 2, 4).sum(-1)  # (out, in/4) kept per block
        assert int(blocks.min()) == int(blocks.max()), "every block keeps the same number"
        assert int(blocks.max()) == round(4 * (1 - schedule(t)))  # round(M * (1 - s)) of M
        kept.append(int(blocks.max()))
    assert kept == [4, 3, 3, 2, 2, 2]
    assert pk.sparsity_of(model) == 0.5
    with pytest.raises(ConfigError, match="set final=0.5"):
        Pruner(net(), AGP(final=0.4, end=6), pattern="2:4")


def test_any_method_plugs_in():
    calls = []

    def method(model, sparsity):
        calls.append(round(sparsity, 6))

    pruner = Pruner(net(), Steps(sparsities=(0.25, 0.5), start=1, frequency=2), method=method)
    for _ in range(5):
        pruner.step()
    assert calls == [0.25, 0.5]
    with pytest.raises(ConfigError, match="either method or"):
        Pruner(net(), OneShot(final=0.5), method=method, scope="global")


def test_errors():
    with pytest.raises(ConfigError, match="unknown criterion"):
        Pruner(net(), OneShot(final=0.5), criterion="nope")
    with pytest.raises(ConfigError, match="must be a Schedule"):
        Pruner(net(), 0.9)
    pruner = Pruner(net(), AGP(final=0.5, end=4))
    state = Pruner(net(), AGP(final=0.9, end=4)).state_dict()
    with pytest.raises(ConfigError, match="build the Pruner with the saved schedule"):
        pruner.load_state_dict(state)
    assert isinstance(pruner.method, MaskPruning)


def test_schedule_given_as_a_dict():
    pruner = Pruner(net(), {"name": "oneshot", "final": 0.5})
    assert pruner.schedule == OneShot(final=0.5)
