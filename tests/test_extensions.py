"""Each extension kind is one function or class plus one registration, made here from the test module:
an operator, a face source, an identity backbone, a fusion model and a degradation, each run in a
tiny search or retraining and removed again afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nasfe.config import PAPER_OPERATORS, ConfigError, load_space
from nasfe.registry import BACKBONES, DEGRADATIONS, FACE_SOURCES, FUSIONS, OPERATORS, Registry

#: One search step (architecture and weights) of a one-cell, one-block network, batch 2 of 32x32 faces.
TINY_RUN = {
    "search.epochs": 1,
    "search.warmup_epochs": 0,
    "search.steps_per_epoch": 1,
    "search.batch_size": 2,
    "search.val_batches": 1,
    "search.log_every": 1,
    "search.checkpoint_every": 100,
    "retrain.epochs": 1,
    "retrain.steps_per_epoch": 1,
    "retrain.batch_size": 2,
    "retrain.val_batches": 1,
    "retrain.checkpoint_every": 100,
    "data.height": 32,
    "data.width": 32,
    "data.synthetic_identities": 6,
    "data.synthetic_images_per_identity": 3,
    "degrade.motion_kernels": 8,
    "degrade.gaussian_kernels": 2,
    "degrade.kernel_sizes": [7, 9],
    "identity.backbone": "vggface",  # an eighth-width random backbone (real weights are full width)
    "identity.weights": None,
    "identity.width": 0.125,
    "model.blocks": 1,
    "model.cells": 1,
    "model.levels": 1,
}


def tiny_space(**overrides):
    return load_space("tiny", {**TINY_RUN, **overrides})


def search(space, run_dir):
    from nasfe.engine.search import run_search
    from nasfe.genotype import Genotype

    summary = run_search(space, run_dir)
    return summary, Genotype.from_json(run_dir / "genotype.json", space=space)


# ---------------------------------------------------------------- operator


class Scale(nn.Module):
    """x * w per channel: the smallest operator with parameters."""

    def __init__(self, c: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):
        return x * self.w


class Negate(nn.Module):
    def forward(self, x):
        return -x


@pytest.fixture
def new_operators():
    from nasfe.model.ops import register_operator

    register_operator("chan_scale", Scale)
    register_operator("negate", lambda c: Negate())
    yield
    OPERATORS.unregister("chan_scale")
    OPERATORS.unregister("negate")


def test_a_registered_operator_is_searched_counted_and_flagged(new_operators, tmp_path):
    from nasfe.genotype import PARAM_FREE_OPS
    from nasfe.model.ops import OPS, op_param_count

    assert OPS["chan_scale"] is Scale and op_param_count("chan_scale", 8) == 8  # built on the meta device
    assert "negate" in PARAM_FREE_OPS and "chan_scale" not in PARAM_FREE_OPS
    assert "chan_scale" not in PAPER_OPERATORS  # registering does not make it the paper's
    space = tiny_space(**{"model.operators": ["chan_scale", "negate", "zero"]})
    _, genotype = search(space, tmp_path)
    ops = {o for cell in genotype.cells for gene in cell for o in gene.ops}
    assert ops and ops <= {"chan_scale", "negate"}


def test_an_operator_is_a_valid_choice_only_while_registered():
    from nasfe.model.ops import register_operator

    register_operator("negate_once", lambda c: Negate())
    try:
        assert tiny_space(**{"model.operators": ["negate_once", "skip_connect"]}).model.operators[0] == "negate_once"
    finally:
        OPERATORS.unregister("negate_once")
    with pytest.raises(ConfigError, match=r"unknown operator\(s\) \['negate_once'\]"):
        tiny_space(**{"model.operators": ["negate_once", "skip_connect"]})


# ---------------------------------------------------------------- face source


class StripeFaces:
    """Made here: identities are stripe frequencies, images their phases (any FaceSource works)."""

    @staticmethod
    def open(cfg):
        from nasfe.data.faces import FaceRecord, FaceSource

        class Stripes(FaceSource):
            name = "stripes"

            def __init__(self):
                super().__init__(cfg.height, cfg.width, min_size=1)
                self.records = [FaceRecord(f"id{i}", f"{i}/{j}") for i in range(6) for j in range(3)]

            def _read(self, rec):
                i, j = (int(v) for v in rec.key.split("/"))
                xx = np.arange(cfg.width)[None, :, None] * (i + 1) / cfg.width + j / 3
                img = 127.5 * (1 + np.sin(2 * np.pi * xx)) * np.ones((cfg.height, 1, 3))
                return img.astype(np.uint8)

        return Stripes()


def test_a_registered_face_source_feeds_a_search(tmp_path):
    from nasfe.data.faces import open_faces, register_face_source

    register_face_source("stripes", StripeFaces.open)
    try:
        space = tiny_space(**{"data.source": "stripes"})
        faces = open_faces(space.data)
        assert faces.load(faces.records[4]).shape == (32, 32, 3)
        summary, _ = search(space, tmp_path)
        assert summary["steps"] == 1
    finally:
        FACE_SOURCES.unregister("stripes")
    with pytest.raises(ConfigError, match="data.source = 'stripes'"):
        tiny_space(**{"data.source": "stripes"})


# ---------------------------------------------------------------- identity backbone


def test_a_registered_backbone_drives_identity_and_losses(tmp_path):
    from nasfe.identity.backbones import FaceBackbone, build_backbone

    class PoolNet(FaceBackbone):
        """A frozen 3x3 conv at stride 8; embedding = its spatial mean."""

        pretrained = True  # keep L_per and L_iden on

        def __init__(self, weights=None, width=1.0):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 3, stride=8, padding=1)
            self.feature_channels = 8
            self.freeze()

        def features(self, x):
            return self.conv(x)

        def embedding(self, x):
            return self.features(x).mean(dim=(-2, -1))

    with BACKBONES.registered("poolnet", PoolNet):
        space = tiny_space(**{"identity.backbone": "poolnet", "identity.weights": None})
        assert isinstance(build_backbone(space.identity), PoolNet)
        summary, _ = search(space, tmp_path)
        assert summary["steps"] == 1
    assert "poolnet" not in BACKBONES


# ---------------------------------------------------------------- fusion model


def test_a_registered_fusion_model_is_built_by_model_fusion_and_retrained(tmp_path):
    from nasfe.engine.retrain import run_retrain
    from nasfe.evaluate.model_io import load_trained
    from nasfe.model.nasfe import NASFE
    from nasfe.model.registry import create_model, identity_for, register_fusion

    class ConvFusion(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def arch_parameters(self):
            return []

        def forward(self, x):
            return x + self.conv(x)

    def conv_fusion(space, genotype=None, identity=None):
        if genotype is not None:
            raise ValueError("conv fusion takes no genotype")
        return NASFE(space.model, ConvFusion(space.model.channels), identity_for(space, identity), 2)

    register_fusion("conv", conv_fusion)
    try:
        space = tiny_space(**{"model.fusion": "conv", "model.use_identity": False})
        assert isinstance(create_model(space).fusion, ConvFusion)
        run_retrain(space, None, tmp_path)
        model, cfg, genotype = load_trained(tmp_path / "model.pt")
        assert isinstance(model.fusion, ConvFusion) and genotype is None
        with torch.no_grad():
            assert model(torch.rand(1, 3, 32, 32)).restored.shape == (1, 3, 32, 32)
    finally:
        FUSIONS.unregister("conv")
    with pytest.raises(ConfigError, match="model.fusion = 'conv'"):
        tiny_space(**{"model.fusion": "conv"})


# ---------------------------------------------------------------- degradation


def _sample_fog(n, cfg, ctx, g):
    return {"fog": 0.2 + 0.3 * torch.rand(n, generator=g)}


def _apply_fog(x, params, ctx, out=None):
    a = params.column("fog").to(x.device, x.dtype).view(-1, 1, 1, 1)
    return x * (1 - a) + 0.8 * a


@pytest.fixture
def fog():
    from nasfe.degrade.pipeline import Stage, register_degradation

    register_degradation("fog", Stage("fog", {"fog": 0.0}, _sample_fog, _apply_fog), ["fog"], lambda cfg: 0.5)
    yield
    DEGRADATIONS.unregister("fog")


def test_a_registered_degradation_is_sampled_applied_labelled_and_classified(fog, tmp_path):
    from nasfe.degrade.camera import ResponseCurves
    from nasfe.degrade.kernels import KernelBank
    from nasfe.degrade.pipeline import Degrader
    from nasfe.model.registry import create_model

    space = tiny_space()
    deg = Degrader(space.degrade, bank=KernelBank.build(4, 2, [7], seed=0), curves=ResponseCurves.parametric())
    x = torch.full((16, 3, 32, 32), 0.5)
    y, params = deg(x, torch.Generator().manual_seed(0))
    c = params.labels()
    assert c.shape == (16, 4) and DEGRADATIONS.names()[-1] == "fog"
    fogged = c[:, 3].bool()
    assert 0 < int(fogged.sum()) < 16
    assert torch.equal(fogged, params.extra["fog"] > 0)
    alone = fogged & (c[:, :3].sum(1) == 0)  # fog only: exactly the fog formula
    a = params.extra["fog"][alone].view(-1, 1, 1, 1)
    assert torch.allclose(y[alone], x[alone] * (1 - a) + 0.8 * a)
    assert create_model(space).classifier.fc.out_features == 4
    summary, _ = search(space, tmp_path)
    assert summary["steps"] == 1


def test_the_built_in_degradations_are_the_three_labels_in_order():
    from nasfe.degrade.pipeline import DegradeParams

    assert DEGRADATIONS.names() == ["blur", "noise", "lowlight"]
    p = DegradeParams.explicit([3, -1, -1], [1.0, 1.0, 0.5], [0.0, 0.02, 0.0], [0.0, 0.01, 0.0], [-1, 0, 0])
    assert p.labels().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


# ---------------------------------------------------------------- the registries themselves


def test_registry_keeps_order_refuses_duplicates_and_restores_on_exit():
    reg = Registry("thing", "nasfe.registry")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with reg.registered("b", 2, flag=True):
        assert list(reg) == ["a", "b"] and reg.names(flag=True) == ["b"] and reg.meta("b") == {"flag": True}
    assert list(reg) == ["a"]
    with pytest.raises(KeyError, match=r"unknown thing 'b'; registered: \['a'\]"):
        reg["b"]


def test_config_module_and_registries_load_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, nasfe.config, nasfe.registry;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_valid_config_choices_are_the_registered_names():
    from nasfe.registry import choices

    assert choices("model", "fusion") == ["nas", "res2"]
    assert choices("identity", "backbone") == ["vggface", "mobilefacenet"]
    assert choices("data", "source") == ["synthetic", "folder", "celeba", "vggface2"]
    assert choices("loss", "l2") is None
