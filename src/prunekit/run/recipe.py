"""Recipes: YAML files that describe a whole ``prunekit run``, read into strict typed models.

A recipe is data. It is read with ``yaml.safe_load`` (nothing is ever evaluated) into
pydantic models that forbid unknown keys, so a typo or a wrong type fails at load time,
before any training, with one sentence that names the key path and the valid choices.
Every section is optional; what a recipe leaves out takes the library's default
(:mod:`prunekit.config`, documented once there); the built-in quick start (``prunekit run``
with no recipe) is those defaults with a global magnitude ranking.

The sections, in the order a run uses them: ``data``, ``model``, ``train`` (the
baseline), ``penalty`` (sparse training before the cut), ``prune`` (what is cut and
how much: masks with ``pk.sparsify``, or channels with ``pk.prune``), ``schedule``
(when: one-shot, gradual, iterative, dynamic network surgery, lottery ticket),
``recovery`` (reconstruction, batch-norm recalibration, distillation), ``finetune``,
``sweep`` (several amounts from one baseline), ``measure``, ``output``. Combinations
that make no sense (a gradual channel cut, a floor without a validation split) are
refused with the key path and the way out.

Example:
    >>> recipe = parse_recipe({"prune": {"sparsity": 0.8}}, name="mine")
    >>> recipe.prune.sparsity, recipe.data.name
    (0.8, 'digits')
    >>> parse_recipe({"prune": {"sparsty": 0.8}})
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: recipe: unknown key 'prune.sparsty'; did you mean 'sparsity'? ...
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ..allocation import list_scopes
from ..allocation.search import NEEDS_EVALUATE, list_kinds
from ..config import Budget, Calibration, PlanConfig, SparsifyConfig, amount_of
from ..data import list_datasets
from ..data.sources import DATA_KINDS, check_keys
from ..errors import ConfigError
from ..importance import list_criteria
from ..measure.tasks import get_task, list_tasks
from ..models import list_models
from ..models.sources import list_model_sources
from ..oneshot import OneShotConfig, list_methods
from ..recovery import list_bn_modes
from ..recovery.penalty import list_penalties
from ..recovery.train import list_lr_schedules, list_optimizers

__all__ = [
    "Recipe",
    "dump_recipe",
    "list_recipes",
    "load_recipe",
    "parse_recipe",
]

QUICKSTART = "quickstart"
SELECTORS = ("sparsity", "threshold", "percentile", "std_k")
DEFAULT_SPARSITY = 0.9  # the quick start's; the library has no default sparsity
STRUCTURED = ("channel",)
TARGET_KEYS = ("macs", "params")
SWEEP_KEYS = ("sparsity", "ratio", *TARGET_KEYS)


def _not_bool(value: Any) -> Any:
    """YAML's ``true`` is not a number: refuse it where pydantic would read it as 1.0."""
    if isinstance(value, bool):
        raise ValueError("Input should be a valid number, not a boolean")
    return value


# YAML gives real ints and bools, so those are strict; floats stay lax because
# PyYAML reads ``1e-3`` (no dot) as the string "1e-3".
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, BeforeValidator(_not_bool)]


