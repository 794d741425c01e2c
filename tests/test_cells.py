"""Mixed operations and fusion cells: Eq. 4-6, partial channels, derived cells."""

from __future__ import annotations

import pytest
import torch

from nasfe.genotype import BlockGene
from nasfe.model.cell import DerivedCell, MixedOp, SearchCell, channel_shuffle, edge_offset, edge_softmax, num_edges
from nasfe.model.ops import OPS, op_param_count

OPS_SMALL = ["sep_conv_3x3", "fft_op", "deveil_op", "skip_connect", "zero"]


def test_edge_bookkeeping():
    assert [num_edges(b) for b in (1, 2, 12)] == [2, 5, 90]
    assert edge_offset(3) == 2 + 3 + 4


def test_mixed_op_is_the_softmax_weighted_sum():
    torch.manual_seed(0)
    m = MixedOp(4, OPS_SMALL)
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(len(OPS_SMALL)), 0)
    want = sum(w[i] * m.ops[i](x) for i in range(len(OPS_SMALL)))
    torch.testing.assert_close(m(x, w), want)
    onehot = torch.zeros(len(OPS_SMALL))
    onehot[OPS_SMALL.index("skip_connect")] = 1
    torch.testing.assert_close(m(x, onehot), x)


def test_partial_channels_only_touch_a_quarter():
    torch.manual_seed(0)
    m = MixedOp(8, OPS_SMALL, partial_channels=4)
    assert all(op_param_count(n, 2) == sum(p.numel() for p in op.parameters()) for n, op in zip(OPS_SMALL, m.ops))
    x = torch.randn(1, 8, 5, 5)
    zero_w = torch.zeros(len(OPS_SMALL))
    zero_w[OPS_SMALL.index("zero")] = 1
    out = m(x, zero_w)
    # the 6 bypassed channels come through unchanged (shuffled), the 2 processed ones are zero
    assert torch.equal(out, channel_shuffle(torch.cat([torch.zeros(1, 2, 5, 5), x[:, 2:]], 1), 4))


def test_channel_shuffle_is_a_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize("k", [1, 2])
def test_search_cell_gradients_reach_every_alpha_and_weight(k):
    torch.manual_seed(0)
    blocks = 3
    cell = SearchCell(4, blocks, OPS_SMALL, partial_channels=k)
    for mod in cell.modules():  # gamma = 0 would block attention weights; none here, but be general
        if hasattr(mod, "gamma"):
            torch.nn.init.constant_(mod.gamma, 0.5)
    alphas = (1e-3 * torch.randn(num_edges(blocks), len(OPS_SMALL))).requires_grad_()
    gammas = torch.zeros(num_edges(blocks), requires_grad=True)
    s0, s1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    out = cell(s0, s1, torch.softmax(alphas, -1), edge_softmax(gammas, blocks) if k > 1 else None)
    assert out.shape == s1.shape
    out.square().mean().backward()
    assert (alphas.grad.abs()[:, [i for i, n in enumerate(OPS_SMALL) if n != "zero"]] > 0).all()
    if k > 1:
        assert (gammas.grad.abs() > 0).all()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_edge_softmax_normalises_per_block():
    g = torch.randn(num_edges(4))
    w = edge_softmax(g, 4)
    for i in range(4):
        assert w[edge_offset(i) : edge_offset(i + 1)].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_derived_cell_wiring_and_params():
    torch.manual_seed(0)
    genes = [BlockGene([0, 1], ["fft_op", "skip_connect"]), BlockGene([1, 2], ["sep_conv_3x3", "deveil_op"])]
    cell = DerivedCell(6, genes)
    expect = sum(op_param_count(o, 6) for g in genes for o in g.ops) + 2 * 6 * 6 + 6
    assert sum(p.numel() for p in cell.parameters()) == expect
    s0, s1 = torch.randn(1, 6, 8, 8), torch.randn(1, 6, 8, 8)
    b0 = cell.ops[0][0](s0) + s1
    b1 = cell.ops[1][0](s1) + cell.ops[1][1](b0)
    torch.testing.assert_close(cell(s0, s1), s1 + cell.reduce(torch.cat([b0, b1], 1)))


def test_derived_cell_rejects_zero_and_bad_inputs():
    with pytest.raises(ValueError, match="zero"):
        DerivedCell(4, [BlockGene([0, 1], ["zero", "fft_op"])])
    with pytest.raises(ValueError, match="out of range"):
        DerivedCell(4, [BlockGene([0, 2], ["fft_op", "fft_op"])])
    assert set(OPS) >= set(OPS_SMALL)
