"""Training and evaluation loops: fine-tuning after a cut, and the accuracy that judges it.

Optimizers and learning-rate schedules are looked up by name in small registries,
so a recipe names them as strings (``optimizer: adamw``, ``schedule: cosine``).
Training is repeatable: with a loader from :func:`prunekit.data.make_loader` and
the same ``seed``, two runs on the CPU give bit-identical losses and weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._registry import Registry
from ..errors import ConfigError, DataError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
ScheduleFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
LR_SCHEDULES: Registry[ScheduleFactory] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[nn.Parameter], *, lr: float, momentum: float, weight_decay: float):
    """SGD with (heavy-ball) momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[nn.Parameter], *, lr: float, momentum: float, weight_decay: float):
    """Adam (Kingma and Ba, ICLR 2015) with ``betas=(momentum, 0.999)``."""
    return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[nn.Parameter], *, lr: float, momentum: float, weight_decay: float):
    """AdamW (Loshchilov and Hutter, ICLR 2019) with ``betas=(momentum, 0.999)``."""
    return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


@LR_SCHEDULES.register("cosine")
def _cosine(optimizer: torch.optim.Optimizer, total_steps: int):
    """Cosine decay from ``lr`` to 0 over all steps (Loshchilov and Hutter, ICLR 2017)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


@LR_SCHEDULES.register("constant")
def _constant(optimizer: torch.optim.Optimizer, total_steps: int):
    """The same ``lr`` at every step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def list_optimizers() -> list[str]:
    """Names accepted by ``train(optimizer=...)``: ``adam``, ``adamw``, ``sgd``."""
    return OPTIMIZERS.names()


def list_lr_schedules() -> list[str]:
    """Names accepted by ``train(schedule=...)``: ``constant``, ``cosine``."""
    return LR_SCHEDULES.names()


def train(
    model: nn.Module,
    loader: Iterable,
    *,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    loss_fn: LossFn | None = None,
    seed: int = 0,
    quiet: bool = False,
    desc: str = "train",
    after_step: Callable[[], None] | None = None,
    device: torch.device | str | None = None,
) -> list[float]:
    """Train ``model`` in place on ``(inputs, labels)`` batches.

    The learning rate follows ``schedule`` per optimizer step over all epochs.
    Randomness inside the loop (dropout, a loader without its own generator) draws
    from a generator seeded with ``seed``; the global RNG state is left as it was.
    The model's train/eval mode is restored afterwards.

    Args:
        model: the network, already on ``device``; only parameters with
            ``requires_grad`` are trained.
        loader: iterable of ``(inputs, labels)`` batches, e.g. from ``make_loader``.
        epochs: passes over ``loader``; 0 trains nothing.
        lr: peak learning rate, > 0.
        optimizer: one of :func:`list_optimizers`.
        momentum: SGD momentum, or Adam's first beta.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        schedule: one of :func:`list_lr_schedules`.
        loss_fn: ``loss_fn(logits, labels)``; cross-entropy when None.
        seed: seed of the randomness inside the loop.
        quiet: hide the progress bar.
        desc: progress bar label.
        after_step: called after every optimizer step (pruning re-applies masks here).
        device: where batches are sent (default: where the model's parameters are).

    Returns:
        The mean training loss of each epoch (weighted by batch size).

    Example:
        >>> losses = train(model, make_loader(splits.train, batch_size=64, shuffle=True),
        ...                epochs=10, lr=0.05)
    """
    _check_hyper(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay)
    make_optimizer, make_schedule = OPTIMIZERS.get(optimizer), LR_SCHEDULES.get(schedule)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; nothing to train")
    if epochs == 0:
        return []
    opt = make_optimizer(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_schedule(opt, epochs * _num_batches(loader))
    device = _device_of(model, device)
    step = _Step(model, opt, loss_fn or nn.CrossEntropyLoss(), device, after_step)
    was_training = model.training
    losses: list[float] = []
    with torch.random.fork_rng(devices=_cuda_indices(device)):
        torch.manual_seed(seed)
        model.train()
        try:
            for epoch in range(epochs):
                bar = tqdm(
                    loader,
                    desc=f"{desc} {epoch + 1}/{epochs}",
                    disable=quiet,
                    leave=epoch == epochs - 1,
                )
                losses.append(_train_epoch(step, bar, sched, where=f"epoch {epoch + 1}"))
        finally:
            model.train(was_training)
    return losses


class _Step:
    """One optimizer step on one batch: forward, loss, backward, step, after_step."""

    def __init__(self, model, opt, loss_fn, device, after_step) -> None:
        self.model, self.opt, self.loss_fn = model, opt, loss_fn
        self.device, self.after_step = device, after_step

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(inputs), labels)
        loss.backward()
        self.opt.step()
        if self.after_step is not None:
            self.after_step()
        return loss.detach()


