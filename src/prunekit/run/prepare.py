"""The first stage of ``prunekit run``: the recipe's model, data and task, built and checked.

Everything that differs between a reference network on a built-in dataset and your own
model on your own data is decided here, once, into a :class:`Prepared`: the model, the
splits as loaders (:class:`TensorSplits` for the built-in datasets, :class:`LoaderSplits`
for yours), the example inputs for tracing and timing, and the task's
:class:`Objective` (what training minimises: cross-entropy on labels, next-token
cross-entropy, or agreement / cosine with the dense model when there are no labels).
The later stages (:mod:`prunekit.run.stages`, :mod:`prunekit.run.pipeline`) use only
this object, so one pipeline runs every recipe.

Example:
    >>> prepared = prepare(load_recipe("quickstart"), quiet=True)
    >>> prepared.task.name, prepared.data.kind
    ('classification', 'digits')
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from .._io import load_safetensors
from .._utils import seed_everything
from ..data import Splits, load_dataset, make_loader
from ..data.sources import UserData, check_num_classes, load_data, split_batch
from ..errors import ConfigError, DataError
from ..measure.tasks import Task, embeddings_of, forward, get_task, logits_of
from ..models import CLASSIFIER, build_model
from ..models.sources import load_model
from .recipe import Recipe

__all__ = ["LoaderSplits", "Objective", "Prepared", "TensorSplits", "head_of", "prepare"]


def say(quiet: bool, message: str) -> None:
    """A progress line on stderr, unless quiet."""
    if not quiet:
        print(f"prunekit: {message}", file=sys.stderr, flush=True)


def head_of(inputs: Any, n: int) -> Any:
    """The first ``n`` examples of a batch's inputs (tensor, dict or tuple of tensors)."""
    if torch.is_tensor(inputs):
        return inputs[:n]
    if isinstance(inputs, Mapping):
        return {k: head_of(v, n) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(head_of(v, n) for v in inputs)
    return inputs


# --- the splits --------------------------------------------------------------------------


@dataclass
class TensorSplits:
    """A built-in dataset held as tensors: seeded subsets, a validation split cut from
    the training split (``data.val_fraction``), a fresh seeded loader per call."""

    kind: str
    splits: Splits
    batch_size: int
    eval_batch_size: int
    seed: int
    val: TensorDataset | None = None
    labelled: bool = True
    keyword_inputs: bool = False

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits.input_shape)

    def loader(self, split: str, *, train: bool) -> Iterable | None:
        """A seeded loader over the ``train``, ``val`` or ``test`` split."""
        dataset = self.val if split == "val" else getattr(self.splits, split)
        size = self.batch_size if train else self.eval_batch_size
        return make_loader(dataset, batch_size=size, shuffle=train, seed=self.seed)

    def size(self, split: str) -> int | None:
        dataset = self.val if split == "val" else getattr(self.splits, split)
        return None if dataset is None else len(dataset)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.splits.train) / self.batch_size)


@dataclass
class LoaderSplits:
    """Your own data as loaders (:class:`prunekit.data.sources.UserData`), with an optional
    validation split cut from the training loader's dataset."""

    user: UserData
    val: Any = None
    train: Any = None

    def __post_init__(self) -> None:
        if self.train is None:
            self.train = self.user.train

    kind = property(lambda self: self.user.kind)
    num_classes = property(lambda self: self.user.num_classes)
    input_shape = property(lambda self: self.user.input_shape)
    labelled = property(lambda self: self.user.labelled)

    @property
    def keyword_inputs(self) -> bool:
        return isinstance(self.user.example_inputs(), Mapping)

    def loader(self, split: str, *, train: bool) -> Iterable | None:
        return {"train": self.train, "val": self.val, "test": self.user.test}[split]

    def size(self, split: str) -> int | None:
        loader = self.loader(split, train=False)
        dataset = getattr(loader, "dataset", None)
        return len(dataset) if dataset is not None else None

    def steps_per_epoch(self) -> int:
        return len(self.train) if self.train is not None else 0


