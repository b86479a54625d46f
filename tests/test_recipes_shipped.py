"""The recipes shipped in recipes/ (and their package-data mirror): they parse, say what
they do, cover every schedule and recovery method, and fit their models."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import prunekit
import prunekit.run.pipeline
import prunekit.run.stages
from prunekit.errors import ConfigError
from prunekit.run.recipe import SCHEDULE_KINDS, list_recipes, load_recipe, parse_recipe

TOP = Path(__file__).resolve().parents[1] / "recipes"
PACKAGED = Path(prunekit.__file__).parent / "recipes"
FASHION = [n for n in list_recipes() if n.startswith("fashion_")]


def test_both_folders_hold_the_same_recipes_byte_for_byte():
    top = sorted(p.name for p in TOP.iterdir())
    assert top == sorted(p.name for p in PACKAGED.iterdir() if p.suffix == ".yaml")
    for name in top:
        assert (TOP / name).read_bytes() == (PACKAGED / name).read_bytes(), name


@pytest.mark.parametrize("name", list_recipes())
def test_each_recipe_parses_and_explains_itself(name):
    text = (TOP / f"{name}.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("# ") and len(header) >= 3, "a comment header says what it does"
    assert re.search(r"\b(seconds|minutes?)\b", " ".join(header), re.I), "and how long"
    recipe = load_recipe(TOP / f"{name}.yaml")
    assert recipe.name == name
    assert yaml.safe_load(text)["name"] == name


def test_every_schedule_recovery_penalty_structure_and_sweep_ships():
    recipes = [load_recipe(n) for n in FASHION]
    assert {r.schedule.kind for r in recipes} == set(SCHEDULE_KINDS)
    for method in ("reconstruct", "bn_recalibration", "distill"):
        assert any(getattr(r.recovery, method) is not None for r in recipes), method
    assert any(r.penalty is not None and r.prune.structured for r in recipes)
    assert any(r.prune.structured and r.model.name == "resnet20" for r in recipes)
    assert any(r.sweep is not None for r in recipes)
    assert all(r.data.name == "fashion-mnist" for r in recipes)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every run here on one thread (see conftest's ``one_thread``)."""


def on_digits(name: str, **overrides) -> dict:
    """A shipped recipe with the data section swapped for digits and short training."""
    data = load_recipe(name).model_dump(mode="json", exclude_none=True)
    data["data"] = {"name": "digits", "val_fraction": data["data"]["val_fraction"]}
    data["train"]["epochs"] = 2
    data["measure"] = {"threads": 1, "latency_runs": 1, "batch_sizes": [1]}
    return {**data, **overrides}


def preflight(data: dict, out_dir) -> nn.Module:
    """Run the pipeline's preflight on the recipe's model; the model is returned."""
    recipe = parse_recipe(data)
    ctx = prunekit.run.pipeline._context(recipe, out_dir, quiet=True)
    model = prunekit.run.pipeline._build(ctx)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    prunekit.run.stages.preflight(model, ctx, ctx.splits.train.tensors[0][:8])
    assert [m.training for m in model.modules()] == modes
    assert model.state_dict().keys() == before.keys(), "the trial cuts ran on copies"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return model


@pytest.mark.parametrize("name", FASHION)
def test_each_fashion_recipe_fits_its_model(name, tmp_path):
    """The model-dependent checks (patterns, penalty groups, batch norms) pass, on digits,
    leave the model untouched, and reject the same recipe with a pattern that fits nothing."""
    data = on_digits(name)
    preflight(data, tmp_path / "fits")
    key = "ignore" if parse_recipe(data).prune.structured else "exclude"
    misfit = {**data, "prune": {**data["prune"], key: ["re:no_such_layer"]}}
    with pytest.raises(ConfigError, match=r"^prune settings do not fit the model: .*"
                       r"'re:no_such_layer' matches no module"):
        preflight(misfit, tmp_path / "misfit")


@pytest.mark.parametrize("name", FASHION)
def test_each_fashion_recipe_runs_on_digits(name, tmp_path):
    recipe = parse_recipe(on_digits(name))
    result = prunekit.run.pipeline.run(recipe, out_dir=tmp_path, quiet=True)
    pruned = result.metrics["pruned"]
    if recipe.prune.structured:
        assert pruned["params"] < result.metrics["dense"]["params"]
        assert all(cut["verify"]["ok"] for cut in result.metrics["run"]["cuts"])
    elif recipe.schedule.kind != "iterative":  # a floor may stop early
        layers = result.layers[:-1] if recipe.prune.protect_output else result.layers
        zeros = sum(row["params"] - row["nonzero_params"] for row in layers)
        assert zeros / sum(row["params"] for row in layers) == pytest.approx(
            recipe.prune.sparsity, abs=1e-3)
    assert (tmp_path / "metrics.json").is_file()
