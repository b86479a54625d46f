"""Task metrics against oracles: classification vs classification_metrics, perplexity vs a
hand computation, embedding cosine, agreement with the dense model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.measure import classification_metrics
from prunekit.measure.tasks import embeddings_of, evaluate_task, get_task, list_tasks


def test_tasks_are_registered() -> None:
    assert list_tasks() == ["agreement", "classification", "embeddings", "language-modelling"]
    assert get_task("language-modelling").headline == "perplexity"
    assert not get_task("language-modelling").higher_is_better
    with pytest.raises(ConfigError, match="unknown task 'perplexity'"):
        get_task("perplexity")


def _classifier(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _batches(n: int = 3, labelled: bool = True) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 6, generator=g),
             torch.randint(0, 4, (8,), generator=g) if labelled else None) for _ in range(n)]


def test_classification_matches_the_metric_function() -> None:
    model, batches = _classifier(0), _batches()
    preds = torch.cat([model(x).argmax(-1) for x, _ in batches])
    truth = torch.cat([y for _, y in batches])
    got = evaluate_task("classification", model, batches, num_classes=4)
    assert got == classification_metrics(truth, preds, num_classes=4)
    with_ref = evaluate_task("classification", model, batches, reference=model, num_classes=4)
    assert with_ref["agreement"] == 1.0


def test_agreement_against_a_hand_count() -> None:
    dense, other, batches = _classifier(0), _classifier(1), _batches(labelled=False)
    same = evaluate_task("agreement", dense, batches, reference=dense)
    assert same["agreement"] == 1.0 and same["top5_agreement"] == 1.0
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["examples"] == 24
    got = evaluate_task("agreement", other, batches, reference=dense)
    xs = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        p, q = dense(xs), other(xs)
    assert got["agreement"] == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).float().mean()))
    kl = (p.softmax(-1) * (p.log_softmax(-1) - q.log_softmax(-1))).sum(-1).mean()
    assert got["kl"] == pytest.approx(float(kl), rel=1e-5)
    assert got["top5_agreement"] == 1.0  # 4 classes: the dense top-1 is always in the top 4


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self.head(torch.tanh(self.embed(input_ids)))  # (B, T, vocab)


def test_perplexity_against_a_hand_computation() -> None:
    model = TinyLM()
    ids = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(0))
    got = evaluate_task("language-modelling", model, [(ids, None)])
    with torch.no_grad():
        logp = model(ids).log_softmax(-1)
    nll = -sum(float(logp[b, t, ids[b, t + 1]]) for b in range(3) for t in range(6)) / 18
    assert got["tokens"] == 18 and got["loss"] == pytest.approx(nll, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_perplexity_skips_padding() -> None:
    model = TinyLM()
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = evaluate_task("language-modelling", model,
                        [({"input_ids": ids, "attention_mask": mask}, None)])
    with torch.no_grad():
        logits = model(ids)
    kept = [(0, 0), (0, 1), (0, 2), (1, 0)]  # predicting tokens that are not padding
    nll = [float(F.cross_entropy(logits[b, t][None], ids[b, t + 1][None])) for b, t in kept]
    assert got["tokens"] == 4 and got["loss"] == pytest.approx(sum(nll) / 4, rel=1e-5)


class Encoder(nn.Module):
    def __init__(self, noise: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 6)
        self.noise = noise

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids) + self.noise * torch.arange(6.0)  # (B, T, D)


def test_embedding_cosine_with_mask_pooling() -> None:
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batches = [({"input_ids": ids, "attention_mask": mask}, None)]
    dense, shifted = Encoder(), Encoder(noise=0.5)
    same = evaluate_task("embeddings", dense, batches, reference=dense)
    assert same["cosine_mean"] == pytest.approx(1.0) and same["examples"] == 2
    got = evaluate_task("embeddings", shifted, batches, reference=dense)
    with torch.no_grad():
        a = dense.embed(ids)
    pooled = torch.stack([a[0].mean(0), a[1, :2].mean(0)])  # padding left out
    expected = F.cosine_similarity(pooled + 0.5 * torch.arange(6.0), pooled, dim=-1)
    assert got["cosine_mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert got["cosine_min"] == pytest.approx(float(expected.min()), rel=1e-5)
    assert torch.equal(embeddings_of(torch.ones(2, 3), {}), torch.ones(2, 3))


def test_errors_and_training_flag_restored() -> None:
    model = _classifier(0).train()
    with pytest.raises(ConfigError, match="pass reference="):
        evaluate_task("agreement", model, _batches())
    with pytest.raises(DataError, match="needs labels.*task agreement"):
        evaluate_task("classification", model, _batches(labelled=False))
    with pytest.raises(DataError, match="gave no batches"):
        evaluate_task("classification", model, [])
    evaluate_task("classification", model, _batches(), max_batches=1)
    assert model.training