def _builtin(recipe: Recipe) -> TensorSplits:
    """The built-in dataset: seeded subsets (``train_samples``, ``test_samples``) and the
    validation split (``val_fraction``) held out of the training split."""
    d = recipe.data
    splits = load_dataset(d.name, data_dir=d.data_dir, seed=recipe.seed)
    train = _subset(splits.train, d.train_samples, recipe.seed, "data.train_samples")
    test = _subset(splits.test, d.test_samples, recipe.seed + 1, "data.test_samples")
    val = None
    if d.val_fraction > 0:
        x, y = train.tensors
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(recipe.seed + 2))
        held = max(1, round(d.val_fraction * len(y)))
        val = TensorDataset(x[order[:held]], y[order[:held]])
        train = TensorDataset(x[order[held:]], y[order[held:]])
    splits = dataclasses.replace(splits, train=train, test=test)
    return TensorSplits(d.name, splits, d.batch_size, d.eval_batch_size, recipe.seed, val)


def _subset(dataset: TensorDataset, samples: int | None, seed: int, key: str) -> TensorDataset:
    """A seeded random subset of ``samples`` examples (all of them for None)."""
    if samples is None:
        return dataset
    x, y = dataset.tensors
    if samples > len(y):
        raise ConfigError(f"{key} is {samples} but the split has {len(y)} examples; lower it")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:samples]
    keep = keep.sort().values
    return TensorDataset(x[keep], y[keep])


def _own(recipe: Recipe, folder: Path | tuple[Path, str] | None) -> LoaderSplits:
    d = recipe.data
    user = load_data(d.spec(), batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                     train_samples=d.train_samples, test_samples=d.test_samples,
                     tokenizer=folder, seed=recipe.seed)
    if d.val_fraction == 0:
        return LoaderSplits(user)
    train, val = _hold_out(user.train, d.val_fraction, recipe.seed, d.eval_batch_size)
    return LoaderSplits(user, val=val, train=train)


def _hold_out(loader: Any, fraction: float, seed: int, eval_batch_size: int) -> tuple:
    """Split a training DataLoader's dataset into a training and a validation loader."""
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or dataset is None:
        raise ConfigError("data.val_fraction holds out part of the training split, but the data "
                          "has no training DataLoader; give data.train, or drop val_fraction")
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2)).tolist()
    held = max(1, round(fraction * n))
    if held >= n:
        raise ConfigError(f"data.val_fraction {fraction} leaves no training examples of {n}")
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(Subset(dataset, sorted(order[held:])), batch_size=loader.batch_size,
                       shuffle=True, generator=generator, collate_fn=loader.collate_fn)
    val = DataLoader(Subset(dataset, sorted(order[:held])), batch_size=eval_batch_size,
                     shuffle=False, collate_fn=loader.collate_fn)
    return train, val


# --- what training minimises, per task ---------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """How a task trains a network: what its output becomes, what that is compared with.

    Attributes:
        output: ``output(model_output, inputs) -> tensor`` the loss sees.
        loss: ``loss(output, target) -> scalar``.
        from_dense: the target is the dense model's output on the same inputs (tasks
            without labels: agreement, embeddings); else the batch's labels (or, for
            language modelling, its token ids).
    """

    output: Callable[[Any, Any], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    from_dense: bool = False
    next_token: bool = False


def _logits(output: Any, inputs: Any) -> torch.Tensor:
    return logits_of(output)


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t + 1 at t; -100 marks padding."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                           ignore_index=-100)  # (B * (T - 1), V) against (B * (T - 1),)


def _agreement_loss(logits: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """KL(dense || pruned) per example, the quantity the agreement task reports."""
    classes = logits.shape[-1]
    return F.kl_div(logits.reshape(-1, classes).log_softmax(-1),
                    dense.reshape(-1, classes).log_softmax(-1), log_target=True,
                    reduction="batchmean")


def _cosine_loss(embeddings: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(embeddings, dense, dim=-1).mean()


OBJECTIVES = {
    "classification": Objective(_logits, F.cross_entropy),
    "language-modelling": Objective(_logits, _next_token_loss, next_token=True),
    "agreement": Objective(_logits, _agreement_loss, from_dense=True),
    "embeddings": Objective(embeddings_of, _cosine_loss, from_dense=True),
}


class TaskNet(nn.Module):
    """The model as the training loop calls it: one argument in (a dict of inputs goes in
    as keywords), the task's output out (logits, or one embedding per example)."""

    def __init__(self, model: nn.Module, output: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, inputs: Any) -> torch.Tensor:
        inputs = dict(inputs) if isinstance(inputs, Mapping) else inputs
        return self.output(forward(self.model, inputs), inputs)


