import io

import pytest
import torch
from safetensors.torch import save
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.errors import ConfigError
from prunekit.measure import (
    count_macs,
    count_nonzero_params,
    count_params,
    measure_cost,
    measure_latency,
    save_sparse,
    size_bytes,
)
from prunekit.measure.cost import resize_batch


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


def conv_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 12, 3, stride=2, groups=4),  # grouped
        nn.ReLU(),
        nn.ConvTranspose2d(12, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )


class AttentionBlock(nn.Module):
    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        return x + self.ff(x)


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 10, num_layers=2, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def flop_counter_macs(model, inputs):
    """MACs per ATen operator according to torch.utils.flop_counter (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize(
    ("build", "inputs"),
    [
        (mlp, (torch.randn(3, 3, 2, 2),)),
        (conv_net, (torch.randn(2, 3, 9, 9),)),
    ],
    ids=["mlp", "conv-bn-relu-grouped-transposed"],
)
def test_dense_macs_match_flop_counter(build, inputs):
    torch.manual_seed(0)
    model = build().eval()
    theirs = flop_counter_macs(model, inputs)
    ours = count_macs(model, inputs)
    assert {op: dense for op, (dense, _) in ours.per_op.items()} == theirs
    assert ours.dense == sum(theirs.values())
    assert ours.flops == 2 * ours.dense


def test_attention_macs_match_flop_counter_on_the_ops_it_counts():
    # need_weights=False in eval mode makes nn.MultiheadAttention take its fused fast
    # path (aten._native_multi_head_attention), which flop_counter does not count at
    # all. count_macs switches that fast path off so the projections appear as
    # mm/addmm; switch it off for flop_counter too. The attention itself then runs as
    # aten._scaled_dot_product_flash_attention_for_cpu, which flop_counter has no
    # formula for (it only knows the CUDA flash/efficient/cudnn variants), so that op
    # is checked against the hand formula instead.
    torch.manual_seed(0)
    model, x = AttentionBlock().eval(), torch.randn(2, 7, 16)
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        theirs = flop_counter_macs(model, (x,))
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
    ours = {op: dense for op, (dense, _) in count_macs(model, x).per_op.items()}
    b, t, d = 2, 7, 16
    sdpa = ours.pop("aten._scaled_dot_product_flash_attention_for_cpu")
    assert sdpa == b * t * t * d * 2  # q @ k^T and scores @ v over all heads
    # torch >= 2.15's flop_counter counts CPU flash attention too: it must agree
    assert theirs.pop("aten._scaled_dot_product_flash_attention_for_cpu", sdpa) == sdpa
    assert ours == theirs
    projections = b * t * (3 * d * d + d * d) + b * t * (2 * d * d * 2)
    assert sum(ours.values()) == projections
    assert torch.backends.mha.get_fastpath_enabled() == before


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_lstm_macs_match_flop_counter_on_the_decomposed_path():
    # On the CPU nn.LSTM runs as aten.mkldnn_rnn_layer (oneDNN), which flop_counter has
    # no formula for (it reports 0). With oneDNN switched off the same LSTM decomposes
    # into addmm per gate projection, which flop_counter does count; our count must be
    # the same number on both paths.
    torch.manual_seed(0)
    model, x = LSTMClassifier().eval(), torch.randn(3, 5, 6)
    with torch.backends.mkldnn.flags(enabled=False):
        theirs = flop_counter_macs(model, (x,))
        decomposed = count_macs(model, x)
    fused = count_macs(model, x)
    assert "aten.mkldnn_rnn_layer" in fused.per_op
    assert decomposed.dense == sum(theirs.values()) == fused.dense
    steps, h = 3 * 5, 10
    assert fused.dense == steps * 4 * h * (6 + h) + steps * 4 * h * (h + h) + 3 * h * 3


def test_hand_computed_conv_and_linear():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(48, 7))
    count = count_macs(model, torch.randn(2, 2, 4, 4))
    conv = 2 * (4 * 4) * 3 * 2 * 9  # batch x output positions x C_out x C_in x kernel
    linear = 2 * 48 * 7
    assert count.per_module == {"0": (conv, conv), "2": (linear, linear)}
    assert count.dense == conv + linear


def test_hand_computed_transposed_grouped_conv():
    conv = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
    count = count_macs(conv, torch.randn(1, 4, 3, 3))
    assert count.dense == 3 * 3 * 4 * (6 // 2) * 2 * 2  # input positions x C_in x C_out/g x k


def zero_half(weight, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(weight.numel(), generator=g)[: weight.numel() // 2]
    with torch.no_grad():
        weight.view(-1)[idx] = 0


def test_effective_macs_halve_when_half_the_weights_are_zero():
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10), nn.Linear(10, 3)
    )
    zero_half(model[0].weight)
    zero_half(model[3].weight)
    count = count_macs(model, torch.randn(5, 4, 6, 6))
    conv = 5 * (4 * 4) * 6 * 4 * 9  # batch x output positions x C_out x C_in x kernel
    fc1, fc2 = 5 * 96 * 10, 5 * 10 * 3
    assert count.per_module == {"0": (conv, conv // 2), "3": (fc1, fc1 // 2), "4": (fc2, fc2)}
    assert (count.dense, count.effective) == (conv + fc1 + fc2, conv // 2 + fc1 // 2 + fc2)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_effective_macs_follow_weight_views_in_lstm_and_attention():
    lstm = nn.LSTM(4, 6)
    zero_half(lstm.weight_hh_l0)
    fused = count_macs(lstm, torch.randn(5, 3, 4))
    with torch.backends.mkldnn.flags(enabled=False):
        decomposed = count_macs(lstm, torch.randn(5, 3, 4))
    zeros = 5 * 3 * lstm.weight_hh_l0.numel() // 2
    assert fused.dense - fused.effective == zeros == decomposed.dense - decomposed.effective

    mha = nn.MultiheadAttention(8, 2)
    zero_half(mha.out_proj.weight)
    count = count_macs(mha, (torch.randn(5, 2, 8),) * 3)
    assert count.dense - count.effective == 5 * 2 * 64 // 2


def test_count_macs_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(conv_net(), nn.Dropout(0.5)).train()
    model[0][0].requires_grad_(False)
    model[0][3].eval()
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, torch.randn(2, 3, 9, 9))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_example_inputs_may_be_tuple_or_dict():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    model, x, y = TwoInputs(), torch.randn(2, 3), torch.randn(2, 5)
    expected = 2 * 3 * 4 + 2 * 5 * 4
    assert count_macs(model, (x, y)).dense == expected
    assert count_macs(model, {"x": x, "y": y}).dense == expected


def test_meta_device_model_counts_dense_macs():
    with torch.device("meta"):
        model = conv_net()
    x = torch.randn(2, 3, 9, 9)
    meta_count = count_macs(model, x)
    assert meta_count.dense == sum(flop_counter_macs(conv_net().eval(), (x,)).values())
    assert meta_count.effective == meta_count.dense


def test_count_params_counts_tied_weights_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    assert count_params(model) == 40
    zero_half(model[0].weight)
    assert count_nonzero_params(model) == 20
    once = save({"0.weight": model[0].weight.detach()})  # tied tensors are stored once
    assert size_bytes(model) == len(once)


def test_count_nonzero_params_on_meta_is_a_config_error():
    with torch.device("meta"):
        model = nn.Linear(3, 3)
    with pytest.raises(ConfigError, match="meta device"):
        count_nonzero_params(model)


def test_measure_latency_returns_positive_numbers_and_restores_state():
    model = mlp().train()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stats = measure_latency(model, torch.randn(4, 12), threads=2, warmup=1, runs=3)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert model.training and all(m.training for m in model.modules())
    assert 0 < stats.min_ms <= stats.p10_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.mean_ms > 0
    assert (stats.runs, stats.threads, stats.batch_size) == (3, 2, 4)


@pytest.mark.parametrize(
    "kwargs", [{"runs": 0}, {"warmup": -1}, {"threads": 0}], ids=["runs", "warmup", "threads"]
)
def test_measure_latency_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        measure_latency(mlp(), torch.randn(1, 12), **kwargs)


def test_resize_batch_repeats_or_cuts_along_dim_zero():
    x = torch.arange(3).reshape(3, 1)
    assert resize_batch(x, 5).flatten().tolist() == [0, 1, 2, 0, 1]
    assert resize_batch(x, 2).flatten().tolist() == [0, 1]
    pair = resize_batch({"x": x, "scale": 2.0}, 4)
    assert pair["x"].shape == (4, 1) and pair["scale"] == 2.0


def test_measure_cost_reports_every_number(tmp_path):
    torch.manual_seed(0)
    model = conv_net().eval()
    zero_half(model[4].weight)
    x = torch.randn(3, 3, 9, 9)  # a batch: cut to 1, repeated to 5
    cost = measure_cost(model, x, batch_sizes=(1, 5), threads=1, runs=2)
    params = list(model.parameters())
    assert cost["params"] == sum(p.numel() for p in params)
    assert cost["nonzero_params"] == sum(int((p != 0).sum()) for p in params)
    zeros = model[4].weight.numel() // 2 + model[1].bias.numel()  # batch norm's bias starts at 0
    assert cost["params"] - cost["nonzero_params"] == zeros
    single = sum(flop_counter_macs(model, (x[:1],)).values())  # one example
    assert cost["macs"] == single
    # every weight of the grouped conv is used once per output position (4 x 4)
    assert cost["effective_macs"] == single - model[4].weight.numel() // 2 * 4 * 4
    assert cost["latency_ms"] > 0 and cost["latency_ms_batch5"] > 0
    assert "latency_ms_batch1" not in cost
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert cost["size_bytes"] == len(save(state))
    save_sparse(model.state_dict(), tmp_path / "w.safetensors")
    assert cost["sparse_size_bytes"] == (tmp_path / "w.safetensors").stat().st_size


def test_size_bytes_counts_buffers_and_accepts_a_state_dict():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    state = model.state_dict()
    assert size_bytes(model) == size_bytes(state)
    # running_mean, running_var (float32) and num_batches_tracked (int64) are included
    params_only = {k: v for k, v in state.items() if k in dict(model.named_parameters())}
    assert size_bytes(state) > size_bytes(params_only) + 3 * 4 * 2 + 8
    buf = io.BytesIO(save({k: v.contiguous() for k, v in state.items()}))
    assert size_bytes(state) == len(buf.getvalue())


def test_size_bytes_unknown_encoding_lists_choices():
    with pytest.raises(ConfigError, match="dense, sparse"):
        size_bytes(nn.Linear(2, 2), encoding="zip")


def test_measure_cost_rejects_bad_batch_sizes():
    with pytest.raises(ConfigError, match="batch_sizes"):
        measure_cost(mlp(), torch.randn(1, 12), batch_sizes=(1, 0))
