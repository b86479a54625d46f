"""Tracing and operator rules: which dimensions end up coupled, blocked or unchecked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.graph import trace


def _group(graph, name, dim=0, part=0):
    return graph.group_of(name, dim)[part]


def _members(group) -> set[str]:
    return {f"{m.name}:{m.dim}" for m in group.members}


def test_model_inputs_and_outputs_are_never_prunable():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    graph = trace(model, torch.randn(2, 8))
    assert not _group(graph, "0.weight", 1).prunable
    assert "size of a model input" in _group(graph, "0.weight", 1).blocked
    assert "size of a model output" in _group(graph, "2.weight", 0).blocked
    hidden = _group(graph, "0.weight", 0)
    assert hidden.prunable and _members(hidden) == {"0.weight:0", "0.bias:0", "2.weight:1"}


def test_an_operator_without_rule_blocks_what_it_touches_and_says_where():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 12), nn.Linear(12, 4)

        def forward(self, x):
            h = torch.fft.fft(self.a(x)).real
            return self.c(F.relu(self.b(h)))

    graph = trace(Odd(), torch.randn(2, 8))
    blocked = _group(graph, "a.weight", 0)
    assert not blocked.prunable
    assert any("no rule for operator" in r and "fft" in r for r in blocked.blocked)
    assert _group(graph, "b.weight", 0).prunable  # the rest of the model is unaffected
    assert any("fft" in op for op, _ in graph.unknown_ops)


def test_parameters_not_used_in_forward_are_kept():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.spare = nn.Linear(4, 32)
    graph = trace(model, torch.randn(2, 8))
    assert not _group(graph, "spare.weight", 0).prunable


class _LazyPositions(nn.Module):
    """Rebuilds a non-persistent buffer for each input length, as timm's ConViT does."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Linear(3, 4)
        self.hidden, self.out = nn.Linear(4, 16), nn.Linear(16, 2)
        self.register_buffer("rel", torch.zeros(1, 1, 3), persistent=False)
        self.register_buffer("shift", torch.zeros(16), persistent=False)  # set once: cuttable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rel.shape[1] != x.shape[1]:
            self.rel = torch.linspace(0, 1, x.shape[1] * 3).reshape(1, x.shape[1], 3)
        h = self.pos(self.rel).expand(x.shape[0], -1, -1) + x  # (B, T, 4)
        return self.out(F.relu(self.hidden(h) + self.shift))


def test_buffers_rebuilt_by_code_are_never_cut_and_plans_replay_on_fresh_models(tmp_path):
    from prunekit.structured import load_pruned, prune, save_pruned

    model, x = _LazyPositions(), torch.randn(2, 5, 4)
    model(x)  # the buffer now has the input's length, a fresh model's does not
    graph = trace(model, x)
    blocked = _group(graph, "pos.weight", 1)  # the buffer's last dim feeds pos's inputs
    assert any("rel" in r and "non-persistent" in r for r in blocked.blocked)
    plan = prune(model, x, ratio=0.5)
    assert "rel" not in plan.tensors and "hidden.weight" in plan.tensors
    assert plan.tensors["shift"].shape == (16,)  # a constant buffer shrinks with its group
    plan_path, weights_path = save_pruned(model, plan, tmp_path / "lazy")
    fresh = load_pruned(_LazyPositions(), plan_path, weights_path)
    torch.testing.assert_close(fresh(x), model(x))


def test_transposed_convolution_couples_its_input_channels_with_the_producer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 6, 3),
                          nn.ReLU(), nn.Conv2d(6, 2, 1))
    graph = trace(model, torch.randn(1, 3, 6, 6))
    assert _members(_group(graph, "0.weight", 0)) == {"0.weight:0", "0.bias:0", "2.weight:0"}
    assert _members(_group(graph, "2.weight", 1)) == {"2.weight:1", "2.bias:0", "4.weight:1"}


def test_grouped_convolution_binds_groups_to_an_axis():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=4), nn.Conv2d(8, 2, 1))
    graph = trace(model, torch.randn(1, 3, 5, 5))
    bindings = [(b.module, b.attr) for b in graph.bindings]
    assert ("1", "groups") in bindings
    groups = graph.group_of("0.weight", 0)
    assert sorted(g.size for g in groups) == [2, 4]  # 4 conv groups x 2 channels each


def test_group_norm_keeps_whole_groups_checkable():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Conv2d(8, 2, 1))
    graph = trace(model, torch.randn(1, 3, 4, 4))
    by_size = {g.size: g for g in graph.group_of("1.weight", 0)}
    assert by_size[4].prunable and not by_size[4].unchecked  # whole groups of channels
    assert by_size[2].unchecked  # channels inside a group share statistics
    outer, inner = by_size[4], by_size[2]  # the part of the dimension each group is, typed
    assert (outer.part, outer.part_shape, outer.name) == ("outer", "4x2", "0.weight:0[4x2]")
    assert (inner.part, inner.part_shape, inner.name) == ("inner", "4x2", "0.weight:0[4x2]/2")


def test_layer_norm_marks_the_normalized_dimension_unchecked():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    graph = trace(model, torch.randn(2, 8))
    group = _group(graph, "0.weight", 0)
    assert group.prunable and any("layer norm" in r for r in group.unchecked)
    assert "1.weight:0" in _members(group)


class _EmbedPReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lin, self.act, self.out = nn.Embedding(20, 6), nn.Linear(6, 8), \
            nn.PReLU(8), nn.Linear(8, 2)

    def forward(self, tokens):
        return self.out(self.act(self.lin(self.emb(tokens).mean(1))))


