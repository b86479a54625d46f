"""What "still does its job" means for a task: classification, language modelling,
embeddings, and agreement with the dense model when there are no labels.

Each task is registered by name and evaluates a model over a loader of
``(inputs, labels)`` batches (inputs a tensor or a dict of tensors; labels None for
unlabelled data). Tasks that compare with the dense model take it as ``reference``.

- ``classification``: accuracy, macro precision / recall / F1, confusion matrix
  (:func:`prunekit.measure.classification_metrics`); with a reference also agreement.
- ``language-modelling``: perplexity ``exp(mean next-token negative log-likelihood)``
  over every non-padding token (Jelinek et al., 1977; as in the Wanda and SparseGPT
  evaluations).
- ``embeddings``: cosine similarity of each example's embedding to the dense model's
  (mean-pooled over tokens with the attention mask, as sentence-transformers does).
- ``agreement``: the fraction of examples whose top-1 prediction equals the dense
  model's, the fraction whose dense top-1 is in the pruned top-5, and the mean
  KL divergence from the dense to the pruned output distribution.

Example:
    >>> evaluate_task("agreement", pruned, loader, reference=dense)
    {'agreement': 0.97, 'top5_agreement': 1.0, 'kl': 0.012, 'examples': 512}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._calls import to_device
from .._registry import Registry
from ..data.sources import split_batch
from ..errors import ConfigError, DataError
from .quality import classification_metrics

__all__ = [
    "TASKS",
    "Task",
    "embeddings_of",
    "evaluate_task",
    "forward",
    "get_task",
    "list_tasks",
    "logits_of",
]


@dataclass(frozen=True)
class Task:
    """A registered task.

    Attributes:
        name: registered name.
        headline: the metric a report leads with.
        higher_is_better: direction of the headline metric.
        needs_labels: batches must carry labels.
        needs_reference: the dense model must be given as ``reference``.
        evaluate: ``evaluate(model, batches, reference, num_classes) -> metrics``.
    """

    name: str
    headline: str
    higher_is_better: bool
    needs_labels: bool
    needs_reference: bool
    evaluate: Callable[..., dict[str, Any]]


TASKS: Registry[Task] = Registry("task")


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return TASKS.names()


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name lists the valid ones."""
    return TASKS.get(name)


def _register(name: str, headline: str, *, higher: bool, labels: bool, reference: bool
              ) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    def add(fn: Callable[..., dict]) -> Callable[..., dict]:
        TASKS.register(name)(Task(name, headline, higher, labels, reference, fn))
        return fn

    return add


