"""Fusion cells (Eq. 4-6): the searchable ``SearchCell`` with ``MixedOp`` edges and the discrete ``DerivedCell``.

A cell has B blocks. The inputs of block i are, in this order: the previous-previous cell
(index 0), the previous cell (index 1) and blocks 0..i-1 (indices 2..i+1). Edge e of the cell
enumerates (block, input) pairs block by block, so block i owns edges
``edge_offset(i) .. edge_offset(i) + i + 1``. The cell's output is the concatenation of its B
blocks reduced back to C channels by a 1x1 convolution, plus the previous cell (a residual
connection, which keeps deep supernets trainable; not in the paper).
"""

from __future__ import annotations

from typing import Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

# the edge numbering is part of the genotype's plain data; the model reads it from there
from nasfe.genotype import block_softmax as edge_softmax
from nasfe.genotype import edge_offset, num_edges
from nasfe.model.ops import build_op

__all__ = [
    "MixedOp",
    "SearchCell",
    "DerivedCell",
    "channel_shuffle",
    "softmax_ops",
    "edge_softmax",
    "edge_offset",
    "num_edges",
    "BLOCK_SCALE",
    "block_sum",
]


#: ``model.stable_cells``: a block is the MEAN of its two derived terms, not their sum. A sum of two
#: near-identity terms doubles along every chain of blocks (block i feeding block i + 1: Fibonacci
#: growth, ~1e7 over a 12-block, 4-layer network of skip connections); a mean never exceeds its
#: larger input.
BLOCK_SCALE = 0.5


def block_sum(terms, scale: float = 1.0) -> torch.Tensor:
    """``scale`` times the sum of a block's terms (multiplying only when it is not 1)."""
    total = sum(terms)
    return total * scale if scale != 1.0 else total


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (PC-DARTS: the bypassed channels move on each edge)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(nn.Module):
    """softmax(alpha)-weighted sum of every operator (Eq. 5), optionally on 1/K of the channels.

    With ``partial_channels`` K > 1 (PC-DARTS) only the first C/K channels go through the
    operators; the rest pass through unchanged, then the channels are shuffled.
    """

    def __init__(self, c: int, operators: Sequence[str], partial_channels: int = 1, stable: bool = False):
        super().__init__()
        if c % partial_channels:
            raise ValueError(f"channels {c} not divisible by partial_channels {partial_channels}")
        self.k = partial_channels
        self.cp = c // partial_channels
        self.names = list(operators)
        self.ops = nn.ModuleList(build_op(name, self.cp, stable) for name in self.names)
        # zero contributes nothing to the sum: skip computing it (its alpha still competes in softmax)
        self._live = [i for i, name in enumerate(self.names) if name != "zero"]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        xa = x[:, : self.cp] if self.k > 1 else x
        out = sum(weights[i] * self.ops[i](xa) for i in self._live)
        if self.k == 1:
            return out
        return channel_shuffle(torch.cat([out, x[:, self.cp :]], dim=1), self.k)


class SearchCell(nn.Module):
    """Continuous-relaxation fusion cell: block i = sum over its inputs of MixedOp (Eq. 4).

    ``stable``: the sum is halved (``BLOCK_SCALE``), as the derived block's two terms are, so that
    at one-hot alpha (``zero`` on the edges a genotype drops) the cell is the derived cell.
    """

    def __init__(self, c: int, blocks: int, operators: Sequence[str], partial_channels: int = 1, stable: bool = False):
        super().__init__()
        self.blocks = blocks
        self.scale = BLOCK_SCALE if stable else 1.0
        self.edges = nn.ModuleList(MixedOp(c, operators, partial_channels, stable) for _ in range(num_edges(blocks)))
        self.reduce = nn.Conv2d(blocks * c, c, 1, bias=True)

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, op_weights: torch.Tensor, edge_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``op_weights`` (edges, n_ops) softmaxed alphas; ``edge_weights`` (edges,) PC-DARTS edge normalisation or None."""
        states = [s0, s1]
        for i in range(self.blocks):
            e0 = edge_offset(i)
            terms = []
            for j, h in enumerate(states):
                y = self.edges[e0 + j](h, op_weights[e0 + j])
                terms.append(y if edge_weights is None else edge_weights[e0 + j] * y)
            states.append(block_sum(terms, self.scale))
        return s1 + self.reduce(torch.cat(states[2:], dim=1))


class DerivedCell(nn.Module):
    """Discrete fusion cell from a genotype: block i = op_a(input_a) + op_b(input_b), halved when ``stable``."""

    def __init__(self, c: int, genes: Sequence, stable: bool = False):
        """``genes``: one ``BlockGene`` (``inputs``, ``ops``) per block; ``stable``: mean instead of
        sum, and deveil's gain bounded (``model.stable_cells``, docs/MODEL.md)."""
        super().__init__()
        self.blocks = len(genes)
        self.scale = BLOCK_SCALE if stable else 1.0
        self.inputs = [list(g.inputs) for g in genes]
        for i, g in enumerate(genes):
            if "zero" in g.ops:
                raise ValueError(f"block {i}: a derived cell never uses the 'zero' operator")
            if any(not 0 <= j < i + 2 for j in g.inputs):
                raise ValueError(f"block {i}: inputs {list(g.inputs)} out of range [0, {i + 2})")
        self.op_names = [list(g.ops) for g in genes]
        self.ops = nn.ModuleList(nn.ModuleList(build_op(name, c, stable) for name in g.ops) for g in genes)
        self.reduce = nn.Conv2d(self.blocks * c, c, 1, bias=True)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [s0, s1]
        for inputs, ops in zip(self.inputs, self.ops):
            states.append(block_sum([op(states[j]) for j, op in zip(inputs, cast(nn.ModuleList, ops))], self.scale))
        return s1 + self.reduce(torch.cat(states[2:], dim=1))


def softmax_ops(alphas: torch.Tensor) -> torch.Tensor:
    """Operator weights of every edge: softmax over the last axis."""
    return F.softmax(alphas, dim=-1)
