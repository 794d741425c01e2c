"""Pre-flight forward: one forward of a fresh network before any training, stopping with one line
that names the first block and operator whose output is not finite.

A derived 12-block network can overflow at initialisation (a chain of gains, docs/MODEL.md
"Stable cells"); without this check a run spends its whole pre-training and then stops at
"non-finite loss at retrain step 1".
"""

from __future__ import annotations

import re
from typing import Optional

import torch
from torch import nn

from nasfe.errors import NonFiniteNetworkError
from nasfe.genotype import edge_offset

_DERIVED = re.compile(r"^fusion\.cells\.(\d+)\.ops\.(\d+)\.(\d+)(\.|$)")
_SEARCH = re.compile(r"^fusion\.cells\.(\d+)_(\d+)\.edges\.(\d+)\.ops\.(\d+)(\.|$)")


def describe_module(model: nn.Module, name: str) -> str:
    """Readable place of submodule ``name`` of a NASFE network: the fusion block and operator when
    it is inside one (derived or supernet cell), else the module's own name."""

    fusion = getattr(model, "fusion", None)
    m = _DERIVED.match(name)
    if m and hasattr(fusion, "path"):
        layer, block, k = (int(g) for g in m.groups()[:3])
        assert fusion is not None  # hasattr(None, "path") is false
        cell = fusion.cells[layer]
        op = type(cell.ops[block][k]).__name__
        names = getattr(cell, "op_names", None)
        if names is not None:
            op = names[block][k]
        return (
            f"fusion layer {layer} (level {fusion.path[layer]}) block {block} operator {op} "
            f"on input {cell.inputs[block][k]}"
        )
    m = _SEARCH.match(name)
    if m and fusion is not None:  # a name under fusion.cells comes from a model with a fusion
        layer, level, edge, i = (int(g) for g in m.groups()[:4])
        block = max(b for b in range(edge + 1) if edge_offset(b) <= edge)
        op = fusion.cells[f"{layer}_{level}"].edges[edge].names[i]
        return f"fusion layer {layer} (level {level}) block {block} operator {op} on input {edge - edge_offset(block)}"
    return name or type(model).__name__


@torch.no_grad()
def preflight(model: nn.Module, height: int, width: int, device="cpu", phase: str = "") -> None:
    """Run ``model`` once in eval mode on a seeded random (1, 3, height, width) image without
    reference photos; raise :class:`NonFiniteNetworkError` naming the first module (in execution
    order) whose output is not finite. The model's mode and the global RNG are left as they were."""
    first: list[Optional[str]] = [None]
    names = {mod: n for n, mod in model.named_modules()}

    def hook(mod, _inp, out):
        if first[0] is not None:
            return
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.is_floating_point() and not torch.isfinite(o).all():
                first[0] = names.get(mod, "")
                return

    handles = [mod.register_forward_hook(hook) for mod in names]
    was_training = model.training
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, height, width, generator=gen).to(device)
    try:
        model.eval()
        model(y)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if first[0] is not None:
        raise NonFiniteNetworkError(describe_module(model, first[0]), phase)
