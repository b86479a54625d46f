"""Recovery after a cut: the fine-tuning loop and the evaluation that judges it.

Example:
    >>> from prunekit.recovery import evaluate_accuracy, train
    >>> losses = train(model, train_loader, epochs=10, lr=0.05)
    >>> evaluate_accuracy(model, test_loader)
"""

from __future__ import annotations

from .train import evaluate_accuracy as evaluate_accuracy
from .train import list_lr_schedules as list_lr_schedules
from .train import list_optimizers as list_optimizers
from .train import predict as predict
from .train import train as train

__all__ = ["evaluate_accuracy", "list_lr_schedules", "list_optimizers", "predict", "train"]
from .bn import list_bn_modes as list_bn_modes
from .bn import recalibrate_bn as recalibrate_bn
from .distill import Distiller as Distiller
from .distill import distill_train as distill_train
from .distill import distillation_loss as distillation_loss
from .penalty import SparsityPenalty as SparsityPenalty
from .penalty import list_penalties as list_penalties
from .reconstruct import reconstruct as reconstruct
from .train import init_distributed as init_distributed
from .train import is_main_process as is_main_process
