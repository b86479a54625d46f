"""pk.oneshot on tiny decoders: block by block equals a whole-model run, N:M, OWL, masks, errors."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import mask
from prunekit.errors import ConfigError
from prunekit.importance.activation import InputStats
from prunekit.oneshot import OneShotConfig, find_blocks, oneshot
from prunekit.oneshot.methods import LayerTarget, get_method

from .conftest import assert_unchanged, calibration, snapshot, tiny_family, tiny_llama

transformers = pytest.importorskip("transformers")


def _linears(block, prefix):
    return [(f"{prefix}.{n}", m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]


def whole_model_reference(model, ids, method_name, target, batch_size):
    """Prune block i from statistics gathered by running the WHOLE model (blocks before i
    already pruned): no captured inputs, no recorded keyword arguments."""
    method = get_method(method_name)
    for i, block in enumerate(model.model.layers):
        layers = _linears(block, f"model.layers.{i}")
        stats = {n: InputStats(m, gram=method.needs == "gram") for n, m in layers}
        with torch.no_grad():
            for batch in ids.split(batch_size):
                model(batch, use_cache=False)
        for s in stats.values():
            s.remove()
        for name, m in layers:
            new, keep = method.fn(m.weight.detach(), stats[name], None, target)
            with torch.no_grad():
                m.weight.copy_(new)
            mask.attach_mask(m, "weight", keep)


@pytest.mark.parametrize("method,pattern", [("wanda", None), ("sparsegpt", None),
                                            ("sparsegpt", "2:4")])
def test_block_by_block_equals_a_whole_model_run(method, pattern):
    ids = calibration()
    ours, ref = tiny_llama(), tiny_llama()
    cfg = OneShotConfig(method=method, pattern=pattern, quiet=True, batch_size=4,
                        sparsity=None if pattern else 0.5)
    result = oneshot(ours, ids, cfg)
    target = LayerTarget(0.0 if pattern else 0.5, cfg.nm, cfg.blocksize, cfg.dampening)
    whole_model_reference(ref, ids, method, target, batch_size=4)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    assert result.blocks == "model.layers"
    assert result.peak_rss_bytes > 0 and result.seconds > 0


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_pattern_exact_on_every_block_linear(method, pattern):
    n, m = map(int, pattern.split(":"))
    model = tiny_llama()
    oneshot(model, calibration(), method=method, pattern=pattern, quiet=True)
    pruned = [mod for name, mod in model.named_modules()
              if isinstance(mod, nn.Linear) and ".layers." in name]
    assert len(pruned) == 3 * 7
    for mod in pruned:
        nz = (mod.weight != 0).reshape(mod.out_features, -1, m).sum(-1)
        assert torch.all(nz <= n)
        assert torch.all(mask.get_mask(mod, "weight").reshape(mod.out_features, -1, m).sum(-1) == n)
    assert mask.get_mask(model.lm_head, "weight") is None  # outside the blocks: dense


def test_masks_survive_training_and_bake():
    model = tiny_llama()
    oneshot(model, calibration(), method="sparsegpt", sparsity=0.6, quiet=True)
    zeros = {n: p == 0 for n, p in model.named_parameters() if ".layers." in n and "proj" in n}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = model(calibration(2), labels=calibration(2))
    out.loss.backward()
    opt.step()
    pk.bake(model)
    assert not any(k.endswith("_mask") for k in model.state_dict())
    for n, p in model.named_parameters():
        if n in zeros:
            assert torch.all(p[zeros[n]] == 0), n


def test_owl_sparsities_average_the_target_and_stay_within_lambda():
    model = tiny_llama(layers=4)
    result = oneshot(model, calibration(), method="wanda", sparsity=0.6, allocation="owl",
                     owl_lambda=0.1, owl_threshold=3.0, quiet=True)
    s = torch.tensor(result.block_sparsity, dtype=torch.float64)
    assert float(s.double().mean()) == pytest.approx(0.6, abs=1e-6)
    assert float(s.max() - s.min()) == pytest.approx(0.2, abs=1e-6)  # spread = 2 * lambda
    for i, target in enumerate(result.block_sparsity):
        w = model.model.layers[i].mlp.down_proj.weight
        assert float((w == 0).float().mean()) == pytest.approx(target, abs=0.02)


def test_owl_gives_the_block_with_most_outliers_the_lowest_sparsity():
    from prunekit.oneshot import owl_sparsities

    s = owl_sparsities([0.01, 0.05, 0.02], sparsity=0.5, lam=0.08)
    assert s.index(min(s)) == 1 and s.index(max(s)) == 0
    assert sum(s) / 3 == pytest.approx(0.5)


def test_older_masks_stay_and_count():
    model = tiny_llama()
    pk.sparsify(model.model.layers[0].mlp.up_proj, sparsity=0.7)
    old = mask.get_mask(model.model.layers[0].mlp.up_proj, "weight").clone()
    oneshot(model, calibration(), method="wanda", sparsity=0.5, quiet=True)
    new = mask.get_mask(model.model.layers[0].mlp.up_proj, "weight")
    assert not (new & ~old).any()


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma3_text", "bert"])
def test_blocks_are_found_in_other_families(family):
    model, path = tiny_family(family)
    assert find_blocks(model)[0] == path
    ids = calibration(4, 12)
    result = oneshot(model, ids, method="sparsegpt", sparsity=0.5, quiet=True)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    with torch.no_grad():
        out = model(ids)
    assert torch.isfinite(out[0]).all()


def test_gemma3_block_by_block_uses_each_layers_own_mask_and_rope():
    # Sliding-window and full-attention layers get different masks and rotary tables:
    # pruning must see each block's own, as a whole-model run does.
    kwargs = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=64, sliding_window=4,
                  layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    ours = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**kwargs)).eval()
    ref = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**kwargs)).eval()
    ref.load_state_dict(ours.state_dict())
    ids = calibration(4, 12)
    oneshot(ours, ids, method="wanda", sparsity=0.5, quiet=True, batch_size=4)
    whole_model_reference(ref, ids, "wanda", LayerTarget(0.5, None), batch_size=4)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("options,match", [
    (dict(sparsity=1.0), "sparsity must be in"),
    (dict(sparsity=-0.1), "sparsity must be in"),
    (dict(pattern="5:4"), "0 < N < M"),
    (dict(pattern="2:4", sparsity=0.5), "drop sparsity"),
    (dict(pattern="2:4", allocation="owl"), "owl"),
    (dict(method="obs"), "unknown method .obs.; valid: magnitude, sparsegpt, wanda"),
    (dict(allocation="lamp"), "valid: uniform, owl"),
    (dict(dampening=-1), "dampening"),
    (dict(exclude=("nope",)), "matches no module"),
    (dict(blocks="model.norm"), "ModuleList"),
    (dict(colour="red"), "unknown option"),
])
def test_bad_options_are_refused_and_leave_the_model_untouched(options, match):
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=match):
        oneshot(model, calibration(), quiet=True, **options)
    assert_unchanged(model, before)


@pytest.mark.parametrize("data,match", [
    (torch.zeros(0, 16, dtype=torch.long), "empty"),
    ([], "empty"),
    (None, "needs calibration data"),
    ("some text", "not text"),
])
def test_bad_calibration_is_refused(data, match):
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=match):
        oneshot(model, data, method="wanda", quiet=True)
    assert_unchanged(model, before)


def test_model_without_blocks_is_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = snapshot(model)
    with pytest.raises(ConfigError, match="no decoder/encoder blocks"):
        oneshot(model, torch.randn(4, 8), method="wanda", quiet=True)
    assert_unchanged(model, before)


def test_nm_on_a_width_m_does_not_divide_is_refused():
    model = nn.Sequential(nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)]))
    with pytest.raises(ConfigError, match="multiples of 4"):
        oneshot(model, torch.randn(2, 6), method="magnitude", pattern="2:4", quiet=True)


def _fails(weight, stats, old_keep, target):
    _fails.calls = getattr(_fails, "calls", 0) + 1
    if _fails.calls > 7:  # the 8th Linear is in the second block
        raise RuntimeError("boom")
    return get_method("wanda").fn(weight, stats, old_keep, target)


def test_a_failure_midway_rolls_every_block_back(monkeypatch):
    from prunekit.oneshot import methods

    # registered for this test only, so the registry's listing stays clean
    monkeypatch.setitem(methods._METHODS._items, "_fails_on_block_1",
                        methods.Method("_fails_on_block_1", _fails, "norm"))
    model = tiny_llama()
    pk.sparsify(model.model.layers[0].self_attn.q_proj, sparsity=0.3)  # an older mask stays
    before = snapshot(model)
    _fails.calls = 0
    with pytest.raises(RuntimeError, match="boom"):
        oneshot(model, calibration(), method="_fails_on_block_1", sparsity=0.5, quiet=True)
    assert_unchanged(model, before)
    assert mask.get_mask(model.model.layers[0].self_attn.q_proj, "weight") is not None


def test_non_sequential_equals_statistics_from_one_dense_pass():
    ids = calibration()
    ours, ref = tiny_llama(), tiny_llama()
    oneshot(ours, ids, method="sparsegpt", sparsity=0.5, sequential=False, quiet=True,
            batch_size=3)
    layers = [x for i, b in enumerate(ref.model.layers) for x in _linears(b, f"L{i}")]
    stats = {n: InputStats(m, gram=True) for n, m in layers}
    with torch.no_grad():
        for batch in ids.split(3):
            ref(batch, use_cache=False)
    for s in stats.values():
        s.remove()
    for name, m in layers:
        new, keep = get_method("sparsegpt").fn(m.weight.detach(), stats[name], None,
                                               LayerTarget(0.5, None))
        with torch.no_grad():
            m.weight.copy_(new)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_layers_fed_the_same_tensor_share_statistics_correctly():
    a, b, c = nn.Linear(5, 3), nn.Linear(5, 2), nn.Linear(5, 4)
    stats = [InputStats(m, gram=True) for m in (a, b, c)]
    x, y = torch.randn(7, 5), torch.randn(4, 5)
    a(x), b(x), c(y), a(y), b(y), c(x)
    for s in stats:
        s.remove()
    for s, seen in zip(stats, [(x, y), (x, y), (y, x)], strict=True):
        rows = torch.cat(seen)
        torch.testing.assert_close(s.gram, rows.T @ rows)
        torch.testing.assert_close(s.feature_norm(), rows.norm(dim=0))
        assert s.rows == 11


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bfloat16_models_are_pruned_in_their_dtype(method):
    model = tiny_llama().to(torch.bfloat16)
    oneshot(model, calibration(), method=method, pattern="2:4", quiet=True)
    w = model.model.layers[1].mlp.down_proj.weight
    assert w.dtype == torch.bfloat16
    assert torch.all((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2)
    with torch.no_grad():
        assert torch.isfinite(model(calibration(2)).logits.float()).all()


def test_progress_bar_per_block_unless_quiet(capsys):
    pytest.importorskip("tqdm", reason="pip install tqdm")
    oneshot(tiny_llama(), calibration(), method="wanda", sparsity=0.5)
    assert "oneshot wanda" in capsys.readouterr().err
    oneshot(tiny_llama(), calibration(), method="wanda", sparsity=0.5, quiet=True)
    assert capsys.readouterr().err == ""
