"""Wanda's ranking on layers built so that the answer is known."""

import torch
from torch import nn

import prunekit as pk
from prunekit import mask
from prunekit.importance.activation import InputStats
from prunekit.oneshot.methods import LayerTarget, get_method


def _known_layer():
    # |W_ij| = 1 / (j + 1) (magnitude keeps the first columns), feature j has norm
    # proportional to (j + 1)^2, so |W_ij| * ||X_j|| grows with j: Wanda keeps the last
    # columns. Row i is scaled by 10^i, so a per-layer ranking would cut whole rows.
    rows, cols = 4, 8
    j = torch.arange(cols, dtype=torch.float32)
    signs = torch.where(torch.rand(rows, cols, generator=torch.Generator().manual_seed(0)) < 0.5,
                        -1.0, 1.0)
    w = signs / (j + 1) * (10.0 ** torch.arange(rows)).unsqueeze(1)
    x = torch.randn(64, cols, generator=torch.Generator().manual_seed(1))
    x = x / x.norm(dim=0) * (j + 1) ** 2  # column norms exactly (j + 1)^2
    lin = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin, x


def test_wanda_keeps_the_columns_with_the_largest_weight_times_input_norm_in_every_row():
    lin, x = _known_layer()
    stats = InputStats(lin)
    lin(x)
    stats.remove()
    torch.testing.assert_close(stats.feature_norm(), (torch.arange(8.0) + 1) ** 2)
    _, keep = get_method("wanda").fn(lin.weight.detach(), stats, None, LayerTarget(0.5, None))
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[:, 4:] = True
    assert torch.equal(keep, expected)
    _, keep_mag = get_method("magnitude").fn(lin.weight.detach(), None, None,
                                             LayerTarget(0.5, None))
    assert keep_mag[3].all() and not keep_mag[0].any()  # per layer: whole rows go


def test_sparsify_wanda_criterion_compares_within_rows_and_attaches_masks():
    lin, x = _known_layer()
    model = nn.Sequential(lin)
    result = pk.sparsify(model, sparsity=0.5, criterion="wanda", data=[x[:32], (x[32:], None)])
    assert result == {"0.weight": 0.5}
    kept = mask.get_mask(lin, "weight")
    assert kept is not None and kept[:, 4:].all() and not kept[:, :4].any()
    # scope="layer" ranks the whole layer instead: the small rows go entirely
    lin2, _ = _known_layer()
    pk.sparsify(nn.Sequential(lin2), sparsity=0.5, criterion="wanda", scope="layer", data=[x])
    kept2 = mask.get_mask(lin2, "weight")
    assert not kept2[0].any() and kept2[3].all()


def test_row_scope_on_a_transposed_conv_ranks_each_output_channel():
    conv = nn.ConvTranspose1d(3, 2, 2)  # weight (in=3, out=2, k=2): out_dim is 1
    with torch.no_grad():
        conv.weight.copy_(torch.arange(12.0).reshape(3, 2, 2) + 1)
        conv.weight[:, 1] *= 100  # a per-layer ranking would prune channel 0 entirely
    pk.sparsify(nn.Sequential(conv), sparsity=0.5, scope="row")
    kept = mask.get_mask(conv, "weight")
    assert kept[:, 0].sum() == 3 and kept[:, 1].sum() == 3


def test_sparsify_wanda_with_2_4_pattern_keeps_the_two_best_of_every_four():
    lin, x = _known_layer()
    pk.sparsify(nn.Sequential(lin), pattern="2:4", criterion="wanda", data=[x])
    kept = mask.get_mask(lin, "weight")
    expected = torch.tensor([False, False, True, True] * 2).expand(4, 8)
    assert torch.equal(kept, expected)


def test_sparsify_wanda_without_data_says_what_to_pass():
    import pytest

    from prunekit.errors import ConfigError

    lin, _ = _known_layer()
    before = lin.weight.detach().clone()
    with pytest.raises(ConfigError, match="calibration data"):
        pk.sparsify(nn.Sequential(lin), sparsity=0.5, criterion="wanda")
    assert torch.equal(lin.weight, before) and mask.get_mask(lin, "weight") is None


def test_sparsify_wanda_refuses_layers_it_cannot_follow():
    import pytest

    from prunekit.errors import ConfigError

    model = nn.Sequential(nn.LSTM(4, 4))
    with pytest.raises(ConfigError, match="exclude"):
        pk.sparsify(model, sparsity=0.5, criterion="wanda", data=[torch.randn(3, 2, 4)])