class Keywords(dict):
    """A batch's keyword inputs (tokenized text) that move like a tensor."""

    def to(self, device: Any) -> Keywords:
        return Keywords({k: v.to(device) for k, v in self.items()})


class TaskBatches:
    """A loader's batches as ``(inputs, target)`` pairs for the training loop: the labels,
    the token ids (padding -100), or the dense model's outputs on the same inputs."""

    def __init__(self, loader: Any, objective: Objective, dense: TaskNet | None) -> None:
        self.loader, self.objective, self.dense = loader, objective, dense

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:

        for batch in self.loader:
            inputs, labels = split_batch(batch)
            yield (Keywords(inputs) if isinstance(inputs, Mapping) else inputs), \
                self._target(inputs, labels)

    def _target(self, inputs: Any, labels: Any) -> torch.Tensor:
        if self.objective.from_dense:
            with torch.no_grad():
                was = self.dense.training
                self.dense.eval()
                target = self.dense(inputs).detach()
                self.dense.train(was)
            return target
        if self.objective.next_token:
            ids = inputs["input_ids"] if isinstance(inputs, Mapping) else inputs  # (B, T)
            mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
            return ids if mask is None else ids.masked_fill(mask == 0, -100)
        if labels is None:
            raise DataError("a training batch has no labels; task classification needs them")
        return labels


# --- the prepared run --------------------------------------------------------------------


@dataclass
class Prepared:
    """A recipe's model, data and task, built and checked against each other.

    Attributes:
        model: the dense network (a reference network is untrained here).
        data: the splits as loaders (:class:`TensorSplits` or :class:`LoaderSplits`).
        task: the registered task (:func:`prunekit.measure.tasks.get_task`).
        heads: output layers a channel cut keeps whole (``protect_output``).
        example: a few inputs for tracing and verification.
        cost_example: one example for counting MACs and timing.
        num_classes: classes of the model's classifier, when it has one.
        label: what the model is, in words.
        own: the model or the data is the user's own (not a reference network on a
            built-in dataset).
    """

    model: nn.Module
    data: TensorSplits | LoaderSplits
    task: Task
    heads: tuple[str, ...]
    example: Any
    cost_example: Any
    num_classes: int | None
    label: str
    own: bool = False
    objective: Objective = field(default_factory=lambda: OBJECTIVES["classification"])

    def net(self, model: nn.Module) -> nn.Module:
        """``model`` as the training loop calls it (the model itself for a reference run)."""
        return TaskNet(model, self.objective.output) if self.own else model

    def batches(self, loader: Any, dense: nn.Module | None) -> Any:
        """A loader as the training loop reads it (the loader itself for a reference run)."""
        if not self.own:
            return loader
        return TaskBatches(loader, self.objective, None if dense is None else self.net(dense))

    def metadata(self) -> dict[str, str]:
        """What the network and data are, for the safetensors header."""
        shape = self.data.input_shape
        return {"prunekit.model": self.label, "prunekit.dataset": self.data.kind,
                "prunekit.task": self.task.name,
                "prunekit.input_shape": "x".join(map(str, shape)) if shape else "",
                "prunekit.num_classes": str(self.num_classes or "")}


def prepare(recipe: Recipe, *, quiet: bool = False) -> Prepared:
    """Build the model and the data of ``recipe``; check them against each other and the task.

    A reference network's ``model.checkpoint`` is not loaded here (the pipeline loads it
    after its checks); your own model's is.

    Raises:
        ConfigError: the model cannot be built or its checkpoint does not fit; a setting
            the data cannot serve (a schedule that trains without a training split).
        DataError: the data is missing or empty, has another class count than the head,
            or has no labels for a task that needs them.
    """
    seed_everything(recipe.seed)
    started = time.perf_counter()
    task = get_task(recipe.task)
    if recipe.model.own:
        prepared = _own_model(recipe, task, quiet)
    else:
        data = _own(recipe, None) if recipe.data.own else _builtin(recipe)
        prepared = _reference(recipe, data, task)
    if task.needs_labels and not prepared.data.labelled:
        raise DataError(f"task {task.name} needs labels, but the data has none; use task "
                        "agreement to compare with the dense model, or give labelled data")
    if task.name == "classification" and isinstance(prepared.data, LoaderSplits):
        check_num_classes(prepared.data.user, prepared.num_classes)
    _check_training_split(recipe, prepared.data)
    say(quiet, f"model and data ready in {time.perf_counter() - started:.1f} s")
    return prepared


