"""The training losses of section 3.3: L2, perceptual (Eq. 10), identity (Eq. 8), L_final (Eq. 9).

Normalisations:

* ``l2_loss`` = the paper's ||x_hat - x||_2^2: the sum over C, H, W of one image, averaged over
  the batch (``loss.l2: sum``, the default). With the paper's lambdas (0.04, 0.003) this makes
  fidelity the dominant term, as Table 6 implies (docs/MODEL.md, "Loss balance", has the
  measured ratios). ``loss.l2: mean`` divides it by 3*H*W (the per-pixel mean squared error);
  the lambdas must then be scaled down by the same factor to keep the paper's balance.
* ``perceptual_loss`` (Eq. 10) = 1/(C h w) sum over channels and positions of |F^x_hat - F^x|
  on the backbone's feature map (pool3 for VGGFace), averaged over the batch. The paper's N, H, W
  in Eq. 10 are the channels, height and width of F, and ||.|| of a scalar difference is its
  absolute value, so Eq. 10 as written is a mean absolute error. ``mode="l2sq"`` gives the mean
  squared error of Johnson et al. [24] instead.
* ``identity_loss`` (Eq. 8) = mean over samples and references of arccos(cos(F^x_hat, F^C_i)),
  the cosine being the inner product of L2-normalised embeddings, clamped to [-1+1e-6, 1-1e-6]
  so arccos' derivative stays finite. The value lies in [0, pi].
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.config import ConfigError, LossConfig
from nasfe.identity.backbones import FaceBackbone

log = logging.getLogger(__name__)

COS_CLAMP = 1.0 - 1e-6
PERCEPTUAL_MODES = ("l1", "l2sq")


L2_MODES = ("sum", "mean")


def l2_loss(a: torch.Tensor, b: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    """``sum``: the paper's ||a - b||^2 per image (sum over C, H, W), averaged over the batch;
    ``mean``: the mean squared error over every element (``sum`` / (C*H*W))."""
    if a.shape != b.shape:
        raise ValueError(f"l2_loss: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if mode == "mean":
        return F.mse_loss(a, b)
    if mode == "sum":
        return (a - b).pow(2).flatten(1).sum(dim=1).mean()
    raise ValueError(f"l2_loss: mode must be one of {L2_MODES}, got {mode!r}")


def _feature_distance(f_hat: torch.Tensor, f_x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "l1":
        return (f_hat - f_x).abs().mean()
    if mode == "l2sq":
        return (f_hat - f_x).pow(2).mean()
    raise ValueError(f"perceptual loss: mode must be one of {PERCEPTUAL_MODES}, got {mode!r}")


def perceptual_loss(backbone: FaceBackbone, restored: torch.Tensor, x: torch.Tensor, mode: str = "l1") -> torch.Tensor:
    """Eq. 10 on ``backbone.features``: mean |F^x_hat - F^x| (``mode="l1"``) or squared (``"l2sq"``).

    Gradients flow into ``restored`` only; the target's features are computed without a graph.
    """
    if restored.shape != x.shape:
        raise ValueError(f"perceptual_loss: shapes differ, {tuple(restored.shape)} vs {tuple(x.shape)}")
    f_hat = backbone.features(restored)
    with torch.no_grad():
        f_x = backbone.features(x)
    return _feature_distance(f_hat, f_x, mode)


def _arccos_mean(e_hat: torch.Tensor, e_ref: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    cos = F.cosine_similarity(e_hat.unsqueeze(1), e_ref, dim=-1, eps=1e-8)  # (N,k)
    ang = torch.arccos(cos.clamp(-COS_CLAMP, COS_CLAMP))
    if mask is None:
        return ang.mean()
    w = mask.to(ang.dtype)
    return (ang * w).sum() / w.sum().clamp_min(1.0)  # no valid reference at all -> 0


def identity_loss(
    backbone: FaceBackbone, restored: torch.Tensor, refs: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Eq. 8: mean arccos of the cosine between the restored face's and each reference's embedding.

    restored (N,3,H,W), refs (N,k,3,H',W'), mask (N,k) of valid references or None. In [0, pi].
    """
    _check_refs(refs, restored, mask)
    e_hat = backbone.embedding(restored)
    e_ref = backbone.reference_embeddings(refs, restored.shape[-2:])
    return _arccos_mean(e_hat, e_ref, mask)


