"""Network-level beta as Auto-DeepLab normalises it (over each node's outgoing moves), Viterbi on
it, and the supernet at one-hot alpha/beta computing exactly the derived network."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nasfe.config import load_space
from nasfe.genotype import (
    BlockGene,
    Genotype,
    beta_weights,
    check_path,
    edge_offset,
    expected_log_prob,
    node_input_weights,
    viterbi_path,
)
from nasfe.model.fusion import DerivedFusion, SearchFusion

CELLS, LEVELS = 4, 3  # the paper's trellis


def _valid_paths(cells=CELLS, levels=LEVELS):
    return [
        list(p) for p in itertools.product(range(levels), repeat=cells) if check_path(list(p), cells, levels) is None
    ]


def test_beta_is_normalised_over_each_nodes_outgoing_moves_and_paths_sum_to_one():
    b = torch.randn(CELLS, LEVELS, 3, generator=torch.Generator().manual_seed(0))
    w = beta_weights(b, CELLS, LEVELS)
    out = {}
    for (layer, src, _dst), v in w.items():
        out[(layer, src)] = out.get((layer, src), 0.0) + float(v)
    assert all(v == pytest.approx(1.0) for v in out.values())
    total = sum(math.exp(expected_log_prob(b, p, CELLS, LEVELS)) for p in _valid_paths())
    assert total == pytest.approx(1.0, abs=1e-6)


def test_invalid_paths_are_never_scored():
    b = torch.zeros(CELLS, LEVELS, 3)
    for bad in ([1, 2, 1, 2], [0, 2, 1, 0], [1, 1, 1, 1], [0, 0, 0]):
        assert expected_log_prob(b, bad, CELLS, LEVELS) == -math.inf


def test_viterbi_is_the_most_probable_path_under_outgoing_beta():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        b = 3 * torch.randn(CELLS, LEVELS, 3, generator=g)
        best = max(_valid_paths(), key=lambda p: expected_log_prob(b, p, CELLS, LEVELS))
        assert viterbi_path(b, CELLS, LEVELS) == best


def test_a_margin_for_staying_at_level_zero_decodes_level_zero():
    b = torch.zeros(CELLS, LEVELS, 3)
    b[:, 0, 1] = 1.0  # every node at level 0 prefers staying there
    assert viterbi_path(b, CELLS, LEVELS) == [0, 0, 0, 0]


def test_node_weights_sum_to_one_and_are_one_hot_on_a_one_hot_path():
    b = torch.randn(CELLS, LEVELS, 3, generator=torch.Generator().manual_seed(2))
    prev, prev2 = node_input_weights(b, CELLS, LEVELS)
    for node in prev:
        assert float(sum(prev[node].values())) == pytest.approx(1.0)
        assert float(sum(prev2[node].values())) == pytest.approx(1.0)
    path = [1, 2, 1, 0]
    prev, prev2 = node_input_weights(_one_hot_betas(path), CELLS, LEVELS)
    levels = [0, 0] + path
    for layer, s in enumerate(path):
        assert {k: float(v) for k, v in prev[(layer, s)].items() if float(v) > 0} == {levels[layer + 1]: 1.0}
        assert {k: float(v) for k, v in prev2[(layer, s)].items() if float(v) > 0} == {levels[layer]: 1.0}


def _one_hot_betas(path, big=1e4):
    """Logits whose outgoing softmax is exactly one-hot along ``path`` (other nodes: stay or the only move)."""
    b = torch.full((CELLS, LEVELS, 3), -big)
    prev = 0
    for layer, s in enumerate(path):
        b[layer, prev, s - prev + 1] = big
        prev = s
    b[:, :, 1] = torch.where(b.max(dim=-1, keepdim=True).values.squeeze(-1) < 0, big / 2, b[:, :, 1])
    return b


def _small_paper_space():
    """The paper's trellis and operators at a width a test can afford, partial channels off."""
    return load_space(
        "paper",
        overrides={
            "model.blocks": 3,
            "model.channels": 8,
            "model.partial_channels": 1,
            "model.checkpoint_cells": False,
        },
    )


def _copy_path_weights(sup: SearchFusion, der: DerivedFusion, genotype: Genotype) -> None:
    ops = list(sup.cfg.operators)
    levels = [0, 0] + genotype.path
    with torch.no_grad():
        for layer, s in enumerate(genotype.path):
            cell = sup.cells[f"{layer}_{s}"]
            dcell = der.cells[layer]
            dcell.reduce.load_state_dict(cell.reduce.state_dict())
            for i, gene in enumerate(genotype.cell_for_layer(layer)):
                for k, (j, op) in enumerate(zip(gene.inputs, gene.ops)):
                    dcell.ops[i][k].load_state_dict(cell.edges[edge_offset(i) + j].ops[ops.index(op)].state_dict())
            der.trans[layer].load_state_dict(sup.trans[f"{layer}_{s}_{levels[layer + 1] - s + 1}"].state_dict())
            der.prev_prev[layer].load_state_dict(sup.prev_prev[f"{layer}_{s}_{levels[layer]}"].state_dict())


@pytest.mark.parametrize("path", [[1, 2, 1, 0], [0, 1, 1, 0]])
def test_supernet_at_one_hot_alpha_and_beta_is_the_derived_network(path):
    space = _small_paper_space()
    m = space.model
    ops = list(m.operators)
    live = [o for o in ops if o != "zero"]
    genes = [
        BlockGene([0, 1], [live[0], live[8]]),
        BlockGene([1, 2], [live[6], live[7]]),
        BlockGene([0, 3], [live[4], live[2]]),
    ]
    genotype = Genotype([genes], path, ops, m.blocks, space.space_hash())
    torch.manual_seed(0)
    sup = SearchFusion(m).eval()
    der = DerivedFusion(m, genotype).eval()
    _copy_path_weights(sup, der, genotype)
    with torch.no_grad():
        alphas = torch.full_like(sup.alphas, -1e4)
        alphas[..., ops.index("zero")] = 1e4  # edges a genotype does not keep: zero
        for i, gene in enumerate(genes):
            for j, op in zip(gene.inputs, gene.ops):
                alphas[0, edge_offset(i) + j] = -1e4
                alphas[0, edge_offset(i) + j, ops.index(op)] = 1e4
        sup.alphas.copy_(alphas)
        sup.betas.copy_(_one_hot_betas(path))
        x = torch.randn(1, m.channels, 8, 8, generator=torch.Generator().manual_seed(3))
        assert viterbi_path(sup.betas, m.cells, m.levels) == path
        torch.testing.assert_close(sup(x), der(x), rtol=1e-5, atol=1e-5)
