"""Classical restoration baselines: plain functions ``(y: Tensor (N,3,H,W) in [0,1]) -> Tensor``.

``BASELINES`` maps a name to each function, so evaluation code can loop over them next to the
learned models:

* ``input``     -- the degraded image itself (the "B+N+L" column of Table 5).
* ``histeq``    -- Table 5's "Histeq": global histogram equalisation of the luminance (Y of OpenCV's
  YCrCb, 8-bit) of each image; chroma untouched.
* ``classical`` -- a hand-tuned pipeline for blur + noise + low light, per image on 8-bit/float
  NumPy: (1) brighten by a gain that lifts the highlights to ``TARGET_HIGHLIGHT``, (2) estimate
  the noise level (a median form of Immerkaer's Laplacian-difference estimator) and remove it with OpenCV's
  non-local means (``fastNlMeansDenoisingColored``, ``h`` proportional to the estimate), (3) Wiener
  deconvolution with a generic isotropic Gaussian PSF of fixed ``WIENER_SIGMA`` and a noise-to-
  signal ratio that grows with the residual noise. It knows nothing of the true kernel, low-light
  factor or noise level.

All baselines are deterministic, keep shape, dtype and device (work happens on CPU), and return
values in [0, 1]. Inputs outside [0, 1] are clipped first.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
import torch

Baseline = Callable[[torch.Tensor], torch.Tensor]

#: Low-light step: the 99th percentile of the per-pixel max channel (after a 5x5 median, so noise
#: spikes do not count) is lifted to TARGET_HIGHLIGHT by a gain, at most MAX_GAIN. Clean CelebA
#: faces have this percentile at 0.8-1.0, so they are left (nearly) alone.
TARGET_HIGHLIGHT = 0.85
MAX_GAIN = 8.0
#: NLM strength: h = NLM_H_PER_SIGMA * estimated sigma (8-bit units), hColor the same. The
#: constants below were picked on a handful of CelebA faces under a gamma-2.2 blur/noise/dark model.
NLM_H_PER_SIGMA = 2.0
#: Noise estimates below this (8-bit units) skip denoising: it would only smear detail (clean
#: CelebA faces estimate at 0.5-3.5).
NLM_MIN_SIGMA = 3.0
#: NLM patch and search windows; search 11 (OpenCV's default is 21) keeps a 176x144 face fast.
NLM_TEMPLATE = 5
NLM_SEARCH = 11
#: Generic PSF of the Wiener step: isotropic Gaussian with this sigma (pixels), 4 sigma radius.
WIENER_SIGMA = 1.2
#: Wiener noise-to-signal ratio: base value plus a term for the noise left after NLM.
WIENER_NSR = 0.02
WIENER_NSR_PER_SIGMA = 0.01


def _check(y: torch.Tensor, name: str) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != 3:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"baseline {name!r} expects a (N,3,H,W) tensor of RGB images, got {shape}")
    if not y.is_floating_point():
        raise ValueError(f"baseline {name!r} expects float images in [0, 1], got dtype {y.dtype}")


def _per_image(y: torch.Tensor, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Run ``fn`` (HxWx3 float32 [0,1] -> same) on each image on CPU; return like ``y``."""
    _check(y, name)
    arr = y.detach().to("cpu", torch.float32).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    out = np.stack([fn(np.ascontiguousarray(im)) for im in arr]) if len(arr) else arr
    t = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2)
    return t.clamp(0, 1).to(device=y.device, dtype=y.dtype)


def _to_u8(im: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(im * 255.0), 0, 255).astype(np.uint8)


def identity(y: torch.Tensor) -> torch.Tensor:
    """The degraded input unchanged (a copy, clipped to [0, 1])."""
    _check(y, "input")
    return y.detach().clamp(0, 1).clone()


def _histeq_image(im: np.ndarray) -> np.ndarray:
    ycc = cv2.cvtColor(_to_u8(im), cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = cv2.equalizeHist(ycc[..., 0])
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB).astype(np.float32) / 255.0


