"""Distillation: Hinton's loss against a manual computation, T^2 scaling, the train hook-up."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.recovery import train
from prunekit.recovery.distill import Distiller, distill_train, distillation_loss


def manual(student, teacher, labels, temperature, alpha):
    p = torch.softmax(teacher / temperature, dim=1)
    log_q = torch.log_softmax(student / temperature, dim=1)
    kl = (p * (torch.log(p) - log_q)).sum(dim=1).mean()
    ce = -torch.log_softmax(student, dim=1)[torch.arange(len(labels)), labels].mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0), (3.0, 0.0)])
def test_loss_equals_the_manual_computation(temperature, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    labels = torch.randint(0, 5, (6,), generator=g)
    got = distillation_loss(s, t, labels, temperature=temperature, alpha=alpha)
    torch.testing.assert_close(got, manual(s, t, labels, temperature, alpha))


def test_soft_term_is_scaled_by_t_squared():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    for temperature in (1.0, 2.0, 8.0):
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(s / temperature, 1),
            torch.softmax(t / temperature, 1),
            reduction="batchmean",
        )
        got = distillation_loss(s, t, None, temperature=temperature, alpha=1.0)
        torch.testing.assert_close(got, temperature**2 * kl)
    assert distillation_loss(t, t, None, alpha=1.0) == pytest.approx(0.0, abs=1e-6)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_distiller_runs_the_teacher_on_the_training_inputs_and_matches_features():
    teacher = net()
    student = copy.deepcopy(teacher)
    pk.sparsify(student, sparsity=0.5)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    hooks_before = len(student._forward_pre_hooks), len(student[1]._forward_hooks)
    with Distiller(student, teacher, temperature=2.0, alpha=0.7, features=["1"]) as loss_fn:
        student.train()
        loss = loss_fn(student(x), y)
        with torch.no_grad():
            expected = manual(student(x), teacher(x), y, 2.0, 0.7) + nn.functional.mse_loss(
                student[1](student[0](x)), teacher[1](teacher[0](x))
            )
        torch.testing.assert_close(loss, expected)
        loss.backward()
        assert student[0].weight.grad is not None and teacher[0].weight.grad is None
        student.eval()
        calls = []
        teacher.register_forward_pre_hook(lambda m, a: calls.append(1))
        student(x)
        assert calls == []  # evaluation never runs the teacher
    assert (len(student._forward_pre_hooks), len(student[1]._forward_hooks)) == hooks_before


def test_distill_train_lowers_the_gap_to_the_teacher():
    teacher = net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 4, generator=g)
    y = teacher(x).argmax(1).detach()
    data = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    student = net(seed=3)

    def gap():
        with torch.no_grad():
            return distillation_loss(student(x), teacher(x), None, alpha=1.0).item()

    before = gap()
    losses = distill_train(student, teacher, data, epochs=20, lr=0.1, alpha=1.0, quiet=True)
    assert gap() < 0.3 * before and losses[-1] < losses[0]
    train(student, data, epochs=1, lr=0.01, quiet=True)  # hooks are gone: plain CE works


def test_bad_arguments():
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), None, temperature=0)
    with pytest.raises(ConfigError, match="labels are needed"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), None, alpha=0.5)
    with pytest.raises(ConfigError, match="feature module 'nope' is not in the student"):
        Distiller(net(), net(), features=["nope"])
    teacher, student = net(), nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with Distiller(student, teacher, features=["0"]) as loss_fn:
        with pytest.raises(ConfigError, match="shape"):
            loss_fn(student(torch.zeros(2, 4)), torch.zeros(2, dtype=torch.long))
