"""The assembled NASFE network: every registered model, shapes, refs handling, gradients, parameter counts."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from nasfe.config import load_space
from nasfe.genotype import derive_genotype
from nasfe.model import NASFE, create_model, encoder_task_loss, list_models
from nasfe.model.cell import num_edges
from nasfe.model.ops import op_param_count
from nasfe.model.registry import build_model
from conftest import tiny_identity


def TinyIdentity():
    """The shared frozen identity stand-in (tests/conftest.py)."""
    return tiny_identity()


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny")


def _model(name, space, seed=0):
    torch.manual_seed(seed)
    genotype = None
    if name == "nasfe_derived":
        sup = build_model("nasfe_search", space, None, TinyIdentity())
        genotype = derive_genotype(sup.alphas, sup.betas, space)
    if name == "nasfe_bn":
        space = load_space("tiny", {"model.fusion": "res2"})
    return build_model(name, space, genotype, TinyIdentity())


def test_registry_lists_the_three_models():
    assert {"nasfe_search", "nasfe_derived", "nasfe_bn"} <= set(list_models())
    with pytest.raises(KeyError, match="unknown model"):
        build_model("nope", load_space("tiny"))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("hw", [(32, 32), (37, 29)])
def test_every_model_restores_any_size(name, hw, tiny):
    m = _model(name, tiny)
    y = torch.rand(2, 3, *hw)
    refs = torch.rand(2, 2, 3, *hw)
    for r in (refs, None):
        out = m(y, r)
        assert out.restored.shape == y.shape and out.class_logits.shape == (2, 3)
        assert torch.isfinite(out.restored).all()
    assert m.classify(y).shape == (2, 3)


@pytest.mark.parametrize("name", list_models())
def test_gradients_reach_every_weight_alpha_and_beta(name, tiny):
    m = _model(name, tiny)
    for mod in m.modules():
        if hasattr(mod, "gamma"):
            nn.init.constant_(mod.gamma, 0.5)
    y, x = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = m(y, torch.rand(2, 2, 3, 32, 32), has_refs=torch.tensor([True, False]))
    loss = (out.restored - x).square().mean() + nn.functional.binary_cross_entropy_with_logits(
        out.class_logits, torch.ones(2, 3)
    )
    loss.backward()
    for p in m.weight_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    arch = m.arch_parameters()
    if name == "nasfe_search":
        assert arch[0] is m.alphas and arch[1] is m.betas
        ops = tiny.model.operators
        live = [i for i, o in enumerate(ops) if o != "zero"]
        assert (m.alphas.grad[..., live].abs() > 0).all()
        # every move with a choice gets a gradient (tiny: 2 cells, 2 levels; betas[layer, source, move]):
        # the encoder stays at level 0 (move 1) or goes to level 1 (move 2); into layer 1 each node
        # has one move (back to level 0): a one-way softmax has gradient 0
        g = m.betas.grad
        assert g[0, 0, 1].abs() > 0 and g[0, 0, 2].abs() > 0
        assert g[1, 0, 1] == 0 and g[1, 1, 0] == 0
    else:
        assert arch == [] and m.alphas is None
    ids = {id(p) for p in m.weight_parameters()}
    assert not ids & {id(p) for p in m.identity.parameters()}
    assert not ids & {id(p) for p in arch}


def test_betas_get_gradient_at_every_node_with_a_choice_of_moves():
    sp = load_space("tiny", {"model.cells": 4, "model.levels": 3, "model.blocks": 1})
    torch.manual_seed(0)
    m = create_model(sp, identity=TinyIdentity())
    m(torch.rand(1, 3, 32, 32)).restored.mean().backward()
    from nasfe.genotype import layer_sources, out_moves

    for layer in range(4):
        for src in layer_sources(layer, 4, 3):
            moves = out_moves(layer, src, 4, 3)
            if len(moves) > 1:
                assert (m.betas.grad[layer, src, moves].abs() > 0).all(), (layer, src)


def test_pc_mode_adds_edge_weights_and_trains_them():
    sp = load_space("tiny", {"model.partial_channels": 2})
    torch.manual_seed(0)
    m = create_model(sp, identity=TinyIdentity())
    arch = m.arch_parameters()
    assert len(arch) == 3 and arch[2].shape == (1, num_edges(2))
    m(torch.rand(1, 3, 32, 32)).restored.mean().backward()
    assert (arch[2].grad.abs() > 0).all()


def _fusion_params_from_formula(space, genotype) -> int:
    """Independent count of a derived fusion network: ops by formula + 1x1 reductions + resamplers."""
    c, total = space.model.channels, 0
    levels = [0, 0] + genotype.path
    for layer in range(space.model.cells):
        cell = genotype.cell_for_layer(layer)
        total += sum(op_param_count(o, c) for g in cell for o in g.ops) + len(cell) * c * c + c
        for steps in (levels[layer + 2] - levels[layer + 1], levels[layer + 2] - levels[layer]):
            total += abs(steps) * (9 * c * c + c) if steps > 0 else (c * c + c if steps < 0 else 0)
    return total


def test_derived_network_has_no_zero_and_formula_param_count(tiny):
    m = _model("nasfe_derived", tiny)
    assert not any(type(mod).__name__ == "Zero" for mod in m.modules())
    g = derive_genotype(torch.randn(1, num_edges(2), 6), torch.randn(2, 2, 3), tiny)
    torch.manual_seed(1)
    d = create_model(tiny, g, identity=TinyIdentity())
    assert d.parameter_counts()["fusion"] == _fusion_params_from_formula(tiny, g)
    assert d.arch_parameters() == []


def test_paper_space_derived_size_is_near_table6():
    paper = load_space("paper")

    vgg_shape = TinyIdentity()
    vgg_shape.out_channels = 256  # VGGFace pool3: only the projection's size depends on it

    torch.manual_seed(0)
    alphas = torch.randn(1, num_edges(paper.model.blocks), len(paper.model.operators))
    g = derive_genotype(alphas, torch.randn(paper.model.cells, paper.model.levels, 3), paper)
    m = create_model(paper, g, identity=vgg_shape)
    counts = m.parameter_counts()
    assert counts["fusion"] == _fusion_params_from_formula(paper, g)
    assert 5.9e6 < counts["restoration"] < 6.9e6  # Table 6: 6.40 M
    bn = create_model(load_space("bn"))
    assert 5.6e6 < bn.parameter_counts()["restoration"] < 6.4e6  # Table 6: 6.00 M
    assert bn.parameter_counts()["restoration"] < counts["restoration"]


def test_create_model_dispatch_and_errors(tiny):
    torch.manual_seed(0)
    sup = create_model(tiny, identity=TinyIdentity())
    assert sup.alphas.shape == (1, num_edges(2), 6) and sup.betas.shape == (2, 2, 3)
    g = derive_genotype(sup.alphas, sup.betas, tiny)
    assert create_model(tiny, g, identity=TinyIdentity()).arch_parameters() == []
    bn_space = load_space("tiny", {"model.fusion": "res2"})
    with pytest.raises(ValueError, match="genotype"):
        create_model(bn_space, g, identity=TinyIdentity())
    from nasfe.genotype import GenotypeError

    with pytest.raises(GenotypeError, match="space_hash"):
        create_model(load_space("tiny", {"model.channels": 12}), g, identity=TinyIdentity())
    no_id = create_model(load_space("tiny", {"model.use_identity": False}))
    assert no_id.identity is None and no_id(torch.rand(1, 3, 16, 16)).restored.shape == (1, 3, 16, 16)


def test_refs_change_the_output_and_flag_masks_them(tiny):
    m = _model("nasfe_search", tiny)
    nn.init.normal_(m.no_identity)
    y, refs = torch.rand(2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32)
    with torch.no_grad():
        with_refs = m(y, refs).restored
        without = m(y, None).restored
        masked = m(y, refs, has_refs=torch.tensor([False, True])).restored
    assert not torch.allclose(with_refs, without)
    torch.testing.assert_close(masked[0], without[0])
    torch.testing.assert_close(masked[1], with_refs[1])
    with torch.no_grad():  # (N, k) reference mask: sample 0 has none, sample 1 keeps both
        per_ref = m(y, refs, has_refs=torch.tensor([[False, False], [True, True]])).restored
    torch.testing.assert_close(per_ref, masked)


def test_with_the_identity_room_when_available(tiny):
    pytest.importorskip("nasfe.identity.adain")
    torch.manual_seed(0)
    m = create_model(tiny)  # default_identity: IdentityInfo(build_backbone(space.identity))
    frozen = {id(p) for p in m.identity.parameters()}
    assert frozen and not frozen & {id(p) for p in m.weight_parameters()}
    out = m(torch.rand(1, 3, 48, 40), torch.rand(1, 2, 3, 48, 40))
    out.restored.mean().backward()
    assert out.restored.shape == (1, 3, 48, 40)
    assert all(p.grad is None for p in m.identity.parameters())


def test_encoder_pretraining_hook(tiny):
    m = _model("nasfe_search", tiny)
    y, x = torch.rand(2, 3, 20, 18), torch.rand(2, 3, 20, 18)
    feats = m.encoder_outputs(y)
    assert set(feats) == {"blur", "noise", "lowlight"} and feats["blur"].shape == (2, 8, 10, 10)
    loss = encoder_task_loss(m, "noise", y, x)
    loss.backward()
    params = m.pretrain_parameters("noise")
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for p in m.encoders["blur"].parameters())
    with pytest.raises(ValueError, match="unknown task"):
        encoder_task_loss(m, "rain", y, x)
    assert isinstance(m, NASFE)


def test_pretrained_encoder_sees_the_joint_prior_as_it_saw_its_own(tiny):
    """Pre-training feeds one-hot priors; joint training feeds all three tasks' probabilities. The
    other tasks' prior channels must not shift the pre-trained features (they were random weights
    that pre-training never trained, an offset that undid part of it)."""
    assert tiny.model.use_classifier
    m = _model("nasfe_search", tiny)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(m.pretrain_parameters("noise"), lr=1e-2)
    for _ in range(5):
        x = torch.rand(2, 3, 20, 18, generator=gen)
        y = x + 0.1 * torch.randn(2, 3, 20, 18, generator=gen)
        opt.zero_grad()
        encoder_task_loss(m, "noise", y, x).backward()
        opt.step()
    enc = m.encoders["noise"]
    y = torch.rand(2, 3, 20, 18, generator=gen)
    own = enc(y, torch.tensor([[0.0, 1.0, 0.0]] * 2))
    joint = enc(y, torch.tensor([[1.0, 1.0, 1.0]] * 2))  # what CN says of a blurred, noisy, dark face
    torch.testing.assert_close(joint, own)
    # zero is only the start: once the prior channels carry values, their weights get a gradient
    joint.square().mean().backward()
    assert enc.head.weight.grad[:, 3].abs().sum() > 0


def test_per_layer_cells_supernet_and_derived():
    sp = load_space("tiny", {"model.shared_cell": False})
    torch.manual_seed(0)
    sup = create_model(sp, identity=TinyIdentity())
    assert sup.alphas.shape == (2, num_edges(2), 6)
    alphas = sup.alphas.detach().clone()
    ops = sp.model.operators
    alphas[1, :, ops.index("deveil_op")] = 5.0  # layer 1 prefers deveil, layer 0 does not
    g = derive_genotype(alphas, sup.betas, sp)
    assert len(g.cells) == 2 and all(o == "deveil_op" for gene in g.cells[1] for o in gene.ops)
    d = create_model(sp, g, identity=TinyIdentity())
    assert d.parameter_counts()["fusion"] == _fusion_params_from_formula(sp, g)
    assert d(torch.rand(1, 3, 16, 16)).restored.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("global_context", [False, True])
def test_encoder_sees_the_whole_image_only_with_global_context(global_context):
    """Low light needs the image-wide illumination: with ``model.global_context`` a change in one
    corner reaches the encoder's features in the opposite corner, far beyond the 3x3 stack."""
    from nasfe.model.encoders import TaskEncoder

    torch.manual_seed(0)
    enc = TaskEncoder(8, 1, prior_channels=0, global_context=global_context)
    if global_context:
        torch.nn.init.normal_(enc.context.fc2.weight, std=0.5)  # trained: not the identity any more
    y = torch.rand(1, 3, 64, 64)
    y2 = y.clone()
    y2[..., :8, :8] = 1.0
    with torch.no_grad():
        far = (enc(y2) - enc(y))[..., -8:, -8:].abs().max().item()
    assert (far > 1e-4) == global_context