class _Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _registry_name(kind: str, value: str, names: list[str], *, plural: str = "") -> str:
    """``value`` if it is one of ``names``; else a ValueError listing them (closest first)."""
    if value in names:
        return value
    close = difflib.get_close_matches(value, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    valid = plural or f"{kind}s"
    raise ValueError(f"unknown {kind} {value!r}; {hint}valid {valid}: {', '.join(names)}")


def _keyed(key: str, kind: str, value: str, names: list[str]) -> str:
    """:func:`_registry_name` whose error names ``key`` of the section."""
    try:
        return _registry_name(kind, value, names)
    except ValueError as err:
        raise KeyProblem(key, str(err)) from None


class KeyProblem(ValueError):
    """A cross-field check that failed, naming the key (relative to the section) to fix."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class DataConfig(_Section):
    """Which dataset, where its files are, how much of it, and the loaders' batch sizes.

    ``train_samples`` / ``test_samples`` keep a seeded random subset (for runs that must
    stay short); ``val_fraction`` holds out that part of the training split as a
    validation split (needed by ``schedule.floor``, which must not look at the test split).

    Your own data: ``kind`` (``image-folder``, ``arrays``, ``hf-dataset``, ``text``) with
    that kind's keys beside it (``root``, ``transforms``, ...), or ``python:
    "module:make_loaders"``; see :func:`prunekit.data.sources.load_data`. Those keys are
    kept under ``options`` in the resolved recipe.
    """

    name: str = "digits"
    data_dir: str | None = None
    batch_size: Int = Field(64, ge=1)
    eval_batch_size: Int = Field(512, ge=1)
    train_samples: Int | None = Field(None, ge=1)
    test_samples: Int | None = Field(None, ge=1)
    val_fraction: Float = Field(0.0, ge=0, le=0.5)
    kind: str | None = None
    python: str | None = None
    options: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _registry_name("dataset", value, list_datasets())

    @model_validator(mode="before")
    @classmethod
    def _gather_options(cls, data: Any) -> Any:
        """With ``kind`` or ``python``, the keys of that kind go into ``options``."""
        if not isinstance(data, dict) or ("kind" not in data and "python" not in data):
            return data
        own = {k: v for k, v in data.items() if k not in cls.model_fields}
        rest = {k: v for k, v in data.items() if k in cls.model_fields}
        return {**rest, "options": {**(data.get("options") or {}), **own}}

    @model_validator(mode="after")
    def _known_kind(self) -> DataConfig:
        if self.kind is None and self.python is None:
            if self.options:
                raise KeyProblem("options", "goes with kind: or python: (your own data)")
            return self
        if self.kind is not None and self.python is not None:
            raise KeyProblem("python", "give kind: or python:, not both")
        kind = self.kind or "python"
        _keyed("kind", "data kind", kind, DATA_KINDS.names())
        spec = {**(self.options or {}), **({"python": self.python} if self.python else {})}
        try:
            check_keys(kind, spec, DATA_KINDS.get(kind))
        except ConfigError as err:
            raise ValueError(str(err).removeprefix("data: ")) from None
        return self

    @property
    def own(self) -> bool:
        """Whether this is the user's own data (a ``kind`` or ``python``)."""
        return self.kind is not None or self.python is not None

    def spec(self) -> dict[str, Any]:
        """The ``load_data`` spec of the user's own data."""
        if self.python is not None:
            return {"python": self.python, **(self.options or {})}
        return {"kind": self.kind, **(self.options or {})}


_OWN_MODEL_KEYS = ("path", "gguf_file", "kwargs", "config", "num_classes", "auto",
                   "input_shape")


class ModelConfig(_Section):
    """Which network, and optionally a trained baseline to load instead of training.

    A reference network by ``name`` (``lenet300``...), or your own: ``source``
    (``torchvision``, ``timm``, ``transformers``) with ``name`` (or ``path``, a local
    Hugging Face folder, with ``gguf_file`` for a GGUF file in it), or
    ``python: "package.module:factory"``; ``checkpoint`` (a
    safetensors or weights-only ``.pt`` state dict), ``num_classes``, ``new_head``,
    ``kwargs``, ``config``, ``auto``, ``input_shape``; see
    :func:`prunekit.models.sources.load_model`.
    """

    name: str | None = None
    checkpoint: str | None = None
    source: str | None = None
    python: str | None = None
    path: str | None = None
    gguf_file: str | None = None
    kwargs: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    num_classes: Int | None = Field(None, ge=1)
    new_head: Bool = False
    auto: str | None = None
    input_shape: list[Annotated[Int, Field(ge=1)]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _reference_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and not any(k in data for k in ("name", "source", "python")):
            return {**data, "name": "lenet300"}
        return data

    @model_validator(mode="after")
    def _known_model(self) -> ModelConfig:
        if self.source is not None:
            _keyed("source", "model source", self.source, list_model_sources())
            return self
        if self.python is not None:
            return self
        given = [k for k in _OWN_MODEL_KEYS if getattr(self, k) is not None]
        if given or self.new_head:
            raise KeyProblem((given or ["new_head"])[0], "goes with source: or python: (your "
                             "own model); a reference network takes name and checkpoint")
        _keyed("name", "model", str(self.name), list_models())
        return self

    @property
    def own(self) -> bool:
        """Whether this is the user's own model (a ``source`` or ``python``)."""
        return self.source is not None or self.python is not None

    def spec(self) -> dict[str, Any]:
        """The ``load_model`` spec of the user's own model."""
        keys = ("source", "name", "python", "checkpoint", "new_head", *_OWN_MODEL_KEYS)
        return {k: getattr(self, k) for k in keys if getattr(self, k) not in (None, False)}


class _OptimConfig(_Section):
    """Options of one training phase (baseline training or fine-tuning)."""

    epochs: Int = Field(ge=0)
    lr: Float = Field(gt=0)
    optimizer: str = "sgd"
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(0.0, ge=0)
    schedule: str = "cosine"

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:

        return _registry_name("optimizer", value, list_optimizers())

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:

        return _registry_name("schedule", value, list_lr_schedules())


class TrainConfig(_OptimConfig):
    """Baseline training; skipped when ``model.checkpoint`` is given. ``epochs`` defaults
    to 30 for a reference network and to 0 for your own model (it comes trained)."""

    epochs: Int | None = Field(None, ge=0)
    lr: Float = Field(0.05, gt=0)
    weight_decay: Float = Field(5e-4, ge=0)


class FinetuneConfig(_OptimConfig):
    """Fine-tuning after the cut; masks keep the pruned weights at zero throughout."""

    epochs: Int = Field(30, ge=0)
    lr: Float = Field(0.02, gt=0)


class TargetConfig(_Section):
    """A structured cut's budget: the fraction of ``macs`` or of ``params`` to remove."""

    macs: Float | None = Field(None, ge=0, lt=1)
    params: Float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _one_budget(self) -> TargetConfig:
        given = [k for k in TARGET_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            not_given = " and ".join(given) or "none"
            raise ValueError(f"give exactly one of macs or params, not {not_given}")
        return self

    @property
    def key(self) -> str:
        """``"macs"`` or ``"params"``."""
        return next(k for k in TARGET_KEYS if getattr(self, k) is not None)


# Keys of the prune section that belong to one family of granularities only.
MASK_ONLY = (*SELECTORS, "pattern", "exclude", "method")
CHANNEL_ONLY = ("ratio", "target", "ignore", "max_ratio", "round_to")
# Defaults by family: masks follow pk.sparsify's (SparsifyConfig), channels pk.plan's.
def _family_defaults() -> dict[str, dict[str, Any]]:
    """A prune section's defaults per family: the verbs' own config defaults, not a copy."""
    mask = SparsifyConfig(amount=amount_of(sparsity=DEFAULT_SPARSITY))
    channel = PlanConfig()
    return {
        "mask": {"criterion": mask.criterion, "exclude": [],
                 "calibration_batches": mask.calibration.batches},
        "channel": {"criterion": channel.criterion, "scope": channel.scope, "ignore": [],
                    "max_ratio": channel.max_ratio, "round_to": channel.round_to,
                    "calibration_batches": channel.calibration.batches},
    }


_FAMILY_DEFAULTS = _family_defaults()
DEFAULT_RATIO = PlanConfig().ratio


def _mask_scope(criterion: Any) -> str:
    """The scope ``sparsify`` uses for ``criterion`` when none is given (``row`` for Wanda,
    else ``layer``); an unknown criterion is reported by the section's own check."""
    try:
        return SparsifyConfig(amount=amount_of(sparsity=DEFAULT_SPARSITY),
                              criterion=str(criterion)).scope
    except ConfigError:
        return "layer"


def granularity_family(granularity: str) -> str:
    """``"channel"`` for structured granularities (shapes shrink), ``"mask"`` for the others."""
    return "channel" if granularity in STRUCTURED else "mask"


class PruneConfig(_Section):
    """What is cut and how much.

    Masks (``granularity`` ``weight`` or ``neuron``, the options of ``prunekit.sparsify``):
    exactly one of ``sparsity``, ``threshold``, ``percentile`` and ``std_k``, or
    ``pattern`` alone ("2:4"); with none of them, ``sparsity`` is the quick start's 0.9.

    Channels (``granularity: channel``, the options of ``prunekit.prune``): the network
    is rebuilt smaller. ``ratio`` (fraction of each group's channels, default 0.5) or
    ``target`` (``{macs: f}`` / ``{params: f}``, the fraction to remove), ``criterion``
    among the group criteria, ``scope`` ``layer`` or ``global``, ``max_ratio``,
    ``round_to``, ``ignore`` (module name patterns whose outputs keep their size).

    ``protect_output`` keeps the classifier (the last prunable layer) whole: no weight
    of it is masked, and with channels its inputs are not cut either.
    """

    sparsity: Float | None = Field(None, ge=0, lt=1)
    threshold: Float | None = Field(None, ge=0)
    percentile: Float | None = Field(None, ge=0, lt=100)
    std_k: Float | None = None
    criterion: str = "magnitude"
    scope: str = "layer"
    granularity: Literal["weight", "neuron", "channel"] = "weight"
    pattern: str | None = None
    exclude: list[str] | None = None
    ratio: Float | None = Field(None, ge=0, lt=1)
    target: TargetConfig | None = None
    ignore: list[str] | None = None
    max_ratio: Float | None = Field(None, gt=0, lt=1)
    round_to: Int | None = Field(None, ge=1)
    protect_output: Bool = False
    calibration_batches: Int | None = Field(None, ge=1)
    method: str | None = None
    owl: Bool = False

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return _registry_name("scope", value, list_scopes())

    @field_validator("method")
    @classmethod
    def _method(cls, value: str | None) -> str | None:
        return None if value is None else _registry_name("method", value, list_methods())

    @field_validator("pattern")
    @classmethod
    def _n_of_m(cls, value: str | None) -> str | None:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value) if value is not None else None
        if value is not None and not (match and 0 < int(match[1]) < int(match[2])):
            raise ValueError(f"expected 'N:M' with 0 < N < M, such as '2:4', got {value!r}")
        return value if match is None else f"{int(match[1])}:{int(match[2])}"

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Fill the family's defaults (criterion, scope, ...) and the default amount."""
        if not isinstance(data, dict):
            return data
        family = granularity_family(str(data.get("granularity", "weight")))
        data = {**_FAMILY_DEFAULTS[family], **{k: v for k, v in data.items() if v is not None}}
        if family == "mask" and "scope" not in data:  # the criterion's own, as in sparsify
            data["scope"] = _mask_scope(data["criterion"])
        if family == "mask" and not any(k in data for k in (*SELECTORS, "pattern")):
            data["sparsity"] = DEFAULT_SPARSITY
        if family == "channel" and "ratio" not in data and "target" not in data:
            data["ratio"] = DEFAULT_RATIO
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        family = granularity_family(self.granularity)
        other, own = (CHANNEL_ONLY, "mask") if family == "mask" else (MASK_ONLY, "channel")
        for key in other:
            if getattr(self, key) not in (None, []):
                raise KeyProblem(key, _wrong_family(key, self.granularity, own))
        self._check_criterion(family)
        if family == "channel":
            return self._check_channel()
        given = [key for key in (*SELECTORS, "pattern") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(SELECTORS)} or pattern, "
                f"not {' and '.join(given) or 'none'}"
            )
        return self

    def _check_criterion(self, family: str) -> None:

        names = list_criteria(kind="group" if family == "channel" else "mask")
        try:
            _registry_name("criterion", self.criterion, names, plural="criteria")
        except ValueError as err:
            raise KeyProblem("criterion", f"{err} (granularity {self.granularity})") from None

    def _check_channel(self) -> PruneConfig:
        if self.ratio is not None and self.target is not None:
            raise KeyProblem("target", "give either ratio or target, not both")
        return self

    @model_validator(mode="after")
    def _the_verbs_accept_it(self) -> PruneConfig:
        """The section is valid when the verb's own config accepts it: one set of rules."""
        if self.owl and self.method is None:
            raise KeyProblem("owl", "owl sets per-block sparsities of a one-shot cut; give "
                             "prune.method (wanda, sparsegpt or magnitude) too")
        try:
            if self.method is not None:
                self.oneshot_config(quiet=True)
            elif self.structured:
                self.plan_config(seed=0)
            else:
                self.sparsify_config(seed=0)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self

    def oneshot_config(self, *, quiet: bool) -> OneShotConfig:
        """The :class:`~prunekit.OneShotConfig` of a ``method`` section (``pk.oneshot``:
        block by block, from calibration batches)."""
        key, value = self.amount
        if key not in ("sparsity", "pattern"):
            raise ConfigError(f"prune.method {self.method!r} takes sparsity or pattern, not {key}")
        return OneShotConfig(method=self.method, **{key: value},
                             allocation="owl" if self.owl else "uniform",
                             exclude=tuple(self.exclude or ()), quiet=quiet)

    def sparsify_config(self, *, seed: int, criterion: str | None = None) -> SparsifyConfig:
        """The :class:`~prunekit.SparsifyConfig` this mask section spells."""
        key, value = self.amount
        return SparsifyConfig(
            amount=amount_of(**{key: value}), criterion=criterion or self.criterion,
            scope=self.scope, granularity=self.granularity, ignore=tuple(self.exclude or ()),
            protect_output=self.protect_output,
            calibration=Calibration(batches=self.calibration_batches), seed=seed)

    def plan_config(self, *, seed: int, criterion: str | None = None,
                    ignore: tuple[str, ...] = ()) -> PlanConfig:
        """The :class:`~prunekit.PlanConfig` this channel section spells; ``ignore`` adds
        names found on the model (heads kept whole, the classifier's feeders)."""
        key, value = self.amount
        amount = {"ratio": value} if key == "ratio" else {"budget": Budget(key, value)}
        return PlanConfig(**amount, criterion=criterion or self.criterion, scope=self.scope,
                          max_ratio=self.max_ratio, round_to=self.round_to,
                          ignore=(*ignore, *(self.ignore or ())),
                          calibration=Calibration(batches=self.calibration_batches), seed=seed)

    @property
    def structured(self) -> bool:
        """Whether this cut rebuilds the network smaller (channel granularity)."""
        return granularity_family(self.granularity) == "channel"

    @property
    def amount(self) -> tuple[str, Any]:
        """(key, value) of how much is cut: ``("sparsity", 0.9)``, ``("macs", 0.5)`` ..."""
        if self.target is not None:
            return self.target.key, getattr(self.target, self.target.key)
        for key in (*SELECTORS, "pattern", "ratio"):
            if getattr(self, key) is not None:
                return key, getattr(self, key)
        raise AssertionError("a validated prune section always has an amount")

    def with_amount(self, key: str, value: float) -> PruneConfig:
        """A copy that cuts ``value`` of ``key`` (``sparsity``, ``ratio``, ``macs``, ``params``)."""
        cleared = dict.fromkeys((*SELECTORS, "pattern", "ratio", "target"))
        data = {**self.model_dump(), **cleared}
        if key in TARGET_KEYS:
            data["target"] = {key: value}
        else:
            data[key] = value
        return PruneConfig.model_validate(data)


def _wrong_family(key: str, granularity: str, family: str) -> str:
    """Why ``key`` does not apply to ``granularity``, and the key to use instead."""
    if family == "mask":
        return (
            f"{key} is an option of structured pruning (granularity channel); granularity "
            f"{granularity} masks weights: use sparsity / threshold / percentile / std_k / "
            "pattern and exclude"
        )
    return (
        f"{key} is an option of masks (granularity weight or neuron); granularity {granularity} "
        "removes channels: use ratio or target {macs: f} / {params: f}, and ignore"
    )


# --- the schedule: when to cut ------------------------------------------------------------


class OneShotSchedule(_Section):
    """Cut once after the baseline, then recover and fine-tune (the default)."""

    kind: Literal["oneshot"] = "oneshot"


class GradualSchedule(_Section):
    """Prune gradually during fine-tuning (``prunekit.Pruner``): AGP or polynomial decay.

    ``start`` and ``end`` are fine-tuning epochs (fractions allowed): the sparsity rises
    from ``initial`` at ``start`` to the prune section's sparsity at ``end``, with a cut
    every ``frequency`` optimizer steps (Zhu & Gupta 2017).
    """

    kind: Literal["gradual"]
    curve: Literal["agp", "polynomial"] = "agp"
    exponent: Float | None = Field(None, gt=0)
    initial: Float = Field(0.0, ge=0, lt=1)
    start: Float = Field(0.0, ge=0)
    end: Float = Field(gt=0)
    frequency: Int = Field(10, ge=1)

    @model_validator(mode="after")
    def _shape(self) -> GradualSchedule:
        if self.end <= self.start:
            raise KeyProblem("end", f"epoch {self.end} must come after start ({self.start})")
        if self.curve == "agp" and self.exponent not in (None, 3.0):
            raise KeyProblem("exponent", "agp is cubic by definition; use curve: polynomial")
        return self


class IterativeSchedule(_Section):
    """Rounds of cut then fine-tune (``prunekit.schedules.prune_iteratively``).

    Round ``k`` of ``rounds`` cuts to ``1 - (1 - s)^(k / rounds)`` (``geometric``: the
    same fraction of what is left each round) or ``s * k / rounds`` (``linear``), ``s``
    being the prune section's amount; each round is followed by recovery and the
    ``finetune`` section. With ``floor``, the first round whose accuracy on the
    validation split (``data.val_fraction``) falls below it is undone and the run stops.
    """

    kind: Literal["iterative"]
    rounds: Int = Field(3, ge=1)
    spacing: Literal["geometric", "linear"] = "geometric"
    floor: Float | None = Field(None, ge=0, le=1)


class SurgerySchedule(_Section):
    """Dynamic network surgery during fine-tuning: masks prune and splice back.

    Guo, Yao & Chen 2016 (``prunekit.schedules.Surgery``): per-layer thresholds from the
    prune section's sparsity, ``margin`` between the prune and splice thresholds,
    revision probability ``(1 + gamma * t) ** -power`` every ``frequency`` steps, until
    epoch ``stop`` of fine-tuning (default: its end). Then the masks are settled at
    exactly the target sparsity (the largest weights of each layer, spliced ones
    included) and frozen; the rest of fine-tuning trains with them fixed.
    """

    kind: Literal["surgery"]
    margin: Float = Field(0.2, ge=0)
    gamma: Float = Field(1e-4, ge=0)
    power: Float = Field(1.0, ge=0)
    frequency: Int = Field(1, ge=1)
    stop: Float | None = Field(None, gt=0)


class LotterySchedule(_Section):
    """Lottery ticket: iterative magnitude pruning with weight rewinding.

    Frankle & Carbin 2019 (``prunekit.schedules.lottery_ticket``): each round prunes
    ``rate`` of the remaining weights, rewinds the survivors to the baseline's weights
    after ``rewind`` optimizer steps (0: the initialization) and trains again with the
    ``train`` section, until the prune section's sparsity; then ``finetune`` runs.
    """

    kind: Literal["lottery"]
    rate: Float = Field(0.2, gt=0, lt=1)
    rewind: Int = Field(0, ge=0)


# kind -> section; the pipeline has one runner per kind (prunekit.run.stages).
SCHEDULE_KINDS: dict[str, type[_Section]] = {
    "oneshot": OneShotSchedule,
    "gradual": GradualSchedule,
    "iterative": IterativeSchedule,
    "surgery": SurgerySchedule,
    "lottery": LotterySchedule,
}
# Schedules that cut at discrete moments, after which reconstruction and BN recalibration help.
DISCRETE_CUTS = ("oneshot", "iterative")


def _schedule_kind(value: Any) -> str | None:
    kind = value.get("kind", "oneshot") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in SCHEDULE_KINDS else None


ScheduleConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in SCHEDULE_KINDS.items())],  # noqa: UP007
    Discriminator(
        _schedule_kind,
        custom_error_type="schedule_kind",
        custom_error_message="unknown schedule kind",
    ),
]


