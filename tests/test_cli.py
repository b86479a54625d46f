import json
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit.run.pipeline
from prunekit.run.cli import main
from prunekit.run.pipeline import RunResult
from prunekit.run.recipe import load_recipe

FAKE_METRICS = {
    "dense": {"accuracy": 0.98, "sparsity": 0.0, "size_bytes": 200_000},
    "pruned": {"accuracy": 0.97, "sparsity": 0.9, "sparse_size_bytes": 40_000},
}


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Replace the pipeline with a recorder; run in an empty working folder."""
    seen = []

    def fake_run(recipe, *, out_dir, quiet=False):
        seen.append({"recipe": recipe, "out_dir": Path(out_dir), "quiet": quiet})
        return RunResult(Path(out_dir), FAKE_METRICS, [], {}, 1.5)

    monkeypatch.setattr(prunekit.run.pipeline, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    return seen


def test_run_without_a_recipe_uses_the_quick_start(calls, capsys):
    assert main(["run"]) == 0
    (call,) = calls
    assert call["recipe"] == load_recipe(None)
    assert call["out_dir"] == Path("runs/quickstart")
    assert call["quiet"] is False
    out = capsys.readouterr().out
    assert "accuracy  98.00%" in out and "sparsity  90.0%" in out
    assert "outputs in runs/quickstart/" in out


def test_run_options_reach_the_pipeline(calls, tmp_path):
    recipe = tmp_path / "exp.yaml"
    recipe.write_text("prune:\n  sparsity: 0.7\n")
    data = str(tmp_path)  # an existing folder: a missing one is an error (test_run_user.py)
    assert main(["run", str(recipe), "--out", "elsewhere", "--quiet", "--data-dir", data]) == 0
    (call,) = calls
    assert call["recipe"].name == "exp" and call["recipe"].prune.sparsity == 0.7
    assert call["recipe"].data.data_dir == data
    assert call["out_dir"] == Path("elsewhere") and call["quiet"] is True


def test_output_dir_from_the_recipe(calls, tmp_path):
    recipe = tmp_path / "exp.yaml"
    recipe.write_text("output:\n  dir: from-recipe\n")
    assert main(["run", str(recipe)]) == 0
    assert calls[0]["out_dir"] == Path("from-recipe")


def test_built_in_recipe_by_name(calls):
    assert main(["run", "fashion_lenet300"]) == 0
    assert calls[0]["recipe"].data.name == "fashion-mnist"
    assert calls[0]["out_dir"] == Path("runs/fashion_lenet300")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prune:\n  sparsty: 0.5\n", "unknown key 'prune.sparsty'; did you mean 'sparsity'?"),
        ("prune:\n  sparsity: 1.5\n", "prune.sparsity is 1.5"),
        ("prune:\n  scope: everywhere\n", "valid scopes: global, lamp, layer, row"),
    ],
)
def test_bad_recipe_exits_2_with_one_line(calls, tmp_path, capsys, text, expected):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and expected in err
    assert err.count("\n") == 1
    assert calls == []


def test_missing_recipe_file_exits_2(calls, capsys):
    assert main(["run", "no-such-recipe.yaml"]) == 2
    err = capsys.readouterr().err
    assert "recipe file no-such-recipe.yaml does not exist" in err and err.count("\n") == 1


def test_data_error_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)
    monkeypatch.setattr("prunekit.data.datasets.FASHION_MNIST_SYSTEM_DIR", tmp_path / "none")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["run", "fashion_lenet300", "--data-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "dataset 'fashion-mnist' not found" in err and "--data-dir" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_console_script_module_bad_recipe_has_no_traceback(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  epochs: many\n")
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit.run.cli", "run", str(recipe)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("prunekit: error:") and "train.epochs" in proc.stderr


def test_real_run_prints_the_summary(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "train: {epochs: 1}\nprune: {sparsity: 0.6}\nfinetune: {epochs: 0}\n"
        "measure: {latency_runs: 1, batch_sizes: [1, 4]}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert f"accuracy {100 * metrics['pruned']['accuracy']:6.2f}%" in out
    assert "sparsity  60.0%" in out and "outputs in runs/tiny/" in out


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_inspect_reports_groups_and_bad_sources_exit_2(capsys):
    from prunekit.run.cli import main

    assert main(["inspect", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "61,706 parameters" in out and "prunable" in out
    assert main(["inspect", "nosuch:model"]) == 2
    assert "unknown model source" in capsys.readouterr().err


def test_summary_of_a_structured_sweep_shows_parameters_and_points():
    from prunekit.run.cli import _summary

    metrics = {
        "dense": {"accuracy": 0.9, "sparsity": 0.0, "size_bytes": 400_000, "params": 100_000},
        "pruned": {"accuracy": 0.89, "sparsity": 0.0, "size_bytes": 100_000,
                   "sparse_size_bytes": 110_000, "params": 25_000},
        "points": [{}, {}],
    }
    text = _summary(metrics, Path("runs/x"), 2.0)
    assert "params 100,000" in text and "params 25,000" in text
    assert "size     97.7 KiB\n" in text  # the dense encoding of the smaller network
    assert "sparsity" not in text  # a network rebuilt smaller has no zeros to report
    assert "sweep: 2 points" in text


def test_export_rebuilds_a_structured_run_and_checks_it_in_onnxruntime(tmp_path, capsys,
                                                                       monkeypatch):
    pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime onnxscript")
    import numpy as np
    import onnxruntime as ort
    import torch

    from prunekit.run import load_recipe
    from prunekit.run.prepare import prepare

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: {name: lenet5}\ntrain: {epochs: 1}\n"
        "prune: {granularity: channel, ratio: 0.5}\nfinetune: {epochs: 0}\n"
        "measure: {latency_runs: 1, batch_sizes: [1]}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(recipe), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", "runs/tiny", "--quiet"]) == 0
    assert "wrote runs/tiny/pruned.onnx" in capsys.readouterr().out
    # the file computes what the run's pruned network computes
    prepared = prepare(load_recipe("runs/tiny/recipe.yaml"), quiet=True)
    import prunekit as pk
    pruned = pk.load_pruned(prepared.model, "runs/tiny/plan.json", "runs/tiny/pruned.safetensors")
    x = prepared.example
    session = ort.InferenceSession("runs/tiny/pruned.onnx", providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = pruned.eval()(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert main(["export", str(tmp_path)]) == 2  # no run there: one clear line
    assert "has no recipe.yaml" in capsys.readouterr().err


def test_groups_left_whole_are_named_in_the_summary_and_the_report():
    from prunekit.run.cli import _summary
    from prunekit.run.report import _structure_section

    cut = {"groups_cut": 1, "units_removed": 4, "params_before": 100, "params_after": 60,
           "macs_before": 1000, "macs_after": 600, "groups": [{"name": "a", "size": 8,
                                                                  "kept": 4}],
           "verify": {"ok": True, "max_abs_diff": 0.0, "message": "ok"},
           "left_whole": {"blocks.0.attn.qkv.weight:0[heads]":
                          "left whole because its cut fails the dry run: regroups heads"}}
    metrics = {"dense": {"accuracy": 0.9, "sparsity": 0.0, "size_bytes": 400, "params": 100},
               "pruned": {"accuracy": 0.9, "sparsity": 0.0, "size_bytes": 240, "params": 60},
               "run": {"cuts": [cut]}}
    text = _summary(metrics, Path("runs/x"), 1.0)
    assert "left whole: 1 prunable groups (blocks.0.attn.qkv.weight:0[heads])" in text
    section = _structure_section([cut])
    assert "Prunable groups left whole" in section and "regroups heads" in section
    del cut["left_whole"]
    assert "left whole" not in _summary(metrics, Path("runs/x"), 1.0)
    assert "Prunable groups left whole" not in _structure_section([cut])
