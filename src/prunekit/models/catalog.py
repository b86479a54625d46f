"""Zoo sources: architectures from torchvision, timm, Hugging Face transformers and small RNNs.

Every model is built with random weights (nothing is downloaded) together with example
inputs of the shape it expects, and the names of its output heads (classifier, LM head),
which a pruning tool is told to leave whole. A source is one registered function that
returns its list of :class:`ZooModel`; the libraries are imported only when a source is
listed or a model is built.

Example:
    >>> from prunekit.models.catalog import call_model, get_source
    >>> lm = next(m for m in get_source("rnn") if m.name == "char_lm")
    >>> model, inputs = lm.create(), lm.example_inputs()
    >>> call_model(model, inputs).shape
    torch.Size([2, 12, 64])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._calls import run_model
from .._registry import Registry

Inputs = Any
"""Example inputs: a tensor, a tuple of positional tensors, or a dict of keyword tensors."""


@dataclass(frozen=True)
class ZooModel:
    """One architecture of a zoo source.

    Attributes:
        name: Name within its source (``"resnet50"``, ``"llama"``).
        source: Name of the source (``"torchvision"``).
        build: Builds the model with random weights.
        make_inputs: Builds the example inputs from a seeded generator.
        heads: Qualified names of output heads to leave whole.
        num_classes: When set, every Linear/Conv whose output width equals it is a head too
            (the classifier, and auxiliary or distillation classifiers beside it).
    """

    name: str
    source: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[[torch.Generator], Inputs]
    heads: tuple[str, ...] = ()
    num_classes: int | None = None

    def create(self) -> nn.Module:
        """The model in eval mode, its random weights seeded so that every build is the same."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self.build().eval()

    def example_inputs(self, seed: int = 0) -> Inputs:
        """Example inputs, the same for the same seed."""
        return self.make_inputs(torch.Generator().manual_seed(seed))

    def ignored(self, model: nn.Module) -> list[str]:
        """Qualified names of the layers whose outputs a pruning tool must keep."""
        names = list(self.heads)
        if self.num_classes is not None:
            names += [n for n, m in model.named_modules() if _out_width(m) == self.num_classes]
        return list(dict.fromkeys(names))


SOURCES: Registry[Callable[[], list[ZooModel]]] = Registry("zoo source")


def list_sources() -> list[str]:
    """Names of the registered zoo sources."""
    return SOURCES.names()


def get_source(name: str) -> list[ZooModel]:
    """Every model of one source, in a stable order.

    Raises:
        ConfigError: ``name`` is not a registered source.
    """
    return SOURCES.get(name)()


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """Run ``model`` on example inputs: a dict as keywords, a tuple as positional arguments."""
    return run_model(model, inputs)


