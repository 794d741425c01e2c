"""The fusion network: the network-level trellis of fusion cells (searchable and derived) and the BN baseline.

Trellis (after Auto-DeepLab): L layers, each with one fusion cell per level s (resolution 1/2^s
of the encoder output, always C channels). A node (layer l, level s) exists when it can be
reached from level 0 before layer 0 and can get back to level 0 by the last layer, moving one
level per layer (``nasfe.genotype.node_levels``); the fusion network starts and ends at the
encoder's resolution, where the decoder reads it.

Search (network level, Auto-DeepLab's beta): ``betas[l, src, k]`` is the logit of the node at
level ``src`` before layer l (the encoder for l = 0) moving to level ``src + k - 1`` (k: 0 finer,
1 same, 2 coarser); softmax over each node's outgoing moves that reach a node of the trellis
(``nasfe.genotype.beta_weights``), so a path's weights multiply to its probability. Node (l, s)
takes as "previous cell" the sum of its resampled sources, each weighted by the probability that
the path came from it given that it reaches (l, s), and as "previous-previous cell" the layer l-2
nodes weighted the same way (the encoder features before layers 0 and 1;
``nasfe.genotype.node_input_weights``); it runs ONE cell on them (Auto-DeepLab runs one cell per
transition; mixing first costs a third of the memory). At one-hot beta the nodes of the decoded
path see exactly the inputs the derived network feeds its cells.

``model.fusion_skip`` (searched and derived alike): the fusion network's output is its input plus
the last cell's output, so the encoder features reach the decoder at full resolution whatever the
path (a path through level 1 otherwise hands the decoder an upsampled map).

``model.checkpoint_cells``: in training with grad enabled, each cell runs under
``torch.utils.checkpoint`` (non-reentrant): only its inputs are kept and its activations are
recomputed in backward, so the supernet's activation memory is the cell boundaries plus one cell
(docs/MODEL.md, "Memory"). Results are the same (no randomness in any operator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nasfe.config import ModelConfig
from nasfe.genotype import Genotype, node_input_weights, node_levels
from nasfe.model.cell import DerivedCell, SearchCell, edge_softmax, num_edges, softmax_ops
from nasfe.model.ops import Res2Block


class Resample(nn.Module):
    """Move a C-channel map ``steps`` levels: > 0 coarser (ReLU + stride-2 3x3 conv per level),
    < 0 finer (bilinear to the target size + 1x1 conv), 0 identity."""

    def __init__(self, c: int, steps: int):
        super().__init__()
        self.steps = steps
        self.op: nn.Module
        if steps > 0:
            self.op = nn.Sequential(
                *[m for _ in range(steps) for m in (nn.ReLU(inplace=False), nn.Conv2d(c, c, 3, stride=2, padding=1))]
            )
        elif steps < 0:
            self.op = nn.Conv2d(c, c, 1)
        else:
            self.op = nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.steps < 0:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.op(x)


def run_cell(module: nn.Module, use_checkpoint: bool, *args):
    """``module(*args)``, under activation checkpointing when asked and when it would matter
    (training with grad enabled); otherwise a plain call."""
    if use_checkpoint and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def _level_sizes(x: torch.Tensor, levels: int) -> list[tuple[int, int]]:
    h, w = x.shape[-2:]
    if h % (1 << (levels - 1)) or w % (1 << (levels - 1)):
        raise ValueError(f"fusion input {h}x{w} is not a multiple of {1 << (levels - 1)} (NASFE pads before)")
    return [(h >> s, w >> s) for s in range(levels)]


class SearchFusion(nn.Module):
    """The supernet fusion network: alpha (cell level), beta (network level), optional PC-DARTS edge weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c, blocks, cells, levels = cfg.channels, cfg.blocks, cfg.cells, cfg.levels
        types = 1 if cfg.shared_cell else cells
        edges = num_edges(blocks)
        # DARTS initialisation: near-uniform architecture weights
        self.alphas = nn.Parameter(1e-3 * torch.randn(types, edges, len(cfg.operators)))
        self.betas = nn.Parameter(1e-3 * torch.randn(cells, levels, 3))
        self.edge_gammas = nn.Parameter(torch.zeros(types, edges)) if cfg.partial_channels > 1 else None
        self.cells = nn.ModuleDict()
        self.trans = nn.ModuleDict()
        self.prev_prev = nn.ModuleDict()
        # one resampling module per (node, source) that the trellis connects (keys of the weights)
        w_prev, w_prev2 = node_input_weights(torch.zeros(cells, levels, 3), cells, levels)
        for layer in range(cells):
            for s in node_levels(layer, cells, levels):
                key = f"{layer}_{s}"
                self.cells[key] = SearchCell(c, blocks, cfg.operators, cfg.partial_channels, cfg.stable_cells)
                for src in w_prev[(layer, s)]:
                    self.trans[f"{key}_{src - s + 1}"] = Resample(c, s - src)
                for src2 in w_prev2[(layer, s)]:
                    self.prev_prev[f"{key}_{src2}"] = Resample(c, s - src2)

    def arch_parameters(self) -> list[nn.Parameter]:
        """[alphas, betas], plus the edge-normalisation weights in partial-channel mode."""
        return [self.alphas, self.betas] + ([self.edge_gammas] if self.edge_gammas is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        sizes = _level_sizes(x, cfg.levels)
        op_w = softmax_ops(self.alphas)
        edge_w = edge_softmax(self.edge_gammas, cfg.blocks) if self.edge_gammas is not None else None
        w_prev, w_prev2 = node_input_weights(self.betas, cfg.cells, cfg.levels)
        prev2, prev = {0: x}, {0: x}
        for layer in range(cfg.cells):
            here = {}
            kind = 0 if cfg.shared_cell else layer
            for s in node_levels(layer, cfg.cells, cfg.levels):
                key = f"{layer}_{s}"
                s1 = sum(
                    wt * self.trans[f"{key}_{src - s + 1}"](prev[src], sizes[s])
                    for src, wt in w_prev[(layer, s)].items()
                )
                s0 = sum(
                    wt * self.prev_prev[f"{key}_{src2}"](prev2[src2], sizes[s])
                    for src2, wt in w_prev2[(layer, s)].items()
                )
                here[s] = run_cell(
                    self.cells[key], cfg.checkpoint_cells, s0, s1, op_w[kind], None if edge_w is None else edge_w[kind]
                )
            prev2, prev = prev, here
        return x + prev[0] if cfg.fusion_skip else prev[0]


class DerivedFusion(nn.Module):
    """The discrete fusion network of a genotype: one ``DerivedCell`` per layer along ``genotype.path``."""

    def __init__(self, cfg: ModelConfig, genotype: Genotype):
        super().__init__()
        self.cfg = cfg
        self.path = list(genotype.path)
        if len(self.path) != cfg.cells:
            raise ValueError(f"genotype path has {len(self.path)} layers, model.cells = {cfg.cells}")
        c = cfg.channels
        levels = [0, 0] + self.path  # the encoder features stand in for layers -2 and -1
        self.cells = nn.ModuleList(
            DerivedCell(c, genotype.cell_for_layer(l), cfg.stable_cells) for l in range(cfg.cells)
        )
        self.trans = nn.ModuleList(Resample(c, levels[l + 2] - levels[l + 1]) for l in range(cfg.cells))
        self.prev_prev = nn.ModuleList(Resample(c, levels[l + 2] - levels[l]) for l in range(cfg.cells))

    def arch_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = _level_sizes(x, self.cfg.levels)
        h2 = h1 = x
        for cell, trans, pp, s in zip(self.cells, self.trans, self.prev_prev, self.path):
            h = run_cell(cell, self.cfg.checkpoint_cells, pp(h2, sizes[s]), trans(h1, sizes[s]))
            h2, h1 = h1, h
        return x + h1 if self.cfg.fusion_skip else h1


class Res2Fusion(nn.Module):
    """Fusion of the ablation baseline BN (Table 6): ``res2_blocks`` Res2Blocks at C channels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.Sequential(*[Res2Block(cfg.channels) for _ in range(cfg.res2_blocks)])

    def arch_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
