"""Training and evaluation loops: fine-tuning after a cut, and the accuracy that judges it.

Optimizers and learning-rate schedules are looked up by name in small registries,
so a recipe names them as strings (``optimizer: adamw``, ``schedule: cosine``).
Training is repeatable: with a loader from :func:`prunekit.data.make_loader` and
the same ``seed``, two runs on the CPU give bit-identical losses and weights.

Long runs can save a checkpoint after every epoch and resume from it after an
interruption with bit-identical results. Under ``torchrun`` (a process group
initialized, e.g. by :func:`init_distributed`), ``train`` wraps the model in
DistributedDataParallel and gives each rank every ``world_size``-th batch, so a
script runs unchanged on one or many processes; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_open
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
    checkpoint: str | os.PathLike[str] | None = None,
    state_objects: Mapping[str, Any] | None = None,
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
        checkpoint: a file written (atomically, by rank 0 only) after every epoch
            with the model, optimizer, learning-rate schedule, random states and the
            loader's shuffling generator; when it exists at the start, training
            resumes after its last epoch, and the result is what an uninterrupted
            run gives.
        state_objects: further objects with ``state_dict()`` / ``load_state_dict()``
            saved in the checkpoint and restored before the model (a
            :class:`prunekit.schedules.Pruner` driven by ``after_step``).

    Returns:
        The mean training loss of each epoch (weighted by batch size; averaged
        over all ranks under torch.distributed), including epochs of a resumed run.

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
    ranks = _Ranks.current()
    opt = make_optimizer(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_schedule(opt, epochs * ranks.batches(_num_batches(loader)))
    device = _device_of(model, device)
    saver = _Checkpoint(checkpoint, model, opt, sched, loader, state_objects, ranks, epochs)
    was_training = model.training
    losses: list[float] = []
    with torch.random.fork_rng(devices=_cuda_indices(device)):
        torch.manual_seed(seed)
        losses = saver.resume()
        net = ranks.wrap(model, device)
        step = _Step(net, opt, loss_fn or nn.CrossEntropyLoss(), device, after_step)
        model.train()
        try:
            for epoch in range(len(losses), epochs):
                bar = progress(
                    ranks.shard(loader),
                    total=ranks.batches(_num_batches(loader)),
                    desc=f"{desc} {epoch + 1}/{epochs}",
                    disable=quiet or not ranks.main,
                    leave=epoch == epochs - 1,
                )
                loss = _train_epoch(step, bar, sched, where=f"epoch {epoch + 1}")
                losses.append(ranks.mean(*loss))
                saver.save(losses)
        finally:
            model.train(was_training)
    return losses


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment.

    Does nothing outside ``torchrun`` (no ``WORLD_SIZE`` > 1) or when a group
    already exists. The backend defaults to NCCL when CUDA is available, else gloo.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` for a single process.

    Example:
        >>> rank, world = init_distributed()   # torchrun --nproc_per_node=2 script.py
        >>> train(model, loader, epochs=3, lr=0.05)   # DDP on every rank
    """
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return 0, 1
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """True on rank 0 of a process group, and in a single process: the one that writes files."""
    return _Ranks.current().main


class _Ranks:
    """This process's place in a torch.distributed group (rank 0 of 1 without one)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world, self.main = rank, world, rank == 0

    @staticmethod
    def current() -> _Ranks:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return _Ranks(dist.get_rank(), dist.get_world_size())
        return _Ranks(0, 1)

    def batches(self, total: int) -> int:
        """Batches each rank takes per epoch (every rank takes the same number)."""
        return total // self.world

    def shard(self, loader: Iterable) -> Iterator:
        """Batches ``rank, rank + world, ...``; the incomplete last round is dropped."""
        if self.world == 1:
            yield from loader
            return
        limit = self.batches(_num_batches(loader)) * self.world
        for i, batch in enumerate(loader):
            if i >= limit:
                break
            if i % self.world == self.rank:
                yield batch

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if self.world == 1 or isinstance(model, DistributedDataParallel):
            return model
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, total: float, count: int) -> float:
        """The loss per example over all ranks."""
        if self.world > 1:
            import torch.distributed as dist

            both = torch.tensor([total, float(count)], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                both = both.cuda()
            dist.all_reduce(both)
            total, count = float(both[0]), int(both[1])
        return total / count

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


class _Checkpoint:
    """Save after each epoch (rank 0), resume at the start: everything a bit-exact resume needs."""

    def __init__(self, path, model, opt, sched, loader, objects, ranks: _Ranks, epochs: int):
        self.path = None if path is None else Path(path)
        self.model, self.opt, self.sched, self.loader = model, opt, sched, loader
        self.objects, self.ranks, self.epochs = dict(objects or {}), ranks, epochs
        bad = [k for k, o in self.objects.items() if not hasattr(o, "load_state_dict")]
        if bad:
            raise ConfigError(f"state_objects {bad} have no state_dict()/load_state_dict()")

    def save(self, losses: list[float]) -> None:
        if self.path is None:
            return
        if self.ranks.main:
            generator = _loader_generator(self.loader)
            state = {
                "epochs": self.epochs,
                "losses": list(losses),
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "lr_schedule": self.sched.state_dict(),
                "rng": torch.get_rng_state(),
                "loader_rng": None if generator is None else generator.get_state(),
                "objects": {k: o.state_dict() for k, o in self.objects.items()},
            }
            with atomic_open(self.path) as f:
                torch.save(state, f)
        self.ranks.barrier()

    def resume(self) -> list[float]:
        """Load the checkpoint if there is one; the losses of the epochs already done."""
        if self.path is None or not self.path.exists():
            return []
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state["epochs"] != self.epochs:
            raise ConfigError(
                f"checkpoint {self.path} belongs to a run of {state['epochs']} epochs, not "
                f"{self.epochs}; resume with the same settings or delete the file"
            )
        for key, obj in self.objects.items():
            obj.load_state_dict(state["objects"][key])
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["lr_schedule"])
        torch.set_rng_state(state["rng"])
        generator = _loader_generator(self.loader)
        if generator is not None and state["loader_rng"] is not None:
            generator.set_state(state["loader_rng"])
        return list(state["losses"])


def _loader_generator(loader: Iterable) -> torch.Generator | None:
    """The generator that shuffles ``loader`` (a DataLoader's or a ``.generator``), if any."""
    generator = getattr(loader, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


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


def _train_epoch(step: _Step, bar: Iterable, sched, *, where: str) -> tuple[float, int]:
    """Run one pass; the summed loss (weighted by batch size) and the number of examples."""
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
    return total, count


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


def progress(items: Any, **options: Any) -> Any:
    """``tqdm(items, **options)`` when tqdm is installed (the ``cli`` extra), else ``items``."""
    try:
        from tqdm.auto import tqdm  # optional: progress bars only
    except ImportError:
        return items
    return tqdm(items, **options)
