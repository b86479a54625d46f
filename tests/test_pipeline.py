import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import prunekit._io
import prunekit.run.pipeline
import prunekit.run.stages
from prunekit.errors import ConfigError
from prunekit.measure import load_sparse
from prunekit.run.pipeline import OUTPUT_FILES, run
from prunekit.run.recipe import load_recipe, parse_recipe
from prunekit.run.report import SWEEP_CHARTS

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
    original = prunekit.run.stages.train
    monkeypatch.setattr(prunekit.run.stages, "train", lambda *a, **k: calls.append(k["desc"])
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

    monkeypatch.setattr(prunekit.run.stages, "train", no_training)
    (tmp_path / "metrics.json").write_text("{}")  # an earlier run's, kept on a rejected recipe
    recipe = parse_recipe(tiny(prune={"exclude": ["classifier"]}))
    with pytest.raises(ConfigError, match="pattern 'classifier' matches no"):
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


# --- schedules, recovery, structured cuts, penalties, sweeps ------------------------------


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every run here on one thread (see conftest's ``one_thread``)."""


def quick(**sections) -> dict:
    """``tiny`` with cheaper measuring, for the many runs below."""
    return tiny(measure={"threads": 1, "latency_runs": 1, "batch_sizes": [1]}, **sections)


def run_quick(tmp_path, **sections):
    return run(parse_recipe(quick(**sections)), out_dir=tmp_path, quiet=True)


def measured(result) -> list[list[float]]:
    return result.metrics["run"]["schedule"]["measured"]


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gradual_agp_follows_its_curve_to_the_target(tmp_path):
    from prunekit.schedules import make_schedule

    result = run_quick(tmp_path, prune={"sparsity": 0.8}, finetune={"epochs": 2},
                       schedule={"kind": "gradual", "end": 1.5, "frequency": 4})
    schedule = result.metrics["run"]["schedule"]
    curve = make_schedule(**schedule["curve"])
    assert schedule["curve"]["name"] == "agp" and schedule["steps"] == 2 * 22  # 1,347 / 64
    assert curve.sparsity_at(schedule["steps"]) == 0.8
    points = measured(result)
    assert len(points) > 5 and [s for s, _ in points] == sorted(s for s, _ in points)
    for step, value in points:  # the measured sparsity is the schedule's at every cut
        assert value == pytest.approx(curve.sparsity_at(step), abs=2e-4)
    assert result.metrics["pruned"]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert is_png(tmp_path / "schedule.png")
    assert "![schedule](schedule.png)" in (tmp_path / "report.md").read_text()


def test_iterative_rounds_reach_the_target(tmp_path):
    result = run_quick(tmp_path, prune={"sparsity": 0.8},
                       schedule={"kind": "iterative", "rounds": 3, "spacing": "linear"})
    rounds = result.metrics["run"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r["target"] for r in rounds] == pytest.approx([0.0, 0.8 / 3, 1.6 / 3, 0.8])
    assert all(r["kept"] and r["split"] == "test" for r in rounds)
    assert [r["measured"] for r in rounds] == pytest.approx([r["target"] for r in rounds],
                                                            abs=1e-4)
    assert result.metrics["pruned"]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    text = (tmp_path / "report.md").read_text()
    assert "| round | target | sparsity | accuracy (test) | kept |" in text


def test_iterative_floor_undoes_the_round_below_it_on_the_validation_split(tmp_path,
                                                                           monkeypatch):
    scores = iter([0.9, 0.8, 0.4])  # round 0, 1, 2: the second cut falls below the floor
    splits = []

    def accuracy(self, model, split):
        splits.append(split)
        return next(scores)

    monkeypatch.setattr(prunekit.run.stages.Context, "accuracy", accuracy)
    result = run_quick(tmp_path, prune={"sparsity": 0.9}, data={"val_fraction": 0.2},
                       schedule={"kind": "iterative", "rounds": 3, "floor": 0.5})
    rounds = result.metrics["run"]["rounds"]
    assert splits == ["val"] * 3
    assert [r["kept"] for r in rounds] == [True, True, False]
    first = rounds[1]["measured"]
    assert first < 0.9
    assert result.metrics["pruned"]["sparsity"] == pytest.approx(first, abs=1e-6)
    assert "no: below the floor, undone" in (tmp_path / "report.md").read_text()
    assert "269 validation" in (tmp_path / "report.md").read_text()  # 20% of 1,347


def test_structured_floor_puts_the_channels_of_the_undone_round_back(tmp_path, monkeypatch):
    import prunekit as pk
    from prunekit.models import build_model

    scores = iter([0.9, 0.8, 0.4])  # the second cut falls below the floor
    monkeypatch.setattr(prunekit.run.stages.Context, "accuracy", lambda *a: next(scores))
    result = run_quick(tmp_path, prune={"sparsity": None, "granularity": "channel",
                                        "ratio": 0.6},
                       data={"val_fraction": 0.2},
                       schedule={"kind": "iterative", "rounds": 2, "floor": 0.5})
    rounds, cuts = result.metrics["run"]["rounds"], result.metrics["run"]["cuts"]
    assert [r["kept"] for r in rounds] == [True, True, False]
    assert len(cuts) == 1  # the undone cut is not reported as part of the model
    assert result.metrics["pruned"]["params"] == cuts[0]["params_after"]
    fresh = build_model("lenet300", input_shape=(1, 8, 8), num_classes=10)
    pk.load_pruned(fresh, tmp_path / "plan.json", tmp_path / "pruned.safetensors")
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model(x))


def test_lottery_replays_the_baseline_and_reaches_the_target(tmp_path, monkeypatch):
    calls = []
    original = prunekit.run.stages.train
    monkeypatch.setattr(prunekit.run.stages, "train", lambda *a, **k: calls.append(k["desc"])
                        or original(*a, **k))
    result = run_quick(tmp_path, prune={"sparsity": 0.75, "scope": "layer"},
                       schedule={"kind": "lottery", "rate": 0.5, "rewind": 5})
    rounds = result.metrics["run"]["rounds"]
    assert [r["target"] for r in rounds] == [0.0, 0.5, 0.75]
    # round 0 is the baseline itself, replayed rather than trained again
    assert rounds[0]["accuracy"] == pytest.approx(result.metrics["dense"]["accuracy"], abs=1e-12)
    assert calls == ["baseline", "lottery round 1", "lottery round 2", "fine-tune"]
    assert result.metrics["pruned"]["sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert [p[1] for p in measured(result)] == pytest.approx([0.5, 0.75], abs=1e-4)


def test_lottery_rewind_past_the_baseline_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(prunekit.run.stages, "train", no_training)
    with pytest.raises(ConfigError, match="schedule.rewind is step 500 but the baseline trains"):
        run_quick(tmp_path, prune={"sparsity": 0.75},
                  schedule={"kind": "lottery", "rewind": 500})


def test_dynamic_network_surgery_ends_at_exactly_the_target(tmp_path):
    result = run_quick(tmp_path, prune={"sparsity": 0.85, "scope": "layer"},
                       finetune={"epochs": 2}, schedule={"kind": "surgery", "stop": 1})
    points = measured(result)
    assert points[0] == [0, pytest.approx(0.85, abs=1e-3)]
    assert points[-1] == [22, pytest.approx(0.85, abs=1e-4)]  # settled at the stop epoch
    for row in result.layers:  # per layer, as the paper's thresholds are
        assert row["sparsity"] == pytest.approx(0.85, abs=2e-3)
    assert result.metrics["pruned"]["sparsity"] == pytest.approx(0.85, abs=1e-4)


def test_structured_resnet_with_every_repair_reloads_from_plan_json(tmp_path):
    import prunekit as pk
    from prunekit.models import build_model

    result = run_quick(
        tmp_path,
        model={"name": "resnet20"},
        train={"epochs": 1},
        prune={"sparsity": None, "granularity": "channel", "ratio": 0.5,
               "protect_output": True},
        recovery={"reconstruct": {"batches": 2}, "bn_recalibration": {"batches": 4},
                  "distill": {"temperature": 2.0}},
    )
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert pruned["params"] < 0.7 * dense["params"] and pruned["macs"] < 0.7 * dense["macs"]
    (cut,) = result.metrics["run"]["cuts"]
    assert cut["verify"]["ok"] and cut["groups_cut"] > 0
    assert cut["params_before"] == dense["params"] and cut["params_after"] < dense["params"]
    (repairs,) = result.metrics["run"]["recovery"]
    assert repairs["reconstruct"]["error_after"] < repairs["reconstruct"]["error_before"]
    assert repairs["bn_recalibration"]["layers"] > 0
    assert result.model.fc.weight.shape == (10, 64)  # protect_output: the classifier whole
    fresh = build_model("resnet20", input_shape=(1, 8, 8), num_classes=10)
    pk.load_pruned(fresh, tmp_path / "plan.json", tmp_path / "pruned.safetensors")
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model(x))
    text = (tmp_path / "report.md").read_text()
    assert "## Structure" in text and "passed: zero-out equivalence holds" in text
    assert "## Recovery" in text and "relative output error" in text
    assert text.split("\n\n")[1].startswith("Removed ")


def test_structured_iterative_cuts_compose_into_one_plan(tmp_path):
    import prunekit as pk
    from prunekit.models import build_model

    result = run_quick(
        tmp_path,
        model={"name": "vgg-small"},
        prune={"sparsity": None, "granularity": "channel", "target": {"macs": 0.5}},
        schedule={"kind": "iterative", "rounds": 2},
    )
    cuts = result.metrics["run"]["cuts"]
    assert len(cuts) == 2 and all(c["verify"]["ok"] for c in cuts)
    assert cuts[0]["macs_after"] == cuts[1]["macs_before"]
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert 1 - pruned["macs"] / dense["macs"] == pytest.approx(0.5, abs=0.03)
    fresh = build_model("vgg-small", input_shape=(1, 8, 8), num_classes=10)
    pk.load_pruned(fresh, tmp_path / "plan.json", tmp_path / "pruned.safetensors")
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model(x))


