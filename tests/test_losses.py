"""Losses of section 3.3: L2, perceptual (Eq. 10), identity (Eq. 8) and L_final (Eq. 9)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nasfe.config import ConfigError, IdentityConfig, LossConfig
from nasfe.identity.backbones import FaceBackbone, build_backbone
from nasfe.identity.losses import NASFELoss, identity_loss, l2_loss, perceptual_loss


class FlatBackbone(FaceBackbone):
    """Features = a fixed 2x2 average pool; embedding = the flattened image (cos can be exactly +-1).

    Counts its calls so the tests can check which passes the loss skips.
    """

    def __init__(self):
        super().__init__()
        self.feature_channels = 3
        self.calls = {"features": 0, "embedding": 0}

    def features(self, x):
        self.calls["features"] += 1
        return nn.functional.avg_pool2d(x, 2)

    def embedding(self, x):
        self.calls["embedding"] += 1
        return x.flatten(1) - 0.5  # centred so opposite images give cos = -1


def _imgs(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_l2_is_the_papers_per_image_sum_or_the_mean():
    a, b = _imgs(2, 3, 8, 6), _imgs(2, 3, 8, 6, seed=1)
    per_image = ((a - b) ** 2).sum(dim=(1, 2, 3))
    assert l2_loss(a, b).item() == pytest.approx(per_image.mean().item(), rel=1e-6)  # ||x_hat - x||^2
    assert l2_loss(a, b, "mean").item() == pytest.approx(((a - b) ** 2).sum().item() / a.numel(), rel=1e-6)
    assert l2_loss(a, a).item() == 0.0
    with pytest.raises(ValueError, match="shapes"):
        l2_loss(a, b[:, :2])


def test_perceptual_is_eq10_mean_abs_feature_difference():
    bb = build_backbone(IdentityConfig(backbone="vggface", width=0.125))
    x, r = _imgs(2, 3, 32, 24), _imgs(2, 3, 32, 24, seed=1).requires_grad_()
    fr, fx = bb.features(r), bb.features(x)
    c, h, w = fr.shape[1:]
    expect = (fr - fx).abs().sum(dim=(1, 2, 3)) / (c * h * w)  # Eq. 10 per image
    loss = perceptual_loss(bb, r, x)
    assert loss.item() == pytest.approx(expect.mean().item(), rel=1e-5)
    assert perceptual_loss(bb, r, x, mode="l2sq").item() == pytest.approx(((fr - fx) ** 2).mean().item(), rel=1e-5)
    assert perceptual_loss(bb, x, x).item() == 0.0
    loss.backward()
    assert r.grad.abs().sum() > 0 and all(p.grad is None for p in bb.parameters())


def test_identity_loss_lies_in_zero_pi_with_finite_gradients():
    bb = FlatBackbone()
    x = _imgs(3, 3, 4, 4)
    refs = torch.stack([x, 1.0 - x], dim=1)  # each sample: itself (cos 1) and its negative (cos -1)
    r = x.clone().requires_grad_()
    loss = identity_loss(bb, r, refs)
    assert loss.item() == pytest.approx(math.pi / 2, abs=1e-2)  # mean of ~0 and ~pi
    loss.backward()
    assert torch.isfinite(r.grad).all()
    same = identity_loss(bb, x, x.unsqueeze(1))
    opposite = identity_loss(bb, x, (1.0 - x).unsqueeze(1))
    assert 0.0 <= same.item() < 1e-2 and math.pi - 1e-2 < opposite.item() <= math.pi
    for seed in range(5):  # random images and references with a real backbone
        vgg = build_backbone(IdentityConfig(backbone="vggface", width=0.125))
        val = identity_loss(vgg, _imgs(2, 3, 24, 24, seed=seed), _imgs(2, 3, 3, 24, 24, seed=seed + 10)).item()
        assert 0.0 <= val <= math.pi
    # A mask excludes references: only the identical one is left.
    mask = torch.tensor([[True, False]] * 3)
    assert identity_loss(bb, x, refs, mask).item() < 1e-2


def test_nasfe_loss_combines_terms_with_paper_defaults():
    cfg = LossConfig()
    assert (cfg.lambda_per, cfg.lambda_iden) == (0.04, 0.003)
    bb = build_backbone(IdentityConfig(backbone="vggface", width=0.125))
    loss_fn = NASFELoss(bb, cfg, allow_random_backbone=True)
    x, refs = _imgs(2, 3, 32, 24), _imgs(2, 2, 3, 32, 24, seed=2)
    r = _imgs(2, 3, 32, 24, seed=1).requires_grad_()
    total, parts = loss_fn(r, x, refs)
    l2, per, iden = l2_loss(r, x), perceptual_loss(bb, r, x), identity_loss(bb, r, refs)
    assert parts["l2"].item() == pytest.approx(l2.item(), rel=1e-6)
    assert parts["per"].item() == pytest.approx(per.item(), rel=1e-5)
    assert parts["iden"].item() == pytest.approx(iden.item(), rel=1e-4)
    assert total.item() == pytest.approx(l2.item() + 0.04 * per.item() + 0.003 * iden.item(), rel=1e-5)
    total.backward()
    assert torch.isfinite(r.grad).all() and r.grad.abs().sum() > 0
    assert not parts["per"].requires_grad


def test_nasfe_loss_skips_unneeded_backbone_passes():
    bb = FlatBackbone()
    x, r, refs = _imgs(2, 3, 4, 4), _imgs(2, 3, 4, 4, seed=1), _imgs(2, 2, 3, 4, 4, seed=2)
    total, parts = NASFELoss(bb, LossConfig(lambda_per=0.0, lambda_iden=0.0))(r, x, refs)
    assert bb.calls == {"features": 0, "embedding": 0}
    assert total.item() == pytest.approx(l2_loss(r, x).item()) and parts["per"].item() == 0.0
    total, parts = NASFELoss(bb, LossConfig(lambda_per=0.5, lambda_iden=1.0))(r, x, None)
    assert parts["iden"].item() == 0.0 and bb.calls["embedding"] == 0  # no refs: no identity term
    assert total.item() == pytest.approx(l2_loss(r, x).item() + 0.5 * parts["per"].item(), rel=1e-6)
    bb.calls = {"features": 0, "embedding": 0}
    total, parts = NASFELoss(bb, LossConfig(lambda_per=0.0, lambda_iden=1.0))(r, x, refs)
    assert bb.calls["features"] == 0 and parts["iden"].item() > 0


def test_nasfe_loss_rejects_bad_config():
    bb = FlatBackbone()
    with pytest.raises(ConfigError, match="loss.perceptual"):
        NASFELoss(bb, LossConfig(perceptual="l3"))
    with pytest.raises(ConfigError, match="lambda"):
        NASFELoss(bb, LossConfig(lambda_per=-1.0))


class CountingBackbone(FlatBackbone):
    """FlatBackbone that records the batch size of every embedding pass."""

    def __init__(self):
        super().__init__()
        self.embedded: list[int] = []

    def embedding(self, x):
        self.embedded.append(x.shape[0])
        return super().embedding(x)


def test_identity_loss_on_the_first_samples_only_embeds_those():
    x, r, refs = _imgs(4, 3, 4, 4), _imgs(4, 3, 4, 4, seed=1).requires_grad_(), _imgs(4, 2, 3, 4, 4, seed=2)
    mask = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
    bb = CountingBackbone()
    _, parts = NASFELoss(bb, LossConfig(lambda_per=0.0, lambda_iden=1.0, iden_samples=1))(r, x, refs, mask)
    assert sorted(bb.embedded) == [1, 2]  # the first sample and its two references, nothing else
    assert parts["iden"].item() == pytest.approx(identity_loss(FlatBackbone(), r[:1], refs[:1], mask[:1]).item())
    for n in (0, 4, 9):  # 0 or at least the batch: every sample
        total, parts = NASFELoss(bb, LossConfig(lambda_per=0.0, lambda_iden=1.0, iden_samples=n))(r, x, refs, mask)
        assert parts["iden"].item() == pytest.approx(identity_loss(FlatBackbone(), r, refs, mask).item())
    total.backward()
    assert r.grad[1:].abs().sum() > 0
    with pytest.raises(ConfigError, match="loss.iden_samples"):
        NASFELoss(bb, LossConfig(iden_samples=-1))