def _own_model(recipe: Recipe, task: Task, quiet: bool) -> Prepared:
    m = recipe.model
    where = m.path or m.name or m.python
    say(quiet, f"building {m.source or 'python'} model {where}")
    user = load_model(m.spec())
    tokenizer = (user.folder, user.gguf_file) if user.gguf_file else user.folder
    data = _own(recipe, tokenizer) if recipe.data.own else _as_loaders(_builtin(recipe))
    example = _example(recipe, data)
    return Prepared(user.model.eval(), data, task, tuple(user.heads), example,
                    head_of(example, 1), user.num_classes, f"{m.source or 'python'}:{where}",
                    own=True, objective=OBJECTIVES[task.name])


def _as_loaders(splits: TensorSplits) -> LoaderSplits:
    """A built-in dataset served to your own model: loaders over its tensors."""
    make = {s: splits.loader(s, train=s == "train") for s in ("train", "test")}
    user = UserData(kind=splits.kind, train=make["train"], test=make["test"],
                    num_classes=splits.num_classes, input_shape=splits.input_shape)
    val = splits.loader("val", train=False) if splits.val is not None else None
    return LoaderSplits(user, val=val)


def _reference(recipe: Recipe, data: TensorSplits | LoaderSplits, task: Task) -> Prepared:
    """A reference network (lenet300...), sized by the data."""
    if data.num_classes is None or data.input_shape is None:
        raise DataError(f"reference network {recipe.model.name} needs labelled data of a fixed "
                        "input shape; use model.source or model.python for this data")
    model = build_model(recipe.model.name, input_shape=data.input_shape,
                        num_classes=data.num_classes)
    if isinstance(data, TensorSplits):
        example = data.splits.train.tensors[0][:8]  # (8, C, H, W): tracing and verification
        cost = data.splits.test.tensors[0][:1]  # (1, C, H, W): MACs and latency
        return Prepared(model, data, task, (CLASSIFIER,), example, cost, data.num_classes,
                        recipe.model.name)
    example = _example(recipe, data)
    return Prepared(model, data, task, (CLASSIFIER,), example, head_of(example, 1),
                    data.num_classes, recipe.model.name, own=True,
                    objective=OBJECTIVES[task.name])


def _example(recipe: Recipe, data: LoaderSplits) -> Any:
    """Inputs for tracing and timing: random ones of ``model.input_shape`` when it is
    given (seeded), else the first examples of the test split."""
    shape = recipe.model.input_shape
    if shape is None:
        return head_of(data.user.example_inputs(), 4)
    generator = torch.Generator().manual_seed(recipe.seed)
    return torch.randn(2, *shape, generator=generator)  # (2, *input_shape)


def _check_training_split(recipe: Recipe, data: TensorSplits | LoaderSplits) -> None:
    """A schedule that prunes while training needs a training split."""
    if data.loader("train", train=True) is not None:
        return
    kind = recipe.schedule.kind
    if kind in ("gradual", "surgery", "lottery"):
        raise ConfigError(f"schedule.kind {kind} prunes while training, but the data has no "
                          "training split; give data.train, or use schedule kind oneshot")
    if recipe.penalty is not None:
        raise ConfigError("penalty trains with a sparsity penalty, but the data has no "
                          "training split; give data.train, or drop penalty")
    for key in ("reconstruct", "bn_recalibration"):
        if getattr(recipe.recovery, key) is not None:
            raise ConfigError(f"recovery.{key} calibrates on the training split, but the data "
                              f"has none; give data.train, or drop recovery.{key}")


def load_reference_checkpoint(model: nn.Module, recipe: Recipe, *, quiet: bool) -> None:
    """Load a reference network's ``model.checkpoint`` (a run's ``dense.safetensors``)."""
    checkpoint = recipe.model.checkpoint
    say(quiet, f"loading the baseline from {checkpoint}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.checkpoint {checkpoint} does not exist; give the dense.safetensors of "
            "an earlier run, or drop model.checkpoint to train the baseline"
        )
    try:
        model.load_state_dict(load_safetensors(path), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        problem = str(err).strip().splitlines()[0][:300]
        raise ConfigError(
            f"model.checkpoint {checkpoint} does not fit model {recipe.model.name!r} on "
            f"{recipe.data.name!r} ({problem}); use a checkpoint saved by a run with the "
            "same model and data"
        ) from None
