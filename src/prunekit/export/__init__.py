"""Export: pruned checkpoints (JSON plan + safetensors) and, beside them, other formats."""

from .pruned import load_pruned as load_pruned
from .pruned import save_pruned as save_pruned

__all__ = ["load_pruned", "save_pruned"]