# --- recovery and sparse training ---------------------------------------------------------


class DistillConfig(_Section):
    """Distil from the dense baseline while fine-tuning (Hinton et al. 2014)."""

    temperature: Float = Field(4.0, gt=0)
    alpha: Float = Field(0.9, ge=0, le=1)


class ReconstructConfig(_Section):
    """Least-squares reconstruction of each layer's outputs right after a cut (ThiNet)."""

    batches: Int = Field(8, ge=1)
    ridge: Float = Field(1e-4, ge=0)


class BNRecalibrationConfig(_Section):
    """Recompute batch-norm statistics on training batches after a cut."""

    batches: Int = Field(20, ge=1)
    mode: str = "exact"

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:

        return _registry_name("mode", value, list_bn_modes())


class RecoveryConfig(_Section):
    """Recovery after each cut, in this order: ``reconstruct``, ``bn_recalibration``,
    then fine-tuning, which distils from the dense model when ``distill`` is given.
    A method is on when its section is present (``bn_recalibration: {}`` for defaults).
    """

    reconstruct: ReconstructConfig | None = None
    bn_recalibration: BNRecalibrationConfig | None = None
    distill: DistillConfig | None = None


class PenaltyConfig(_Section):
    """Sparse training before the cut: a group penalty added to the loss.

    ``kind`` ``bn_scale`` (network slimming, Liu et al. 2017) or ``group_lasso`` (Wen et
    al. 2016), times ``strength``. With ``epochs: 0`` the penalty joins the baseline
    training; otherwise an extra phase of ``epochs`` at ``lr`` (the ``train`` section's
    optimizer) follows the baseline.
    """

    kind: str = "bn_scale"
    strength: Float = Field(1e-4, ge=0)
    exclude: list[str] = Field(default_factory=list)
    epochs: Int = Field(0, ge=0)
    lr: Float = Field(0.01, gt=0)

    @field_validator("kind")
    @classmethod
    def _known_penalty(cls, value: str) -> str:

        return _registry_name("penalty", value, list_penalties(), plural="penalties")


