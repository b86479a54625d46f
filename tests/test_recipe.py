import pytest

from prunekit.errors import ConfigError
from prunekit.recipe import Recipe, dump_recipe, list_recipes, load_recipe, parse_recipe


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_recipe(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(tmp_path, text: str, name: str = "mine.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_no_recipe_is_the_shipped_quick_start_and_equals_the_defaults():
    recipe = load_recipe(None)
    assert recipe.name == "quickstart"
    assert recipe == Recipe()
    assert recipe.data.name == "digits" and recipe.model.name == "lenet300"
    assert recipe.prune.sparsity >= 0.8 and recipe.finetune.epochs > 0


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads_by_name(name):
    assert load_recipe(name).name == name


def test_shipped_recipes_include_quickstart_and_fashion():
    assert {"quickstart", "fashion_lenet300"} <= set(list_recipes())
    fashion = load_recipe("fashion_lenet300")
    assert fashion.data.name == "fashion-mnist" and fashion.prune.sparsity == 0.9
    assert fashion.prune.scope == "global" and fashion.prune.criterion == "magnitude"


def test_unknown_key_names_the_path_the_closest_key_and_the_valid_keys():
    message = error_of({"prune": {"sparsty": 0.5}})
    assert "'prune.sparsty'" in message
    assert "did you mean 'sparsity'" in message
    assert "threshold, percentile, std_k, criterion, scope" in message


def test_unknown_top_level_key_lists_the_sections():
    message = error_of({"fintune": {"epochs": 3}})
    assert "'fintune'" in message and "did you mean 'finetune'" in message
    assert ("seed, data, model, train, penalty, prune, schedule, recovery, finetune, sweep, "
            "measure, output") in message


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"finetune": {"lr": "fast"}}, "finetune.lr"),
        ({"finetune": {"lr": True}}, "finetune.lr"),
        ({"prune": {"protect_output": "maybe"}}, "prune.protect_output"),
        ({"measure": {"batch_sizes": [1, "x"]}}, "measure.batch_sizes[1]"),
        ({"seed": "zero"}, "seed"),
    ],
)
def test_wrong_type_names_the_key(data, path):
    message = error_of(data)
    assert message.startswith(f"recipe: {path} ")


def test_section_that_is_not_a_mapping_lists_its_keys():
    message = error_of({"model": "lenet300"})
    assert "model must be a mapping with keys name, checkpoint" in message


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_sparsity_outside_0_1_is_rejected(value):
    assert "prune.sparsity" in error_of({"prune": {"sparsity": value}})


def test_sparsity_edges_inside_the_range_are_accepted():
    assert parse_recipe({"prune": {"sparsity": 0.0}}).prune.sparsity == 0.0
    assert parse_recipe({"prune": {"sparsity": 0.999}}).prune.sparsity == 0.999


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"prune": {"scope": "glob"}}, "did you mean 'global'? valid choices: layer, global, lamp"),
        ({"prune": {"granularity": "filter"}}, "valid choices: weight, neuron"),
        ({"prune": {"criterion": "magnitud"}}, "did you mean 'magnitude'"),
        ({"data": {"name": "fashion"}}, "did you mean 'fashion-mnist'"),
        ({"model": {"name": "lenet-5"}}, "did you mean 'lenet5'"),
        ({"train": {"optimizer": "adm"}}, "did you mean 'adam'"),
        ({"finetune": {"schedule": "cosin"}}, "did you mean 'cosine'"),
    ],
)
def test_unknown_choice_lists_the_valid_ones(data, expected):
    message = error_of(data)
    assert expected in message
    section, key = next(iter(data.items()))
    assert f"{section}.{next(iter(key))}" in message


def test_criterion_error_lists_every_registered_criterion():
    from prunekit.importance import list_criteria

    message = error_of({"prune": {"criterion": "nope"}})
    assert all(name in message for name in list_criteria())


def test_exactly_one_amount():
    message = error_of({"prune": {"sparsity": 0.5, "threshold": 0.1}})
    assert "prune:" in message and "sparsity and threshold" in message
    assert "pattern" in error_of({"prune": {"sparsity": 0.5, "pattern": "2:4"}})


def test_default_amount_only_when_none_is_given():
    assert parse_recipe({"prune": {"criterion": "l2"}}).prune.sparsity == 0.9
    nm = parse_recipe({"prune": {"pattern": " 2 : 4 "}}).prune
    assert nm.pattern == "2:4" and nm.sparsity is None
    threshold = parse_recipe({"prune": {"threshold": 0.05}}).prune
    assert threshold.threshold == 0.05 and threshold.sparsity is None


@pytest.mark.parametrize("pattern", ["4:2", "2-4", "0:4", "2:2"])
def test_bad_pattern(pattern):
    assert "prune.pattern" in error_of({"prune": {"pattern": pattern}})


def test_yaml_exponent_without_dot_is_read_as_a_number(tmp_path):
    # PyYAML reads 1e-3 as a string; the recipe still takes it as the number.
    recipe = load_recipe(write(tmp_path, "finetune:\n  lr: 1e-3\n"))
    assert recipe.finetune.lr == pytest.approx(1e-3)


def test_name_defaults_to_the_file_stem_and_a_name_key_wins(tmp_path):
    assert load_recipe(write(tmp_path, "seed: 3\n", "exp-1.yaml")).name == "exp-1"
    assert load_recipe(write(tmp_path, "name: other\n", "exp-2.yaml")).name == "other"
    assert "name" in error_of({"name": "../escape"})


def test_empty_file_is_the_quick_start_under_the_file_name(tmp_path):
    recipe = load_recipe(write(tmp_path, "", "empty.yaml"))
    assert recipe.model_copy(update={"name": "quickstart"}) == Recipe()


def test_round_trip_of_a_resolved_recipe(tmp_path):
    recipe = parse_recipe(
        {
            "seed": 7,
            "model": {"name": "lenet5"},
            "prune": {"percentile": 75.0, "scope": "lamp", "exclude": ["fc", "re:conv[0-9]"]},
            "finetune": {"epochs": 2, "optimizer": "adamw", "lr": 3e-4},
            "measure": {"batch_sizes": [1, 8, 32]},
            "output": {"dir": "somewhere"},
        },
        name="trip",
    )
    text = dump_recipe(recipe, versions={"torch": "2.x", "prunekit": "0.1.0"})
    again = load_recipe(write(tmp_path, text, "whatever.yaml"))
    assert again.versions == {"torch": "2.x", "prunekit": "0.1.0"}
    assert again.model_copy(update={"versions": None}) == recipe
    assert again.name == "trip"


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2"):
        load_recipe(write(tmp_path, "prune:\n\tsparsity: 0.5\n"))


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"))


def test_nothing_is_evaluated(tmp_path):
    text = "seed: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(write(tmp_path, text))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*quickstart"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_recipe(tmp_path)


def test_assignment_is_validated():
    recipe = Recipe()
    with pytest.raises(ValueError):
        recipe.prune.sparsity = 1.5


def test_top_level_recipes_mirror_the_packaged_ones():
    from pathlib import Path

    import prunekit

    packaged = Path(prunekit.__file__).parent / "recipes"
    top = Path(__file__).resolve().parents[1] / "recipes"
    names = sorted(p.name for p in packaged.glob("*.yaml"))
    assert names and names == sorted(p.name for p in top.glob("*.yaml"))
    for name in names:
        assert (top / name).read_text() == (packaged / name).read_text(), name
