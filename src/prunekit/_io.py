"""Atomic file output (a file or folder either appears complete or not at all), and
reading an encoded file back with errors that name it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import DataError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it into place on success.

    An exception (or an interrupted process) leaves at most a hidden ``.tmp`` file,
    never a file at ``path`` that looks complete but is not.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staging(directory: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary folder beside ``directory`` that replaces it when the block succeeds
    (and is deleted when it fails): a folder written in it appears whole or not at all."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        yield tmp
        old = None
        if target.exists():
            old = tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent)
            os.replace(target, Path(old) / "x")
        os.replace(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


TIED_KEY = "prunekit.tied"


def save_safetensors(
    path: str | os.PathLike[str], tensors: dict, metadata: dict | None = None
) -> None:
    """Save a dict of tensors as safetensors, atomically (contiguous CPU copies are made).

    Tied tensors (two names for the same memory, as a language model's embedding and
    output layer) are stored once; the other names are listed in the metadata under
    ``prunekit.tied`` and :func:`load_safetensors` gives them back.
    """
    from safetensors.torch import save

    kept, tied = dedupe_tied(tensors)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in kept.items()}
    meta = dict(metadata or {})
    if tied:
        meta[TIED_KEY] = json.dumps(tied)
    write_bytes(path, save(flat, metadata=meta or None))


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def dedupe_tied(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop names that alias an earlier tensor exactly; return (kept, alias -> kept name)."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in tensors.items():
        key = _storage_key(t)
        if t.numel() and key in first:
            aliases[name] = first[key]
        else:
            first.setdefault(key, name)
            kept[name] = t
    return kept, aliases


def unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, with a private copy of any that shares memory with another."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        shared = t.numel() > 0 and ptr in seen
        seen.add(ptr)
        out[name] = t.clone() if shared else t.contiguous()
    return out


def load_safetensors(path: str | os.PathLike[str]) -> dict:
    """Read a safetensors file as a dict of CPU tensors, tied names restored (see
    :func:`save_safetensors`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = load_file(os.fspath(path), device="cpu")
    with safe_open(os.fspath(path), framework="pt") as f:
        tied = json.loads((f.metadata() or {}).get(TIED_KEY, "{}"))
    for alias, name in tied.items():
        out[alias] = out[name]
    return out


def read_decoded(path: str | os.PathLike[str], what: str, decode: Callable[[bytes], Any]) -> Any:
    """``decode`` of the bytes of ``path``; an unreadable file or a ``DataError`` from
    ``decode`` becomes a ``DataError`` that names the file (``what``: the kind of file)."""

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        return decode(raw)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
