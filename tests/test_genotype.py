"""Genotypes: DARTS derivation, Viterbi path, JSON round trip, validation errors, diff."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from nasfe.config import load_space
from nasfe.genotype import (
    BlockGene,
    Genotype,
    GenotypeError,
    check_path,
    derive_genotype,
    diff_genotypes,
    expected_log_prob,
    node_levels,
    viterbi_path,
)
from nasfe.model.cell import edge_offset, num_edges


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny")


def _space(overrides):
    return load_space("tiny", overrides)


def _hand_alphas(space, picks):
    """alphas where edge e's strongest op is picks[e] = (op, strength); 'zero' made the overall argmax."""
    ops = space.model.operators
    a = torch.zeros(1, num_edges(space.model.blocks), len(ops))
    a[..., ops.index("zero")] = 10.0  # zero dominates every edge: it must still never be chosen
    for e, (op, strength) in picks.items():
        a[0, e, ops.index(op)] = strength
    return a


def test_derivation_picks_intended_ops_and_never_zero(tiny):
    # tiny: blocks 2 -> block 0 edges 0,1 (inputs 0,1); block 1 edges 2,3,4 (inputs 0,1,2)
    picks = {
        0: ("fft_op", 3.0),
        1: ("deveil_op", 2.0),
        2: ("res_op", 1.0),
        3: ("sep_conv_3x3", 4.0),
        4: ("skip_connect", 5.0),
    }
    a = _hand_alphas(tiny, picks)
    betas = torch.zeros(2, 2, 3)
    g = derive_genotype(a, betas, tiny)
    assert g.cells[0][0] == BlockGene([0, 1], ["fft_op", "deveil_op"])
    assert g.cells[0][1] == BlockGene([1, 2], ["sep_conv_3x3", "skip_connect"])  # input 0 is the weakest
    assert all("zero" not in gene.ops for cell in g.cells for gene in cell)
    assert g.space_hash == tiny.space_hash()


def test_derivation_per_layer_cells():
    sp = _space({"model.shared_cell": False})
    a = torch.randn(2, num_edges(2), len(sp.model.operators))
    g = derive_genotype(a, torch.zeros(2, 2, 3), sp)
    assert len(g.cells) == 2
    with pytest.raises(GenotypeError, match="alphas"):
        derive_genotype(a[:1], torch.zeros(2, 2, 3), sp)


def test_edge_weights_can_change_the_chosen_inputs(tiny):
    a = _hand_alphas(tiny, {e: ("fft_op", 1.0) for e in range(5)})
    gam = torch.zeros(1, 5)
    gam[0, 2] = 5.0  # block 1: edge to input 0 dominates
    gam[0, 4] = 4.0
    g = derive_genotype(a, torch.zeros(2, 2, 3), tiny, edge_weights=gam)
    assert g.cells[0][1].inputs == [0, 2]


def test_viterbi_follows_hand_set_betas():
    cells, levels = 4, 3
    b = torch.zeros(cells, levels, 3)
    # favour 0 -> 1 -> 2 -> 1 -> 0: b[layer, source level, move], move 2 = to the coarser level;
    # the moves back down from level 2 and level 1 are the only ones those nodes have
    b[0, 0, 2] = b[1, 1, 2] = 5.0
    path = viterbi_path(b, cells, levels)
    assert path == [1, 2, 1, 0]
    # brute force over every valid path agrees
    best = max(
        (list(p) for p in itertools.product(range(levels), repeat=cells) if check_path(list(p), cells, levels) is None),
        key=lambda p: expected_log_prob(b, p, cells, levels),
    )
    assert best == path


def test_viterbi_random_betas_match_brute_force():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        b = torch.randn(5, 3, 3, generator=g) * 3
        path = viterbi_path(b, 5, 3)
        cands = [list(p) for p in itertools.product(range(3), repeat=5) if check_path(list(p), 5, 3) is None]
        scores = {tuple(p): expected_log_prob(b, p, 5, 3) for p in cands}
        assert scores[tuple(path)] == pytest.approx(max(scores.values()))


def test_node_levels_trellis():
    assert [node_levels(l, 4, 3) for l in range(4)] == [[0, 1], [0, 1, 2], [0, 1], [0]]
    assert check_path([0, 2, 0]) is not None  # jump
    assert check_path([1, 1]) is not None  # does not end at 0
    assert check_path([1, 0], cells=2, levels=2) is None


def test_json_round_trip_and_id(tmp_path, tiny):
    g = derive_genotype(torch.randn(1, 5, 6), torch.randn(2, 2, 3), tiny)
    p = g.to_json(tmp_path / "sub" / "genotype.json")
    back = Genotype.from_json(p, space=tiny)
    assert back == g
    assert back.genotype_id() == g.genotype_id() and len(g.genotype_id()) == 10
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))
    data = json.loads(p.read_text())
    assert data["cells"][0][0].keys() == {"inputs", "ops"}


def _write(tmp_path, data):
    p = tmp_path / "g.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d["cells"][0][0].update(ops=["zero", "fft_op"]), "cells[0][0].ops"),
        (lambda d: d["cells"][0][0].update(ops=["nope", "fft_op"]), "cells[0][0].ops"),
        (lambda d: d["cells"][0][1].update(inputs=[0, 3]), "cells[0][1].inputs"),
        (lambda d: d["cells"][0][1].update(inputs=[1, 1]), "cells[0][1].inputs"),
        (lambda d: d.update(path=[0, 2]), "path"),
        (lambda d: d.pop("blocks"), "missing"),
        (lambda d: d.update(operators=["fft_op", "warp"]), "operators"),
    ],
)
def test_validation_errors_name_file_and_field(tmp_path, tiny, mutate, field):
    g = derive_genotype(torch.randn(1, 5, 6), torch.randn(2, 2, 3), tiny)
    d = g.to_dict()
    mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(GenotypeError) as e:
        Genotype.from_json(p)
    assert str(p) in str(e.value) and field in str(e.value)


def test_space_mismatch_and_bad_json(tmp_path, tiny):
    g = derive_genotype(torch.randn(1, 5, 6), torch.randn(2, 2, 3), tiny)
    p = g.to_json(tmp_path / "g.json")
    other = _space({"model.channels": 12})
    with pytest.raises(GenotypeError, match="space_hash"):
        Genotype.from_json(p, space=other)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GenotypeError, match="bad.json: not valid JSON"):
        Genotype.from_json(bad)
    with pytest.raises(GenotypeError, match="not found"):
        Genotype.from_json(tmp_path / "missing.json")


def test_diff(tiny):
    g = derive_genotype(torch.randn(1, 5, 6), torch.zeros(2, 2, 3), tiny)
    assert diff_genotypes(g, g) == []
    h = Genotype.from_dict(g.to_dict())
    h.cells[0][1] = BlockGene(
        list(g.cells[0][1].inputs), ["fft_op" if g.cells[0][1].ops[0] != "fft_op" else "res_op", g.cells[0][1].ops[1]]
    )
    h.path = [0, 0] if g.path != [0, 0] else [1, 0]
    lines = diff_genotypes(g, h)
    assert (
        lines[0] == f"cell 0 block 1 input {g.cells[0][1].inputs[0]}: {g.cells[0][1].ops[0]} -> {h.cells[0][1].ops[0]}"
    )
    assert lines[-1] == f"path: {g.path} -> {h.path}"
    assert len(lines) == 2
    assert edge_offset(1) == 2
