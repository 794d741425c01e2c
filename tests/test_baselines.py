"""Classical baselines: behaviour on images degraded here (a simple model written in this test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nasfe.evaluate.baselines import BASELINES, estimate_noise_sigma, get_baseline, histeq, wiener_deconvolve
from nasfe.evaluate.metrics import psnr

from conftest import shared_path


def _face(h=72, w=60, seed=0, texture=0.01) -> torch.Tensor:
    """A smooth cartoon face: shaded background, skin ellipse, eyes, mouth (3,H,W) in [0,1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    img[:] = 0.25 + 0.5 * (xx / w)[..., None] * np.array([0.6, 0.8, 1.0])
    face = ((yy - h / 2) / (0.38 * h)) ** 2 + ((xx - w / 2) / (0.33 * w)) ** 2 < 1
    img[face] = np.array([0.85, 0.66, 0.55]) * (0.8 + 0.2 * (yy[face] / h))[:, None]
    for ex in (0.37, 0.63):
        eye = (yy - 0.42 * h) ** 2 + (xx - ex * w) ** 2 < (0.06 * w) ** 2
        img[eye] = 0.1
    mouth = (np.abs(yy - 0.68 * h) < 0.025 * h) & (np.abs(xx - w / 2) < 0.15 * w)
    img[mouth] = np.array([0.6, 0.2, 0.2])
    img += rng.normal(0, texture, img.shape)  # a little skin texture
    return torch.from_numpy(np.clip(img, 0, 1).transpose(2, 0, 1).astype(np.float32))


def _degrade(x: torch.Tensor, blur=1.2, r=0.25, sigma=0.02, seed=0) -> torch.Tensor:
    """Gamma-2.2 camera: linearise, Gaussian blur, scale by r, add Gaussian noise, re-encode."""
    rng = np.random.default_rng(seed)
    out = []
    for im in x.numpy():
        lin = im.astype(np.float64) ** 2.2
        lin = np.stack([ndimage.gaussian_filter(c, blur) for c in lin]) * r
        lin = np.clip(lin + rng.normal(0, sigma, lin.shape) * r, 0, 1)
        out.append(lin ** (1 / 2.2))
    return torch.from_numpy(np.stack(out).astype(np.float32))


@pytest.fixture(scope="module")
def pair():
    x = torch.stack([_face(seed=i) for i in range(3)])
    return x, _degrade(x)


def test_registry_shapes_dtypes_ranges_and_determinism(pair):
    _, y = pair
    assert set(BASELINES) == {"input", "histeq", "classical"}
    for name, fn in BASELINES.items():
        out = fn(y)
        assert out.shape == y.shape and out.dtype == y.dtype and out.device == y.device, name
        assert float(out.min()) >= 0 and float(out.max()) <= 1, name
        assert torch.equal(out, fn(y.clone())), name
    y64 = y.double()
    assert get_baseline("histeq")(y64).dtype == torch.float64
    assert torch.equal(BASELINES["input"](y), y)
    with pytest.raises(KeyError, match="known"):
        get_baseline("bm3d")
    with pytest.raises(ValueError, match="classical"):
        BASELINES["classical"](y[0])


def test_histeq_spreads_a_dark_image_over_the_range(pair):
    _, y = pair
    dark = y * 0.3
    out = histeq(dark)
    luma = 0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]
    for i in range(len(out)):
        assert float(dark[i].max()) < 0.35
        assert float(luma[i].min()) < 0.1 and float(luma[i].max()) > 0.85
    assert float(out.mean()) > 2 * float(dark.mean())


def test_classical_improves_psnr_on_blur_noise_low_light(pair):
    x, y = pair
    before, after = psnr(y, x), psnr(BASELINES["classical"](y), x)
    assert (after > before + 3.0).all(), (before, after)


def test_classical_undoes_low_light_alone(pair):
    x, _ = pair
    dark = _degrade(x, blur=0.01, r=0.2, sigma=0.0)
    assert (psnr(BASELINES["classical"](dark), x) > psnr(dark, x) + 5.0).all()


def test_noise_estimate_tracks_added_noise():
    clean = _face(h=96, w=80, seed=3)[1].numpy() * 255
    rng = np.random.default_rng(0)
    for sigma in (5.0, 10.0, 20.0):
        est = estimate_noise_sigma(clean + rng.normal(0, sigma, clean.shape))
        assert est == pytest.approx(sigma, rel=0.2)
    assert estimate_noise_sigma(clean) < 3.0


def test_wiener_undoes_a_matching_gaussian_blur():
    x = _face(seed=5, texture=0.0).numpy().transpose(1, 2, 0)
    blurred = np.stack([ndimage.gaussian_filter(x[..., c], 1.2, mode="reflect") for c in range(3)], axis=-1)
    restored = wiener_deconvolve(blurred, sigma=1.2, nsr=1e-5)
    assert restored.shape == x.shape and restored.dtype == np.float32
    err_before = np.abs(blurred - x)[8:-8, 8:-8].mean()
    err_after = np.abs(restored - x)[8:-8, 8:-8].mean()
    assert err_after < 0.6 * err_before


def test_classical_on_real_faces():
    import cv2

    folder = shared_path("data", "celeba-id")
    files = sorted(folder.glob("*/*.jpg"))[:3]
    x = (
        torch.stack(
            [torch.from_numpy(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)).permute(2, 0, 1) for f in files]
        ).float()
        / 255
    )
    y = _degrade(x, blur=1.5, r=0.2, sigma=0.03)
    assert psnr(BASELINES["classical"](y), x).mean() > psnr(y, x).mean() + 2.0
