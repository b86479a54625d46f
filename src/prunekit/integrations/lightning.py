"""A PyTorch Lightning callback that prunes as training goes and keeps the masks through
Lightning's checkpoints.

Example:
    >>> import prunekit as pk
    >>> from prunekit.integrations.lightning import PrunekitCallback
    >>> pruner = pk.Pruner(module.net, pk.make_schedule("agp", final=0.8, end=500))
    >>> trainer = pl.Trainer(max_steps=1000, callbacks=[PrunekitCallback(pruner)])
    >>> trainer.fit(module, loader)                      # or ckpt_path="last.ckpt"
"""

from __future__ import annotations

from typing import Any

from ._common import accept_saved_masks, catch_up, check_pruner

try:
    from pytorch_lightning import Callback
except ImportError:  # pragma: no cover - the unified package
    try:
        from lightning.pytorch import Callback
    except ImportError as err:
        raise ImportError("prunekit.integrations.lightning needs Lightning: "
                          "pip install pytorch-lightning") from err

__all__ = ["PrunekitCallback"]


class PrunekitCallback(Callback):
    """Step a prunekit pruner after every optimizer step of a Lightning ``Trainer``.

    The pruner decides when and how much (one-shot at a step, AGP, polynomial, steps for
    iterative rounds, dynamic network surgery); the callback counts optimizer steps
    (``trainer.global_step``, so gradient accumulation is respected). The pruner's state
    is saved inside every Lightning checkpoint (``checkpoint["callbacks"]``); on
    ``trainer.fit(..., ckpt_path=...)`` the saved masks are attached while the weights are
    loaded (a strict load accepts them) and the pruner's step and state come back.

    Args:
        pruner: a :class:`prunekit.Pruner` or :class:`prunekit.schedules.Surgery` built on
            the LightningModule's network (or a part of it).
    """

    def __init__(self, pruner: Any) -> None:
        self.pruner = check_pruner(pruner)
        self._hook = accept_saved_masks(self.pruner.model)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        catch_up(self.pruner, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state_dict["pruner"])