class AllocateConfig(_Section):
    """Per-layer / per-group ratios searched under a budget before a one-shot cut
    (:func:`prunekit.allocation.allocate`); they replace the prune section's amount.

    ``kind``: uniform, global, lamp, sensitivity, greedy, hierarchical or evolutionary;
    ``budget``: e.g. ``{latency_ratio: 0.5}``, ``{latency_ms: 2.0}``, ``{macs_ratio: 0.3}``,
    ``{params: 100000}``, ``{sparsity: 0.8}`` (latency measured on this machine at
    ``batch_size`` with ``threads``); the searched kinds judge candidates on the validation
    split (``data.val_fraction``), never on the test split; with ``finetune_steps`` each
    candidate is first trained that many steps on the training split (the finetune
    section's learning rate), which ranks deep cuts far better than the score right after
    the cut (:func:`prunekit.allocation.score_after_training`); ``final_steps``
    (evolutionary, shape genes) trains each of the search's finalists (its winner, its
    runner-up, the uniform shape) that many steps before the validation score that picks
    the cut, a longer and more faithful score than the search's own; ``runtime`` (eager,
    torchscript, onnxruntime) is where a latency budget holds: the per-layer table, the dense
    network and each chosen cut are timed in it (``measure``: searches after the first, at
    most, while the cut measured whole misses the budget; default 2).
    """

    kind: str = "greedy"
    budget: dict[str, Float]
    grid: list[Float] | None = None
    round_to: Int | list[Int] = 1
    batch_size: Int = Field(1, ge=1)
    threads: Int = Field(1, ge=1)
    clock: Literal["wall", "cpu"] = "wall"
    population: Int = Field(16, ge=2)
    generations: Int = Field(10, ge=1)
    genes: Literal["shape", "grid"] = "shape"
    spread: Float = Field(1.0, gt=0, le=4)
    block_depth: Int = Field(1, ge=1)
    finetune_steps: Int = Field(0, ge=0)
    final_steps: Int = Field(0, ge=0)
    measure: Int = Field(2, ge=0)
    runtime: Literal["eager", "torchscript", "onnxruntime"] = "eager"

    @model_validator(mode="after")
    def _finalists_to_score(self) -> AllocateConfig:
        if self.final_steps and (self.kind != "evolutionary" or self.genes != "shape"):
            raise KeyProblem("final_steps", "final_steps scores an evolutionary search's "
                             "finalists (kind: evolutionary, genes: shape); kind "
                             f"{self.kind!r} with genes {self.genes!r} has none: drop it")
        return self

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return _registry_name("allocation kind", value, list_kinds())

    @property
    def needs_evaluate(self) -> bool:
        """Whether the kind judges candidates on held-out data."""
        return self.kind in NEEDS_EVALUATE


