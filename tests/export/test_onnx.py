"""ONNX export: onnxruntime's outputs against PyTorch's, relative to the output scale."""

import importlib.util
import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError

_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"needs {_MISSING}: pip install onnx onnxscript onnxruntime"
)

RTOL = 1e-4  # max |ort - torch| <= 1e-4 x max |torch| (+ 1e-5), float32 kernels differ in order


def _onnx():
    from prunekit.export import onnx

    return onnx


def _check_batch(path, model, x):
    """The file also runs at another batch size than the exported one, and agrees."""
    ort_out = torch.from_numpy(_onnx().run_onnx(path, x)[0])
    ref = model(x)
    assert ort_out.shape == ref.shape
    assert (ort_out - ref).abs().max() <= RTOL * ref.abs().max() + 1e-5


def test_small_cnn_exports_and_matches(zoo, tmp_path):
    case = zoo("conv_bn_relu")
    report = _onnx().export_onnx(case.model, case.inputs, tmp_path / "cnn.onnx", rtol=RTOL)
    assert report.size_bytes == os.path.getsize(tmp_path / "cnn.onnx")
    assert report.max_rel_diff <= RTOL and report.max_abs_diff >= 0
    assert report.input_names == ("x",) and len(report.output_names) == 1
    _check_batch(tmp_path / "cnn.onnx", case.model, torch.randn(5, 3, 8, 8))


def test_structured_pruned_residual_net(zoo, tmp_path):
    case = zoo("residual")
    pk.prune(case.model, case.inputs, ratio=0.5)
    report = _onnx().export_onnx(case.model, case.inputs, tmp_path / "res.onnx")
    assert report.max_rel_diff <= RTOL
    _check_batch(tmp_path / "res.onnx", case.model, torch.randn(3, 3, 8, 8))


@pytest.mark.slow  # ~10 s of torch.export on two shared cores
def test_structured_pruned_torchvision_model(tmp_path):
    tv = pytest.importorskip("torchvision", reason="pip install torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    pk.prune(model, x, ratio=0.5, ignore=[model.fc])
    assert model.conv1.out_channels == 32  # really pruned
    report = _onnx().export_onnx(model, x, tmp_path / "r18.onnx")
    assert report.max_rel_diff <= RTOL
    _check_batch(tmp_path / "r18.onnx", model, torch.randn(3, 3, 32, 32))


def test_tiny_hf_bert_from_config_with_int8(tmp_path):
    transformers = pytest.importorskip("transformers", reason="pip install transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(cfg).eval()
    inputs = {
        "input_ids": torch.randint(0, 100, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }
    onnx = _onnx()
    report = onnx.export_onnx(model, inputs, tmp_path / "bert.onnx")
    assert report.input_names == ("input_ids", "attention_mask")
    assert report.max_rel_diff <= RTOL
    nbytes = onnx.quantize_onnx(tmp_path / "bert.onnx", tmp_path / "bert8.onnx")
    assert nbytes < report.size_bytes
    ref = model(**inputs).last_hidden_state
    out = torch.from_numpy(onnx.run_onnx(tmp_path / "bert8.onnx", inputs)[0])
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()  # int8: close, not exact


def test_masks_are_baked_in_a_copy(zoo, tmp_path):
    case = zoo("mlp")
    pk.sparsify(case.model, sparsity=0.5)
    _onnx().export_onnx(case.model, case.inputs, tmp_path / "m.onnx")
    assert "net.0.weight_mask" in case.model.state_dict()


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        n = int(x.sum() > 0) + 1  # data-dependent Python value: cannot be exported
        return self.fc(x)[:, :n].repeat(1, int(x.abs().sum().item()) % 3 + 1)


def test_model_that_does_not_export_is_a_config_error_and_nothing_is_written(tmp_path):
    with pytest.raises(ConfigError, match="does not export to ONNX"):
        _onnx().export_onnx(_DataDependent(), torch.randn(2, 4), tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("not a model", torch.randn(1), "m.onnx"), "not a torch.nn.Module"),
        ((nn.Linear(2, 2), torch.randn(1, 2), "m.pt"), "should end in .onnx"),
        ((nn.Linear(2, 2), [1, 2], "m.onnx"), "example_inputs is a list"),
    ],
)
def test_bad_arguments_are_config_errors(args, match, tmp_path):
    model, inputs, name = args
    with pytest.raises(ConfigError, match=match):
        _onnx().export_onnx(model, inputs, tmp_path / name)


def test_export_run_replays_plan_and_weights(zoo, tmp_path):
    case = zoo("conv_bn_relu")
    plan = pk.prune(case.model, case.inputs, ratio=0.5)
    pk.save_pruned(case.model, plan, tmp_path)
    os.replace(tmp_path / "weights.safetensors", tmp_path / "pruned.safetensors")
    report = _onnx().export_run(
        tmp_path, model=zoo("conv_bn_relu").model, example_inputs=case.inputs
    )
    assert report.path == tmp_path / "pruned.onnx"
    out = torch.from_numpy(_onnx().run_onnx(report.path, case.inputs)[0])
    assert torch.allclose(out, case.model(case.inputs), rtol=0, atol=1e-4)
    with pytest.raises(ConfigError, match="no pruned.safetensors"):
        _onnx().export_run(tmp_path / "empty", model=case.model, example_inputs=case.inputs)


def test_export_run_of_an_unstructured_run_with_mask_buffers(zoo, tmp_path):
    from prunekit._io import save_safetensors

    case = zoo("mlp")
    pk.sparsify(case.model, sparsity=0.5)
    save_safetensors(tmp_path / "pruned.safetensors", case.model.state_dict())
    report = _onnx().export_run(tmp_path, model=zoo("mlp").model, example_inputs=case.inputs)
    out = torch.from_numpy(_onnx().run_onnx(report.path, case.inputs)[0])
    assert torch.allclose(out, case.model(case.inputs), rtol=0, atol=1e-5)
