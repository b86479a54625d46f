"""Save / reload: uniform cuts reload with from_pretrained alone; others through the plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from llm_models import VOCAB, batches, one_thread, tiny  # noqa: F401

from prunekit.errors import ConfigError
from prunekit.transformers import (
    config_describes,
    load_pretrained_pruned,
    prune_blocks,
    prune_width,
    save_pretrained_pruned,
)

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers", reason="pip install transformers")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                eos_token="w0", pad_token="w0")


GEN = dict(max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)


def test_uniform_cut_reloads_with_from_pretrained_alone(tmp_path) -> None:
    model = tiny(num_hidden_layers=3)
    prune_blocks(model, batches(), n=1)
    prune_width(model, batches(), attention_ratio=0.5, mlp_ratio=0.25, compensate="bias")
    assert config_describes(model)
    kind = save_pretrained_pruned(model, tmp_path / "out", tokenizer=_tokenizer())
    assert kind == "hf" and not (tmp_path / "out" / "prunekit_llm.json").exists()
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"]) == (2, 2, 1, 36)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = batches(1, seed=4)[0]
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    assert torch.equal(reloaded.generate(ids, **GEN), model.generate(ids, **GEN))


@pytest.mark.slow
def test_uniform_cut_reloads_in_an_interpreter_without_prunekit(tmp_path) -> None:
    model = tiny(num_hidden_layers=3)
    prune_blocks(model, batches(), n=1)
    prune_width(model, batches(), attention_ratio=0.5, mlp_ratio=0.25, compensate="bias")
    save_pretrained_pruned(model, tmp_path / "out", tokenizer=_tokenizer())
    code = ("import sys, transformers; sys.modules['prunekit'] = None;"
            f"m = transformers.LlamaForCausalLM.from_pretrained({str(tmp_path / 'out')!r});"
            f"t = transformers.AutoTokenizer.from_pretrained({str(tmp_path / 'out')!r});"
            "ids = t('w1 w2 w3', return_tensors='pt').input_ids;"
            "print(m.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    assert json.loads(out) == model.generate(torch.tensor([[1, 2, 3]]), **GEN).tolist()


def test_non_uniform_cut_reloads_through_the_plan(tmp_path) -> None:
    model = tiny(num_hidden_layers=3, intermediate_size=64)
    _, cut = prune_blocks(model, batches(), n=1)
    plan = prune_width(model, batches(), mlp_ratio=0.4, attention_ratio=0.0, scope="global",
                       compensate="lstsq")
    widths = {layer.mlp.down_proj.in_features for layer in model.model.layers}
    assert len(widths) > 1 and not config_describes(model)
    with pytest.raises(ConfigError, match="pass plan="):
        save_pretrained_pruned(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert save_pretrained_pruned(model, tmp_path / "out", plan=plan, blocks=cut,
                                  tokenizer=_tokenizer()) == "plan"
    reloaded = load_pretrained_pruned(tmp_path / "out")
    x = batches(1, seed=4)[0]
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)
    assert torch.equal(reloaded.generate(x, **GEN), model.generate(x, **GEN))
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_saving_twice_replaces_the_folder(tmp_path) -> None:
    model = tiny()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    save_pretrained_pruned(model, tmp_path / "out")
    assert not (tmp_path / "out" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left


def test_load_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        load_pretrained_pruned(tmp_path)


def test_a_model_loaded_from_gguf_saves_as_floats(tmp_path) -> None:
    from types import SimpleNamespace

    model = tiny()
    marker = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"))
    model.hf_quantizer = marker  # what from_pretrained(gguf_file=...) leaves on the model
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "plain")
    assert save_pretrained_pruned(model, tmp_path / "out") == "hf"
    assert model.hf_quantizer is marker
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize(("pattern", "dtype"), [(None, torch.float32), ("2:4", torch.bfloat16)])
def test_one_shot_results_save_compactly_and_reload_bit_for_bit(tmp_path, pattern, dtype) -> None:
    import prunekit as pk

    tiny(tie_word_embeddings=True).save_pretrained(tmp_path / "base")  # loaded as users do:
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype).eval()
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # even in bfloat16
    amount = {"pattern": pattern} if pattern else {"sparsity": 0.5}
    pk.oneshot(model, torch.cat(batches()), method="wanda", quiet=True, **amount)
    ids = batches(1, seed=5)[0]
    masks_before = sum(1 for _ in pk.mask.masked_params(model))
    assert save_pretrained_pruned(model, tmp_path / "sparse", tokenizer=_tokenizer(),
                                  sparse=True) == "sparse"
    save_pretrained_pruned(model, tmp_path / "dense")
    sparse_bytes = (tmp_path / "sparse" / "model.sparse.safetensors").stat().st_size
    dense_bytes = (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert sparse_bytes < 0.75 * dense_bytes  # bitmask + half the values
    assert sum(1 for _ in pk.mask.masked_params(model)) == masks_before > 0  # kept
    again = load_pretrained_pruned(tmp_path / "sparse")
    assert next(again.parameters()).dtype == dtype
    assert again.lm_head.weight is again.model.embed_tokens.weight  # still tied
    for name, t in again.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
        assert torch.equal(again.generate(ids, **GEN), model.generate(ids, **GEN))
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "sparse").vocab_size > 0


def test_sparse_save_refuses_a_structured_cut(tmp_path) -> None:
    narrow = tiny(num_hidden_layers=3, intermediate_size=64)
    prune_width(narrow, batches(), mlp_ratio=0.4, attention_ratio=0.0, scope="global")
    assert not config_describes(narrow)  # the blocks differ
    with pytest.raises(ConfigError, match="structured cut"):
        save_pretrained_pruned(narrow, tmp_path / "b", sparse=True)
    assert not (tmp_path / "b").exists()


def test_a_masked_model_saves_for_from_pretrained_without_its_mask_buffers(tmp_path) -> None:
    import prunekit as pk

    model = tiny()
    pk.oneshot(model, torch.cat(batches()), method="magnitude", sparsity=0.5, quiet=True)
    assert save_pretrained_pruned(model, tmp_path / "out") == "hf"
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert set(again.state_dict()) == {k for k in model.state_dict() if not k.endswith("_mask")}
    x = batches(1, seed=4)[0]
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)
