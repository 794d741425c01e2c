"""AdaIN (Eq. 7) and the identity information I_iden of section 3.2.

I_iden = mean_i AdaIN(F(C_i), F(y)): each clean reference's backbone features, re-styled to the
per-channel statistics of the degraded image's features, averaged over the references.

Restoring without references: ``IdentityInfo`` returns None when no references are given, and a
zero map for a sample whose references are all masked out. The network (``nasfe/model``) turns
"no identity" into its own learned input (see docs/IDENTITY.md); training drops the references of
a fraction ``identity.drop_refs`` of the samples (``sample_ref_mask``) so the same weights learn
both cases.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.identity.backbones import FaceBackbone


def _mean_std(f: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over the two spatial dims (population variance + eps)."""
    mu = f.mean(dim=(-2, -1), keepdim=True)
    var = f.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return mu, (var + eps).sqrt()


def adain(ref_feats: torch.Tensor, y_feats: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Eq. 7: sigma(F^y) * (F^C - mu(F^C)) / sigma(F^C) + mu(F^y), per channel over space.

    ref_feats: (N,C,h,w) or (N,k,C,h,w); y_feats: (N,C,h',w') (broadcast over k). sigma is the
    population standard deviation with ``eps`` added to the variance (a flat channel stays finite).
    """
    if y_feats.dim() != 4 or ref_feats.dim() not in (4, 5):
        raise ValueError(
            f"adain: expected ref (N,C,h,w) or (N,k,C,h,w) and y (N,C,h,w), got {tuple(ref_feats.shape)} and {tuple(y_feats.shape)}"
        )
    if ref_feats.dim() == 5:
        y_feats = y_feats.unsqueeze(1)
    if ref_feats.shape[0] != y_feats.shape[0] or ref_feats.shape[-3] != y_feats.shape[-3]:
        raise ValueError(f"adain: batch or channel mismatch, ref {tuple(ref_feats.shape)} vs y {tuple(y_feats.shape)}")
    # Statistics in float32 at least, even under bf16 autocast (variances of large activations).
    wide = torch.promote_types(ref_feats.dtype, torch.float32)
    ref32, y32 = ref_feats.to(wide), y_feats.to(wide)
    mu_c, sd_c = _mean_std(ref32, eps)
    mu_y, sd_y = _mean_std(y32, eps)
    return (sd_y * (ref32 - mu_c) / sd_c + mu_y).to(ref_feats.dtype)


class IdentityInfo(nn.Module):
    """Computes I_iden (N, C, h, w) from the degraded image y and its k clean references.

    ``out_channels`` = the backbone's ``feature_channels``; (h, w) = the backbone map size of y
    (H/8 x W/8 for both backbones). References of another size are resized to that map.
    """

    def __init__(self, backbone: FaceBackbone):
        super().__init__()
        self.backbone = backbone
        self.out_channels = backbone.feature_channels

    def forward(
        self, y: torch.Tensor, refs: Optional[torch.Tensor], mask: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]:
        """y (N,3,H,W), refs (N,k,3,H',W') or None, mask (N,k) bool/0-1 of valid refs or None.

        Returns None when refs is None; a sample with no valid reference gets an all-zero map.
        """
        if refs is None:
            return None
        if refs.dim() != 5 or refs.shape[0] != y.shape[0] or refs.shape[2] != 3:
            raise ValueError(f"IdentityInfo: refs must be (N,k,3,H,W) with N = {y.shape[0]}, got {tuple(refs.shape)}")
        n, k = refs.shape[:2]
        f_y = self.backbone.features(y)
        f_c = self.backbone.reference_features(refs)  # shared with the loss's L_iden (one pass per batch)
        if f_c.shape[-2:] != f_y.shape[-2:]:
            f_c = F.interpolate(f_c, size=f_y.shape[-2:], mode="bilinear", align_corners=False)
        styled = adain(f_c.view(n, k, *f_c.shape[1:]), f_y)
        if mask is None:
            return styled.mean(dim=1)
        if mask.shape != (n, k):
            raise ValueError(f"IdentityInfo: mask must be (N,k) = {(n, k)}, got {tuple(mask.shape)}")
        w = mask.to(styled.dtype).view(n, k, 1, 1, 1)
        count = w.sum(dim=1).clamp_min(1.0)  # zero valid refs -> 0 / 1 = zero map
        return (styled * w).sum(dim=1) / count


def sample_ref_mask(n: int, k: int, drop_prob: float, generator: torch.Generator) -> torch.Tensor:
    """(N,k) bool mask of usable references; each sample loses all of them with ``drop_prob``.

    Used during training so the network also learns to restore without references.
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"sample_ref_mask: drop_prob must lie in [0, 1], got {drop_prob}")
    keep = torch.rand(n, generator=generator) >= drop_prob
    return keep.view(n, 1).expand(n, k).clone()