class SweepConfig(_Section):
    """Several amounts, each pruned from the same baseline and measured.

    Exactly one list: ``sparsity`` (masks), or ``ratio`` / ``macs`` / ``params``
    (channels), increasing. The prune section's amount, when given, must be one of
    them and names the point reported as ``pruned``; otherwise that is the last point.
    """

    sparsity: list[Float] | None = None
    ratio: list[Float] | None = None
    macs: list[Float] | None = None
    params: list[Float] | None = None

    @model_validator(mode="after")
    def _one_list(self) -> SweepConfig:
        given = [k for k in SWEEP_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(SWEEP_KEYS)}, not {' and '.join(given) or 'none'}"
            )
        values = self.values
        if len(values) < 2:
            raise KeyProblem(given[0], f"a sweep needs at least two values, got {values}")
        if any(not 0 <= v < 1 for v in values):
            raise KeyProblem(given[0], f"every value must be a fraction in [0, 1), got {values}")
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise KeyProblem(given[0], f"values must increase, got {values}")
        return self

    @property
    def key(self) -> str:
        """Which amount is swept: ``sparsity``, ``ratio``, ``macs`` or ``params``."""
        return next(k for k in SWEEP_KEYS if getattr(self, k) is not None)

    @property
    def values(self) -> list[float]:
        """The swept values, in order."""
        return list(getattr(self, self.key))


class MeasureConfig(_Section):
    """How cost is measured: CPU threads, timed runs per batch size, the batch sizes."""

    threads: Int = Field(2, ge=1)
    latency_runs: Int = Field(20, ge=1)
    batch_sizes: list[Annotated[Int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 64], min_length=1
    )


