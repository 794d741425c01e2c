"""Genotypes: the discrete architecture found by the search, as plain data.

A genotype holds, per fusion-cell type and block, the two chosen inputs and their operators
(never ``zero``), and the network-level path: the level (0 = encoder resolution, s = 1/2^s of
it) of each of the L fusion cells. With ``model.shared_cell`` (the default, Auto-DeepLab style)
there is one cell type used by every layer, so ``cells`` has one entry; otherwise one per layer.

Block inputs are numbered 0 = previous-previous cell, 1 = previous cell, 2 + j = block j.
JSON form (schema 1)::

    {"schema_version": 1, "space_hash": "...", "blocks": 2, "operators": [...],
     "cells": [[{"inputs": [0, 1], "ops": ["fft_op", "sep_conv_3x3"]}, ...]],
     "path": [0, 1, 0], "meta": {...}}
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nasfe.errors import GenotypeError
from nasfe.registry import OPERATORS, param_free_ops
import itertools
import random

SCHEMA_VERSION = 1


def __getattr__(name: str) -> Any:
    # PARAM_FREE_OPS: the registered operators without learnable parameters (``zero`` is never
    # derived). A search that picks these for most edges has collapsed (DARTS' skip-connection failure).
    if name == "PARAM_FREE_OPS":
        return param_free_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class BlockGene:
    """One block: ``ops[i]`` is applied to input ``inputs[i]``; the two results are added."""

    inputs: list[int]
    ops: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "ops": list(self.ops)}


def edge_offset(block: int) -> int:
    """Index of the first incoming edge of ``block``: edges are numbered block by block and block
    i owns i + 2 of them (inputs 0 = previous-previous cell, 1 = previous cell, 2 + j = block j)."""
    return 2 * block + block * (block - 1) // 2


def num_edges(blocks: int) -> int:
    """Edges of a cell with ``blocks`` blocks: sum over i of (i + 2)."""
    return edge_offset(blocks)


def node_levels(layer: int, cells: int, levels: int) -> list[int]:
    """Levels of the trellis nodes at ``layer``: reachable from level 0 before layer 0 and able to
    return to level 0 at the last layer, moving at most one level per layer."""
    return [s for s in range(levels) if s <= layer + 1 and s <= cells - 1 - layer]


def source_level(level: int, transition: int) -> int:
    """Level a transition into ``level`` comes from: 0 = from the finer level (downsample), 1 = same,
    2 = from the coarser level (upsample)."""
    return level + transition - 1


def valid_transitions(level: int, prev_levels) -> list[int]:
    """Transitions into a node at ``level`` whose source level exists in the layer before (``prev_levels``)."""
    return [t for t in range(3) if source_level(level, t) in prev_levels]


def layer_sources(layer: int, cells: int, levels: int) -> list[int]:
    """Levels of the nodes that feed ``layer``: the layer before's, or the encoder (level 0) for layer 0."""
    return [0] if layer == 0 else node_levels(layer - 1, cells, levels)


def out_moves(layer: int, src: int, cells: int, levels: int) -> list[int]:
    """Moves ``k`` (destination level ``src + k - 1``: 0 = to the finer level, 1 = stay, 2 = to the
    coarser level) that the node at level ``src`` before ``layer`` can take into ``layer``'s nodes."""
    here = node_levels(layer, cells, levels)
    return [k for k in range(3) if src + k - 1 in here]


def beta_weights(betas, cells: int, levels: int, log: bool = False) -> dict:
    """Auto-DeepLab's network-level weights: ``{(layer, src, dest): weight}``.

    ``betas[layer, src, k]`` is the logit of the node at level ``src`` before ``layer`` (the encoder
    for layer 0) moving to level ``src + k - 1`` at ``layer``; softmax over each node's OUTGOING
    moves that reach a node of the trellis (one that can still return to level 0), so the weights
    of every complete path multiply to a probability and all paths' probabilities sum to one.
    ``log``: log-probabilities (Viterbi). Differentiable in ``betas``.
    """
    import torch  # local: a genotype is plain data, reading one loads no torch

    out = {}
    for layer in range(cells):
        for src in layer_sources(layer, cells, levels):
            moves = out_moves(layer, src, cells, levels)
            row = betas[layer, src, moves]
            w = torch.log_softmax(row, dim=0) if log else torch.softmax(row, dim=0)
            for i, k in enumerate(moves):
                out[(layer, src, src + k - 1)] = w[i]
    return out