def _check_refs(refs: torch.Tensor, restored: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
    if refs.dim() != 5 or refs.shape[0] != restored.shape[0] or refs.shape[2] != 3:
        raise ValueError(
            f"identity loss: refs must be (N,k,3,H,W) with N = {restored.shape[0]}, got {tuple(refs.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(refs.shape[:2]):
        raise ValueError(f"identity loss: mask must be (N,k) = {tuple(refs.shape[:2])}, got {tuple(mask.shape)}")


class NASFELoss(nn.Module):
    """L_final = L2 + lambda_per * L_per + lambda_iden * L_iden (Eq. 9).

    ``forward(restored, x, refs=None, ref_mask=None) -> (total, {'l2', 'per', 'iden'})``; the
    dict holds detached scalars for logging. A term whose lambda is 0 costs no backbone pass;
    L_iden is 0 without references; with ``loss.iden_samples`` n > 0 it is the mean over the
    batch's first n samples only (the embedding pass is the costly one on small images). The
    references used here are the clean photos of the sample's identity whether or not the network
    was shown them (``drop_refs`` only hides them from the network's input).

    A backbone without pretrained weights (``backbone.pretrained`` False: the seeded random init)
    never drives a loss: L_per and L_iden are switched off (their lambdas set to 0) with a
    warning, since their gradients would only train towards random features. Pass
    ``allow_random_backbone=True`` to keep them (tests, measurements).

    Under bf16 autocast the backbone runs in bf16; L2 and the feature and embedding distances
    are computed in float32.
    """

    def __init__(self, backbone: FaceBackbone, cfg: LossConfig, allow_random_backbone: bool = False):
        super().__init__()
        mode = cfg.perceptual
        if mode not in PERCEPTUAL_MODES:
            raise ConfigError(f"loss.perceptual = {mode!r}; expected one of {list(PERCEPTUAL_MODES)}")
        l2_mode = cfg.l2
        if l2_mode not in L2_MODES:
            raise ConfigError(f"loss.l2 = {l2_mode!r}; expected one of {list(L2_MODES)}")
        if cfg.lambda_per < 0 or cfg.lambda_iden < 0:
            raise ConfigError(
                f"loss.lambda_per and loss.lambda_iden must be >= 0, got {cfg.lambda_per}, {cfg.lambda_iden}"
            )
        self.backbone = backbone
        self.lambda_per = float(cfg.lambda_per)
        self.lambda_iden = float(cfg.lambda_iden)
        self.mode = mode
        self.l2_mode = l2_mode
        if cfg.iden_samples < 0:
            raise ConfigError(f"loss.iden_samples must be >= 0, got {cfg.iden_samples}")
        self.iden_samples = int(cfg.iden_samples)
        if (
            not getattr(backbone, "pretrained", True)
            and not allow_random_backbone
            and (self.lambda_per > 0 or self.lambda_iden > 0)
        ):
            log.warning(
                "the identity backbone (%s) has no pretrained weights (identity.weights is empty): "
                "lambda_per %g and lambda_iden %g set to 0, the loss is L2 only; set identity.weights "
                "(e.g. identity.backbone: mobilefacenet with identity.weights: packaged)",
                type(backbone).__name__,
                self.lambda_per,
                self.lambda_iden,
            )
            self.lambda_per = self.lambda_iden = 0.0

    def forward(
        self,
        restored: torch.Tensor,
        x: torch.Tensor,
        refs: Optional[torch.Tensor] = None,
        ref_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss (with graph) and its detached parts."""
        l2 = l2_loss(restored, x, self.l2_mode)
        zero = restored.new_zeros(())
        per, iden = zero, zero
        use_iden = self.lambda_iden > 0 and refs is not None
        f_hat = None
        if self.lambda_per > 0:
            if restored.shape != x.shape:
                raise ValueError(f"NASFELoss: shapes differ, {tuple(restored.shape)} vs {tuple(x.shape)}")
            f_hat = self.backbone.features(restored)
            f_x = self.backbone.target_features(x)  # no graph; reused across steps when cached
            per = _feature_distance(f_hat.float(), f_x.float(), self.mode)  # fp32 under bf16 autocast
        if use_iden:
            _check_refs(refs, restored, ref_mask)
            n = restored.shape[0] if self.iden_samples == 0 else min(self.iden_samples, restored.shape[0])
            # Reuse the perceptual pass when the embedding is a function of the same features.
            e_hat = self.backbone.embedding_from_features(f_hat[:n]) if f_hat is not None else None
            if e_hat is None:
                e_hat = self.backbone.embedding(restored[:n])
            e_ref = self.backbone.reference_embeddings(refs, restored.shape[-2:], samples=n)
            iden = _arccos_mean(e_hat.float(), e_ref.float(), None if ref_mask is None else ref_mask[:n])
        total = l2 + self.lambda_per * per + self.lambda_iden * iden
        return total, {"l2": l2.detach(), "per": per.detach(), "iden": iden.detach()}