class OutputConfig(_Section):
    """Where the run's files go; ``--out`` wins, and the default is ``runs/<recipe name>``."""

    dir: str | None = None


class Recipe(_Section):
    """A whole run: data, model, baseline, sparse training, pruning and its schedule,
    recovery, fine-tuning, an optional sweep, measuring, output.

    ``versions`` is written by ``prunekit run`` into the resolved ``recipe.yaml`` as a
    record of the libraries used; it does not change how a recipe runs.
    """

    name: str = QUICKSTART
    seed: Int = Field(0, ge=0, lt=2**32)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    penalty: PenaltyConfig | None = None
    prune: PruneConfig = Field(default_factory=PruneConfig)
    schedule: ScheduleConfig = Field(default_factory=OneShotSchedule)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    sweep: SweepConfig | None = None
    allocate: AllocateConfig | None = None
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    task: str = "classification"
    versions: dict[str, str] | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return _registry_name("task", value, list_tasks())

    @property
    def own(self) -> bool:
        """Whether the run uses the user's own model or data (:mod:`prunekit.run.prepare`)."""
        return self.model.own or self.data.own

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                f"use letters, digits, '.', '_' or '-' only (it names the output "
                f"folder runs/<name>), got {value!r}"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _sweep_names_the_amount(cls, data: Any) -> Any:
        """With a sweep and no amount in ``prune``, the last point is the one reported."""
        if not isinstance(data, dict) or not isinstance(data.get("sweep"), dict):
            return data
        lists = [(k, v) for k, v in data["sweep"].items() if k in SWEEP_KEYS and v]
        prune = data.get("prune") or {}
        amounts = (*SELECTORS, "pattern", "ratio", "target")
        if len(lists) != 1 or not isinstance(lists[0][1], list) or not isinstance(prune, dict):
            return data
        if any(prune.get(k) is not None for k in amounts):
            return data
        key, values = lists[0]
        if not all(isinstance(v, (int, float)) and 0 <= v < 1 for v in values):
            return data  # the sweep section names the bad value
        family = granularity_family(str(prune.get("granularity", "weight")))
        if (key == "sparsity") != (family == "mask"):
            return data  # the sweep check names the mismatch
        extra = {"target": {key: values[-1]}} if key in TARGET_KEYS else {key: values[-1]}
        return {**data, "prune": {**prune, **extra}}

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        if self.train.epochs is None:
            self.train.epochs = 0 if self.model.own else 30
        for check in _RECIPE_CHECKS:
            check(self)
        return self

    def points(self) -> list[PruneConfig]:
        """The prune section of every point: the sweep's, or the prune section alone."""
        if self.sweep is None:
            return [self.prune]
        return [self.prune.with_amount(self.sweep.key, v) for v in self.sweep.values]

    @property
    def designated(self) -> int:
        """Index (in :meth:`points`) of the point reported as ``pruned``."""
        if self.sweep is None:
            return 0
        return self.sweep.values.index(self.prune.amount[1])


# --- combinations that make no sense: each check names the key to change -------------------


def _check_sweep(r: Recipe) -> None:
    if r.sweep is None:
        return
    key, family = r.sweep.key, granularity_family(r.prune.granularity)
    if (key == "sparsity") != (family == "mask"):
        use = "ratio, macs or params" if family == "channel" else "sparsity"
        raise KeyProblem(f"sweep.{key}", f"prune.granularity {r.prune.granularity} sweeps {use}")
    amount, value = r.prune.amount
    if amount != key or value not in r.sweep.values:
        where = f"prune.target.{amount}" if amount in TARGET_KEYS else f"prune.{amount}"
        raise KeyProblem(
            where,
            f"with a sweep over {key}, the prune section's amount names the point reported as "
            f"pruned: make it one of sweep.{key} {r.sweep.values}, or leave it out (the last)",
        )


def _check_schedule_fits_prune(r: Recipe) -> None:
    kind, prune = r.schedule.kind, r.prune
    if prune.structured and kind not in DISCRETE_CUTS:
        raise KeyProblem(
            "schedule.kind",
            f"schedule {kind} grows masks during training and cannot rebuild a network "
            f"smaller step by step; with prune.granularity {prune.granularity} use kind "
            "oneshot or iterative (several smaller cuts), or granularity weight",
        )
    if kind != "oneshot" and not prune.structured and prune.sparsity is None:
        key = prune.amount[0]
        raise KeyProblem(
            f"prune.{key}",
            f"schedule {kind} needs a target sparsity: give prune.sparsity instead of "
            f"prune.{key}, or use schedule kind oneshot",
        )


def _check_surgery(r: Recipe) -> None:
    if r.schedule.kind != "surgery":
        return
    wanted = {"granularity": "weight", "scope": "layer", "criterion": "magnitude"}
    for key, value in wanted.items():
        if getattr(r.prune, key) != value:
            raise KeyProblem(
                f"prune.{key}",
                f"dynamic network surgery prunes single weights by magnitude against per-layer "
                f"thresholds (Guo et al. 2016); set prune.{key}: {value}",
            )
    _needs_finetuning(r, "schedule.kind", "dynamic network surgery runs during fine-tuning")
    stop = r.schedule.stop
    if stop is not None and stop > r.finetune.epochs:
        epochs = r.finetune.epochs
        raise KeyProblem("schedule.stop", f"epoch {stop} is past the end of fine-tuning ({epochs})")


def _check_gradual(r: Recipe) -> None:
    if r.schedule.kind != "gradual":
        return
    _needs_finetuning(r, "schedule.kind", "gradual pruning runs during fine-tuning")
    if r.schedule.end > r.finetune.epochs:
        raise KeyProblem(
            "schedule.end",
            f"epoch {r.schedule.end} is past the end of fine-tuning ({r.finetune.epochs} "
            "epochs); the schedule must reach the target before fine-tuning ends",
        )


def _check_iterative(r: Recipe) -> None:
    if r.schedule.kind != "iterative" or r.schedule.floor is None:
        return
    if r.data.val_fraction == 0:
        raise KeyProblem(
            "schedule.floor",
            "the floor is checked on a validation split, never on the test split; set "
            "data.val_fraction (e.g. 0.1)",
        )