def output_tensors(out: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """The tensors in a model output (tensor, tuple, list, dict, ``ModelOutput``), named by path."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, Mapping):
        items = out.items()
    elif isinstance(out, (tuple, list)):
        items = ((str(i), v) for i, v in enumerate(out))
    else:
        return []
    return [leaf for key, value in items for leaf in output_tensors(value, f"{prefix}.{key}")]


def _out_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    return None


def _image(size: int, batch: int = 1) -> Callable[[torch.Generator], torch.Tensor]:
    def make(gen: torch.Generator) -> torch.Tensor:
        return torch.randn(batch, 3, size, size, generator=gen)  # (B, C, H, W)

    return make


# --------------------------------------------------------------------------- torchvision

_TORCHVISION_INPUT = {"inception_v3": 299}  # everything else takes 224 when built without weights


def _torchvision_model(name: str) -> ZooModel:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    size = _TORCHVISION_INPUT.get(name, 224)
    return ZooModel(name, "torchvision", build, _image(size), num_classes=1000)


@SOURCES.register("torchvision")
def torchvision_source() -> list[ZooModel]:
    """Every classification model of ``torchvision.models`` (no detection, segmentation, video)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [_torchvision_model(n) for n in names]


# --------------------------------------------------------------------------- timm

TIMM_MODELS = (
    # residual CNNs and their variants
    "resnet18", "resnet50d", "resnext26ts", "seresnext26d_32x4d", "res2net50_14w_8s",
    "resnest14d", "skresnet18", "dla34", "dpn68", "densenet121", "hrnet_w18_small",
    "cspresnet50", "ese_vovnet19b_dw", "selecsls42b", "gernet_s", "hgnetv2_b0", "nfnet_l0",
    "vgg11", "inception_v3", "xception41", "regnetx_002", "regnety_002",
    # mobile CNNs
    "efficientnet_b0", "tf_efficientnetv2_b0", "mobilenetv2_100", "mobilenetv3_small_100",
    "mnasnet_100", "mixnet_s", "lcnet_050", "ghostnet_100", "ghostnetv2_100", "rexnet_100",
    "repvit_m0_9", "mobileone_s0", "fastvit_t8",
    # modern CNNs and MLP / pooling mixers
    "convnext_atto", "convnextv2_atto", "inception_next_tiny", "mambaout_femto",
    "poolformer_s12", "mixer_s16_224", "resmlp_12_224", "sequencer2d_s",
    # vision transformers
    "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "beit_base_patch16_224",
    "eva02_tiny_patch14_224", "cait_xxs24_224", "xcit_nano_12_p16_224", "convit_tiny",
    "pit_ti_224", "levit_128s", "swin_tiny_patch4_window7_224", "pvt_v2_b0", "gcvit_xxtiny",
    "tiny_vit_5m_224",
    # hybrids
    "coatnet_0_rw_224", "maxvit_nano_rw_256", "efficientformer_l1", "efficientformerv2_s0",
    "mobilevit_xxs", "mobilevitv2_050", "edgenext_xx_small", "efficientvit_b0",
)  # fmt: skip


def _timm_input_size(name: str) -> int:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None else 224


def _timm_model(name: str) -> ZooModel:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=1000)

    return ZooModel(name, "timm", build, _image(_timm_input_size(name)), num_classes=1000)


@SOURCES.register("timm")
def timm_source() -> list[ZooModel]:
    """Small variants of timm architectures of many families (random weights)."""
    return [_timm_model(n) for n in TIMM_MODELS]


# --------------------------------------------------------------------------- transformers

_VOCAB = 1000
_TEXT = (2, 8)  # (batch, sequence)


def _token_ids(gen: torch.Generator, shape: tuple[int, int] = _TEXT) -> torch.Tensor:
    return torch.randint(5, _VOCAB, shape, generator=gen)  # ids 0..4 are special tokens


def _text(*, pad: bool, token_types: bool = False) -> Callable[[torch.Generator], dict]:
    """input_ids and attention_mask; with ``pad`` the second row ends in two padding tokens."""

    def make(gen: torch.Generator) -> dict:
        ids = _token_ids(gen)
        mask = torch.ones_like(ids)
        if pad:
            mask[1, -2:] = 0
        out = {"input_ids": ids, "attention_mask": mask}
        if token_types:
            out["token_type_ids"] = torch.zeros_like(ids)
        return out

    return make


def _seq2seq(gen: torch.Generator) -> dict:
    out = _text(pad=True)(gen)
    out["decoder_input_ids"] = _token_ids(gen, (_TEXT[0], 6))
    return out


def _pixels(size: int) -> Callable[[torch.Generator], dict]:
    def make(gen: torch.Generator) -> dict:
        return {"pixel_values": torch.randn(1, 3, size, size, generator=gen)}  # (B, C, H, W)

    return make


_BERTISH = dict(
    vocab_size=_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=128, max_position_embeddings=64, num_labels=3,
)  # fmt: skip
_DECODER = dict(
    vocab_size=_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=128, max_position_embeddings=64, use_cache=False,
)  # fmt: skip


def _hf(model_cls: str, config_cls: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_cls)(**config)
        return getattr(transformers, model_cls)(cfg)

    return build


