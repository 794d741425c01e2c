"""Activation checkpointing of the fusion cells (``model.checkpoint_cells``): same results, less saved memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasfe.config import load_space
from nasfe.genotype import derive_genotype
from nasfe.model import create_model
from conftest import tiny_identity


def TinyIdentity():
    """The shared frozen identity stand-in (tests/conftest.py)."""
    return tiny_identity()


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def _step(model, y, refs):
    model.zero_grad(set_to_none=True)
    out = model(y, refs)
    out.restored.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.restored.detach(), grads


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("derived", [False, True])
def test_checkpointing_changes_no_output_and_no_gradient(k, derived):
    space = load_space("tiny", {"model.partial_channels": k})
    torch.manual_seed(0)
    genotype = None
    if derived:
        sup = create_model(space, identity=TinyIdentity())
        genotype = derive_genotype(sup.alphas, sup.betas, space)
    model = create_model(space, genotype, identity=TinyIdentity())
    for mod in model.modules():  # attention-style gammas start at 0; make every path carry gradient
        if hasattr(mod, "gamma") and isinstance(mod.gamma, nn.Parameter):
            nn.init.constant_(mod.gamma, 0.5)
    model.train()
    y = torch.rand(2, 3, 32, 24)
    refs = torch.rand(2, space.identity.refs, 3, 32, 24)
    out0, g0 = _step(model, y, refs)
    model.cfg.checkpoint_cells = True
    assert model.fusion.cfg.checkpoint_cells
    out1, g1 = _step(model, y, refs)
    torch.testing.assert_close(out1, out0, rtol=1e-6, atol=1e-6)
    assert g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-6, msg=name)
    if not derived:  # the architecture parameters are among the compared gradients
        names = {"fusion.alphas", "fusion.betas"} | ({"fusion.edge_gammas"} if k > 1 else set())
        assert names <= g0.keys()
        assert all(g0[n].abs().sum() > 0 for n in names)


def test_checkpointing_saves_less_and_is_off_outside_training():
    space = load_space("tiny", {"model.partial_channels": 2})
    torch.manual_seed(0)
    model = create_model(space, identity=TinyIdentity()).train()
    y = torch.rand(2, 3, 32, 24)
    _, full = _saved_bytes(lambda: model(y))
    model.cfg.checkpoint_cells = True
    _, ckpt = _saved_bytes(lambda: model(y))
    assert ckpt < full
    model.eval()
    with torch.no_grad():
        a = model(y).restored
    model.cfg.checkpoint_cells = False
    with torch.no_grad():
        b = model(y).restored
    assert torch.equal(a, b)


def test_checkpoint_cells_does_not_change_the_space_hash():
    base = load_space("tiny")
    on = load_space("tiny", {"model.checkpoint_cells": True})
    assert on.model.checkpoint_cells and not base.model.checkpoint_cells
    assert on.space_hash() == base.space_hash()
    assert load_space("tiny", {"model.partial_channels": 2}).space_hash() != base.space_hash()
