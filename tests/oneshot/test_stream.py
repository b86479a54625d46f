"""oneshot_streamed: a checkpoint pruned from its shards equals pk.oneshot in memory."""

import json
import os
import re

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.oneshot import oneshot_streamed
from prunekit.oneshot.blocks import BlockCall, run_block

from .conftest import calibration, tiny_family, tiny_llama, transformers


def _save(model, folder, shard="20KB"):
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


def _files(folder):
    return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder))}


@pytest.mark.parametrize(("options", "tied"), [
    ({"method": "sparsegpt", "sparsity": 0.5}, False),
    ({"method": "sparsegpt", "sparsity": 0.5}, True),
    ({"method": "wanda", "sparsity": 0.6, "allocation": "owl"}, True),
    ({"method": "sparsegpt", "pattern": "2:4", "sequential": False}, False),
    ({"method": "magnitude", "sparsity": 0.3}, False),
], ids=["sparsegpt", "sparsegpt-tied", "owl-wanda-tied", "2:4-one-pass", "magnitude"])
def test_streamed_equals_in_memory(tmp_path, options, tied):
    model = tiny_llama(layers=3)
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    source = _save(model, tmp_path / "src")
    before = _files(source)
    ids = calibration()

    reference = tiny_llama(layers=3)
    reference.load_state_dict(model.state_dict())
    if tied:
        reference.config.tie_word_embeddings = True
        reference.lm_head.weight = reference.model.embed_tokens.weight
    expected = pk.oneshot(reference, ids, quiet=True, **options)
    pk.bake(reference)

    result = oneshot_streamed(source, tmp_path / "out", ids, quiet=True, **options)
    assert _files(source) == before, "the source checkpoint changed"
    assert result.layer_sparsity == expected.layer_sparsity
    assert result.sparsity == expected.sparsity > 0

    pruned = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    want, got = reference.state_dict(), pruned.state_dict()
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert torch.equal(reference(ids).logits, pruned(ids).logits)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) == 3 + (2 if tied else 3)  # one per block, one per other tensor
    assert (tmp_path / "out" / "generation_config.json").is_file()
    assert ("lm_head.weight" in index["weight_map"]) is not tied


def test_bfloat16_output(tmp_path):
    source = _save(tiny_llama(layers=2), tmp_path / "src")
    oneshot_streamed(source, tmp_path / "out", calibration(), method="wanda", quiet=True,
                     dtype=torch.bfloat16)
    pruned = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert pruned.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    w = pruned.model.layers[1].self_attn.q_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_failure_leaves_no_destination_and_keeps_old_one(tmp_path, monkeypatch):
    source = _save(tiny_llama(layers=3), tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    from prunekit.oneshot import stream

    calls = []

    def failing(self, index):
        calls.append(index)
        if index == 1:
            raise RuntimeError("disk full")
        return original(self, index)

    original = stream._Streamer.pruned
    monkeypatch.setattr(stream._Streamer, "pruned", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        oneshot_streamed(source, out, calibration(), method="wanda", quiet=True)
    assert calls == [0, 1]
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []


def test_bad_inputs(tmp_path):
    source = _save(tiny_llama(layers=2), tmp_path / "src")
    with pytest.raises(ConfigError, match="destination must differ"):
        oneshot_streamed(source, source, calibration(), quiet=True)
    with pytest.raises(ConfigError, match="no config.json"):
        oneshot_streamed(tmp_path / "nothing", tmp_path / "out", calibration())
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((source / "config.json").read_text())
    with pytest.raises(ConfigError, match="no model.safetensors"):
        oneshot_streamed(tmp_path / "bin", tmp_path / "out", calibration())
    with pytest.raises(ConfigError, match="sparsity must be in"):
        oneshot_streamed(source, tmp_path / "out", calibration(), sparsity=1.5)
    assert not (tmp_path / "out").exists()


def test_checkpoint_with_other_names_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    source = _save(tiny_llama(layers=2), tmp_path / "src", shard="10GB")
    tensors = load_file(source / "model.safetensors")
    renamed = {k.replace("model.layers.1.", "model.layer.1."): v for k, v in tensors.items()}
    save_file(renamed, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="no tensor model.layers.1"):
        oneshot_streamed(source, tmp_path / "out", calibration(), quiet=True)
    assert not (tmp_path / "out").exists()


def test_meta_model_is_refused_with_the_way_out():
    with torch.device("meta"):
        model = tiny_llama(layers=2)
    with pytest.raises(ConfigError, match="oneshot_streamed"):
        pk.oneshot(model, calibration(), quiet=True)


def test_run_block_moves_inputs_to_the_blocks_device():
    """A block on another device (here: meta) gets its inputs there, as under device_map."""
    block = torch.nn.Linear(4, 4)
    hidden = torch.randn(2, 4)
    out = run_block(block.to("meta"), hidden, BlockCall((), {}))
    assert out.device.type == "meta" and out.shape == (2, 4)

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x, scale=None, pair=None):
            return (self.lin(x) * scale + pair[0],)

    scaled = Scaled().to("meta")
    call = BlockCall((), {"scale": torch.ones(1), "pair": (torch.zeros(4), None)})
    assert run_block(scaled, hidden, call).device.type == "meta"


def test_sharded_save_of_a_pruned_model_streams_again(tmp_path):
    """save_pretrained_pruned(max_shard_size=) writes shards oneshot_streamed reads."""
    from prunekit.transformers import save_pretrained_pruned

    model = tiny_llama(layers=2)
    pk.oneshot(model, calibration(), method="magnitude", sparsity=0.25, quiet=True)
    assert save_pretrained_pruned(model, tmp_path / "a", max_shard_size="20KB") == "hf"
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not any(k.endswith("_mask") for k in index["weight_map"])
    result = oneshot_streamed(tmp_path / "a", tmp_path / "b", calibration(), method="magnitude",
                              sparsity=0.5, quiet=True)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError, match="max_shard_size"):
        save_pretrained_pruned(model, tmp_path / "c", sparse=True, max_shard_size="1MB")


