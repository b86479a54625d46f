import pytest

from prunekit.errors import ConfigError
from prunekit.run.recipe import Recipe, dump_recipe, list_recipes, load_recipe, parse_recipe


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
    # the quick start is the defaults, ranked globally (its one choice of its own)
    assert recipe == Recipe(prune={"scope": "global"})
    assert recipe.data.name == "digits" and recipe.model.name == "lenet300"
    assert recipe.prune.sparsity >= 0.8 and recipe.finetune.epochs > 0


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads_by_name(name):
    assert load_recipe(name).name == name


def test_recipe_defaults_are_the_library_defaults():
    from prunekit.config import Calibration, PlanConfig, Rule, SparsifyConfig

    masks, mask_lib = Recipe().prune, SparsifyConfig(amount=Rule("sparsity", 0.5))
    assert (masks.scope, masks.criterion) == (mask_lib.scope, mask_lib.criterion)
    assert masks.calibration_batches == Calibration().batches
    channels = Recipe(prune={"granularity": "channel"}).prune
    lib = PlanConfig()
    assert (channels.scope, channels.criterion, channels.max_ratio, channels.round_to,
            channels.ratio) == (lib.scope, lib.criterion, lib.max_ratio, lib.round_to, lib.ratio)


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
            "allocate, measure, output") in message


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
        ({"prune": {"scope": "glob"}},
         "did you mean 'global'? valid scopes: global, lamp, layer, row"),
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


@pytest.mark.parametrize(
    ("allocate", "expected"),
    [({"genes": "bits"}, "allocate.genes"), ({"spread": 0}, "allocate.spread"),
     ({"finetune_steps": -1}, "allocate.finetune_steps"),
     ({"final_steps": 20, "genes": "grid"}, "allocate.final_steps"),
     ({"runtime": "tensorrt"}, "allocate.runtime")],
)
def test_bad_allocation_search_options_name_the_key(allocate, expected):
    message = error_of({"allocate": {"kind": "evolutionary", "budget": {"macs_ratio": 0.5},
                                     **allocate}})
    assert expected in message


def test_criterion_error_lists_every_registered_criterion():
    from prunekit.importance import list_criteria

    message = error_of({"prune": {"criterion": "nope"}})
    assert all(name in message for name in list_criteria(kind="mask"))
    assert "bn_scale" not in message  # group-only: not offered for masks
    channel = error_of({"prune": {"granularity": "channel", "criterion": "nope"}})
    assert all(name in channel for name in list_criteria(kind="group"))


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
    with pytest.raises(ValueError, match=r"(?s)\bsparsity\b.*less than 1"):
        recipe.prune.sparsity = 1.5
    assert recipe.prune.sparsity == Recipe().prune.sparsity  # the bad value was not kept


# --- schedule, recovery, penalty, sweep, structured granularity -------------------------


def test_defaults_are_one_shot_without_recovery_penalty_or_sweep():
    recipe = Recipe()
    assert recipe.schedule.kind == "oneshot"
    assert recipe.recovery.model_dump() == {"reconstruct": None, "bn_recalibration": None,
                                            "distill": None}
    assert recipe.penalty is None and recipe.sweep is None
    assert recipe.points() == [recipe.prune] and recipe.designated == 0


def test_schedule_kinds_match_the_pipeline_runners():
    from prunekit.run.recipe import SCHEDULE_KINDS, PruneConfig
    from prunekit.run.stages import CUTS, RUNNERS

    assert sorted(SCHEDULE_KINDS) == RUNNERS.names()
    granularities = PruneConfig.model_fields["granularity"].annotation.__args__
    assert sorted(granularities) == CUTS.names()


def test_every_schedule_kind_parses_with_its_options():
    sections = {
        "gradual": {"kind": "gradual", "curve": "polynomial", "exponent": 2, "start": 1,
                    "end": 5, "frequency": 20, "initial": 0.1},
        "iterative": {"kind": "iterative", "rounds": 4, "spacing": "linear"},
        "surgery": {"kind": "surgery", "margin": 0.3, "stop": 4},
        "lottery": {"kind": "lottery", "rate": 0.5, "rewind": 100},
    }
    for kind, section in sections.items():
        data = {"schedule": section, "finetune": {"epochs": 6}}
        if kind == "surgery":
            data["prune"] = {"scope": "layer"}
        schedule = parse_recipe(data).schedule
        assert {key: getattr(schedule, key) for key in section} == section


