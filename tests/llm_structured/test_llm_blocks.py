"""Block ranking and removal: a block built to be the identity is found and removed exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from llm_models import batches, n_params, one_thread, state_equal, tiny  # noqa: F401

from prunekit.errors import ConfigError
from prunekit.transformers import prune_blocks, rank_blocks, remove_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def _with_identity_block(k: int, layers: int = 4, family: str = "llama") -> torch.nn.Module:
    model = tiny(family, num_hidden_layers=layers)
    with torch.no_grad():
        block = model.model.layers[k]
        block.self_attn.o_proj.weight.zero_()  # both residual branches add nothing
        block.mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("metric", ["cosine", "angular"])
@pytest.mark.parametrize("k", [1, 2])
def test_identity_block_ranks_last(metric: str, k: int) -> None:
    model = _with_identity_block(k)
    ranking = rank_blocks(model, batches(), n=1, metric=metric)
    assert ranking.chosen == [k]
    assert ranking.influence[k] == pytest.approx(0.0, abs=1e-12)
    assert min(i for j, i in enumerate(ranking.influence) if j != k) > 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_removing_an_identity_block_keeps_outputs_and_generation(family: str) -> None:
    dense = _with_identity_block(2, family=family)
    model = copy.deepcopy(dense)
    ranking, cut = prune_blocks(model, batches(), n=1, metric="cosine")
    assert cut.removed == [2] and cut.before["num_hidden_layers"] == 4
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 3
    x = batches(1, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, dense(x).logits, rtol=1e-5, atol=1e-5)
    gen = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(model.generate(x, **gen), dense.generate(x, **gen))
    # oracle: the class built from the rewritten config has the same parameters
    assert n_params(type(model)(copy.deepcopy(model.config))) == n_params(model)


def test_angular_window_takes_consecutive_blocks() -> None:
    model = tiny(num_hidden_layers=5)
    with torch.no_grad():
        for k in (2, 3):
            model.model.layers[k].self_attn.o_proj.weight.zero_()
            model.model.layers[k].mlp.down_proj.weight.zero_()
    ranking = rank_blocks(model, batches(), n=2, metric="angular")
    assert ranking.chosen == [2, 3]
    assert len(ranking.window) == 4 and ranking.window[2] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("indices, match", [
    ([7], "out of range"), ([], "at least one"), ([0, 1], "keep at least one"),
    (["a"], "integers"),
])
def test_bad_indices_leave_the_model_untouched(indices, match) -> None:
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        remove_blocks(model, indices)
    assert state_equal(before, model.state_dict()) and model.config.num_hidden_layers == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "from 1 to"), ({"n": 2}, "from 1 to"), ({"metric": "psnr"}, "unknown block metric"),
    ({"data": []}, "empty"),
])
def test_bad_ranking_arguments(kwargs, match) -> None:
    model = tiny()
    with pytest.raises(ConfigError, match=match):
        prune_blocks(model, **{"data": batches(), "n": 1, **kwargs})
    assert model.config.num_hidden_layers == 2


def test_model_without_recognised_blocks() -> None:
    model = tiny()
    model.config.num_hidden_layers = 9  # no ModuleList of that length
    with pytest.raises(ConfigError, match="no decoder blocks recognised"):
        rank_blocks(model, batches(), n=1)