def _char_tokenizer(folder):
    """A character-level tokenizer of 96 symbols (the tiny Llama's vocabulary), saved."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.save_pretrained(folder)


def test_command_line_prunes_a_folder_from_text(tmp_path, capsys):
    from prunekit.run.cli import main

    source = _save(tiny_llama(layers=2), tmp_path / "src")
    _char_tokenizer(source)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("the quick brown fox jumps over the lazy dog " * 40)
    (tmp_path / "held.txt").write_text("pack my box with five dozen liquor jugs " * 20)
    argv = ["oneshot", str(source), str(tmp_path / "out"), "--text", str(tmp_path / "text"),
            "--method", "wanda", "--pattern", "2:4", "--samples", "4", "--seq-len", "16",
            "--quiet"]
    assert main([*argv, "--eval-text", str(tmp_path / "held.txt"), "--eval-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "50.0% of the blocks' Linear weights are zero" in out
    before, after = map(float, re.search(r"perplexity ([\d.]+) -> ([\d.]+) \(2 x 16", out)
                        .groups())
    assert before > 1 and after > 1 and before != after
    pruned = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    w = pruned.model.layers[0].mlp.down_proj.weight
    assert bool((w.reshape(-1, 4) != 0).sum(1).le(2).all())
    assert (tmp_path / "out" / "tokenizer.json").is_file()

    assert main([*argv[:4], str(tmp_path / "missing"), "--quiet"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    no_tokenizer = _save(tiny_llama(layers=2), tmp_path / "bare")
    assert main(["oneshot", str(no_tokenizer), str(tmp_path / "o2"), "--text",
                 str(tmp_path / "text"), "--quiet"]) == 2
    assert "tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_perplexity_streamed_equals_loaded(tmp_path, tied):
    from prunekit.oneshot import perplexity, perplexity_streamed

    model = tiny_llama(layers=3)
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    source = _save(model, tmp_path / "src")
    ids = calibration(samples=5, seed=7)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    expected = perplexity(loaded, ids, batch_size=2)
    assert perplexity_streamed(source, ids, batch_size=2) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="samples, seq_len"):
        perplexity_streamed(source, ids[0])


@pytest.mark.parametrize("family", ["gemma3_text", "qwen2", "bert"])
def test_streamed_equals_in_memory_in_other_families(tmp_path, family):
    """Gemma-3 (scaled embedding buffer, sliding and full layers, tied head), Qwen2 (q/k/v
    biases) and a BERT encoder (``model_class=AutoModel``, blocks under encoder.layer)."""
    model, _ = tiny_family(family)
    make = type(model)
    source = _save(model, tmp_path / "src")
    reference = make(model.config).eval()
    reference.load_state_dict(model.state_dict())
    ids = calibration(4, 12)
    pk.oneshot(reference, ids, method="sparsegpt", sparsity=0.5, quiet=True)
    pk.bake(reference)
    model_class = transformers.AutoModel if family == "bert" else None
    oneshot_streamed(source, tmp_path / "out", ids, method="sparsegpt", sparsity=0.5,
                     quiet=True, model_class=model_class)
    pruned = make.from_pretrained(tmp_path / "out").eval()
    want, got = reference.state_dict(), pruned.state_dict()
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