def test_channel_granularity_takes_the_options_of_pk_prune():
    prune = parse_recipe({"prune": {"granularity": "channel"}}).prune
    assert prune.structured and prune.amount == ("ratio", 0.5)
    assert (prune.criterion, prune.scope, prune.max_ratio, prune.round_to) == ("l2", "layer",
                                                                               0.9, 1)
    assert prune.ignore == [] and prune.exclude is None and prune.sparsity is None
    target = parse_recipe({"prune": {"granularity": "channel", "target": {"macs": 0.4},
                                     "criterion": "bn_scale", "scope": "global",
                                     "ignore": ["re:layer3.*"], "round_to": 8}}).prune
    assert target.amount == ("macs", 0.4) and target.ratio is None
    weights = parse_recipe({}).prune
    assert not weights.structured and weights.max_ratio is None and weights.ignore is None


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        # options of the other family of granularities
        ({"prune": {"granularity": "channel", "sparsity": 0.5}}, "prune.sparsity",
         "use ratio or target"),
        ({"prune": {"ratio": 0.5}}, "prune.ratio", "granularity weight masks weights"),
        ({"prune": {"ignore": ["fc"]}}, "prune.ignore", "use sparsity"),
        ({"prune": {"granularity": "channel", "exclude": ["fc"]}}, "prune.exclude", "ignore"),
        ({"prune": {"criterion": "bn_scale"}}, "prune.criterion", "granularity weight"),
        ({"prune": {"granularity": "channel", "criterion": "bogus"}}, "prune.criterion",
         "valid criteria: bn_scale"),
        ({"prune": {"granularity": "channel", "ratio": 0.5, "target": {"macs": 0.5}}},
         "prune.target", "either ratio or target"),
        ({"prune": {"granularity": "channel", "target": {"macs": 0.5, "params": 0.5}}},
         "prune.target", "exactly one of macs or params"),
        # schedules
        ({"schedule": {"kind": "gradul"}}, "schedule.kind", "did you mean 'gradual'"),
        ({"schedule": {"kind": "gradual"}}, "schedule.end", "is required (kind gradual)"),
        ({"schedule": {"kind": "gradual", "end": 40}}, "schedule.end", "past the end"),
        ({"schedule": {"kind": "gradual", "start": 3, "end": 2}}, "schedule.end",
         "must come after start"),
        ({"schedule": {"kind": "gradual", "end": 2, "exponent": 2}}, "schedule.exponent",
         "curve: polynomial"),
        ({"schedule": {"kind": "iterative", "roundz": 3}}, "schedule.roundz",
         "valid keys of schedule (kind iterative): kind, rounds, spacing, floor"),
        ({"schedule": {"rounds": 3}}, "schedule.rounds", "(kind oneshot)"),
        ({"schedule": {"kind": "iterative", "floor": 0.8}}, "schedule.floor",
         "set data.val_fraction"),
        ({"schedule": {"kind": "gradual", "end": 2}, "prune": {"granularity": "channel"}},
         "schedule.kind", "use kind oneshot or iterative"),
        ({"schedule": {"kind": "lottery"}, "prune": {"granularity": "channel"}},
         "schedule.kind", "use kind oneshot or iterative"),
        ({"schedule": {"kind": "gradual", "end": 2}, "prune": {"threshold": 0.1}},
         "prune.threshold", "needs a target sparsity"),
        ({"schedule": {"kind": "surgery"}, "prune": {"scope": "global"}}, "prune.scope",
         "set prune.scope: layer"),
        ({"schedule": {"kind": "surgery"}, "prune": {"scope": "layer",
                                                     "granularity": "neuron"}},
         "prune.granularity", "set prune.granularity: weight"),
        ({"schedule": {"kind": "surgery", "stop": 50}, "prune": {"scope": "layer"}},
         "schedule.stop", "past the end of fine-tuning"),
        ({"schedule": {"kind": "surgery"}, "prune": {"scope": "layer"},
          "finetune": {"epochs": 0}}, "schedule.kind", "finetune.epochs is 0"),
        ({"schedule": {"kind": "lottery"}, "model": {"checkpoint": "x.safetensors"}},
         "model.checkpoint", "drop model.checkpoint"),
        # recovery and penalty
        ({"recovery": {"reconstruct": {}}, "schedule": {"kind": "gradual", "end": 2}},
         "recovery.reconstruct", "use it with kind oneshot or iterative"),
        ({"recovery": {"bn_recalibration": {}}, "schedule": {"kind": "lottery"}},
         "recovery.bn_recalibration", "use it with kind oneshot or iterative"),
        ({"recovery": {"distill": {}}, "finetune": {"epochs": 0}}, "recovery.distill",
         "finetune.epochs is 0"),
        ({"recovery": {"distill": {"alpha": 1.5}}}, "recovery.distill.alpha", ""),
        ({"recovery": {"distil": {}}}, "recovery.distil", "did you mean 'distill'"),
        ({"recovery": {"bn_recalibration": {"mode": "exakt"}}},
         "recovery.bn_recalibration.mode", "did you mean 'exact'"),
        ({"penalty": {"kind": "l1"}}, "penalty.kind", "valid penalties: bn_scale, group_lasso"),
        ({"penalty": {}, "model": {"checkpoint": "x.safetensors"}}, "penalty.epochs",
         "extra sparse-training phase"),
        # sweeps
        ({"sweep": {"sparsity": [0.5, 0.4]}}, "sweep.sparsity", "must increase"),
        ({"sweep": {"sparsity": [0.5]}}, "sweep.sparsity", "at least two values"),
        ({"sweep": {"sparsity": [0.5, 1.0]}}, "sweep.sparsity", "fraction in [0, 1)"),
        ({"sweep": {}}, "sweep", "exactly one of sparsity, ratio, macs, params"),
        ({"sweep": {"ratio": [0.2, 0.5]}}, "sweep.ratio", "sweeps sparsity"),
        ({"sweep": {"sparsity": [0.2, 0.5]}, "prune": {"granularity": "channel"}},
         "sweep.sparsity", "sweeps ratio, macs or params"),
        ({"sweep": {"sparsity": [0.5, 0.9]}, "prune": {"sparsity": 0.7}}, "prune.sparsity",
         "make it one of sweep.sparsity"),
        ({"sweep": {"macs": [0.3, 0.5]}, "prune": {"granularity": "channel", "ratio": 0.5}},
         "prune.ratio", "make it one of sweep.macs"),
        ({"data": {"val_fraction": 0.9}}, "data.val_fraction", ""),
    ],
)
def test_bad_combinations_name_the_key_and_the_way_out(data, path, expected):
    message = error_of(data)
    assert message.startswith(f"recipe: {path}") or f"'{path}'" in message, message
    assert expected in message


