"""The genotype chosen by what the supernet relies on (``search.selection: strength``).

In a short search alpha ends near uniform and can favour operators whose removal lowers the loss;
strength selection masks each choice and keeps what the loss misses most (DARTS-PT).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nasfe.config import ConfigError, load_space
from nasfe.engine.selection import MASKED, choice_strengths, transition_choices
from nasfe.genotype import Genotype, derive_from_arch, derive_from_strength, derive_genotype
from tests.test_search_objective import tiny

OPS = ["sep_conv_3x3", "dil_conv_3x3", "res_op", "deveil_op", "skip_connect", "zero"]


def _arch(space):
    m = space.model
    alphas = torch.nn.Parameter(torch.zeros(1, 5, len(OPS)))
    betas = torch.nn.Parameter(torch.zeros(m.cells, m.levels, 3))
    return alphas, betas


def _loss_needing(needed_op: int, needed_transition: int):
    """A loss that falls with the weight of one operator on every edge and of one move out of the
    encoder (1 = stay at level 0, 2 = go to level 1): masking them raises it, masking anything else lowers it (renormalisation)."""

    def loss_of(batch):
        return -batch * (
            loss_of.alphas.softmax(-1)[..., needed_op].sum()
            + loss_of.betas[0, 0, [1, 2]].softmax(0)[needed_transition - 1]
        )

    return loss_of


def test_strength_chooses_what_the_loss_needs_where_alpha_chooses_otherwise():
    space = tiny(**{"model.operators": OPS})
    alphas, betas = _arch(space)
    with torch.no_grad():
        alphas[..., 4] = 0.5  # alpha favours skip_connect on every edge ...
        betas[0, 0, 1] = 0.5  # ... and the path through level 0
    loss_of = _loss_needing(needed_op=3, needed_transition=2)  # ... the loss needs deveil_op and level 1
    loss_of.alphas, loss_of.betas = alphas, betas
    a0, b0 = alphas.detach().clone(), betas.detach().clone()
    averaged = []

    def average(v):
        averaged.append(v.clone())
        return v

    ops, trans = choice_strengths(
        alphas, betas, OPS, space.model.cells, space.model.levels, loss_of, [1.0, 2.0], average=average
    )
    assert torch.equal(alphas.detach(), a0) and torch.equal(betas.detach(), b0)  # restored
    assert len(averaged) == 1 and averaged[0].numel() == 1 + 5 * 5 + 2  # base, live ops, transitions
    assert ops.shape == alphas.shape and trans.shape == betas.shape
    assert (ops[..., 3] > 0).all() and (ops[..., [0, 1, 2, 4]] < 0).all()
    assert (ops[..., 5] == 0).all()  # zero is never a candidate
    assert trans[0, 0, 2] > 0 > trans[0, 0, 1]

    by_alpha = derive_genotype(alphas, betas, space)
    by_strength = derive_from_strength(ops, trans, space)
    assert {o for gene in by_alpha.cells[0] for o in gene.ops} == {"skip_connect"} and by_alpha.path == [0, 0]
    assert {o for gene in by_strength.cells[0] for o in gene.ops} == {"deveil_op"} and by_strength.path == [1, 0]


def test_strength_picks_the_edges_whose_best_operator_is_strongest():
    space = tiny(**{"model.operators": OPS})
    ops = torch.zeros(1, 5, len(OPS))
    ops[0, :, 2] = 1.0  # res_op is the best operator of every edge
    ops[0, 2, 2], ops[0, 3, 2], ops[0, 4, 0] = -3.0, 4.0, 6.0  # block 1: edge 2 weakest, edge 4 wants sep_conv
    g = derive_from_strength(ops, torch.zeros(space.model.cells, space.model.levels, 3), space)
    assert g.cells[0][0].inputs == [0, 1] and g.cells[0][0].ops == ["res_op", "res_op"]
    assert g.cells[0][1].inputs == [1, 2] and g.cells[0][1].ops == ["res_op", "sep_conv_3x3"]
    assert g.meta["selection"] == "strength"


def test_non_finite_strengths_derive_nothing():
    from nasfe.errors import GenotypeError

    space = tiny(**{"model.operators": OPS})
    ops = torch.zeros(1, 5, len(OPS))
    ops[0, 1, 1] = float("nan")
    with pytest.raises(GenotypeError, match="not finite"):
        derive_from_strength(ops, torch.zeros(space.model.cells, space.model.levels, 3), space)


def test_transition_choices_are_the_nodes_with_more_than_one_outgoing_move():
    assert transition_choices(2, 2) == [(0, 0, 1), (0, 0, 2)]  # the encoder: stay at level 0 or go to 1
    assert transition_choices(1, 2) == []
    assert MASKED < -1e8


def test_selection_is_validated_before_anything_runs():
    with pytest.raises(ConfigError, match="search.selection"):
        load_space("tiny", {"search.selection": "biggest"})
    with pytest.raises(ConfigError, match="search.selection_batches"):
        load_space("tiny", {"search.selection_batches": 0})
    assert load_space("paper").search.selection == "alpha"  # the paper's rule stays the paper space's
    assert load_space("search_spaces/cpu.yaml").search.selection == "strength"


@pytest.mark.slow
def test_search_in_partial_channel_mode_writes_the_genotype_its_strengths_give(tmp_path):
    """The product's mode: a search with partial channels (as cpu.yaml and paper.yaml) and
    selection by strength; its genotype.json is what the recorded strengths derive, alpha is left
    as the search learned it, and what alpha would have chosen is recorded beside it."""
    from nasfe.engine.checkpoint import latest_checkpoint, load_checkpoint
    from nasfe.engine.search import run_search

    space = tiny(
        **{
            "model.partial_channels": 2,
            "search.selection": "strength",
            "search.selection_batches": 2,
            "search.epochs": 2,
            "search.warmup_epochs": 1,
        }
    )
    summary = run_search(space, tmp_path)
    table = json.loads((tmp_path / "strength.json").read_text())
    assert table["batches"] == 2 and table["operators"] == list(space.model.operators)
    g = Genotype.from_json(tmp_path / "genotype.json", space=space)
    want = derive_from_strength(torch.tensor(table["op_strength"]), torch.tensor(table["transition_strength"]), space)
    assert g.to_dict()["cells"] == want.to_dict()["cells"] and g.path == want.path
    assert summary["genotype"]["cells"] == g.to_dict()["cells"] and g.meta["selection"] == "strength"
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints", "search"), required=("model",))
    arch = [ckpt["model"][k] for k in ("fusion.alphas", "fusion.betas", "fusion.edge_gammas")]
    by_alpha = derive_from_arch(arch, space)  # the saved alphas are the learned ones, not a masked copy
    assert by_alpha.to_dict()["cells"] == table["by_alpha"]["cells"] and by_alpha.path == table["by_alpha"]["path"]
    assert (torch.tensor(table["op_strength"]).abs() > 0).any()
    # only the last epoch selects by strength: the first epoch's genotype is alpha's
    first = json.loads((tmp_path / "genotypes" / "epoch_001.json").read_text())
    assert "selection" not in first.get("meta", {})


def test_strength_derives_a_valid_genotype_of_the_paper_space():
    """The paper's trellis (four layers, three levels, twelve blocks, ten operators and zero)."""
    from nasfe.genotype import num_edges

    space = load_space("paper")
    m = space.model
    gen = torch.Generator().manual_seed(0)
    ops = torch.randn((1 if m.shared_cell else m.cells, num_edges(m.blocks), len(m.operators)), generator=gen)
    ops[..., m.operators.index("zero")] = 100.0  # never a candidate, however strong
    trans = torch.zeros(m.cells, m.levels, 3)
    choices = transition_choices(m.cells, m.levels)
    assert choices and all(0 <= t < 3 for _, _, t in choices)
    for layer, src, k in choices:
        trans[layer, src, k] = 5.0 if src + k - 1 == 1 else -5.0  # the loss misses the moves into level 1 most
    g = Genotype.from_dict(derive_from_strength(ops, trans, space).to_dict(), space=space)  # the space's checks
    assert all(o != "zero" for cell in g.cells for gene in cell for o in gene.ops)
    assert 1 in g.path
    first = g.cells[0][0]
    live = [i for i, o in enumerate(m.operators) if o != "zero"]
    assert first.ops[0] == m.operators[live[int(ops[0, first.inputs[0], live].argmax())]]