def _check_lottery(r: Recipe) -> None:
    if r.schedule.kind != "lottery":
        return
    if r.model.checkpoint is not None:
        raise KeyProblem(
            "model.checkpoint",
            "a lottery ticket rewinds to the baseline's initialization (or an early step), "
            "which a checkpoint does not hold; drop model.checkpoint to train the baseline",
        )
    if r.train.epochs == 0:
        raise KeyProblem("train.epochs", "a lottery ticket trains every round with the train "
                         "section; give it epochs > 0")


def _check_recovery(r: Recipe) -> None:
    kind = r.schedule.kind
    for key in ("reconstruct", "bn_recalibration"):
        if getattr(r.recovery, key) is not None and kind not in DISCRETE_CUTS:
            raise KeyProblem(
                f"recovery.{key}",
                f"repairs the network right after a cut; schedule {kind} has no such moment "
                "(weights keep training while the masks change); use it with kind oneshot or "
                "iterative, or drop it",
            )
    if r.recovery.distill is not None:
        _needs_finetuning(r, "recovery.distill", "distillation is the fine-tuning loss")


def _check_penalty(r: Recipe) -> None:
    if r.penalty is None or r.penalty.epochs > 0:
        return
    if r.model.checkpoint is not None or r.train.epochs == 0:
        raise KeyProblem(
            "penalty.epochs",
            "0 adds the penalty to the baseline training, but the baseline is not trained "
            "here; give penalty.epochs > 0 for an extra sparse-training phase",
        )


def _check_task(r: Recipe) -> None:
    """The task against what trains and what judges: reference networks are classifiers;
    a task without labels trains on the dense model's outputs, so it has no baseline to
    train and nothing to distil from; a floor or a judged allocation needs a score where
    higher is better."""
    task = get_task(r.task)
    if not r.own:
        if r.task != "classification":
            raise KeyProblem("task", f"task {r.task} needs your own model or data (model.source "
                             "or data.kind); the reference networks are classifiers")
        return
    if task.needs_reference and r.train.epochs and r.model.checkpoint is None:
        raise KeyProblem("train.epochs", f"task {r.task} has no labels: your model is the "
                         "dense reference and is not trained again; set train.epochs: 0 "
                         "(fine-tuning after the cut still learns from the dense model)")
    if r.recovery.distill is not None and r.task != "classification":
        how = ("fine-tuning already learns the dense model's outputs" if task.needs_reference
               else "distillation here matches class outputs")
        raise KeyProblem("recovery.distill", f"task {r.task}: {how}; drop recovery.distill")
    if not task.higher_is_better:
        if r.schedule.kind == "iterative" and r.schedule.floor is not None:
            raise KeyProblem("schedule.floor", f"a floor is the lowest score kept, but task "
                             f"{r.task} reports {task.headline} (lower is better); drop it")
        if r.allocate is not None and r.allocate.needs_evaluate:
            raise KeyProblem("allocate.kind", f"kind {r.allocate.kind} keeps the candidates "
                             f"that score highest, but task {r.task} reports {task.headline} "
                             "(lower is better); use kind uniform, global or lamp")


def _needs_finetuning(r: Recipe, key: str, why: str) -> None:
    if r.finetune.epochs == 0:
        raise KeyProblem(key, f"{why}, but finetune.epochs is 0; give it epochs > 0")


def _check_allocate(r: Recipe) -> None:
    a = r.allocate
    if a is None:
        return
    if r.schedule.kind != "oneshot" or r.sweep is not None:
        raise KeyProblem("allocate", "an allocation chooses the ratios of one cut: use "
                         "schedule.kind oneshot and no sweep")
    if a.needs_evaluate and not r.data.val_fraction:
        raise KeyProblem("allocate.kind", f"kind {a.kind} judges candidates on a validation "
                         "split, never on the test split; set data.val_fraction (e.g. 0.1) "
                         "or use kind uniform, global or lamp")
    if not r.prune.structured and any(k.startswith("latency") for k in a.budget):
        raise KeyProblem("allocate.budget", "a latency budget needs granularity channel: "
                         "masks keep every shape, so they do not change latency")


def _check_method(r: Recipe) -> None:
    """``prune.method`` (pk.oneshot) cuts once, block by block, from calibration batches."""
    if r.prune.method is None:
        return
    if r.schedule.kind != "oneshot":
        raise KeyProblem("prune.method", f"prune.method {r.prune.method!r} cuts once, block by "
                         f"block (pk.oneshot); use schedule.kind: oneshot, not "
                         f"{r.schedule.kind!r}")
    if r.allocate is not None:
        raise KeyProblem("allocate", "prune.method sets each layer's sparsity itself; remove "
                         "the allocate section")


_RECIPE_CHECKS = (
    _check_method,
    _check_sweep,
    _check_allocate,
    _check_schedule_fits_prune,
    _check_surgery,
    _check_gradual,
    _check_iterative,
    _check_lottery,
    _check_recovery,
    _check_penalty,
    _check_task,
)


# --- loading and dumping ------------------------------------------------------------


def list_recipes() -> list[str]:
    """Names of the recipes shipped with prunekit, e.g. ``["fashion_lenet300", "quickstart"]``."""
    folder = resources.files("prunekit") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(path: str | os.PathLike[str] | None = None) -> Recipe:
    """Read a recipe file (or a built-in recipe by name) into a validated :class:`Recipe`.

    Args:
        path: a YAML file; or the name of a shipped recipe (see :func:`list_recipes`);
            or None for the built-in quick start.

    Returns:
        The recipe with every default filled in. Its ``name`` is the file's ``name:``
        key, else the file name without ``.yaml``.

    Raises:
        ConfigError: the file is missing or not YAML, or a key or value is invalid; the
            message names the key path and the valid keys or choices.

    Example:
        >>> load_recipe().name
        'quickstart'
    """
    source, text = _read_source(QUICKSTART if path is None else path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"recipe {source} is not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {source} must be a mapping of sections (seed, data, model, ...), "
            f"got a {type(data).__name__}"
        )
    data.setdefault("name", Path(source).name.removesuffix(".yaml").removesuffix(".yml"))
    return parse_recipe(data, source=source)


