"""Choosing the genotype by what the supernet relies on (DARTS-PT's selection, Wang et al. 2021).

DARTS keeps each edge's operator with the largest architecture weight. In a short search the
weights hardly move and lag the supernet: on the CPU space they end within 0.1 of uniform, and the
ones they favour can be the operators whose removal now lowers the loss (docs/RESULTS.md,
"Choosing by strength"). Strength measures instead: for each operator of each edge, and each
outgoing move of each trellis node that has a choice, the mean loss over held-out batches with that
one choice masked out of its softmax, minus the mean loss with nothing masked. A large strength
means the supernet needs that choice. ``nasfe.genotype.derive_from_strength`` reads the genotype
off the two tables.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from nasfe.genotype import layer_sources, out_moves

#: an architecture logit that takes a choice out of its softmax (exp underflows to exactly 0)
MASKED = -1e9


def transition_choices(cells: int, levels: int) -> list[tuple[int, int, int]]:
    """``(layer, source level, move)`` of every trellis node with more than one outgoing move
    (the entries of ``betas`` that are a choice, ``nasfe.genotype.beta_weights``)."""
    out: list[tuple[int, int, int]] = []
    for layer in range(cells):
        for src in layer_sources(layer, cells, levels):
            moves = out_moves(layer, src, cells, levels)
            if len(moves) > 1:
                out.extend((layer, src, k) for k in moves)
    return out


@torch.no_grad()
def choice_strengths(
    alphas: torch.nn.Parameter,
    betas: torch.nn.Parameter,
    operators: Sequence[str],
    cells: int,
    levels: int,
    loss_of: Callable[[object], torch.Tensor],
    batches: Sequence,
    average: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Operator strengths (like ``alphas``) and transition strengths (like ``betas``), on the host.

    ``loss_of(batch)`` is the scalar loss of the supernet as it stands; ``average`` (optional)
    averages a tensor over the ranks so every worker gets the same tables. ``zero`` and nodes
    without a choice get strength 0. ``alphas`` and ``betas`` are restored afterwards.
    """
    if not batches:
        raise ValueError("choice_strengths: no batches to measure on")
    ops_shape = alphas.shape
    choices_a = [
        (t, e, i)
        for t in range(ops_shape[0])
        for e in range(ops_shape[1])
        for i, name in enumerate(operators)
        if name != "zero"
    ]
    choices_b = transition_choices(cells, levels)
    a0, b0 = alphas.detach().clone(), betas.detach().clone()

    def mean_loss() -> torch.Tensor:
        return torch.stack([loss_of(b).detach().float().reshape(()) for b in batches]).mean()

    losses = [mean_loss()]
    try:
        for t, e, i in choices_a:
            alphas.data[t, e, i] = MASKED
            losses.append(mean_loss())
            alphas.data[t, e, i] = a0[t, e, i]
        for layer, s, t in choices_b:
            betas.data[layer, s, t] = MASKED
            losses.append(mean_loss())
            betas.data[layer, s, t] = b0[layer, s, t]
    finally:
        alphas.data.copy_(a0)
        betas.data.copy_(b0)
    vec = torch.stack(losses)
    if average is not None:
        vec = average(vec)
    vec = vec.double().cpu()
    rise = vec[1:] - vec[0]
    op_strength = torch.zeros(ops_shape, dtype=torch.float64)
    for (t, e, i), v in zip(choices_a, rise[: len(choices_a)]):
        op_strength[t, e, i] = v
    trans_strength = torch.zeros(betas.shape, dtype=torch.float64)
    for (layer, s, t), v in zip(choices_b, rise[len(choices_a) :]):
        trans_strength[layer, s, t] = v
    return op_strength, trans_strength
