"""One-shot, data-aware pruning of pretrained transformers and LLMs, block by block.

``pk.oneshot(model, calibration_ids, method="sparsegpt", sparsity=0.5)`` prunes every
Linear layer of a model's repeated blocks with magnitude, Wanda or SparseGPT,
unstructured or N:M, with uniform or OWL per-block sparsity; the result is masks
(``pk.bake`` makes them permanent). See docs/llm.md.
"""

from .api import OneShotResult as OneShotResult
from .api import oneshot as oneshot
from .blocks import find_blocks as find_blocks
from .config import OneShotConfig as OneShotConfig
from .methods import list_methods as list_methods
from .methods import register_method as register_method
from .owl import owl_sparsities as owl_sparsities
from .sparsegpt import sparsegpt_prune as sparsegpt_prune
from .stream import oneshot_streamed as oneshot_streamed
from .stream import perplexity_streamed as perplexity_streamed
from .text import calibration_ids as calibration_ids
from .text import evaluation_ids as evaluation_ids
from .text import perplexity as perplexity
from .text import read_texts as read_texts
from .text import split_files as split_files
from .text import text_files as text_files

__all__ = [
    "OneShotConfig",
    "OneShotResult",
    "calibration_ids",
    "evaluation_ids",
    "find_blocks",
    "list_methods",
    "oneshot",
    "oneshot_streamed",
    "owl_sparsities",
    "perplexity",
    "perplexity_streamed",
    "read_texts",
    "register_method",
    "sparsegpt_prune",
    "split_files",
    "text_files",
]