def evaluate_task(
    task: str | Task,
    model: nn.Module,
    loader: Iterable,
    *,
    reference: nn.Module | None = None,
    num_classes: int | None = None,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on a task over ``loader`` (in eval mode, without gradients).

    Args:
        task: a name from :func:`list_tasks` or a :class:`Task`.
        model: the network to evaluate.
        loader: batches ``(inputs, labels)``; labels may be None for tasks without labels.
        reference: the dense model, for ``embeddings`` and ``agreement`` (and the extra
            agreement figure of ``classification``).
        num_classes: classes for the classification metrics.
        max_batches: stop after this many batches.
        device: where to run (default: the model's device).

    Raises:
        ConfigError: the task needs a reference that is not given.
        DataError: the task needs labels and a batch has none, or the loader is empty.
    """
    task = get_task(task) if isinstance(task, str) else task
    if task.needs_reference and reference is None:
        raise ConfigError(f"task {task.name} compares with the dense model; pass reference=")
    batches = _batches(loader, max_batches, device or _device_of(model), task)
    with _eval_mode(model, reference), torch.no_grad():
        return task.evaluate(model, batches, reference=reference, num_classes=num_classes)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class _eval_mode:
    """Put models in eval mode; give them back their training flags afterwards."""

    def __init__(self, *models: nn.Module | None) -> None:
        self.models = [m for m in models if m is not None]

    def __enter__(self) -> None:
        self.flags = [m.training for m in self.models]
        for m in self.models:
            m.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flag in zip(self.models, self.flags, strict=True):
            m.train(flag)


def _batches(loader: Iterable, max_batches: int | None, device: torch.device, task: Task
             ) -> list[tuple[Any, Any]]:

    out = []
    for number, batch in enumerate(loader):
        if max_batches is not None and number >= max_batches:
            break
        inputs, labels = split_batch(batch)
        if task.needs_labels and labels is None:
            raise DataError(f"task {task.name} needs labels, but the data has none; use task "
                            "agreement to compare with the dense model instead")
        out.append((to_device(inputs, device), None if labels is None else labels.to(device)))
    if not out:
        raise DataError("the evaluation loader gave no batches; check the test split")
    return out


# --- model outputs -----------------------------------------------------------------------


def forward(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on a batch's inputs: a dict as keywords, a tuple as positional
    arguments, anything else as the one argument."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model's output: the tensor itself, ``.logits``, the
    ``"logits"`` entry, or the first element of a tuple."""
    if torch.is_tensor(output):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not torch.is_tensor(logits):
        raise ConfigError(f"cannot find logits in the model's output ({type(output).__name__}); "
                          "return a tensor or an object with .logits")
    return logits


def embeddings_of(output: Any, inputs: Any) -> torch.Tensor:
    """One embedding per example, (B, D).

    A (B, D) tensor is taken as it is; token states (B, T, D) (a tensor or
    ``.last_hidden_state``) are averaged over the tokens the attention mask keeps.
    """
    states = output if torch.is_tensor(output) else getattr(output, "last_hidden_state", None)
    if states is None and isinstance(output, (tuple, list)) and output:
        states = output[0]
    if not torch.is_tensor(states):
        raise ConfigError(f"cannot find embeddings in the model's output "
                          f"({type(output).__name__}); return a tensor or .last_hidden_state")
    if states.dim() == 2:
        return states.float()
    if states.dim() != 3:
        raise ConfigError(f"embeddings must be (B, D) or token states (B, T, D), got "
                          f"{tuple(states.shape)}")
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if mask is None:
        return states.float().mean(dim=1)
    weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    return ((states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).float()


# --- tasks -------------------------------------------------------------------------------


@_register("classification", "accuracy", higher=True, labels=True, reference=False)
def _classification(model: nn.Module, batches: list, *, reference: nn.Module | None,
                    num_classes: int | None) -> dict[str, Any]:
    preds, truth, dense = [], [], []
    for inputs, labels in batches:
        preds.append(logits_of(forward(model, inputs)).argmax(dim=-1).cpu())
        truth.append(labels.cpu())
        if reference is not None:
            dense.append(preds[-1] if reference is model
                         else logits_of(forward(reference, inputs)).argmax(dim=-1).cpu())
    metrics = classification_metrics(torch.cat(truth), torch.cat(preds), num_classes=num_classes)
    if reference is not None:
        metrics["agreement"] = float((torch.cat(preds) == torch.cat(dense)).float().mean())
    return metrics


@_register("language-modelling", "perplexity", higher=False, labels=False, reference=False)
def _language_modelling(model: nn.Module, batches: list, *, reference: nn.Module | None,
                        num_classes: int | None) -> dict[str, Any]:
    total, tokens = 0.0, 0
    for inputs, _ in batches:
        ids = inputs["input_ids"] if isinstance(inputs, Mapping) else inputs  # (B, T)
        logits = logits_of(forward(model, inputs)).float()  # (B, T, V)
        targets = ids[:, 1:]  # (B, T - 1): token t + 1 is predicted at t
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
        keep = torch.ones_like(targets, dtype=torch.bool)
        if isinstance(inputs, Mapping) and "attention_mask" in inputs:
            keep = inputs["attention_mask"][:, 1:].bool()
        total += float(nll[keep].sum())
        tokens += int(keep.sum())
    if tokens == 0:
        raise DataError("no tokens to predict; give sequences of at least two tokens")
    loss = total / tokens
    return {"perplexity": float(torch.tensor(loss).exp()), "loss": loss, "tokens": tokens}


@_register("embeddings", "cosine_mean", higher=True, labels=False, reference=True)
def _embeddings(model: nn.Module, batches: list, *, reference: nn.Module,
                num_classes: int | None) -> dict[str, Any]:
    cosines = []
    for inputs, _ in batches:
        mine = embeddings_of(forward(model, inputs), inputs)
        dense = mine if reference is model else embeddings_of(forward(reference, inputs), inputs)
        if mine.shape != dense.shape:
            raise ConfigError(f"the pruned model's embeddings are {tuple(mine.shape)} but the "
                              f"dense model's {tuple(dense.shape)}; keep the output width")
        cosines.append(F.cosine_similarity(mine, dense, dim=-1).cpu())
    values = torch.cat(cosines).double()
    return {"cosine_mean": float(values.mean()), "cosine_min": float(values.min()),
            "cosine_p05": float(values.quantile(0.05)), "examples": int(values.numel())}


@_register("agreement", "agreement", higher=True, labels=False, reference=True)
def _agreement(model: nn.Module, batches: list, *, reference: nn.Module,
               num_classes: int | None) -> dict[str, Any]:
    same = top5 = count = 0
    kl = 0.0
    for inputs, _ in batches:
        mine = logits_of(forward(model, inputs)).float().flatten(0, -2)  # (N, classes)
        dense = mine if reference is model else logits_of(  # the dense model against itself
            forward(reference, inputs)).float().flatten(0, -2)  # (N, classes)
        target = dense.argmax(dim=-1)
        same += int((mine.argmax(dim=-1) == target).sum())
        k = min(5, mine.shape[-1])
        top5 += int((mine.topk(k, dim=-1).indices == target[:, None]).any(dim=-1).sum())
        kl += float(F.kl_div(mine.log_softmax(-1), dense.log_softmax(-1), log_target=True,
                             reduction="sum"))
        count += target.numel()
    return {"agreement": same / count, "top5_agreement": top5 / count, "kl": kl / count,
            "examples": count}