def test_prelu_embedding_and_instance_norm_channels():
    graph = trace(_EmbedPReLU(), torch.tensor([[1, 2, 3]]))
    assert not _group(graph, "emb.weight", 0).prunable  # rows are looked up by index
    assert _group(graph, "emb.weight", 1).prunable
    assert "act.weight:0" in _members(_group(graph, "lin.weight", 0))
    norm = nn.Sequential(nn.Conv2d(3, 8, 1), nn.InstanceNorm2d(8, affine=True), nn.Conv2d(8, 2, 1))
    graph = trace(norm, torch.randn(2, 3, 4, 4))
    assert {"1.weight:0", "1.bias:0", "2.weight:1"} <= _members(_group(graph, "0.weight", 0))


def test_matmul_and_einsum_contract_the_shared_dimension():
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(8, 12))
            self.w2 = nn.Parameter(torch.randn(12, 4))

        def forward(self, x):
            return torch.einsum("bj,jk->bk", torch.relu(x @ self.w1), self.w2)

    graph = trace(Mix(), torch.randn(3, 8))
    assert _members(_group(graph, "w1", 1)) == {"w1:1", "w2:0"}


def test_raw_parameters_class_token_and_layer_scale_follow_the_embedding(zoo):
    case = zoo("token_vit")
    graph = trace(case.model, case.inputs)
    group = _group(graph, "patch.weight", 0)
    assert group.prunable
    assert {"cls_token:2", "pos_embed:2", "gamma:0", "fc1.weight:1", "fc2.weight:0"} <= \
        _members(group)


def test_expand_created_dimensions_are_blocked():
    class Rep(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = nn.Linear(8, 8)

        def forward(self, x):  # (B, 8) -> (B, 3, 8) -> (B, 24)
            return self.k(x)[:, None, :].expand(-1, 3, -1).reshape(x.shape[0], -1)

    graph = trace(Rep(), torch.randn(2, 8))
    assert not _group(graph, "k.weight", 0).prunable  # feeds the output directly


def test_even_chunks_are_cut_alike():
    class Chunky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 4)

        def forward(self, x):
            p, q = self.a(x).chunk(2, dim=-1)
            return self.b(p * q)

    graph = trace(Chunky(), torch.randn(2, 4))
    (group,) = graph.group_of("a.weight", 0)
    assert group.size == 4  # each unit spans position i of both halves
    assert "b.weight:1" in _members(group)
    assert (group.part, group.part_shape) == ("slice", "0:4")  # named after its first half


def test_a_slice_of_a_dimension_is_named_and_typed_as_a_slice():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 10), nn.Linear(6, 3), nn.Linear(4, 3)

        def forward(self, x):
            p, q = self.a(x).split([6, 4], dim=-1)
            return self.b(p) + self.c(q)

    graph = trace(Split(), torch.randn(2, 4))
    first, second = sorted(graph.group_of("a.weight", 0), key=lambda g: g.part_shape)
    assert (first.part, first.part_shape, first.name) == ("slice", "0:6", "a.weight:0[0:6]")
    assert (second.part, second.part_shape) == ("slice", "6:10")


def test_lstm_hidden_units_span_all_gate_chunks_and_layers(zoo):
    case = zoo("lstm")
    graph = trace(case.model, case.inputs)
    hidden = next(g for g in graph.prunable_groups if g.size == 24)
    members = _members(hidden)
    for layer in ("l0", "l1", "l0_reverse", "l1_reverse"):
        assert {f"rnn.weight_ih_{layer}:0", f"rnn.weight_hh_{layer}:0", f"rnn.weight_hh_{layer}:1",
                f"rnn.bias_ih_{layer}:0"} <= members
    assert {"rnn.weight_ih_l1:1", "fc.weight:1"} <= members
    (idx,) = __import__("prunekit.graph._axes", fromlist=["x"]).leaf_index(
        graph.param_axes["rnn.weight_ih_l0"][0], hidden.leaf)
    assert idx.tolist() == list(range(24)) * 4  # the same unit in each of the 4 gates


def test_sdpa_with_grouped_query_heads_cuts_kv_heads_with_their_query_heads():
    class GQA(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.kv = nn.Linear(16, 16), nn.Linear(16, 8)
            self.o = nn.Linear(16, 16)

        def forward(self, x):
            b, t, _ = x.shape
            q = self.q(x).view(b, t, -1, 4).transpose(1, 2)  # (B, 4 heads, T, 4)
            k = self.kv(x).view(b, t, -1, 4).transpose(1, 2)  # (B, 2 heads, T, 4)
            y = F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
            return self.o(y.transpose(1, 2).reshape(b, t, -1))

    graph = trace(GQA(), torch.randn(1, 3, 16))
    prunable = graph.prunable_groups
    assert [g.size for g in prunable] == [2]  # kv heads; each takes 2 query heads along
    assert {"q.weight:0", "kv.weight:0", "o.weight:1"} <= _members(prunable[0])


def test_trace_runs_on_the_meta_device():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    graph = trace(model, torch.empty(1, 3, 6, 6, device="meta"))
    assert [g.size for g in graph.prunable_groups] == [8]


class _Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, groups=1)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, groups=2)

    def forward(self, x):
        return self.up(torch.relu(self.down(x)))


@pytest.mark.parametrize("name", ["conv_bn_relu", "residual", "grouped_depthwise", "mlp",
                                  "flatten_linear", "attention", "transposed"])
def test_mac_count_matches_torch_flop_counter(zoo, name):
    case = zoo(name) if name != "transposed" else None
    model, inputs = (case.model, case.inputs) if case else (_Transposed(), torch.randn(2, 3, 9, 9))
    graph = trace(model, inputs)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    assert graph.macs_after({}) == counter.get_total_flops() // 2
