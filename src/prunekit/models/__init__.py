"""Reference networks: LeNet-300-100, LeNet-5, a small VGG and ResNet-20, built by name.

Every network's final classifier is the ``nn.Linear`` attribute ``fc``.

Example:
    >>> from prunekit.models import build_model
    >>> model = build_model("resnet20", input_shape=(1, 28, 28), num_classes=10)
"""

from __future__ import annotations

from .reference import CLASSIFIER as CLASSIFIER
from .reference import MODELS as MODELS
from .reference import build_model as build_model
from .reference import list_models as list_models

__all__ = ["CLASSIFIER", "MODELS", "build_model", "list_models"]
