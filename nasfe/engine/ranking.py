"""How a searched supernet scores fixed genotypes (for ``nasfe rank``); plain tensors, no Ray.

Two rules, the two ways ``nasfe.genotype`` reads a genotype off a supernet:

- ``alpha``: the log-probability the architecture weights give the genotype: for every chosen edge
  log softmax(alpha)[op] (plus the log of the edge's PC-DARTS weight in partial-channel mode), plus
  the path's log-probability under softmax(beta) (``expected_log_prob``). DARTS' derivation picks,
  block by block, the edges and path this score ranks highest.
- ``strength``: the sum of the DARTS-PT strengths (``nasfe.engine.selection``) of the genotype's
  operators on their edges and of the transitions along its path: how much the supernet's loss
  rises when its choices are masked out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nasfe.errors import GenotypeError
from nasfe.genotype import Genotype, block_softmax, edge_offset, expected_log_prob, source_level
from nasfe.engine.checkpoint import load_checkpoint

RULES = ("alpha", "strength")


@dataclass
class Supernet:
    """The architecture tables of one finished search: alpha, beta (and edge weights), strengths."""

    source: str
    alphas: torch.Tensor
    betas: torch.Tensor
    edge_weights: Optional[torch.Tensor] = None
    op_strength: Optional[torch.Tensor] = None
    transition_strength: Optional[torch.Tensor] = None
    genotype: Optional[Genotype] = None


def load_supernet(search_dir: str | Path) -> Supernet:
    """The tables of the search run in ``search_dir``: alpha/beta from its last checkpoint
    (``checkpoints/search_step_*.pt``, anywhere below), strengths from ``strength.json`` when the
    search selected by strength, and its ``genotype.json``."""

    root = Path(search_dir)
    ckpts = sorted(root.rglob("search_step_*.pt"), key=lambda p: p.name)
    if not ckpts:
        raise GenotypeError(f"{root}: no search checkpoint (search_step_*.pt) to read alpha and beta from")
    state = load_checkpoint(ckpts[-1], required=("model",))["model"]
    key = next((k for k in state if k.endswith("alphas")), None)
    if key is None:
        raise GenotypeError(f"{ckpts[-1]}: holds no architecture weights (alphas)")
    prefix = key[: -len("alphas")]
    net = Supernet(str(root), state[key].float(), state[prefix + "betas"].float(), state.get(prefix + "edge_gammas"))
    strength = root / "strength.json"
    if not strength.is_file():
        found = sorted(root.rglob("strength.json"))
        strength = found[-1] if found else strength
    if strength.is_file():
        data = json.loads(strength.read_text())
        net.op_strength = torch.tensor(data["op_strength"], dtype=torch.float64)
        net.transition_strength = torch.tensor(data["transition_strength"], dtype=torch.float64)
    found = [root / "genotype.json"] if (root / "genotype.json").is_file() else sorted(root.rglob("genotype.json"))
    if found:
        net.genotype = Genotype.from_json(found[0])
    return net


def _chosen(genotype: Genotype):
    """``(cell type, edge index, operator)`` of every derived edge."""
    for t, cell in enumerate(genotype.cells):
        for i, gene in enumerate(cell):
            for j, op in zip(gene.inputs, gene.ops):
                yield t, edge_offset(i) + j, op


def _path_transitions(path: list[int]):
    """``(layer, level, transition)`` along ``path`` (from level 0 before the first layer)."""
    prev = 0
    for layer, s in enumerate(path):
        t = prev - s + 1
        assert source_level(s, t) == prev
        yield layer, s, t
        prev = s


def alpha_score(genotype: Genotype, net: Supernet, operators: list[str], cells: int, levels: int) -> float:
    """Log-probability of ``genotype`` under the supernet's alpha, edge weights and beta."""
    logp = torch.log_softmax(net.alphas, dim=-1)
    edges = None
    if net.edge_weights is not None:
        edges = torch.log(block_softmax(net.edge_weights.float(), genotype.blocks))
    total = 0.0
    for t, e, op in _chosen(genotype):
        total += float(logp[t, e, operators.index(op)])
        if edges is not None:
            total += float(edges[t, e])
    return total + expected_log_prob(net.betas, genotype.path, cells, levels)


def strength_score(genotype: Genotype, net: Supernet, operators: list[str]) -> Optional[float]:
    """Sum of the strengths of the genotype's operators and path transitions (None without strengths)."""
    if net.op_strength is None or net.transition_strength is None:
        return None
    total = sum(float(net.op_strength[t, e, operators.index(op)]) for t, e, op in _chosen(genotype))
    return total + sum(float(net.transition_strength[layer, s, t]) for layer, s, t in _path_transitions(genotype.path))


def supernet_scores(genotype: Genotype, net: Supernet, space) -> dict[str, Optional[float]]:
    """``{'alpha': ..., 'strength': ...}`` of ``genotype`` (of ``space``) under one searched supernet."""
    m = space.model
    ops = list(m.operators)
    return {"alpha": alpha_score(genotype, net, ops, m.cells, m.levels), "strength": strength_score(genotype, net, ops)}
