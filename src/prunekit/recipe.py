"""Recipes: YAML files that describe a whole ``prunekit run``, read into strict typed models.

A recipe is data. It is read with ``yaml.safe_load`` (nothing is ever evaluated) into
pydantic models that forbid unknown keys, so a typo or a wrong type fails at load time,
before any training, with one sentence that names the key path and the valid choices.
Every section is optional; what a recipe leaves out takes the value of the built-in
quick start (``prunekit run`` with no recipe).

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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

__all__ = [
    "Recipe",
    "dump_recipe",
    "list_recipes",
    "load_recipe",
    "parse_recipe",
]

QUICKSTART = "quickstart"
SELECTORS = ("sparsity", "threshold", "percentile", "std_k")
DEFAULT_SPARSITY = 0.9


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


class DataConfig(_Section):
    """Which dataset, where its files are, and the loaders' batch sizes."""

    name: str = "digits"
    data_dir: str | None = None
    batch_size: Int = Field(64, ge=1)
    eval_batch_size: Int = Field(512, ge=1)

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from .data import list_datasets

        return _registry_name("dataset", value, list_datasets())


class ModelConfig(_Section):
    """Which reference network, and optionally a trained baseline to load instead of training."""

    name: str = "lenet300"
    checkpoint: str | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from .models import list_models

        return _registry_name("model", value, list_models())


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
        from .recovery.train import list_optimizers

        return _registry_name("optimizer", value, list_optimizers())

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        from .recovery.train import list_lr_schedules

        return _registry_name("schedule", value, list_lr_schedules())


class TrainConfig(_OptimConfig):
    """Baseline training; skipped when ``model.checkpoint`` is given."""

    epochs: Int = Field(30, ge=0)
    lr: Float = Field(0.05, gt=0)
    weight_decay: Float = Field(5e-4, ge=0)


class FinetuneConfig(_OptimConfig):
    """Fine-tuning after the cut; masks keep the pruned weights at zero throughout."""

    epochs: Int = Field(30, ge=0)
    lr: Float = Field(0.02, gt=0)


class PruneConfig(_Section):
    """One-shot unstructured, neuron or N:M pruning (the options of ``prunekit.sparsify``).

    Exactly one of ``sparsity``, ``threshold``, ``percentile`` and ``std_k`` says how
    much to cut, or ``pattern`` alone ("2:4"); with none of them, ``sparsity`` is
    the quick start's 0.9.
    """

    sparsity: Float | None = Field(None, ge=0, lt=1)
    threshold: Float | None = Field(None, ge=0)
    percentile: Float | None = Field(None, ge=0, lt=100)
    std_k: Float | None = None
    criterion: str = "magnitude"
    scope: Literal["layer", "global", "lamp"] = "global"
    granularity: Literal["weight", "neuron"] = "weight"
    pattern: str | None = None
    exclude: list[str] = Field(default_factory=list)
    protect_output: Bool = False
    calibration_batches: Int = Field(8, ge=1)

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        from .importance import list_criteria

        return _registry_name("criterion", value, list_criteria(), plural="criteria")

    @field_validator("pattern")
    @classmethod
    def _n_of_m(cls, value: str | None) -> str | None:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value) if value is not None else None
        if value is not None and not (match and 0 < int(match[1]) < int(match[2])):
            raise ValueError(f"expected 'N:M' with 0 < N < M, such as '2:4', got {value!r}")
        return value if match is None else f"{int(match[1])}:{int(match[2])}"

    @model_validator(mode="before")
    @classmethod
    def _default_amount(cls, data: Any) -> Any:
        if isinstance(data, dict) and all(data.get(k) is None for k in (*SELECTORS, "pattern")):
            return {**data, "sparsity": DEFAULT_SPARSITY}
        return data

    @model_validator(mode="after")
    def _one_amount(self) -> PruneConfig:
        given = [key for key in (*SELECTORS, "pattern") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(SELECTORS)} or pattern, "
                f"not {' and '.join(given) or 'none'}"
            )
        return self


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
    """A whole run: data, model, baseline training, pruning, fine-tuning, measuring, output.

    ``versions`` is written by ``prunekit run`` into the resolved ``recipe.yaml`` as a
    record of the libraries used; it does not change how a recipe runs.
    """

    name: str = QUICKSTART
    seed: Int = Field(0, ge=0, lt=2**32)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    versions: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                f"use letters, digits, '.', '_' or '-' only (it names the output "
                f"folder runs/<name>), got {value!r}"
            )
        return value


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
        ConfigError: the first invalid key or value, by key path, with the valid choices.
    """
    if name is not None and "name" not in data:
        data = {**data, "name": name}
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {_describe(errors[0])}{more}") from None


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
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "model_type":
        keys = ", ".join(_section_at(loc).model_fields)
        return f"{path} must be a mapping with keys {keys}, got {error['input']!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{path} is {error['input']!r}, not a valid choice; {_choices(message, error)}"
    if kind == "value_error" and not message.startswith("Input should"):
        return f"{path}: {message}"
    return f"{path} is {error['input']!r}: {message[0].lower()}{message[1:]}"


def _choices(message: str, error: Any) -> str:
    """'did you mean ...? valid choices: ...' for a value outside a Literal."""
    expected = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
    close = difflib.get_close_matches(str(error["input"]), expected, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid choices: {', '.join(expected)}" if expected else message


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """The message for a key that the section at ``loc[:-1]`` does not have."""
    keys = list(_section_at(loc[:-1]).model_fields)
    where = _key_path(loc[:-1]) or "the top level"
    path = _key_path(loc)
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {path!r}; {hint}valid keys of {where}: {', '.join(keys)}"


def _key_path(loc: tuple[Any, ...]) -> str:
    """``prune.exclude[2]`` from ``("prune", "exclude", 2)``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The section model that a key path leads to (the Recipe itself for an empty path)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model