def _read_source(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(display name, text) of a recipe file, or of a shipped recipe called ``path``."""
    file = Path(path).expanduser()
    if file.is_file():
        return str(path), file.read_text(encoding="utf-8")
    if str(path) in list_recipes():
        shipped = resources.files("prunekit") / "recipes" / f"{path}.yaml"
        return f"{path}.yaml (built in)", shipped.read_text(encoding="utf-8")
    if file.is_dir():
        raise ConfigError(f"recipe {path} is a folder; pass the path of a YAML recipe file")
    raise ConfigError(
        f"recipe file {path} does not exist; pass a YAML recipe file, one of the built-in "
        f"recipes ({', '.join(list_recipes())}), or nothing for the quick start"
    )


def parse_recipe(
    data: dict[str, Any], *, name: str | None = None, source: str = "recipe"
) -> Recipe:
    """Validate a recipe given as a dict (what ``yaml.safe_load`` returns).

    Args:
        data: the recipe's sections; missing keys take the quick start's values.
        name: the recipe's name when ``data`` has no ``name`` key.
        source: how error messages refer to the recipe (its file name).

    Raises:
        ConfigError: every invalid key or value, by key path, with the valid choices.
    """
    if name is not None and "name" not in data:
        data = {**data, "name": name}
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        if len(errors) == 1:
            raise ConfigError(f"{source}: {_describe(errors[0])}") from None
        listed = "; ".join(f"({i}) {_describe(e)}" for i, e in enumerate(errors, start=1))
        raise ConfigError(f"{source}: {len(errors)} problems: {listed}") from None


def dump_recipe(recipe: Recipe, *, versions: dict[str, str] | None = None) -> str:
    """The recipe as YAML text, every default filled in; ``load_recipe`` reads it back equal.

    Args:
        recipe: the recipe to write.
        versions: library versions to record (``prunekit._utils.versions()``).
    """
    data = recipe.model_dump(mode="json", exclude_none=True)
    if versions is not None:
        data["versions"] = {k: str(v) for k, v in versions.items()}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# --- error messages -----------------------------------------------------------------


def _describe(error: Any) -> str:
    """One sentence for one pydantic error: the key path, the problem, the valid choices."""
    loc = tuple(error["loc"])
    path = _key_path(loc) or "the recipe"
    kind = error["type"]
    problem = error.get("ctx", {}).get("error")
    if isinstance(problem, KeyProblem):
        return f"{_join(_key_path(loc), problem.key)}: {problem}"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "schedule_kind":
        return _bad_kind(path, error["input"])
    if kind == "model_type":
        keys = ", ".join(_section_at(loc).model_fields)
        return f"{path} must be a mapping with keys {keys}, got {error['input']!r}"
    if kind == "missing":
        return f"{path} is required{_kind_note(loc[:-1])}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{path} is {error['input']!r}, not a valid choice; {_choices(message, error)}"
    if kind == "value_error" and not message.startswith("Input should"):
        return f"{path}: {message}"
    return f"{path} is {error['input']!r}: {message[0].lower()}{message[1:]}"


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _choices(message: str, error: Any) -> str:
    """'did you mean ...? valid choices: ...' for a value outside a Literal."""
    expected = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
    close = difflib.get_close_matches(str(error["input"]), expected, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid choices: {', '.join(expected)}" if expected else message


def _bad_kind(path: str, value: Any) -> str:
    """The message for a schedule that is not a mapping or names an unknown kind."""
    kinds = list(SCHEDULE_KINDS)
    if not isinstance(value, dict):
        return f"{path} must be a mapping with a kind ({', '.join(kinds)}), got {value!r}"
    close = difflib.get_close_matches(str(value.get("kind")), kinds, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{path}.kind is {value.get('kind')!r}, not a valid choice; {hint}"
        f"valid choices: {', '.join(kinds)}"
    )


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """The message for a key that the section at ``loc[:-1]`` does not have."""
    keys = list(_section_at(loc[:-1]).model_fields)
    where = (_key_path(loc[:-1]) or "the top level") + _kind_note(loc[:-1])
    path = _key_path(loc)
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {path!r}; {hint}valid keys of {where}: {', '.join(keys)}"


def _kind_note(loc: tuple[Any, ...]) -> str:
    """`` (kind gradual)`` when ``loc`` leads into one member of a tagged union."""
    tag = _walk(loc)[2]
    return f" (kind {tag})" if tag else ""


def _key_path(loc: tuple[Any, ...]) -> str:
    """``prune.exclude[2]`` from ``("prune", "exclude", 2)``; union tags are left out."""
    parts = _walk(loc)[0]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The section model that a key path leads to (the Recipe itself for an empty path)."""
    return _walk(loc)[1]


def _walk(loc: tuple[Any, ...]) -> tuple[list[Any], type[BaseModel], str]:
    """Follow a pydantic error location through the sections.

    Returns the key path without the tags of tagged unions (``("schedule", "gradual",
    "end")`` is ``schedule.end``), the section the path leads to, and the last tag seen.
    """
    model: type[BaseModel] = Recipe
    parts: list[Any] = []
    members: dict[str, type[BaseModel]] = {}
    tag = ""
    for part in loc:
        if len(members) > 1 and part in members:
            model, tag, members = members[part], str(part), {}
            continue
        parts.append(part)
        field = model.model_fields.get(str(part))
        members = _sections_of(field.annotation) if field is not None else {}
        if len(members) == 1:
            model, tag = next(iter(members.values())), ""
    return parts, model, tag


def _sections_of(annotation: Any) -> dict[str, type[BaseModel]]:
    """Section models an annotation holds: ``{"": M}`` for ``M`` or ``M | None``, and
    ``{tag: M, ...}`` for a tagged union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"": annotation}
    out: dict[str, type[BaseModel]] = {}
    for arg in get_args(annotation):
        meta: list[Any] = []
        if get_origin(arg) is Annotated:
            arg, *meta = get_args(arg)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            out[next((m.tag for m in meta if isinstance(m, Tag)), "")] = arg
    return out