def test_global_context_starts_as_the_identity_and_keeps_old_hashes():
    from nasfe.model.encoders import GlobalContext

    x = torch.randn(2, 8, 5, 7)
    assert torch.equal(GlobalContext(8)(x), x)
    old = load_space("tiny")
    assert load_space("tiny", {"model.global_context": False}).space_hash() == old.space_hash()
    assert load_space("tiny", {"model.global_context": True}).space_hash() != old.space_hash()


@pytest.mark.parametrize("searched", [True, False])
def test_fusion_skip_adds_the_full_resolution_input(searched):
    """``model.fusion_skip``: the fusion network's output is its input plus what the cells make of
    it, for the supernet and a derived network on a path through the coarse level alike."""
    from nasfe.genotype import Genotype
    from nasfe.model.fusion import DerivedFusion, SearchFusion

    def build(skip):  # partial channels, as cpu.yaml and paper.yaml search
        space = load_space("tiny", {"model.fusion_skip": skip, "model.partial_channels": 2})
        torch.manual_seed(0)
        if searched:
            return SearchFusion(space.model)
        cells = [
            [{"inputs": [0, 1], "ops": ["res_op", "fft_op"]}, {"inputs": [1, 2], "ops": ["deveil_op", "sep_conv_3x3"]}]
        ]
        g = Genotype.from_dict(
            {
                "schema_version": 1,
                "space_hash": space.space_hash(),
                "blocks": 2,
                "operators": list(space.model.operators),
                "cells": cells,
                "path": [1, 0],
            },
            space=space,
        )
        return DerivedFusion(space.model, g)

    x = torch.randn(2, 8, 12, 10)
    plain, skip = build(False), build(True)
    skip.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(skip(x), x + plain(x))


def test_fusion_skip_keeps_old_hashes():
    old = load_space("tiny")
    assert load_space("tiny", {"model.fusion_skip": False}).space_hash() == old.space_hash()
    assert load_space("tiny", {"model.fusion_skip": True}).space_hash() != old.space_hash()
