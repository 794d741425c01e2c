"""Identity (section 3.2) and losses (section 3.3): face backbones, alignment, AdaIN/I_iden, L_final."""

from nasfe.identity.adain import IdentityInfo, adain, sample_ref_mask
from nasfe.identity.align import align_faces, alignment_matrix
from nasfe.identity.backbones import FaceBackbone, MobileFaceNet, VGGFace, build_backbone
from nasfe.identity.losses import NASFELoss, identity_loss, l2_loss, perceptual_loss

__all__ = [
    "FaceBackbone",
    "VGGFace",
    "MobileFaceNet",
    "build_backbone",
    "align_faces",
    "alignment_matrix",
    "adain",
    "IdentityInfo",
    "sample_ref_mask",
    "l2_loss",
    "perceptual_loss",
    "identity_loss",
    "NASFELoss",
]
