"""``prunekit init``: a commented starting recipe for your own model and data.

The recipe is valid as written (a test parses every source x task combination); the
comments say what to change: the model's name or folder, the checkpoint, the data's
folder, how much to cut.

Example:
    >>> text = init_recipe(source="torchvision", task="classification")
    >>> parse_recipe(yaml.safe_load(text)).model.source
    'torchvision'
"""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["INIT_SOURCES", "INIT_TASKS", "init_recipe"]

_MODELS = {
    "torchvision": """model:
  source: torchvision          # torchvision.models.list_models() names them all
  name: resnet18
  num_classes: {classes}             # the classes of YOUR head
  # checkpoint: weights.pth    # a state dict (.pt/.pth, read weights_only) or .safetensors
  # new_head: true             # load a checkpoint with another class count, fresh head
""",
    "timm": """model:
  source: timm                 # timm.list_models('resnet*') names them
  name: resnet18
  num_classes: {classes}
  # checkpoint: weights.safetensors
""",
    "transformers": """model:
  source: transformers
  path: my-model               # a folder written by save_pretrained (config.json + weights)
  auto: {auto}
""",
    "python": """model:
  python: my_package.nets:build    # a function returning the nn.Module; importable
  kwargs: {{}}                     # its keyword arguments
  # checkpoint: weights.pth
""",
}

_DATA = {
    "image": """data:
  kind: image-folder           # images/train/<class>/*.png and images/val/<class>/*.png
  root: images
  transforms: [{{resize: 256}}, {{center_crop: 224}}, {{normalize: imagenet}}]
  batch_size: 32
  eval_batch_size: 64
  # test_samples: 500          # evaluate on a seeded subset to keep runs short
""",
    "text": """data:
  kind: hf-dataset             # a DatasetDict saved with save_to_disk
  path: my-dataset
  text_column: text
  max_length: 128
  batch_size: 16
  eval_batch_size: 32
""",
    "lm": """data:
  kind: text                   # plain text files (a file, a folder, or a list)
  train: corpus/train.txt
  test: corpus/test.txt
  seq_len: 128
  max_tokens: 32768
  eval_batch_size: 8
""",
}

_TASKS = {
    "classification": "classification   # accuracy, precision, recall, F1 (needs labels)",
    "agreement": "agreement        # no labels: top-1 agreement with the dense model",
    "embeddings": "embeddings       # cosine of each embedding to the dense model's",
    "language-modelling": "language-modelling  # perplexity of next-token prediction",
}

INIT_SOURCES = tuple(_MODELS)
INIT_TASKS = tuple(_TASKS)


def _data_for(source: str, task: str) -> str:
    if task == "language-modelling":
        return "lm"
    return "text" if source == "transformers" else "image"


def _auto_for(task: str) -> str:
    return {"classification": "sequence-classification", "agreement": "sequence-classification",
            "language-modelling": "causal-lm"}.get(task, "model")


def init_recipe(*, source: str = "torchvision", task: str = "classification",
                name: str = "my-model") -> str:
    """The text of a commented recipe for a model ``source`` and a ``task``.

    Raises:
        ConfigError: an unknown source or task (the message lists the valid ones).
    """
    if source not in _MODELS:
        raise ConfigError(f"unknown source {source!r}; valid: {', '.join(INIT_SOURCES)}")
    if task not in _TASKS:
        raise ConfigError(f"unknown task {task!r}; valid: {', '.join(INIT_TASKS)}")
    structured = task in ("classification", "agreement") and source != "transformers"
    prune = ("""prune:
  granularity: channel         # channels: the network is rebuilt smaller and dense
  ratio: 0.3                   # fraction of each group's channels removed
  criterion: l2
""" if structured else """prune:
  sparsity: 0.5                # fraction of weights set to zero (masks keep shapes)
  criterion: magnitude
  scope: global
""")
    finetune = ("finetune:\n  epochs: 1                    # 0: measure the cut alone\n  lr: 0.01\n"
                if task == "classification" else
                "finetune:\n  epochs: 0                    # this task has no labels to "
                "train on\n  lr: 0.01\n")
    return "\n".join([
        f"# prunekit recipe: {source} model, task {task}.",
        "# Check it without training: prunekit run --dry-run THIS_FILE",
        "# Run it:                     prunekit run THIS_FILE --out runs/NAME",
        f"name: {name}",
        "seed: 0",
        f"task: {_TASKS[task]}",
        _MODELS[source].format(classes=10, auto=_auto_for(task)),
        _DATA[_data_for(source, task)].format(),
        prune,
        "schedule: {kind: oneshot}     # your own model is cut once; for gradual schedules in",
        "                              # your training loop see prunekit.integrations",
        finetune,
        "measure:\n  latency_runs: 10\n  batch_sizes: [1]\n",
    ])