@pytest.mark.parametrize("epochs", [0, 1])
def test_slimming_penalty_joins_baseline_training_or_its_own_phase(tmp_path, monkeypatch,
                                                                   epochs):
    seen = {}
    original = prunekit.run.stages.train
    monkeypatch.setattr(prunekit.run.stages, "train", lambda *a, **k: seen.update(
        {k["desc"]: k["loss_fn"]}) or original(*a, **k))
    result = run_quick(
        tmp_path,
        model={"name": "vgg-small"},
        penalty={"kind": "bn_scale", "strength": 1e-3, "epochs": epochs},
        prune={"sparsity": None, "granularity": "channel", "criterion": "bn_scale",
               "scope": "global", "ratio": 0.5},
    )
    phase = "baseline" if epochs == 0 else "sparse training (bn_scale)"
    assert set(seen) == {"baseline", "fine-tune"} | {phase}
    assert seen[phase] is not None and seen["fine-tune"] is None
    assert result.metrics["run"]["cuts"][0]["verify"]["ok"]
    assert "bn_scale penalty, strength 0.001" in (tmp_path / "report.md").read_text()


def test_sweep_writes_one_point_per_value_and_the_charts(tmp_path):
    result = run_quick(tmp_path, sweep={"sparsity": [0.3, 0.6, 0.9]},
                       prune={"sparsity": 0.6})
    points = result.metrics["points"]
    assert [p["setting"] for p in points] == [{"sparsity": v} for v in (0.3, 0.6, 0.9)]
    values = [p["pruned"]["sparsity"] for p in points]
    assert values == sorted(values) and values == pytest.approx([0.3, 0.6, 0.9], abs=1e-4)
    assert all(0 <= p["pruned"]["accuracy"] <= 1 for p in points)
    assert result.metrics["pruned"] == points[1]["pruned"]  # the designated point
    for p in points:
        folder = tmp_path / p["folder"]
        assert sorted(f.name for f in folder.iterdir()) == sorted(
            n for n in prunekit.run.pipeline.POINT_FILES if n != "plan.json")
        assert json.loads((folder / "metrics.json").read_text())["pruned"] == p["pruned"]
    state = load_file(tmp_path / "pruned.safetensors")
    assert torch.equal(state["fc1.weight"],
                       load_file(tmp_path / points[1]["folder"] / "pruned.safetensors")[
                           "fc1.weight"])
    for name in SWEEP_CHARTS.values():
        assert is_png(tmp_path / name)
    text = (tmp_path / "report.md").read_text()
    assert "## Sweep" in text and "![accuracy vs macs](accuracy_vs_macs.png)" in text


