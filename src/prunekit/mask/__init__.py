"""Masks that keep pruned weights exactly zero through training and state-dict round trips."""

from ._mask import SUFFIX as SUFFIX
from ._mask import attach_mask as attach_mask
from ._mask import bake as bake
from ._mask import enforce as enforce
from ._mask import get_mask as get_mask
from ._mask import masked_params as masked_params
from ._mask import pass_gradients as pass_gradients
from ._mask import remove_mask as remove_mask

__all__ = [
    "SUFFIX",
    "attach_mask",
    "bake",
    "enforce",
    "get_mask",
    "masked_params",
    "pass_gradients",
    "remove_mask",
]
