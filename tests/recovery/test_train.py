"""Training loop: repeatable, reduces the loss, calls after_step, validates; predict/evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.data import make_loader
from prunekit.errors import ConfigError, DataError
from prunekit.recovery import evaluate_accuracy, list_lr_schedules, list_optimizers, predict, train


def blobs(n: int = 64, seed: int = 0) -> TensorDataset:
    """Two well separated Gaussian blobs in 4 dimensions, labels 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    centers = torch.tensor([[-2.0, 0, 1, 0], [2.0, 0, -1, 0]])
    return TensorDataset(centers[labels] + 0.5 * torch.randn(n, 4, generator=g), labels)


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 2))


def loader(data=None, *, shuffle=True, seed=0, batch_size=16):
    data = blobs() if data is None else data
    return make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_same_seed_gives_identical_losses_and_weights(optimizer):
    options = {"epochs": 3, "lr": 0.05, "optimizer": optimizer, "weight_decay": 1e-4, "seed": 7}
    runs = []
    for _ in range(2):
        model = mlp(dropout=0.2)
        losses = train(model, loader(seed=5), quiet=True, **options)
        runs.append((losses, model.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = runs
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert train(mlp(dropout=0.2), loader(seed=6), quiet=True, **options) != losses_a


def test_global_rng_state_is_left_alone():
    before = torch.get_rng_state()
    train(mlp(dropout=0.5), loader(), epochs=1, lr=0.05, quiet=True)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_training_learns_a_separable_problem(schedule):
    model = mlp()
    test = loader(blobs(seed=1), shuffle=False)
    losses = train(model, loader(), epochs=15, lr=0.1, schedule=schedule, quiet=True)
    assert len(losses) == 15 and losses[-1] < 0.3 * losses[0]
    assert evaluate_accuracy(model, test) == 1.0


def test_after_step_runs_once_after_every_optimizer_step():
    model = mlp()
    calls = []

    def zero_first_weight():  # a mask re-applied after each step must survive to the end
        calls.append(1)
        with torch.no_grad():
            model[0].weight[0, 0] = 0.0

    train(model, loader(), epochs=2, lr=0.1, after_step=zero_first_weight, quiet=True)
    assert len(calls) == 2 * len(loader())
    assert model[0].weight[0, 0].item() == 0.0


def test_train_restores_mode_and_zero_epochs_changes_nothing():
    model = mlp().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert train(model, loader(), epochs=0, lr=0.1, quiet=True) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    train(model, loader(), epochs=1, lr=0.1, quiet=True)
    assert not model.training


def test_custom_loss_fn_is_used():
    seen = []

    def loss_fn(logits, labels):
        seen.append(logits.shape)
        return nn.functional.cross_entropy(logits, labels)

    train(mlp(), loader(), epochs=1, lr=0.1, loss_fn=loss_fn, quiet=True)
    assert seen[0] == (16, 2) and len(seen) == len(loader())


def test_non_finite_loss_names_the_learning_rate():
    with pytest.raises(ConfigError, match="lower the learning rate"):
        nan_loss = lambda logits, labels: logits.sum() * float("nan")  # noqa: E731
        train(mlp(), loader(), epochs=1, lr=0.1, loss_fn=nan_loss, quiet=True)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"optimizer": "rmsprop"}, "valid optimizers: adam, adamw, sgd"),
        ({"schedule": "step"}, "valid schedules: constant, cosine"),
        ({"epochs": -1}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, fragment):
    options = {"epochs": 1, "lr": 0.1, **kwargs}
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=fragment):
        train(model, loader(), quiet=True, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_batches_are_data_errors():
    with pytest.raises(DataError, match="no batches"):
        train(mlp(), [], epochs=1, lr=0.1, quiet=True)
    with pytest.raises(DataError, match=r"\(inputs, labels\) pair"):
        predict(mlp(), [torch.zeros(2, 4)])


def test_registries_are_listed():
    assert list_optimizers() == ["adam", "adamw", "sgd"]
    assert list_lr_schedules() == ["constant", "cosine"]


@pytest.mark.parametrize("training", [True, False])
def test_predict_uses_eval_mode_and_restores_it(training):
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train(training)
    modes = []
    model.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    data = blobs(20)
    y_true, y_pred = predict(model, loader(data, shuffle=False, batch_size=8))
    assert modes == [False] * 3
    assert model.training is training and model[2].training is training
    assert y_true.dtype == np.int64 and y_pred.dtype == np.int64
    np.testing.assert_array_equal(y_true, data.tensors[1].numpy())
    with torch.no_grad():
        model.eval()
        expected = model(data.tensors[0]).argmax(dim=1).numpy()
    np.testing.assert_array_equal(y_pred, expected)


def test_evaluate_accuracy_matches_predictions():
    model = mlp(seed=3)
    test = loader(blobs(30), shuffle=False, batch_size=7)
    y_true, y_pred = predict(model, test)
    assert evaluate_accuracy(model, test) == pytest.approx(np.mean(y_true == y_pred))