def histeq(y: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each image's 8-bit luminance (OpenCV YCrCb Y), chroma kept."""
    return _per_image(y, "histeq", _histeq_image)


def estimate_noise_sigma(gray: np.ndarray) -> float:
    """Noise std of a 2-D image (same units as the image), after Immerkaer (1996): the difference of
    two Laplacians cancels smooth structure and leaves 6 sigma of white noise; the median absolute
    response (not the mean) keeps edges and texture from counting as noise."""
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or min(g.shape) < 3:
        raise ValueError(f"estimate_noise_sigma expects a 2-D image of at least 3x3, got shape {g.shape}")
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    r = cv2.filter2D(g, -1, k, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(np.median(np.abs(r)) / (0.6745 * 6.0))


def low_light_gain(im: np.ndarray) -> float:
    """Gain (>= 1) that lifts the image's highlights to TARGET_HIGHLIGHT (see the constants)."""
    peak = cv2.medianBlur(_to_u8(im.max(axis=2)), 5)
    p99 = float(np.percentile(peak, 99)) / 255.0
    if p99 <= 0:
        return MAX_GAIN
    return float(np.clip(TARGET_HIGHLIGHT / p99, 1.0, MAX_GAIN))


def _gaussian_otf(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """FFT of a centred, normalised Gaussian PSF for images of ``shape`` (rfft2 layout)."""
    h, w = shape
    r = max(1, int(math.ceil(4 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2))
    psf = np.outer(g, g)
    psf /= psf.sum()
    pad = np.zeros((h, w), dtype=np.float64)
    pad[: 2 * r + 1, : 2 * r + 1] = psf
    pad = np.roll(pad, (-r, -r), axis=(0, 1))  # PSF centre at (0, 0): no shift after deconvolution
    return np.fft.rfft2(pad)


def wiener_deconvolve(im: np.ndarray, sigma: float = WIENER_SIGMA, nsr: float = WIENER_NSR) -> np.ndarray:
    """Wiener deconvolution of an HxWxC float image with a Gaussian PSF of std ``sigma``.

    The image is mirror-padded by a quarter of its size first, which keeps the FFT's periodic
    wrap-around from ringing at the borders; ``nsr`` is the constant noise-to-signal ratio.
    """
    if sigma <= 0 or nsr <= 0:
        raise ValueError(f"wiener_deconvolve: sigma and nsr must be > 0, got sigma={sigma}, nsr={nsr}")
    h, w = im.shape[:2]
    ph, pw = min(max(8, h // 4), h - 1), min(max(8, w // 4), w - 1)  # reflect needs pad < size
    padded = cv2.copyMakeBorder(im.astype(np.float64), ph, ph, pw, pw, cv2.BORDER_REFLECT)
    if padded.ndim == 2:
        padded = padded[..., None]
    otf = _gaussian_otf(padded.shape[:2], sigma)
    filt = np.conj(otf) / (np.abs(otf) ** 2 + nsr)
    out = np.empty_like(padded)
    for c in range(padded.shape[2]):
        out[..., c] = np.fft.irfft2(np.fft.rfft2(padded[..., c]) * filt, s=padded.shape[:2])
    out = out[ph : ph + h, pw : pw + w]
    return out.reshape(im.shape).astype(np.float32)


def _classical_image(im: np.ndarray) -> np.ndarray:
    # 1. Low light: a gain, because under a power-law camera response an exposure drop r in
    # irradiance is a gain r**(1/gamma) on the pixel values; a gamma curve would bend the tones.
    im = np.clip(im * low_light_gain(im), 0.0, 1.0)
    u8 = _to_u8(im)
    # 2. Noise: estimate on the brightened luminance (the gain amplified the noise too).
    sigma = estimate_noise_sigma(cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY).astype(np.float64))
    if sigma >= NLM_MIN_SIGMA:
        h = NLM_H_PER_SIGMA * sigma
        u8 = cv2.fastNlMeansDenoisingColored(u8, None, h, h, NLM_TEMPLATE, NLM_SEARCH)
        im = u8.astype(np.float32) / 255.0
    residual = estimate_noise_sigma(cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY).astype(np.float64))
    # 3. Blur: generic Gaussian PSF; more residual noise -> stronger regularisation.
    im = wiener_deconvolve(im, WIENER_SIGMA, WIENER_NSR + WIENER_NSR_PER_SIGMA * residual)
    return np.clip(im, 0.0, 1.0)


def classical(y: torch.Tensor) -> torch.Tensor:
    """Low-light gain, then non-local-means denoising, then Gaussian-PSF Wiener deblurring
    (images of at least 16x16)."""
    _check(y, "classical")
    if min(y.shape[-2:]) < 16:
        raise ValueError(f"baseline 'classical' needs images of at least 16x16, got {tuple(y.shape[-2:])}")
    return _per_image(y, "classical", _classical_image)


#: name -> baseline function; every entry maps (N,3,H,W) [0,1] -> (N,3,H,W) [0,1].
BASELINES: dict[str, Baseline] = {
    "input": identity,
    "histeq": histeq,
    "classical": classical,
}


def get_baseline(name: str) -> Baseline:
    """The baseline registered under ``name``; a KeyError lists the known names."""
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}") from None
