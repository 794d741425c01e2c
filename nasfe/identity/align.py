"""Differentiable alignment of CelebA-layout faces to the 112x112 ArcFace template.

The faces of this project are aligned like CelebA's aligned crops centre-cropped to 176x144
(height x width): the five landmarks (eyes, nose tip, mouth corners) sit at
``CELEBA_LANDMARKS`` (x, y pixel coordinates). Face-recognition networks (MobileFaceNet, ArcFace)
expect 112x112 crops with the landmarks at ``ARCFACE_TEMPLATE``. One similarity transform
(rotation, uniform scale, translation; least squares) maps one layout onto the other.

Images of another size are assumed to hold a face framed the same way, only scaled: the layout is
scaled by width/144 in x and height/176 in y. That is exact for resized CelebA-style crops and an
approximation for anything else (for example VGGFace2's loosely cropped 224x224 faces).

Pixel convention: landmark coordinates are pixel-centre coordinates (pixel i covers [i-0.5, i+0.5]),
the convention of ``cv2.warpAffine``, so ``align_faces`` matches OpenCV's bilinear warp.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: (x, y) of left eye, right eye, nose tip, left and right mouth corner in a 176x144 crop.
CELEBA_LANDMARKS = np.array([[52, 90], [91, 90], [71, 114], [55, 131], [88, 131]], dtype=np.float64)
CELEBA_SIZE = (176, 144)  # (height, width) the layout above refers to

#: The ArcFace 5-point template in a 112x112 crop (x, y).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_SIZE = 112


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (no reflection) taking points ``src`` onto ``dst``.

    src, dst: (P, 2) arrays of (x, y). Returns the 2x3 matrix M with dst ~= M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"similarity_transform: expected two (P>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    # Umeyama: the rotation comes from the SVD of the cross-covariance.
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1.0  # keep a proper rotation
    rot = u @ fix @ vt
    var_s = (s0**2).sum() / len(src)
    scale = float((sig * np.diag(fix)).sum() / var_s)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def celeba_landmarks(height: int, width: int) -> np.ndarray:
    """The CelebA landmark layout scaled to an image of ``height`` x ``width`` (see module doc)."""
    sy, sx = height / CELEBA_SIZE[0], width / CELEBA_SIZE[1]
    # Scale about pixel edges (x+0.5) so a resize of the whole crop maps landmarks exactly.
    pts = CELEBA_LANDMARKS.copy()
    pts[:, 0] = (pts[:, 0] + 0.5) * sx - 0.5
    pts[:, 1] = (pts[:, 1] + 0.5) * sy - 0.5
    return pts


def alignment_matrix(height: int, width: int, out_size: int = ARCFACE_SIZE) -> np.ndarray:
    """2x3 pixel-coordinate matrix taking a ``height`` x ``width`` CelebA-layout face to the template."""
    template = ARCFACE_TEMPLATE * (out_size / ARCFACE_SIZE)
    return similarity_transform(celeba_landmarks(height, width), template)


def _theta(height: int, width: int, out_size: int) -> np.ndarray:
    """affine_grid theta (output normalised coords -> input normalised coords), align_corners=False."""
    m = np.vstack([alignment_matrix(height, width, out_size), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)  # output pixel -> input pixel

    # pixel-centre coordinate p and normalised u are related by p = (u + 1) * size / 2 - 0.5
    out_n2p = np.diag([out_size / 2.0, out_size / 2.0, 1.0])
    out_n2p[:2, 2] = (out_size - 1) / 2.0
    in_p2n = np.diag([2.0 / width, 2.0 / height, 1.0])
    in_p2n[0, 2] = 1.0 / width - 1.0
    in_p2n[1, 2] = 1.0 / height - 1.0
    return (in_p2n @ inv @ out_n2p)[:2]


def align_faces(x: torch.Tensor, out_size: int = ARCFACE_SIZE) -> torch.Tensor:
    """Warp CelebA-layout faces (N,3,H,W) to the ArcFace template, (N,3,out,out); differentiable.

    Bilinear sampling with zero padding outside the source image (as ``cv2.warpAffine`` with a
    constant border).
    """
    if x.dim() != 4:
        raise ValueError(f"align_faces: expected an (N,C,H,W) tensor, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    theta = torch.as_tensor(_theta(h, w, out_size), dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
