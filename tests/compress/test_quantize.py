import importlib.util

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.compress import (
    DynamicInt8Config,
    StaticInt8Config,
    WeightOnlyInt8Config,
    int8_state_dict,
    list_quantizers,
    load_quantized,
    quantize,
    save_quantized,
)
from prunekit.errors import ConfigError, DataError

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None,
    reason="weight-only int8 needs torchao: pip install torchao",
)


def _state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _rel_err(a, b):
    return float((a - b).abs().max().detach() / b.abs().max().detach())


def test_methods_are_listed():
    assert list_quantizers() == ["dynamic", "static", "weight-only"]


@pytest.mark.parametrize("case", ["mlp", "lstm", "gru"])
def test_dynamic_round_trip_is_exact_and_close_to_float(zoo, case, tmp_path):
    c = zoo(case)
    before = _state_copy(c.model)
    q = quantize(c.model, "dynamic")
    assert _unchanged(c.model, before)
    assert _rel_err(q(c.inputs), c.model(c.inputs)) < 0.05
    save_quantized(q, tmp_path / "q.pt")
    rebuilt = load_quantized(zoo(case).model, DynamicInt8Config(), tmp_path / "q.pt")
    assert torch.equal(rebuilt(c.inputs), q(c.inputs))


def test_static_round_trip_is_exact(zoo, tmp_path):
    c = zoo("conv_bn_relu")
    calib = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    q = quantize(c.model, StaticInt8Config(), example_inputs=c.inputs, calibration=calib)
    assert _rel_err(q(c.inputs), c.model(c.inputs)) < 0.1
    save_quantized(q, tmp_path / "q.pt")
    rebuilt = load_quantized(
        zoo("conv_bn_relu").model, StaticInt8Config(), tmp_path / "q.pt", example_inputs=c.inputs
    )
    assert torch.equal(rebuilt(c.inputs), q(c.inputs))


@needs_torchao
def test_weight_only_round_trip_is_exact(zoo, tmp_path):
    c = zoo("attention")
    q = quantize(c.model, WeightOnlyInt8Config())
    assert _rel_err(q(c.inputs), c.model(c.inputs)) < 0.05
    save_quantized(q, tmp_path / "q.pt")
    rebuilt = load_quantized(zoo("attention").model, "weight-only", tmp_path / "q.pt")
    assert torch.equal(rebuilt(c.inputs), q(c.inputs))


def test_pruned_zeros_stay_zero_in_int8(zoo):
    c = zoo("mlp")
    pk.sparsify(c.model, sparsity=0.8)
    zeros = c.model.net[0].weight == 0
    plain = int8_state_dict(quantize(c.model, "dynamic"))
    assert plain["net.0.weight"].dtype == torch.int8
    assert torch.equal(plain["net.0.weight"] == 0, zeros)
    assert int(plain["net.0.weight.zero_point"].abs().sum()) == 0
    assert "net.0.weight_mask" in c.model.state_dict()  # the caller's model keeps its masks


@pytest.mark.parametrize(
    ("config", "kwargs", "match"),
    [
        ("int4", {}, "unknown quantization method 'int4'"),
        (42, {}, "pass DynamicInt8Config"),
        ("static", {}, "needs example_inputs"),
        (DynamicInt8Config(modules=("linear",)), {}, "no layer that dynamic int8"),
    ],
)
def test_bad_requests_are_config_errors(zoo, config, kwargs, match):
    c = zoo("grouped_depthwise") if isinstance(config, DynamicInt8Config) else zoo("mlp")
    if isinstance(config, DynamicInt8Config):
        c.model = nn.Sequential(nn.Conv2d(3, 4, 3))
    before = _state_copy(c.model)
    with pytest.raises(ConfigError, match=match):
        quantize(c.model, config, **kwargs)
    assert _unchanged(c.model, before)


def test_bad_config_fields_are_config_errors():
    with pytest.raises(ConfigError, match="valid engines"):
        StaticInt8Config(engine="tpu")
    with pytest.raises(ConfigError, match="modules"):
        DynamicInt8Config(modules=("conv",))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_model_for_static_is_a_config_error():
    x = torch.randn(2, 4)
    with pytest.raises(ConfigError, match="could not trace the model"):
        quantize(_Untraceable(), "static", example_inputs=x, calibration=[x])


def test_loading_the_wrong_file_is_a_data_error(zoo, tmp_path):
    q = quantize(zoo("mlp").model, "dynamic")
    save_quantized(q, tmp_path / "q.pt")
    with pytest.raises(DataError, match="does not match"):
        load_quantized(zoo("lstm").model, "dynamic", tmp_path / "q.pt")
    with pytest.raises(DataError, match="cannot read"):
        load_quantized(zoo("mlp").model, "dynamic", tmp_path / "missing.pt")


def test_shared_weights_must_be_baked_first(zoo):
    from prunekit.compress import bake_sharing, share_weights

    c = zoo("mlp")
    share_weights(c.model, bits=4)
    with pytest.raises(ConfigError, match="bake_sharing"):
        quantize(c.model, "dynamic")
    bake_sharing(c.model)
    plain = int8_state_dict(quantize(c.model, "dynamic"))
    assert plain["net.0.weight"].dtype == torch.int8