def _train_epoch(step: _Step, bar: Iterable, sched, *, where: str) -> float:
    """Run one pass; the mean loss weighted by batch size."""
    total, count = 0.0, 0
    for i, (inputs, labels) in enumerate(_batches(bar)):
        loss = float(step(inputs, labels))
        if not math.isfinite(loss):
            raise ConfigError(
                f"training loss became {loss} at {where}, step {i + 1}; "
                "lower the learning rate (lr)"
            )
        sched.step()
        total, count = total + loss * len(labels), count + len(labels)
        if i % 10 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    if count == 0:
        raise DataError("the training loader yielded no batches; check the dataset and batch size")
    return total / count


def predict(
    model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class of every example, predicted in eval mode.

    Runs under ``torch.inference_mode`` and restores the model's train/eval mode.
    Batches are sent to ``device`` (default: where the model's parameters are).

    Returns:
        ``(y_true, y_pred)``: int64 arrays of shape (N,); ``y_pred`` is the arg-max
        of the logits.

    Example:
        >>> y_true, y_pred = predict(model, make_loader(splits.test, batch_size=256,
        ...                                             shuffle=False))
    """
    device = _device_of(model, device)
    was_training = model.training
    true_parts, pred_parts = [], []
    model.eval()
    try:
        with torch.inference_mode():
            for inputs, labels in _batches(loader):
                logits = model(inputs.to(device))  # (B, classes)
                pred_parts.append(logits.argmax(dim=1).cpu())
                true_parts.append(labels.reshape(-1).cpu())
    finally:
        model.train(was_training)
    if not true_parts:
        raise DataError("the evaluation loader yielded no batches; check the dataset")
    return (
        torch.cat(true_parts).numpy().astype(np.int64),
        torch.cat(pred_parts).numpy().astype(np.int64),
    )


def evaluate_accuracy(
    model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None
) -> float:
    """Fraction of examples whose arg-max prediction equals the label (see :func:`predict`)."""
    y_true, y_pred = predict(model, loader, device=device)
    return float(np.mean(y_true == y_pred))


def _batches(loader: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, labels)`` pairs from ``loader``; anything else is a DataError."""
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError(
                f"a loader batch must be an (inputs, labels) pair, got {type(batch).__name__}; "
                "wrap the data in a TensorDataset(inputs, labels)"
            )
        yield batch[0], batch[1]


def _check_hyper(*, epochs: int, lr: float, momentum: float, weight_decay: float) -> None:
    """ConfigError for out-of-range training hyper-parameters."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ConfigError(f"momentum must be in [0, 1), got {momentum!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")


def _num_batches(loader: Iterable) -> int:
    """Batches per epoch, needed to lay the schedule over all steps."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            "the loader has no len(); pass a DataLoader (e.g. prunekit.data.make_loader)"
        ) from None


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU if none)."""
    if device is not None:
        return torch.device(device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _cuda_indices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG state ``fork_rng`` must save and restore."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
