"""Zoo runner: results serialize, failures are recorded with their reason, never raised."""

from __future__ import annotations

import itertools
import json
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from zoolib.runner import (
    CheckFailed,
    ZooResult,
    check_close,
    check_same_shapes,
    describe,
    format_results,
    load_results,
    run_models,
    run_one,
    run_zoo,
    select,
    untied_state_dict,
)

from prunekit._io import save_safetensors
from prunekit.errors import ConfigError
from prunekit.models.catalog import CharLM, ZooModel, get_source


def _tokens(gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 10, (2, 3), generator=gen)


def _broken() -> nn.Module:
    raise RuntimeError("boom\nsecond line")


def _slow() -> nn.Module:
    time.sleep(5)
    return nn.Linear(2, 2)


def test_result_round_trips_through_json(tmp_path):
    result = ZooResult("rnn", "char_lm", "prunekit", passed=True, stage="done",
                       params_before=10, params_after=4, prune_s=0.5, notes=["x"])
    assert ZooResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    with pytest.raises(ConfigError, match="unknown ZooResult keys"):
        ZooResult.from_dict({**result.to_dict(), "bogus": 1})


def test_a_model_that_raises_is_recorded_as_a_failure(tmp_path):
    broken = ZooModel("broken", "test", _broken, _tokens)
    path = tmp_path / "zoo.json"
    [result] = run_models([broken], json_path=path, progress=False)
    assert not result.passed
    assert result.stage == "build"
    assert result.reason == "RuntimeError: boom"
    assert load_results(path) == [result]
    assert "0/1 passed" in format_results([result])
    assert "broken [prunekit]: RuntimeError: boom" in format_results([result])


def test_time_limit_becomes_a_failure():
    # were the limit not enforced, the 5 s build would finish and the model would pass
    result = run_one(ZooModel("slow", "test", _slow, _tokens), time_limit_s=1)
    assert (result.passed, result.stage) == (False, "build")
    assert result.reason == "ZooTimeout: ran past its time limit of 1 s"
    assert result.params_before is None


def test_prunekit_on_a_zoo_model_passes_every_check():
    [r] = run_zoo("rnn", names=["char_lm"], progress=False, time_limit_s=120)
    assert (r.source, r.model, r.tool) == ("rnn", "char_lm", "prunekit")
    assert (r.passed, r.stage, r.reason) == (True, "done", "")
    assert r.params_before == sum(p.numel() for p in CharLM().parameters())
    assert r.params_after < r.params_before and r.macs_after < r.macs_before
    assert (r.groups_checked, r.groups_unchecked, r.groups_left_whole) == (1, 0, 0)
    assert ZooResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def _features(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(2, 8, generator=gen)  # (B, in)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


_builds = itertools.count(1)


class _Drifting(nn.Module):
    """Scales its output by how many of its kind were built before: a fresh build differs."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.scale = _mlp(), float(next(_builds))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def test_a_small_mlp_passes_with_half_its_hidden_units():
    r = run_one(ZooModel("mlp", "test", _mlp, _features))
    assert (r.passed, r.stage, r.reason) == (True, "done", "")
    assert (r.params_before, r.params_after) == (8 * 16 + 16 + 16 * 4 + 4, 8 * 8 + 8 + 8 * 4 + 4)
    assert (r.macs_before, r.macs_after) == (2 * (8 * 16 + 16 * 4), 2 * (8 * 8 + 8 * 4))
    assert r.groups_checked == 1


def test_a_model_with_nothing_to_prune_fails_at_the_prune_stage():
    r = run_one(ZooModel("linear", "test", lambda: nn.Linear(8, 4), _features))
    assert (r.passed, r.stage) == (False, "prune")
    assert r.reason.startswith("ConfigError: nothing can be pruned")
    assert r.params_before == 36 and r.params_after is None


def test_a_model_that_changes_between_builds_fails_the_round_trip():
    r = run_one(ZooModel("drifting", "test", _Drifting, _features))
    assert (r.passed, r.stage) == (False, "round trip")
    assert r.reason.startswith("plan round trip: output differs by up to ")
    assert r.groups_checked == 1  # verify itself held: only the replay differs


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="ratio"):
        run_zoo("rnn", ratio=1.0, progress=False)
    with pytest.raises(ConfigError, match="char_lm"):
        select(get_source("rnn"), ["resnet*"])
    with pytest.raises(ConfigError, match="torch-pruning"):
        run_zoo("rnn", tool="nni", progress=False)


def test_select_takes_patterns():
    assert [m.name for m in select(get_source("rnn"), ["*_classifier"])] == [
        "lstm_classifier", "gru_classifier"
    ]


def test_describe_names_a_bare_assertion_by_its_place():
    def bare() -> None:
        raise AssertionError

    try:
        bare()
    except AssertionError as exc:
        text = describe(exc)
    assert text.startswith("AssertionError at benchmarks/test_zoo_runner.py:")
    assert text.endswith("(raise AssertionError)")
    assert describe(ValueError("first\nsecond")) == "ValueError: first"


def test_output_checks():
    a = {"logits": torch.ones(2, 3)}
    check_same_shapes({"output.logits": (2, 3)}, a)
    with pytest.raises(CheckFailed, match=r"output.logits \(2, 3\) -> \(2, 4\)"):
        check_same_shapes({"output.logits": (2, 3)}, {"logits": torch.ones(2, 4)})
    with pytest.raises(CheckFailed, match="outputs changed"):
        check_same_shapes({"output.logits": (2, 3)}, {"scores": torch.ones(2, 3)})
    check_close(a, {"logits": torch.ones(2, 3) + 1e-7}, what="t")
    with pytest.raises(CheckFailed, match="t: output.logits differs by up to 0.5"):
        check_close(a, {"logits": torch.ones(2, 3) * 1.5}, what="t")


def test_untied_state_dict_saves_tied_weights(tmp_path):
    model = CharLM()
    state = untied_state_dict(model)
    assert torch.equal(state["decoder.weight"], state["embed.weight"])
    save_safetensors(tmp_path / "w.safetensors", state)
    loaded = load_file(tmp_path / "w.safetensors")
    fresh = CharLM()
    fresh.load_state_dict(loaded)
    assert fresh.decoder.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)
