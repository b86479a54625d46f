"""Training-loop integrations: drive any prunekit schedule from a trainer you already use.

- :mod:`prunekit.integrations.hf`: ``PrunekitCallback`` for Hugging Face ``Trainer``.
- :mod:`prunekit.integrations.lightning`: ``PrunekitCallback`` for PyTorch Lightning.

Each takes a stateful pruner (:class:`prunekit.Pruner` with a one-shot, AGP, polynomial
or step schedule, or :class:`prunekit.schedules.Surgery` for dynamic network surgery),
steps it after every optimizer step, and keeps its masks (and surgery's shadow weights)
through the trainer's own checkpoints, so a resumed run has the same masks. The
trainer libraries are imported only when one of these modules is imported.
"""

from __future__ import annotations