def test_structured_sweep_writes_a_plan_per_point(tmp_path):
    result = run_quick(tmp_path, model={"name": "vgg-small"},
                       prune={"sparsity": None, "granularity": "channel"},
                       sweep={"ratio": [0.25, 0.5]})
    points = result.metrics["points"]
    params = [p["pruned"]["params"] for p in points]
    assert params[0] > params[1] and result.metrics["pruned"]["params"] == params[1]
    assert all((tmp_path / p["folder"] / "plan.json").is_file() for p in points)
    assert (tmp_path / "plan.json").is_file()


def test_a_new_run_clears_an_earlier_sweep(tmp_path):
    run_quick(tmp_path, sweep={"sparsity": [0.3, 0.6]}, prune={"sparsity": 0.6},
              finetune={"epochs": 0})
    assert (tmp_path / "points").is_dir()
    run_quick(tmp_path, finetune={"epochs": 0})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(MASK_RUN_FILES)


def no_training(*args, **kwargs):
    raise AssertionError("trained before checking the recipe against the model")


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"recovery": {"bn_recalibration": {}}}, "has no batch norm to recalibrate"),
        ({"penalty": {"kind": "bn_scale"}}, "finds no groups"),
        ({"prune": {"sparsity": None, "granularity": "channel", "ignore": ["nope"]}},
         "ignore pattern 'nope' matches no module"),
        ({"sweep": {"sparsity": [0.5, 0.9]}, "prune": {"exclude": ["classifier"]}},
         "pattern 'classifier' matches no"),
        ({"data": {"train_samples": 5000}}, "data.train_samples is 5000"),
    ],
)
def test_recipes_that_do_not_fit_the_model_fail_before_training(tmp_path, monkeypatch,
                                                                 sections, expected):
    monkeypatch.setattr(prunekit.run.stages, "train", no_training)
    (tmp_path / "metrics.json").write_text("{}")  # an earlier run's, kept on a rejected recipe
    with pytest.raises(ConfigError, match=expected):
        run_quick(tmp_path, **sections)
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_data_subsets_are_seeded_and_sized(tmp_path):
    result = run_quick(tmp_path, data={"train_samples": 300, "test_samples": 100},
                       train={"epochs": 1}, finetune={"epochs": 0})
    text = (tmp_path / "report.md").read_text()
    assert "digits (300 train / 100 test" in text
    assert result.metrics["pruned"]["accuracy"] * 100 == pytest.approx(
        round(result.metrics["pruned"]["accuracy"] * 100))  # a multiple of 1/100


