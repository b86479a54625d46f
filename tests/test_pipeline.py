import json
import os

import pytest
import torch
from safetensors.torch import load_file

import prunekit._io
import prunekit._stages
import prunekit.pipeline
from prunekit.errors import ConfigError
from prunekit.measure import load_sparse
from prunekit.pipeline import OUTPUT_FILES, run
from prunekit.recipe import load_recipe, parse_recipe
from prunekit.report import SWEEP_CHARTS

# What a one-shot, unstructured run without a sweep writes.
MASK_RUN_FILES = tuple(n for n in OUTPUT_FILES if n not in ("plan.json", *SWEEP_CHARTS.values()))
DESIGN_KEYS = {"accuracy", "f1_macro", "params", "nonzero_params", "macs", "latency_ms",
               "size_bytes"}
MORE_KEYS = {"precision_macro", "recall_macro", "effective_macs", "latency_ms_batch8",
             "sparse_size_bytes", "sparsity"}


def tiny(**sections) -> dict:
    """A recipe that runs in seconds: digits, LeNet-300-100, 2 + 1 epochs, 50% sparsity."""
    base = {
        "name": "tiny",
        "seed": 0,
        "train": {"epochs": 2, "lr": 0.05},
        "prune": {"sparsity": 0.5},
        "finetune": {"epochs": 1, "lr": 0.01},
        "measure": {"latency_runs": 2, "batch_sizes": [1, 8]},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run(parse_recipe(tiny()), out_dir=out, quiet=True)


def test_writes_every_output_file(finished):
    names = sorted(p.name for p in finished.out_dir.iterdir())
    assert names == sorted(MASK_RUN_FILES)  # no temp files left behind
    assert set(finished.files) == set(MASK_RUN_FILES)


def test_metrics_json_has_the_design_keys(finished):
    metrics = json.loads((finished.out_dir / "metrics.json").read_text())
    assert set(metrics) == {"dense", "pruned", "run"}
    for side in (metrics["dense"], metrics["pruned"]):
        assert DESIGN_KEYS | MORE_KEYS <= set(side)
        assert 0.0 <= side["accuracy"] <= 1.0
    assert metrics == json.loads(json.dumps(finished.metrics))


def test_pruned_sparsity_meets_the_target(finished):
    dense, pruned = finished.metrics["dense"], finished.metrics["pruned"]
    assert dense["sparsity"] == 0.0
    assert abs(pruned["sparsity"] - 0.5) <= 0.01
    assert pruned["params"] == dense["params"]
    assert pruned["nonzero_params"] < 0.6 * dense["nonzero_params"]
    assert pruned["effective_macs"] < dense["effective_macs"] == dense["macs"]
    assert pruned["accuracy"] > 0.5  # 10 classes: far above chance after 2 + 1 epochs


def test_saved_weights_are_the_pruned_model(finished):
    state = load_file(finished.out_dir / "pruned.safetensors")
    assert not any(key.endswith("_mask") for key in state)  # baked
    rows = {row["name"]: row for row in finished.layers}
    for name, row in rows.items():
        assert int(torch.count_nonzero(state[name])) == row["nonzero_params"]
        assert list(state[name].shape) == row["shape"]
    sparse = load_sparse(finished.out_dir / "pruned.sparse.safetensors")
    assert sparse.keys() == state.keys()
    assert all(torch.equal(sparse[k], state[k]) for k in state)
    weights = sum(row["params"] for row in rows.values())
    zeros = sum(row["params"] - row["nonzero_params"] for row in rows.values())
    assert zeros / weights == pytest.approx(finished.metrics["pruned"]["sparsity"])


def test_recipe_yaml_is_the_resolved_recipe_with_versions(finished):
    saved = load_recipe(finished.out_dir / "recipe.yaml")
    assert saved.versions["torch"] == torch.__version__
    assert "prunekit" in saved.versions
    assert saved.model_copy(update={"versions": None}) == parse_recipe(tiny())


def test_report_has_the_tables_and_the_chart(finished):
    text = (finished.out_dir / "report.md").read_text()
    assert "| accuracy |" in text and "| `fc1.weight` | 300 x 64 |" in text
    assert "![per-layer sparsity](sparsity.png)" in text
    assert f"prunekit run {finished.out_dir / 'recipe.yaml'}" in text
    assert (finished.out_dir / "sparsity.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_reuses_the_baseline_and_repeats_the_run(finished, tmp_path, monkeypatch):
    calls = []
    original = prunekit._stages.train
    monkeypatch.setattr(prunekit._stages, "train", lambda *a, **k: calls.append(k["desc"])
                        or original(*a, **k))
    checkpoint = str(finished.out_dir / "dense.safetensors")
    again = run(parse_recipe(tiny(model={"checkpoint": checkpoint})), out_dir=tmp_path, quiet=True)
    assert calls == ["fine-tune"]  # no baseline training
    for side in ("dense", "pruned"):  # same seed, same weights: the same predictions
        for key in ("accuracy", "f1_macro", "nonzero_params", "sparsity"):
            assert again.metrics[side][key] == finished.metrics[side][key]


def test_checkpoint_of_another_model_is_a_config_error(finished, tmp_path):
    checkpoint = str(finished.out_dir / "dense.safetensors")
    (tmp_path / "metrics.json").write_text("{}")  # an earlier run's, kept on a rejected recipe
    recipe = parse_recipe(tiny(model={"name": "lenet5", "checkpoint": checkpoint}))
    with pytest.raises(ConfigError, match="does not fit model 'lenet5'"):
        run(recipe, out_dir=tmp_path, quiet=True)
    assert (tmp_path / "metrics.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="does not exist"):
        run(parse_recipe(tiny(model={"checkpoint": str(tmp_path / "x.safetensors")})),
            out_dir=tmp_path, quiet=True)


def test_prune_settings_that_do_not_fit_fail_before_training(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the prune settings")

    monkeypatch.setattr(prunekit._stages, "train", no_training)
    (tmp_path / "metrics.json").write_text("{}")  # an earlier run's, kept on a rejected recipe
    recipe = parse_recipe(tiny(prune={"exclude": ["classifier"]}))
    with pytest.raises(ConfigError, match="exclude pattern 'classifier' matches no"):
        run(recipe, out_dir=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match="prune settings do not fit"):
        run(parse_recipe(tiny(prune={"sparsity": None, "pattern": "3:7"})), out_dir=tmp_path,
            quiet=True)
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_failure_while_writing_leaves_no_metrics(tmp_path, monkeypatch):
    # An earlier, finished run in the same folder.
    for name in OUTPUT_FILES:
        (tmp_path / name).write_text("old")
    real_replace = os.replace

    def interrupted(src, dst):
        if str(dst).endswith("pruned.sparse.safetensors"):
            raise KeyboardInterrupt  # killed while moving a written file into place
        real_replace(src, dst)

    monkeypatch.setattr(prunekit._io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(parse_recipe(tiny(train={"epochs": 1}, finetune={"epochs": 0})), out_dir=tmp_path,
            quiet=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["dense.safetensors", "pruned.safetensors", "recipe.yaml"]
    assert (tmp_path / "recipe.yaml").read_text() != "old"