def _transformers_models() -> list[ZooModel]:
    t = "transformers"
    return [
        ZooModel("bert", t, _hf("BertForSequenceClassification", "BertConfig", **_BERTISH),
                 _text(pad=True, token_types=True), heads=("classifier",)),
        ZooModel("roberta", t, _hf("RobertaForSequenceClassification", "RobertaConfig",
                                   **_BERTISH),
                 _text(pad=True), heads=("classifier.out_proj",)),
        ZooModel("distilbert", t, _hf("DistilBertForSequenceClassification", "DistilBertConfig",
                                      vocab_size=_VOCAB, dim=64, n_layers=2, n_heads=4,
                                      hidden_dim=128, max_position_embeddings=64, num_labels=3),
                 _text(pad=True), heads=("classifier",)),
        ZooModel("albert", t, _hf("AlbertForSequenceClassification", "AlbertConfig",
                                  embedding_size=32, **_BERTISH),
                 _text(pad=True, token_types=True), heads=("classifier",)),
        ZooModel("gpt2", t, _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=_VOCAB, n_embd=64,
                                n_layer=2, n_head=4, n_positions=64, use_cache=False,
                                bos_token_id=1, eos_token_id=2),
                 _text(pad=False), heads=("lm_head",)),
        ZooModel("gpt_neox", t, _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **_DECODER),
                 _text(pad=False), heads=("lm_head",)),
        ZooModel("llama", t, _hf("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=2,
                                 **_DECODER),
                 _text(pad=False), heads=("lm_head",)),
        ZooModel("mistral", t, _hf("MistralForCausalLM", "MistralConfig", num_key_value_heads=2,
                                   sliding_window=4, **_DECODER),
                 _text(pad=False), heads=("lm_head",)),
        ZooModel("t5", t, _hf("T5ForConditionalGeneration", "T5Config", vocab_size=_VOCAB,
                              d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                              num_heads=4, use_cache=False),
                 _seq2seq, heads=("lm_head",)),
        ZooModel("vit", t, _hf("ViTForImageClassification", "ViTConfig", image_size=32,
                               patch_size=8, hidden_size=64, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=128, num_labels=10),
                 _pixels(32), heads=("classifier",)),
        ZooModel("swin", t, _hf("SwinForImageClassification", "SwinConfig", image_size=32,
                                patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                window_size=4, num_labels=10),
                 _pixels(32), heads=("classifier",)),
        ZooModel("clip_text", t, _hf("CLIPTextModelWithProjection", "CLIPTextConfig",
                                     vocab_size=_VOCAB, hidden_size=64, intermediate_size=128,
                                     projection_dim=32, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=16,
                                     bos_token_id=1, eos_token_id=2),
                 _text(pad=True), heads=("text_projection",)),
    ]  # fmt: skip


@SOURCES.register("transformers")
def transformers_source() -> list[ZooModel]:
    """Twelve Hugging Face families built from small configs with random weights.

    Decoders are built with ``use_cache=False``: a pruning run has no use for a generation
    cache, and it keeps the outputs plain tensors. LLaMA and Mistral use grouped-query
    attention (4 query heads, 2 key/value heads).
    """
    return _transformers_models()


# --------------------------------------------------------------------------- rnn


class RNNClassifier(nn.Module):
    """Embedding -> multi-layer LSTM or GRU -> linear classifier on the last time step.

    Example:
        >>> RNNClassifier("gru", bidirectional=True)(torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        cell: str = "lstm",
        *,
        vocab: int = 100,
        embed: int = 32,
        hidden: int = 48,
        layers: int = 2,
        bidirectional: bool = False,
        num_classes: int = 4,
    ) -> None:
        super().__init__()
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn_cls(
            embed, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))  # (B, T, directions * hidden)
        return self.fc(out[:, -1])


class CharLM(nn.Module):
    """Character language model: embedding -> LSTM -> linear over the vocabulary.

    The decoder shares its weight with the embedding (tied weights), so the LSTM's hidden
    size equals the embedding size.
    """

    def __init__(self, *, vocab: int = 64, hidden: int = 48, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))  # (B, T, hidden)
        return self.decoder(out)  # (B, T, vocab)


def _tokens(vocab: int, length: int) -> Callable[[torch.Generator], torch.Tensor]:
    def make(gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, vocab, (2, length), generator=gen)  # (B, T)

    return make


@SOURCES.register("rnn")
def rnn_source() -> list[ZooModel]:
    """An LSTM classifier, a bidirectional GRU classifier and a tied-weight character LM."""
    return [
        ZooModel("lstm_classifier", "rnn", lambda: RNNClassifier("lstm"), _tokens(100, 10),
                 heads=("fc",)),
        ZooModel("gru_classifier", "rnn", lambda: RNNClassifier("gru", bidirectional=True),
                 _tokens(100, 10), heads=("fc",)),
        ZooModel("char_lm", "rnn", CharLM, _tokens(64, 12), heads=("decoder",)),
    ]  # fmt: skip