# --- allocation ----------------------------------------------------------------------------


def test_allocated_channel_cut_meets_its_macs_budget_and_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    result = run_quick(tmp_path, model={"name": "lenet5"},
                       data={"name": "digits", "val_fraction": 0.2},
                       prune={"granularity": "channel", "sparsity": None},
                       finetune={"epochs": 0},
                       allocate={"kind": "greedy", "budget": {"macs_ratio": 0.6},
                                 "grid": [0.25, 0.5, 0.75]})
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert pruned["macs"] <= 0.6 * dense["macs"]
    chosen = result.metrics["run"]["allocation"]
    assert chosen["kind"] == "greedy" and chosen["ratios"]
    assert set(chosen["ratios"].values()) <= {0.0, 0.25, 0.5, 0.75}
    saved = json.loads((tmp_path / "allocation.json").read_text())
    assert saved["ratios"] == chosen["ratios"] and saved["history"]
    report = (tmp_path / "report.md").read_text()
    assert "## Allocation" in report and "greedy under macs_ratio 0.6" in report
    assert all(name in report for name in chosen["ratios"])
    assert result.metrics["run"]["cuts"][0]["verify"]["ok"]


def test_evolutionary_allocation_scored_after_training_steps(tmp_path, monkeypatch):
    pytest.importorskip("pymoo", reason="pip install pymoo")
    import prunekit.recovery

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    trained, real = [], prunekit.recovery.train

    def spy(model, loader, **kw):
        if isinstance(loader, list):  # score_after_training's fixed batches
            trained.append(len(loader))
        return real(model, loader, **kw)

    monkeypatch.setattr(prunekit.recovery, "train", spy)
    result = run_quick(tmp_path, model={"name": "lenet5"},
                       data={"name": "digits", "val_fraction": 0.2},
                       prune={"granularity": "channel", "sparsity": None},
                       finetune={"epochs": 0},
                       allocate={"kind": "evolutionary", "budget": {"macs_ratio": 0.6},
                                 "population": 4, "generations": 2, "finetune_steps": 2,
                                 "final_steps": 3})
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert pruned["macs"] <= 0.6 * dense["macs"]
    saved = json.loads((tmp_path / "allocation.json").read_text())
    assert saved["kind"] == "evolutionary" and saved["history"][0]["genes"] == "shape"
    # every scored candidate was trained two steps first
    scored = [e for e in saved["history"][0]["evaluations"] if e["quality"] is not None]
    searched = [n for n in trained if n == 2]
    assert trained and set(trained) == {2, 3} and len(searched) >= len(scored) >= 1
    # then each finalist three steps, after the search, for the score that picks the cut
    finalists = saved["history"][-1]["finalists"]
    assert trained[-len(finalists):] == [3] * len(finalists) == [n for n in trained if n == 3]
    assert sum(f["kept"] for f in finalists) == 1 and finalists[0]["finalist"] == "winner"


