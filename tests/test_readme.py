"""The README's examples run as written: its Python blocks, and its commands parse."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

from prunekit.run.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PYTHON = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_library_example_is_the_one_docs_your_model_runs():
    # tests/test_docs_your_model.py runs it with the real MobileNetV2 weights
    doc = (REPO / "docs" / "your-model.md").read_text()
    assert PYTHON[0] in re.findall(r"```python\n(.*?)```", doc, flags=re.S)


def test_the_verbs_example_runs_and_prints_what_it_says():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(PYTHON[1], "README.md", "exec"), {"__name__": "readme"})
    assert out.getvalue().split() == re.findall(r"print\(.*\)\s+# (\S+)", PYTHON[1])


def test_the_commands_parse():
    parser = build_parser()
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    commands = [c.split("#")[0].strip() for b in blocks for line in b.splitlines()
                for c in line.split("&&")]
    commands = [c for c in commands if c.startswith("prunekit ")]
    assert {shlex.split(c)[1] for c in commands} == {"init", "run", "report", "export"}
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])
