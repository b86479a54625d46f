"""A Hugging Face ``Trainer`` callback that prunes as training goes and keeps the masks
through the trainer's checkpoints.

Example:
    >>> import prunekit as pk
    >>> from prunekit.integrations.hf import PrunekitCallback
    >>> pruner = pk.Pruner(model, pk.make_schedule("agp", final=0.8, end=500, frequency=50))
    >>> trainer = Trainer(model=model, args=args, train_dataset=train,
    ...                   callbacks=[PrunekitCallback(pruner)])
    >>> trainer.train()                                  # or resume_from_checkpoint=True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import STATE_FILE, accept_saved_masks, catch_up, check_pruner, load_state, save_state

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - exercised only without transformers
    raise ImportError("prunekit.integrations.hf needs transformers: "
                      "pip install transformers") from err

__all__ = ["STATE_FILE", "PrunekitCallback"]


class PrunekitCallback(TrainerCallback):
    """Step a prunekit pruner after every optimizer step of a ``transformers.Trainer``.

    The pruner decides when and how much (one-shot at a step, AGP, polynomial, steps for
    iterative rounds, dynamic network surgery); the callback only counts optimizer steps.
    At every checkpoint the pruner's state (masks, step, surgery's shadow weights) is
    written beside the model as ``prunekit_pruner.pt``; when training resumes from a
    checkpoint (``trainer.train(resume_from_checkpoint=...)``) it is read back before the
    first step, so the resumed run has exactly the masks of the checkpoint.

    Args:
        pruner: a :class:`prunekit.Pruner` or :class:`prunekit.schedules.Surgery` built on
            the trainer's model.
        resume_from: the checkpoint folder to read the pruner's state from on resume;
            default ``<output_dir>/checkpoint-<step>``, the folder the Trainer resumes from.
    """

    def __init__(self, pruner: Any, *, resume_from: str | Path | None = None) -> None:
        self.pruner = check_pruner(pruner)
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self._hook = accept_saved_masks(self.pruner.model)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:
            return
        folder = self.resume_from or Path(args.output_dir) / f"checkpoint-{state.global_step}"
        path = folder / STATE_FILE
        if not path.is_file():
            raise ConfigError(
                f"resuming at step {state.global_step}, but {path} does not exist, so the "
                "masks cannot be restored; resume from a checkpoint written with "
                "PrunekitCallback, or pass resume_from=<checkpoint folder>"
            )
        load_state(self.pruner, path)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        catch_up(self.pruner, state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_state(self.pruner, folder / STATE_FILE)