def check_path(path: list[int], cells: Optional[int] = None, levels: Optional[int] = None) -> Optional[str]:
    """Why ``path`` is not a valid network-level path, or None when it is."""
    if not isinstance(path, list) or not path or not all(isinstance(s, int) and not isinstance(s, bool) for s in path):
        return f"expected a non-empty list of integers, got {path!r}"
    if cells is not None and len(path) != cells:
        return f"has {len(path)} layers, the space has model.cells = {cells}"
    if path[-1] != 0:
        return f"must end at level 0 (the decoder's resolution), ends at {path[-1]}"
    prev = 0
    for layer, s in enumerate(path):
        if s < 0 or (levels is not None and s >= levels):
            return f"layer {layer}: level {s} out of range [0, {levels if levels is not None else '...'})"
        if abs(s - prev) > 1:
            return f"layer {layer}: jumps from level {prev} to {s} (at most one level per layer)"
        prev = s
    return None


@dataclass
class Genotype:
    """The derived architecture (plain data). See the module docstring for the JSON form."""

    cells: list[list[BlockGene]]
    path: list[int]
    operators: list[str]
    blocks: int
    space_hash: str
    schema_version: int = SCHEMA_VERSION
    meta: dict = field(default_factory=dict)

    def cell_for_layer(self, layer: int) -> list[BlockGene]:
        """The cell type used by ``layer`` (the shared one when there is only one)."""
        return self.cells[0] if len(self.cells) == 1 else self.cells[layer]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain data."""
        return {
            "schema_version": self.schema_version,
            "space_hash": self.space_hash,
            "blocks": self.blocks,
            "operators": list(self.operators),
            "cells": [[g.to_dict() for g in cell] for cell in self.cells],
            "path": list(self.path),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Any, space=None, where: str = "genotype") -> "Genotype":
        """Build and validate; ``space`` (a SpaceConfig) adds the hash, size and operator checks."""
        if not isinstance(data, dict):
            raise GenotypeError(f"{where}: expected a JSON object, got {type(data).__name__}")
        required = ("schema_version", "space_hash", "blocks", "operators", "cells", "path")
        missing = [k for k in required if k not in data]
        if missing:
            raise GenotypeError(f"{where}: missing field(s) {missing}")
        unknown = sorted(set(data) - set(required) - {"meta"})
        if unknown:
            raise GenotypeError(f"{where}: unknown field(s) {unknown}")
        if data["schema_version"] != SCHEMA_VERSION:
            raise GenotypeError(
                f"{where}: schema_version = {data['schema_version']!r}; this code reads {SCHEMA_VERSION}"
            )
        ops = data["operators"]
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise GenotypeError(f"{where}: operators must be a list of names")
        unknown_ops = [o for o in ops if o not in OPERATORS]
        if unknown_ops:
            raise GenotypeError(f"{where}: operators: unknown operator(s) {unknown_ops}")
        blocks = data["blocks"]
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
            raise GenotypeError(f"{where}: blocks must be a positive integer, got {blocks!r}")
        cells = _cells_from_dict(data["cells"], blocks, ops, where)
        path = data["path"]
        why = check_path(path)
        if why:
            raise GenotypeError(f"{where}: path {why}")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise GenotypeError(f"{where}: meta must be an object")
        if len(cells) not in (1, len(path)):
            raise GenotypeError(
                f"{where}: cells has {len(cells)} entries; expected 1 (shared) or one per layer ({len(path)})"
            )
        g = cls(
            cells=cells,
            path=list(path),
            operators=list(ops),
            blocks=blocks,
            space_hash=str(data["space_hash"]),
            schema_version=SCHEMA_VERSION,
            meta=meta,
        )
        if space is not None:
            g.check_space(space, where)
        return g

    def check_space(self, space, where: str = "genotype") -> None:
        """Raise :class:`GenotypeError` unless this genotype belongs to ``space`` (a SpaceConfig)."""
        m = space.model
        if self.space_hash != space.space_hash():
            raise GenotypeError(
                f"{where}: space_hash {self.space_hash!r} does not match space "
                f"{space.name!r} ({space.space_hash()!r}); it was searched in another space"
            )
        if self.blocks != m.blocks:
            raise GenotypeError(f"{where}: blocks = {self.blocks}, space has model.blocks = {m.blocks}")
        expected_cells = 1 if m.shared_cell else m.cells
        if len(self.cells) != expected_cells:
            raise GenotypeError(f"{where}: cells has {len(self.cells)} entries, space expects {expected_cells}")
        why = check_path(self.path, m.cells, m.levels)
        if why:
            raise GenotypeError(f"{where}: path {why}")
        bad = sorted({o for cell in self.cells for g in cell for o in g.ops} - set(m.operators))
        if bad:
            raise GenotypeError(f"{where}: ops {bad} not in the space's model.operators")

    def to_json(self, path: str | Path) -> Path:
        """Write atomically (temp file in the same folder, then ``os.replace``)."""
        from nasfe.imageio import atomic_write_text  # local: imageio loads torch

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path, space=None) -> "Genotype":
        """Read and validate a genotype file; errors name the file and the field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise GenotypeError(f"{path}: genotype file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GenotypeError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_dict(data, space=space, where=str(path))

    def genotype_id(self) -> str:
        """Short hash (10 hex digits) of the architecture (cells, path, blocks), not of meta."""
        blob = json.dumps(
            {"cells": self.to_dict()["cells"], "path": self.path, "blocks": self.blocks}, sort_keys=True
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def _cells_from_dict(raw_cells: Any, blocks: int, ops: list[str], where: str) -> list[list[BlockGene]]:
    """The ``cells`` field of a genotype file: lists of ``blocks`` genes, each checked."""
    if not isinstance(raw_cells, list) or not raw_cells:
        raise GenotypeError(f"{where}: cells must be a non-empty list of cells")
    cells = []
    for ci, raw in enumerate(raw_cells):
        if not isinstance(raw, list) or len(raw) != blocks:
            raise GenotypeError(f"{where}: cells[{ci}] must list {blocks} blocks")
        cells.append([_gene_from_dict(g, bi, ops, f"{where}: cells[{ci}][{bi}]") for bi, g in enumerate(raw)])
    return cells


def _gene_from_dict(g: Any, bi: int, ops: list[str], at: str) -> BlockGene:
    """Block ``bi`` of a cell: two distinct earlier inputs, two non-zero operators of ``ops``."""
    if not isinstance(g, dict) or set(g) != {"inputs", "ops"}:
        raise GenotypeError(f"{at}: expected {{'inputs': [i, j], 'ops': [op, op]}}, got {g!r}")
    inp, gops = g["inputs"], g["ops"]
    if (
        not isinstance(inp, list)
        or len(inp) != 2
        or not all(isinstance(j, int) and not isinstance(j, bool) for j in inp)
    ):
        raise GenotypeError(f"{at}.inputs: expected two integers, got {inp!r}")
    if any(not 0 <= j < bi + 2 for j in inp):
        raise GenotypeError(f"{at}.inputs: {inp} out of range [0, {bi + 2}) for block {bi}")
    if inp[0] == inp[1]:
        raise GenotypeError(f"{at}.inputs: the two inputs must differ, got {inp}")
    if not isinstance(gops, list) or len(gops) != 2 or not all(isinstance(o, str) for o in gops):
        raise GenotypeError(f"{at}.ops: expected two operator names, got {gops!r}")
    if "zero" in gops:
        raise GenotypeError(f"{at}.ops: 'zero' is never a derived operator")
    bad = [o for o in gops if o not in ops]
    if bad:
        raise GenotypeError(f"{at}.ops: {bad} not among the genotype's operators")
    return BlockGene(list(inp), list(gops))


def derive_genotype(alphas, betas, space, edge_weights=None) -> Genotype:
    """The discrete architecture from the supernet's architecture weights.

    Cell level (DARTS rule): for each block keep the two incoming edges with the largest weight
    of their best non-zero operator (softmax over all operators, ``zero`` included, then ``zero``
    is excluded from the max: it never wins), and that operator. With PC-DARTS edge
    normalisation, ``edge_weights`` (cell types, edges) raw logits scale each edge's strength
    (softmax over each block's incoming edges, as in the forward pass).
    Network level: Viterbi over ``beta_weights`` (softmax over each node's outgoing moves, as
    Auto-DeepLab), from level 0 before the first cell to level 0 after the last.
    """
    import torch  # local: a genotype is plain data, reading one loads no torch

    m = space.model
    alphas = torch.as_tensor(alphas).detach().float().cpu()
    betas = torch.as_tensor(betas).detach().float().cpu()
    n_types = 1 if m.shared_cell else m.cells
    expect_a = (n_types, num_edges(m.blocks), len(m.operators))
    if tuple(alphas.shape) != expect_a:
        raise GenotypeError(f"alphas: shape {tuple(alphas.shape)}, expected {expect_a} for space {space.name!r}")
    if tuple(betas.shape) != (m.cells, m.levels, 3):
        raise GenotypeError(f"betas: shape {tuple(betas.shape)}, expected {(m.cells, m.levels, 3)}")
    weights = torch.softmax(alphas, dim=-1)
    edge_scale = None
    if edge_weights is not None:
        gammas = torch.as_tensor(edge_weights).detach().float().cpu()
        if tuple(gammas.shape) != expect_a[:2]:
            raise GenotypeError(f"edge_weights: shape {tuple(gammas.shape)}, expected {expect_a[:2]}")
        edge_scale = block_softmax(gammas, m.blocks)
    return Genotype(
        cells=_cells_from_scores(weights, m, edge_scale),
        path=viterbi_path(betas, m.cells, m.levels),
        operators=list(m.operators),
        blocks=m.blocks,
        space_hash=space.space_hash(),
        meta={"space": space.name},
    )


def derive_from_strength(op_strength, transition_strength, space) -> Genotype:
    """The discrete architecture from measured strengths (DARTS-PT's selection, Wang et al. 2021).

    ``op_strength`` (cell types, edges, operators): how much the supernet's loss rises when that
    operator alone is masked out of its edge; ``transition_strength`` (cells, levels, 3): the same
    for each trellis transition (``nasfe.engine.selection`` measures both). Each block keeps its two
    incoming edges whose best non-zero operator is strongest, with that operator; the path is the
    Viterbi path with the strengths standing in for beta's logits, so the transitions the loss
    misses most are followed.
    """
    import torch  # local: a genotype is plain data, reading one loads no torch

    m = space.model
    ops = torch.as_tensor(op_strength).detach().float().cpu()
    trans = torch.as_tensor(transition_strength).detach().float().cpu()
    expect = (1 if m.shared_cell else m.cells, num_edges(m.blocks), len(m.operators))
    if tuple(ops.shape) != expect:
        raise GenotypeError(f"op_strength: shape {tuple(ops.shape)}, expected {expect} for space {space.name!r}")
    if tuple(trans.shape) != (m.cells, m.levels, 3):
        raise GenotypeError(f"transition_strength: shape {tuple(trans.shape)}, expected {(m.cells, m.levels, 3)}")
    if not (torch.isfinite(ops).all() and torch.isfinite(trans).all()):
        raise GenotypeError("strengths: not finite; no genotype is derived from them")
    return Genotype(
        cells=_cells_from_scores(ops, m),
        path=viterbi_path(trans, m.cells, m.levels),
        operators=list(m.operators),
        blocks=m.blocks,
        space_hash=space.space_hash(),
        meta={"space": space.name, "selection": "strength"},
    )


def _cells_from_scores(scores, m, edge_scale=None) -> list[list[BlockGene]]:
    """Per block, the two incoming edges whose best non-zero operator scores highest, with it."""
    import torch  # local: a genotype is plain data, reading one loads no torch

    live = [i for i, o in enumerate(m.operators) if o != "zero"]
    best_w, best_i = scores[..., live].max(dim=-1)  # (types, edges)
    if edge_scale is not None:
        best_w = best_w * edge_scale
    cells = []
    for t in range(scores.shape[0]):
        genes = []
        for i in range(m.blocks):
            e0 = edge_offset(i)
            strength = best_w[t, e0 : e0 + i + 2]
            top = sorted(torch.argsort(strength, descending=True, stable=True)[:2].tolist())
            genes.append(BlockGene(top, [m.operators[live[int(best_i[t, e0 + j])]] for j in top]))
        cells.append(genes)
    return cells


def derive_from_arch(arch_params, space) -> Genotype:
    """The genotype of a supernet's ``arch_parameters()``: ``[alphas, betas]``, plus the PC-DARTS
    edge weights as a third entry in partial-channel mode, all of which the derivation uses."""
    arch = list(arch_params)
    if len(arch) not in (2, 3):
        raise GenotypeError(
            f"arch_parameters: expected [alphas, betas] or [alphas, betas, edge weights], got {len(arch)} tensors"
        )
    return derive_genotype(arch[0], arch[1], space, edge_weights=arch[2] if len(arch) == 3 else None)


def block_softmax(gammas, blocks: int):
    """Softmax of edge logits ``(..., edges)`` over the incoming edges of each block separately."""
    import torch  # local: a genotype is plain data, reading one loads no torch

    parts = [torch.softmax(gammas[..., edge_offset(i) : edge_offset(i + 1)], dim=-1) for i in range(blocks)]
    return torch.cat(parts, dim=-1)


def param_free_share(genotype: Genotype) -> float:
    """Share of the derived edges whose operator has no parameters (skip connections)."""
    ops = [o for cell in genotype.cells for gene in cell for o in gene.ops]
    free = param_free_ops()
    return sum(o in free for o in ops) / max(1, len(ops))


def _mean_norm_entropy(probs_rows) -> float:
    """Mean over rows of the entropy divided by log(row length): 1 = uniform, 0 = one-hot."""

    vals = [-sum(p * math.log(p) for p in row if p > 0) / math.log(len(row)) for row in probs_rows if len(row) > 1]
    return sum(vals) / len(vals) if vals else 0.0


def arch_entropies(arch_params, space) -> dict[str, float]:
    """Normalised entropies (1 = undecided, 0 = decided) of softmax(alpha) per edge, of softmax(beta)
    over each trellis node's outgoing moves, and (PC mode) of each block's edge weights."""
    import torch  # local: a genotype is plain data, reading one loads no torch

    m = space.model
    arch = list(arch_params)
    alphas = torch.as_tensor(arch[0]).detach().float().cpu()
    betas = torch.as_tensor(arch[1]).detach().float().cpu()
    out = {"alpha_entropy": _mean_norm_entropy(torch.softmax(alphas, -1).reshape(-1, alphas.shape[-1]).tolist())}
    rows = [
        torch.softmax(betas[layer, src, out_moves(layer, src, m.cells, m.levels)], 0).tolist()
        for layer in range(m.cells)
        for src in layer_sources(layer, m.cells, m.levels)
    ]
    out["beta_entropy"] = _mean_norm_entropy(rows)
    if len(arch) == 3:
        g = torch.as_tensor(arch[2]).detach().float().cpu()
        rows = [
            torch.softmax(g[t, edge_offset(i) : edge_offset(i + 1)], -1).tolist()
            for t in range(g.shape[0])
            for i in range(m.blocks)
        ]
        out["edge_entropy"] = _mean_norm_entropy(rows)
    return out


def viterbi_path(betas, cells: int, levels: int) -> list[int]:
    """Most probable level sequence under ``beta_weights`` (softmax over each node's outgoing
    moves), from level 0 before the first cell to level 0 after the last; only nodes that can
    still return to level 0 exist, so no invalid path is ever scored."""
    import torch  # local: a genotype is plain data, reading one loads no torch

    logp = {
        k: float(v) for k, v in beta_weights(torch.as_tensor(betas).detach().float(), cells, levels, log=True).items()
    }
    score = {0: 0.0}
    back: list[dict[int, int]] = []
    for layer in range(cells):
        new, arg = {}, {}
        for s in node_levels(layer, cells, levels):
            cand = [(score[src] + logp[(layer, src, s)], src) for src in sorted(score) if (layer, src, s) in logp]
            best = max(cand, key=lambda c: c[0])  # ties: the finer source wins
            new[s], arg[s] = best
        score = new
        back.append(arg)
    path = [0]
    for layer in range(cells - 1, 0, -1):
        path.append(back[layer][path[-1]])
    return path[::-1]


def diff_genotypes(a: Genotype, b: Genotype) -> list[str]:
    """Readable differences, e.g. ``cell 0 block 3 input 1: sep_conv_3x3 -> fft_op``; [] when equal."""
    lines = []
    if a.blocks != b.blocks:
        lines.append(f"blocks: {a.blocks} -> {b.blocks}")
    if a.space_hash != b.space_hash:
        lines.append(f"space_hash: {a.space_hash} -> {b.space_hash}")
    if len(a.cells) != len(b.cells):
        lines.append(f"cell types: {len(a.cells)} -> {len(b.cells)}")
    for c, (ca, cb) in enumerate(zip(a.cells, b.cells)):
        for i, (ga, gb) in enumerate(zip(ca, cb)):
            for k in range(2):
                ea = f"{ga.ops[k]}(input {ga.inputs[k]})"
                eb = f"{gb.ops[k]}(input {gb.inputs[k]})"
                if ga.inputs[k] == gb.inputs[k] and ga.ops[k] != gb.ops[k]:
                    lines.append(f"cell {c} block {i} input {ga.inputs[k]}: {ga.ops[k]} -> {gb.ops[k]}")
                elif ga.inputs[k] != gb.inputs[k]:
                    lines.append(f"cell {c} block {i} edge {k}: {ea} -> {eb}")
    if a.path != b.path:
        lines.append(f"path: {a.path} -> {b.path}")
    return lines


def expected_log_prob(betas, path: list[int], cells: int, levels: int) -> float:
    """Log-probability of ``path`` under ``beta_weights`` (what Viterbi maximises); ``-inf`` for a
    path that is not a valid path of the trellis (``check_path``). For reports and tests."""
    import torch  # local: a genotype is plain data, reading one loads no torch

    if check_path(list(path), cells, levels) is not None:
        return -math.inf
    logp = beta_weights(torch.as_tensor(betas).detach().float(), cells, levels, log=True)
    total, prev = 0.0, 0
    for layer, s in enumerate(path):
        total += float(logp[(layer, prev, s)])
        prev = s
    return total


def node_input_weights(betas, cells: int, levels: int, eps: float = 1e-30) -> tuple[dict, dict]:
    """How much each earlier node feeds each trellis node, from ``beta_weights``: ``(prev, prev_prev)``.

    ``prev[(layer, s)]`` maps the levels ``src`` before ``layer`` to the probability that the path
    came from ``src`` given that it reaches node ``(layer, s)``: the forward probability of
    ``src`` times its move into ``s``, normalised over the node's sources (Bayes on Auto-DeepLab's
    outgoing weights). ``prev_prev[(layer, s)]`` does the same two layers back (the node the path
    passed through before the previous one; the encoder for layers 0 and 1). Each node's weights
    sum to one (zero for a node no path reaches); at one-hot ``betas`` the nodes of the decoded
    path see exactly their path's inputs, which is what the derived network feeds its cells.
    Differentiable in ``betas``.
    """
    w = beta_weights(betas, cells, levels)

    def move(layer: int, src: int, dst: int):
        if layer < 0:  # the encoder stands in for layers -2 and -1, both at level 0
            return 1.0 if src == dst == 0 else None
        return w.get((layer, src, dst))

    reach = {-2: {0: 1.0}, -1: {0: 1.0}}
    prev, prev_prev = {}, {}
    for layer in range(cells):
        reach[layer] = {}
        for s in node_levels(layer, cells, levels):
            flows = {
                src: r * move(layer, src, s) for src, r in reach[layer - 1].items() if move(layer, src, s) is not None
            }
            total = sum(flows.values())
            denom = total.clamp(min=eps) if hasattr(total, "clamp") else max(total, eps)
            reach[layer][s] = total
            prev[(layer, s)] = {src: f / denom for src, f in flows.items()}
            two = {}
            for src2, r2 in reach[layer - 2].items():
                terms = [
                    r2 * move(layer - 1, src2, mid) * move(layer, mid, s)
                    for mid in reach[layer - 1]
                    if move(layer - 1, src2, mid) is not None and move(layer, mid, s) is not None
                ]
                if terms:
                    two[src2] = sum(terms) / denom
            prev_prev[(layer, s)] = two
    return prev, prev_prev


def valid_paths(cells: int, levels: int) -> list[list[int]]:
    """Every network-level path of ``cells`` layers on ``levels`` levels (``check_path`` accepts)."""
    paths: list[list[int]] = [[]]
    for layer in range(cells):
        here = node_levels(layer, cells, levels)
        paths = [p + [s] for p in paths for s in here if abs(s - (p[-1] if p else 0)) <= 1]
    return paths


def sample_genotypes(space, k: int, seed: int = 0) -> list[Genotype]:
    """``k`` distinct genotypes drawn uniformly from ``space``'s valid cells and trellis paths.

    Every block draws its two distinct inputs uniformly among the pairs it may read and each input's
    operator uniformly among the non-``zero`` operators; the path is drawn uniformly among the valid
    paths. Seeded (a ``random.Random(seed)`` of its own): the same space and seed give the same list.
    Raises :class:`GenotypeError` when the space holds fewer than ``k`` distinct genotypes.
    """

    m = space.model
    live = [o for o in m.operators if o != "zero"]
    if not live:
        raise GenotypeError(f"space {space.name!r}: no operator other than 'zero' to sample")
    paths = valid_paths(m.cells, m.levels)
    pairs = [list(itertools.combinations(range(i + 2), 2)) for i in range(m.blocks)]
    per_cell = math.prod(len(p) * len(live) ** 2 for p in pairs)
    total = per_cell ** (1 if m.shared_cell else m.cells) * len(paths)
    if k > total:
        raise GenotypeError(f"space {space.name!r} holds {total} distinct genotypes; {k} asked for")
    rng = random.Random(seed)
    out: list[Genotype] = []
    seen: set[str] = set()
    while len(out) < k:
        cells = [
            [BlockGene(list(rng.choice(pairs[i])), [rng.choice(live), rng.choice(live)]) for i in range(m.blocks)]
            for _ in range(1 if m.shared_cell else m.cells)
        ]
        g = Genotype(
            cells=cells,
            path=list(rng.choice(paths)),
            operators=list(m.operators),
            blocks=m.blocks,
            space_hash=space.space_hash(),
            meta={"space": space.name, "sampled_seed": seed},
        )
        if g.genotype_id() not in seen:
            seen.add(g.genotype_id())
            g.meta["sample_index"] = len(out)
            out.append(g)
    return out
