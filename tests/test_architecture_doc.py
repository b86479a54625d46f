"""The Python blocks of docs/architecture.md run as written and print what they say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import prunekit as pk

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_its_examples():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("block", BLOCKS, ids=["criterion", "configs"])
def test_block_runs_and_prints_what_its_comments_say(block):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(DOC), "exec"), {})
    finally:
        pk.importance.criteria._CRITERIA._items.pop("abs_cubed_example", None)
    promised = re.findall(r"print\(.*\)\s+# (\S+)", block)
    assert out.getvalue().split() == promised
