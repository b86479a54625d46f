"""Progress of long library calls, through the standard ``logging`` module.

The library logs what it is doing at INFO under the ``prunekit`` logger (tracing, scoring,
dry runs, slicing) and prints nothing itself; an application shows it by configuring
``logging`` (``logging.basicConfig(level=logging.INFO)``), and ``prunekit run`` shows it
on stderr unless ``--quiet``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger("prunekit")
log.addHandler(logging.NullHandler())


@contextlib.contextmanager
def progress_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Print the library's progress lines on stderr (``prunekit: ...``) inside the block."""
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("prunekit: %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
