"""Export: pruned checkpoints (JSON plan + safetensors) and, beside them, other formats."""

from .onnx import OnnxReport as OnnxReport
from .onnx import export_onnx as export_onnx
from .pruned import load_pruned as load_pruned
from .pruned import save_pruned as save_pruned

__all__ = ["OnnxReport", "export_onnx", "load_pruned", "save_pruned"]
