"""Knowledge distillation from the unpruned original: the pruned student learns its soft outputs.

G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network",
NeurIPS workshop 2014; feature matching after A. Romero et al., "FitNets", ICLR 2015.

Example:
    >>> teacher = copy.deepcopy(model)            # before pruning
    >>> pk.sparsify(model, sparsity=0.9)
    >>> with Distiller(model, teacher, temperature=4.0, alpha=0.9) as loss_fn:
    ...     train(model, loader, epochs=3, lr=0.01, loss_fn=loss_fn)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .train import train


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton's loss: ``alpha * T^2 * KL(p_T(teacher) || p_T(student)) + (1 - alpha) * CE``.

    ``p_T(z) = softmax(z / T)``. The KL term is averaged over the batch and scaled
    by ``T^2`` so its gradients keep their size as ``T`` changes; ``CE`` is the
    cross-entropy with the true labels at temperature 1.

    Args:
        student_logits: (B, classes), or (B, ..., classes) for per-token outputs.
        teacher_logits: the same shape, no gradient needed.
        labels: (B,) or (B, ...) class indices; may be None when ``alpha == 1``.
        temperature: ``T`` > 0.
        alpha: weight of the soft term, in [0, 1].

    Example:
        >>> distillation_loss(torch.randn(4, 10), torch.randn(4, 10), torch.arange(4))
        tensor(...)
    """
    _check(temperature, alpha)
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes) / temperature  # (B*..., classes)
    t = teacher_logits.detach().reshape(-1, classes) / temperature  # (B*..., classes)
    soft = F.kl_div(
        F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True
    )
    loss = alpha * temperature**2 * soft
    if alpha < 1.0:
        if labels is None:
            raise ConfigError("labels are needed when alpha < 1 (the cross-entropy part)")
        loss = loss + (1.0 - alpha) * F.cross_entropy(
            student_logits.reshape(-1, classes), labels.reshape(-1)
        )
    return loss


class Distiller:
    """A ``loss_fn(logits, labels)`` for :func:`prunekit.recovery.train` that distils.

    A forward pre-hook on the student runs the teacher (in eval mode, without
    gradient) on the same inputs whenever the student runs in training mode, so
    the loss sees both outputs although ``train`` passes only the student's
    logits. Evaluation (student in eval mode) never runs the teacher.

    With ``features``, forward hooks also catch the outputs of the named modules
    in both networks and add ``feature_weight * MSE(student, teacher)`` per
    module; their shapes must agree (match layers whose outputs were not cut).

    Use it as a context manager (or call :meth:`close`) to remove the hooks.

    Args:
        student: the pruned network being trained.
        teacher: the unpruned original (not modified, never trained).
        temperature, alpha: see :func:`distillation_loss`.
        features: qualified module names present in both networks.
        feature_weight: weight of each feature-matching term.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        temperature: float = 4.0,
        alpha: float = 0.9,
        features: Sequence[str] = (),
        feature_weight: float = 1.0,
    ) -> None:
        _check(temperature, alpha)
        self.student, self.teacher = _unwrap(student), teacher
        self.temperature, self.alpha, self.feature_weight = temperature, alpha, feature_weight
        self.features = [features] if isinstance(features, str) else list(features)
        self._teacher_logits: torch.Tensor | None = None
        self._caught: dict[tuple[str, str], torch.Tensor] = {}
        self._handles = [self.student.register_forward_pre_hook(self._run_teacher)]
        self._hook_features()

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._teacher_logits is None:
            raise ConfigError(
                "no teacher output for this batch: call the loss right after the student's "
                "forward pass in training mode"
            )
        teacher, self._teacher_logits = self._teacher_logits, None
        loss = distillation_loss(
            logits, teacher, labels, temperature=self.temperature, alpha=self.alpha
        )
        for name in self.features:
            s, t = self._caught.pop(("student", name)), self._caught.pop(("teacher", name))
            if s.shape != t.shape:
                raise ConfigError(
                    f"feature {name!r} has shape {tuple(s.shape)} in the student but "
                    f"{tuple(t.shape)} in the teacher; match modules whose outputs were not cut"
                )
            loss = loss + self.feature_weight * F.mse_loss(s, t)
        return loss

    def close(self) -> None:
        """Remove every hook this distiller added."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_teacher(self, module: nn.Module, args: tuple) -> None:
        if not module.training:
            return
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with torch.no_grad():
                self._teacher_logits = self.teacher(*args)
        finally:
            self.teacher.train(was_training)

    def _hook_features(self) -> None:
        for role, net in (("student", self.student), ("teacher", self.teacher)):
            modules = dict(net.named_modules())
            for name in self.features:
                if name not in modules:
                    self.close()
                    raise ConfigError(
                        f"feature module {name!r} is not in the {role}; valid names look like: "
                        f"{', '.join(n for n in list(modules)[1:6])}"
                    )
                self._handles.append(modules[name].register_forward_hook(self._catch(role, name)))

    def _catch(self, role: str, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if role == "teacher" or self.student.training:
                self._caught[(role, name)] = output

        return hook


def distill_train(
    student: nn.Module,
    teacher: nn.Module,
    loader: Iterable,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    features: Sequence[str] = (),
    feature_weight: float = 1.0,
    **train_options: Any,
) -> list[float]:
    """:func:`prunekit.recovery.train` with the :class:`Distiller` loss; same return value.

    Example:
        >>> distill_train(pruned, original, loader, epochs=3, lr=0.01, temperature=4.0)
    """
    if "loss_fn" in train_options:
        raise ConfigError("distill_train makes its own loss_fn; drop loss_fn or call train")
    with Distiller(
        student,
        teacher,
        temperature=temperature,
        alpha=alpha,
        features=features,
        feature_weight=feature_weight,
    ) as loss_fn:
        return train(student, loader, loss_fn=loss_fn, **train_options)


def _check(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, whose forward the hook sees."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    return model