def _two_rank_space():
    return tiny(
        **{
            "model.partial_channels": 2,
            "search.selection": "strength",
            "search.selection_batches": 2,
            "search.epochs": 2,
            "search.warmup_epochs": 1,
        }
    )


def _two_rank_worker(rank: int, init: str, run_dir: str, out: str) -> None:
    """One rank of a two-process gloo search (the engine without Ray); records what each rank
    measured before the strengths were averaged, and the genotype it ended with."""
    import torch.distributed as tdist

    from nasfe.engine import search
    from nasfe.engine.search import run_search

    local: list = []
    measure = search.choice_strengths

    def recording_measure(*args, average, **kwargs):
        def recording_average(tensor):
            local.append(tensor.detach().clone().tolist())
            return average(tensor)

        return measure(*args, average=recording_average, **kwargs)

    search.choice_strengths = recording_measure  # the search phase's own name for the measure
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    res: dict = {}
    try:
        summary = run_search(_two_rank_space(), run_dir)
        res = {"local": local, "cells": summary["genotype"]["cells"], "path": summary["genotype"]["path"]}
    except Exception as exc:  # reported to the test, which names it
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        Path(out, f"r{rank}.json").write_text(json.dumps(res))
        tdist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two processes each searching: past the default 600 s at load 10-12 on 2 cores
def test_two_ranks_choose_one_genotype_from_their_averaged_strengths(tmp_path):
    """Data-parallel search, as Ray Train runs it: each rank measures strengths on its own shard,
    the tables are averaged, both ranks write the same genotype, and strength.json holds the average."""
    import torch.multiprocessing as mp

    from tests.test_dist_device import rendezvous

    run_dir = tmp_path / "search"
    mp.start_processes(
        _two_rank_worker, args=(rendezvous(tmp_path), str(run_dir), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert "error" not in r, r["error"]
    assert (r0["cells"], r0["path"]) == (r1["cells"], r1["path"])
    (v0,), (v1,) = r0["local"], r1["local"]  # each rank's losses: unmasked, then each choice masked
    assert v0 != v1  # each rank measured on its own batches
    rises = [sum(v[1:]) - (len(v) - 1) * v[0] for v in (v0, v1)]  # every choice's rise, summed
    table = json.loads((run_dir / "strength.json").read_text())
    total = sum(torch.tensor(table[k]).sum().item() for k in ("op_strength", "transition_strength"))
    assert total == pytest.approx(sum(rises) / 2, rel=1e-6, abs=1e-6)  # the average, not rank 0's own
    assert abs(rises[0] - rises[1]) > 1e-6
    g = Genotype.from_json(run_dir / "genotype.json", space=_two_rank_space())
    assert g.to_dict()["cells"] == r0["cells"] and g.path == r0["path"]
