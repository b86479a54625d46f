"""Compress a (pruned) network: int8 quantization and Deep-Compression storage.

Example:
    >>> from prunekit.compress import quantize, share_weights, save_compressed
    >>> qmodel = quantize(model, "dynamic")                  # int8 copy
    >>> share_weights(model, bits=5); save_compressed(model, "model.pkdc")
"""

from __future__ import annotations

from .deep import decode_compressed as decode_compressed
from .deep import encode_compressed as encode_compressed
from .deep import load_compressed as load_compressed
from .deep import save_compressed as save_compressed
from .quantize import DynamicInt8Config as DynamicInt8Config
from .quantize import StaticInt8Config as StaticInt8Config
from .quantize import WeightOnlyInt8Config as WeightOnlyInt8Config
from .quantize import int8_state_dict as int8_state_dict
from .quantize import list_quantizers as list_quantizers
from .quantize import load_quantized as load_quantized
from .quantize import quantize as quantize
from .quantize import save_quantized as save_quantized
from .quantize import serialized_bytes as serialized_bytes
from .sharing import ShareConfig as ShareConfig
from .sharing import SharedWeight as SharedWeight
from .sharing import bake_sharing as bake_sharing
from .sharing import baked_state_dict as baked_state_dict
from .sharing import kmeans_1d as kmeans_1d
from .sharing import share_weights as share_weights
from .sharing import shared_layers as shared_layers

__all__ = [
    "DynamicInt8Config",
    "ShareConfig",
    "SharedWeight",
    "StaticInt8Config",
    "WeightOnlyInt8Config",
    "bake_sharing",
    "baked_state_dict",
    "decode_compressed",
    "encode_compressed",
    "int8_state_dict",
    "kmeans_1d",
    "list_quantizers",
    "load_compressed",
    "load_quantized",
    "quantize",
    "save_compressed",
    "save_quantized",
    "serialized_bytes",
    "share_weights",
    "shared_layers",
]