def test_sweep_points_and_the_designated_one():
    recipe = parse_recipe({"sweep": {"sparsity": [0.5, 0.8, 0.95]}})
    assert recipe.prune.sparsity == 0.95 and recipe.designated == 2
    assert [p.sparsity for p in recipe.points()] == [0.5, 0.8, 0.95]
    chosen = parse_recipe({"sweep": {"sparsity": [0.5, 0.8, 0.95]}, "prune": {"sparsity": 0.8}})
    assert chosen.designated == 1
    macs = parse_recipe({"prune": {"granularity": "channel", "criterion": "l1"},
                         "sweep": {"macs": [0.25, 0.5]}})
    assert [p.amount for p in macs.points()] == [("macs", 0.25), ("macs", 0.5)]
    assert all(p.criterion == "l1" and p.structured for p in macs.points())


def test_round_trip_of_a_recipe_using_every_section(tmp_path):
    recipe = parse_recipe(
        {
            "data": {"val_fraction": 0.1, "train_samples": 500, "test_samples": 200},
            "model": {"name": "resnet20"},
            "penalty": {"kind": "group_lasso", "strength": 1e-5, "epochs": 2, "lr": 0.01},
            "prune": {"granularity": "channel", "target": {"params": 0.5},
                      "ignore": ["re:layer1\\..*"], "protect_output": True},
            "schedule": {"kind": "iterative", "rounds": 2},
            "recovery": {"reconstruct": {"ridge": 0.001}, "bn_recalibration": {"batches": 4},
                         "distill": {"temperature": 2.0}},
            "sweep": {"params": [0.3, 0.5]},
        },
        name="everything",
    )
    again = load_recipe(write(tmp_path, dump_recipe(recipe), "everything.yaml"))
    assert again == recipe


def test_a_prune_section_is_checked_by_the_verbs_own_config_and_shares_its_defaults():
    import prunekit as pk

    base = {"model": {"name": "lenet300"}, "data": {"name": "fashion-mnist"}}
    masks = parse_recipe({**base, "prune": {"criterion": "wanda"}}).prune
    assert masks.sparsify_config(seed=0) == pk.SparsifyConfig(
        amount=pk.config.Rule("sparsity", 0.9), criterion="wanda")  # scope 'row', as sparsify
    assert masks.scope == "row"
    channels = parse_recipe({**base, "prune": {"granularity": "channel"}}).prune
    assert channels.plan_config(seed=0) == pk.PlanConfig()  # every default is the library's
    with pytest.raises(ConfigError, match="N:M pattern works on single weights"):
        parse_recipe({**base, "prune": {"granularity": "neuron", "pattern": "2:4"}})
    with pytest.raises(ConfigError, match="scope='row' ranks single weights"):
        parse_recipe({**base, "prune": {"granularity": "channel", "scope": "row"}})


def test_the_llm_recipe_in_docs_parses_as_written():
    import re
    from pathlib import Path

    import yaml

    doc = (Path(__file__).resolve().parents[1] / "docs" / "llm.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    recipe = parse_recipe(yaml.safe_load(block))
    assert recipe.prune.method == "sparsegpt" and recipe.model.gguf_file
    assert recipe.prune.oneshot_config(quiet=True).sparsity == 0.5