def test_allocated_masks_meet_a_sparsity_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    result = run_quick(tmp_path, prune={"sparsity": 0.5}, finetune={"epochs": 0},
                       allocate={"kind": "global", "budget": {"sparsity": 0.7}})
    assert result.metrics["pruned"]["sparsity"] >= 0.7 - 0.01
    assert result.metrics["run"]["allocation"]["kind"] == "global"


def test_searched_allocation_without_a_validation_split_is_refused():
    with pytest.raises(ConfigError, match="allocate.kind: kind greedy judges candidates on a "
                                          "validation split"):
        parse_recipe(quick(prune={"granularity": "channel", "sparsity": None},
                           allocate={"kind": "greedy", "budget": {"macs_ratio": 0.5}}))


def test_dense_and_pruned_latencies_are_timed_side_by_side(tmp_path):
    result = run_quick(tmp_path, finetune={"epochs": 0})
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert dense["latency_ms"] > 0 and pruned["latency_ms"] > 0
    assert 0 <= pruned["latency_ms_spread"] < 100
    report = (tmp_path / "report.md").read_text()
    assert "both networks warmed, their runs interleaved" in report
    # a masked network computes as many dense MACs: any warning says it is an artifact
    assert all("measurement artifact" in w for w in pruned.get("latency_warnings", []))


def test_a_latency_budget_held_in_onnxruntime_from_a_recipe(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime onnx onnxscript")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    # 3x32x32 inputs: big enough that a cut network is faster than its session overhead
    # (LeNet-5 on 8x8 digits runs in ~12 us, where a cut can time slower than dense)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", inputs=rng.standard_normal((64, 3, 32, 32)),
             labels=rng.integers(0, 10, 64))
    images = str(tmp_path / "images.npz")
    run_quick(tmp_path, model={"name": "vgg-small"},
              data={"kind": "arrays", "train": images, "test": images},
              train={"epochs": 1}, prune={"granularity": "channel", "sparsity": None},
              finetune={"epochs": 0},
              allocate={"kind": "uniform", "budget": {"latency_ratio": 0.7},
                        "grid": [0.25, 0.5, 0.75], "clock": "cpu", "runtime": "onnxruntime",
                        "measure": 1})
    saved = json.loads((tmp_path / "allocation.json").read_text())
    assert saved["latency"]["runtime"] == "onnxruntime"
    checks = saved["latency"]["checks"]
    assert 1 <= len(checks) <= 2 and all(c["measured_dense_ms"] > 0 for c in checks)
    report = (tmp_path / "report.md").read_text()
    assert "Built and measured whole in onnxruntime at batch 1" in report
    # the per-layer table was timed in onnxruntime too, not in eager PyTorch
    tables = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "latency").glob("*.json")]
    assert [t.get("runtime") for t in tables] == ["onnxruntime"] and tables[0]["entries"]
