"""Structured pruning of pretrained Hugging Face transformers and LLMs.

- :func:`prune_width`: attention heads (key/value groups under GQA) and MLP channels,
  scored on calibration activations (``flap``, ``wanda``), with the removed units'
  contribution folded into the next layer's bias or refitted by least squares.
- :func:`rank_blocks` / :func:`remove_blocks` / :func:`prune_blocks`: whole decoder
  blocks, ranked by how little they change their input.
- :func:`prune_experts`: mixture-of-experts experts and each expert's hidden width.
- :func:`save_pretrained_pruned` / :func:`load_pretrained_pruned`: checkpoints that
  reload with ``from_pretrained`` when the cut is uniform, through a plan otherwise.

``transformers`` is imported only inside the functions that need it.
"""

from .blocks import BlockCut as BlockCut
from .blocks import BlockRanking as BlockRanking
from .blocks import prune_blocks as prune_blocks
from .blocks import rank_blocks as rank_blocks
from .blocks import remove_blocks as remove_blocks
from .export import config_describes as config_describes
from .export import load_pretrained_pruned as load_pretrained_pruned
from .export import save_pretrained_pruned as save_pretrained_pruned
from .moe import MoECut as MoECut
from .moe import moe_layers as moe_layers
from .moe import prune_experts as prune_experts
from .width import bias_switches as bias_switches
from .width import prune_width as prune_width

__all__ = [
    "BlockCut",
    "BlockRanking",
    "MoECut",
    "bias_switches",
    "config_describes",
    "load_pretrained_pruned",
    "moe_layers",
    "prune_experts",
    "prune_blocks",
    "prune_width",
    "rank_blocks",
    "remove_blocks",
    "save_pretrained_pruned",
]
