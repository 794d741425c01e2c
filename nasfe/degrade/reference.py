"""Per-image NumPy/OpenCV implementation of the same degradation model (the benchmark baseline).

Straightforward code, one HxWx3 float image at a time: ``cv2.filter2D`` for the blur (reflect-101
border, the same as torch's 'reflect'), ``np.interp`` for the response curves, NumPy for the
Bayer mosaic and the noise, ``cv2.filter2D`` with the four Malvar-He-Cutler kernels for the
demosaic. Given the
same parameters and the same noise field it matches :func:`nasfe.degrade.pipeline.degrade` up to
float rounding; the cross-check test holds them together.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from nasfe.degrade.camera import DEMOSAIC_PLAN, MALVAR_KERNELS, ResponseCurves


def _bayer_masks(h: int, w: int) -> np.ndarray:
    yy = (np.arange(h) % 2)[:, None]
    xx = (np.arange(w) % 2)[None, :]
    r = (yy == 0) & (xx == 0)
    b = (yy == 1) & (xx == 1)
    return np.stack([r, ~(r | b), b], axis=-1).astype(np.float32)  # (H, W, 3)


def degrade_image(
    x: np.ndarray,
    kernel: Optional[np.ndarray],
    r: float,
    sigma_s: float,
    sigma_c: float,
    curves: Optional[ResponseCurves],
    crf_id: int,
    eps: Optional[np.ndarray] = None,
    rng: Optional[np.random.Generator] = None,
    noise_model: str = "after-r",
    kernel_mode: str = "centred",
) -> np.ndarray:
    """Degrade one image ``x`` (H, W, 3) float32 in [0, 1]; returns the same shape in [0, 1].

    ``kernel``: a 2-D PSF (odd size) or None for no blur. ``eps``: the (H, W) standard normal
    sensor field (drawn from ``rng`` when None). ``noise_model``: see
    :data:`nasfe.degrade.pipeline.NOISE_MODELS`, written out here from its definition.
    ``kernel_mode`` 'paper-compatible': zero border and min-max rescaling of the blurred image.
    """
    y: np.ndarray = x.astype(np.float32)
    if kernel is not None:
        # filter2D correlates; flipping the kernel makes it a convolution.
        paper = kernel_mode == "paper-compatible"
        y = cv2.filter2D(
            y,
            -1,
            np.ascontiguousarray(kernel[::-1, ::-1]).astype(np.float32),
            borderType=cv2.BORDER_CONSTANT if paper else cv2.BORDER_REFLECT_101,
        )
        if paper:
            y = (y - y.min()) / max(float(y.max() - y.min()), 1e-12)
        y = np.clip(y, 0.0, 1.0)
    if r >= 1.0 and sigma_s == 0 and sigma_c == 0:
        return y
    if curves is None:
        raise ValueError("degrade_image: low light or sensor noise needs the response curves; curves is None")
    grid, inv = curves.numpy_curve(crf_id, inverse=True)
    _, fwd = curves.numpy_curve(crf_id, inverse=False)
    h, w = y.shape[:2]
    masks = _bayer_masks(h, w)
    if eps is None:
        eps = (rng or np.random.default_rng()).standard_normal((h, w)).astype(np.float32)
    if noise_model == "display-r":
        scene = (np.interp(y * r, grid, inv) * masks).sum(-1)
        raw = np.clip(scene + np.sqrt(scene * sigma_s**2 + sigma_c**2) * eps, 0.0, 1.0)
    else:
        scene = (np.interp(y, grid, inv) * masks).sum(-1)  # irradiance before r
        if noise_model == "after-r":
            raw = np.clip(r * scene + np.sqrt(r * scene * sigma_s**2 + sigma_c**2) * eps, 0.0, 1.0)
        elif noise_model == "scene-variance":
            raw = np.clip(r * scene + np.sqrt(scene * sigma_s**2 + sigma_c**2) * eps, 0.0, 1.0)
        elif noise_model == "before-r":
            raw = r * np.clip(scene + np.sqrt(scene * sigma_s**2 + sigma_c**2) * eps, 0.0, 1.0)
        else:
            raise ValueError(f"unknown noise model {noise_model!r}")
    raw = raw.astype(np.float32)
    # Malvar demosaic: filter the raw with each kernel, then pick per Bayer site and channel.
    filtered = [cv2.filter2D(raw, -1, k.numpy(), borderType=cv2.BORDER_REFLECT_101) for k in MALVAR_KERNELS]
    rgb = np.empty((h, w, 3), np.float32)
    for (py, px), plan in DEMOSAIC_PLAN.items():
        for c, k in enumerate(plan):
            rgb[py::2, px::2, c] = (raw if k < 0 else filtered[k])[py::2, px::2]
    return np.clip(np.interp(np.clip(rgb, 0, 1), grid, fwd), 0.0, 1.0).astype(np.float32)
