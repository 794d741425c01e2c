"""Blur kernels: camera-shake motion kernels, anisotropic Gaussians, and a seeded on-disk bank.

Motion kernels follow the random-trajectory model of Boracchi and Foi (2012), the generator that
DeblurGAN popularised: a camera path is a 2-D random walk with constant speed, driven by inertia,
Gaussian shake, a centripetal pull back to the start and rare abrupt "big shakes". The path is
sampled densely, a random fraction of it is kept (the exposure time), and each sample is splatted
bilinearly (sub-pixel) into the PSF. Differences from the popular implementation, on purpose:
the PSF is normalised by its *sum* (it integrates to 1, so blur keeps brightness), it is centred on
its *centroid* (blur does not shift the image), and it is never min-max rescaled. All kernels of
one chunk are generated together: the random walk is a loop over time steps, vectorised over kernels.

Anisotropic Gaussian kernels follow SRMD: covariance R(theta) diag(s1^2, s2^2) R(theta)^T with the
two standard deviations s1, s2 drawn in [1, 3] and theta in [0, pi).

Every kernel is stored centred on a canvas of ``max(sizes)`` (27 by default) pixels, with zeros
outside its own odd support; ``KernelBank.sizes`` gives that support.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm
import io
from nasfe.config import KERNEL_MODES
from nasfe.imageio import atomic_write_bytes

#: Bump when the generator changes, so old cached banks are not reused.
BANK_VERSION = 1
#: Time samples per trajectory: at 27 px and up to 4x the size in path length, a step is < 0.25 px.
TRAJECTORY_STEPS = 512
#: Kernels generated per vectorised chunk (bounds memory: chunk x steps x 4 splat weights).
CHUNK = 1024
KINDS = ("motion", "gaussian")
#: How motion paths sit in their kernel: 'centred' (default: centroid on the centre) or
#: 'paper-compatible' (DeblurGAN's bounding-box placement, off-centre PSFs; docs/DEGRADATION.md).


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent, reproducible random stream for (seed, stream...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *stream]))


def motion_trajectories(n: int, rng: np.random.Generator, steps: int = TRAJECTORY_STEPS) -> np.ndarray:
    """Random camera-shake trajectories, shape (n, steps) complex (x + iy), unit total path length.

    Per-trajectory parameters (Boracchi and Foi 2012): anxiety ``expl`` in [0, 0.1), centripetal
    pull in [0, 0.7), Gaussian shake strength in [0, 10), big-shake probability in [0, 0.2) and a
    uniform initial direction. Speed is constant; the walk is rescaled to unit length afterwards.
    """
    expl = 0.1 * rng.random(n)
    centripetal = 0.7 * rng.random(n)
    prob_big = 0.2 * rng.random(n)
    shake = 10.0 * rng.random(n)
    angle = 2.0 * math.pi * rng.random(n)
    # All per-step draws at once (same order regardless of n's split across chunks of one call).
    big_u = rng.random((steps - 1, n))
    big_phase = rng.random((steps - 1, n)) - 0.5
    gauss = rng.standard_normal((steps - 1, n)) + 1j * rng.standard_normal((steps - 1, n))

    step = 1.0 / (steps - 1)  # constant speed: the path has length 1
    v = np.exp(1j * angle) * step
    pos = np.zeros((steps, n), dtype=np.complex128)
    for t in range(steps - 1):
        big = big_u[t] < prob_big * expl
        # An abrupt shake reverses the direction (with a small random twist).
        nxt = np.where(big, 2.0 * v * np.exp(1j * (math.pi + big_phase[t])), 0.0)
        dv = nxt + expl * (shake * gauss[t] - centripetal * pos[t]) * step
        v = v + dv
        mag = np.abs(v)
        v = np.where(mag > 0, v / np.maximum(mag, 1e-12), np.exp(1j * angle)) * step
        pos[t + 1] = pos[t] + v
    return pos.T.copy()


def motion_kernels(
    sizes: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    canvas: int = 27,
    length_range: tuple[float, float] = (1.5, 4.0),
    exposure_range: tuple[float, float] = (0.5, 1.0),
    mode: str = "centred",
) -> np.ndarray:
    """Motion PSFs, one per entry of ``sizes`` (odd), as (n, canvas, canvas) float64, each sum 1.

    Per kernel: a random trajectory; an exposure fraction in ``exposure_range`` (the part of the
    path the shutter sees); a path length of ``length_range`` times the kernel size; the path is
    shrunk, if needed, so that its splat stays inside the kernel's own ``size x size`` support.
    Paths longer than the size mean most kernels span their support: the paper's blur is strong
    (Test-B input 19.64 dB), see docs/DEGRADATION.md.

    ``mode`` (see ``KERNEL_MODES``): 'centred' moves the exposed part of the path so its centroid
    sits on the canvas centre (blur does not shift the image). 'paper-compatible' places it as the
    DeblurGAN generator the paper cites does: the bounding box of the *whole* path is centred on
    the support (with that code's integer rounding) and only the exposed part is splatted, so the
    PSF's centroid is off-centre and the blurred image is shifted.
    """
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode must be one of {KERNEL_MODES}, got {mode!r}")
    size_arr = np.asarray(sizes, dtype=np.int64)
    n = len(size_arr)
    if n == 0:
        return np.zeros((0, canvas, canvas))
    if np.any(size_arr % 2 == 0) or np.any(size_arr > canvas) or np.any(size_arr < 3):
        raise ValueError(f"kernel sizes must be odd, >= 3 and <= canvas {canvas}; got {sorted(set(size_arr.tolist()))}")
    traj = motion_trajectories(n, rng)
    exposure = rng.uniform(*exposure_range, n)
    length = rng.uniform(*length_range, n) * size_arr
    steps = traj.shape[1]
    keep = np.maximum(2, np.round(exposure * steps).astype(np.int64))
    # Points beyond the exposure get weight 0 (kept in the array so shapes stay rectangular).
    t_idx = np.arange(steps)[None, :]
    mask = t_idx < keep[:, None]
    pts = traj * length[:, None]
    c = (canvas - 1) / 2.0
    if mode == "centred":
        centroid = (pts * mask).sum(1) / mask.sum(1)
        pts = pts - centroid[:, None]
        half = (size_arr // 2).astype(np.float64) - 1e-6
        reach = np.maximum(np.abs(np.where(mask, pts.real, 0)).max(1), np.abs(np.where(mask, pts.imag, 0)).max(1))
        scale = np.minimum(1.0, half / np.maximum(reach, 1e-12))
        pts = pts * scale[:, None] + (c + 1j * c)
    else:
        pts = _bbox_placement(pts, size_arr, canvas)
    pts = np.where(mask, pts, c + 1j * c)  # masked points go to the centre with weight 0 below
    psf = splat_psfs(pts, mask.astype(np.float64), canvas)
    psf /= psf.sum(axis=(1, 2), keepdims=True)
    return psf


def _bbox_placement(pts: np.ndarray, sizes: np.ndarray, canvas: int) -> np.ndarray:
    """Place whole paths (n, T) the way DeblurGAN's ``Trajectory.fit`` does, on each kernel's support.

    The path is shrunk (never grown) so its bounding box spans at most ``size - 5`` pixels, then,
    as there: minimum moved to 0, the start point's fractional part removed, +1, and the box moved
    by ceil((size - max) / 2). That centres the bounding box of the whole path, 0.5 to 2 px towards
    higher indices (the rounding), not its mass; the shrink keeps the splat inside the support
    after that rounding. The support is then put in the middle of the ``canvas``.
    """
    pts = pts - pts.real.min(1)[:, None] - 1j * pts.imag.min(1)[:, None]
    extent = np.maximum(pts.real.max(1), pts.imag.max(1))
    scale = np.minimum(1.0, (sizes - 5).astype(np.float64) / np.maximum(extent, 1e-12))
    pts = pts * scale[:, None]
    x0 = pts[:, :1]
    pts = pts - (np.mod(x0.real, 1.0) + 1j * np.mod(x0.imag, 1.0)) + (1 + 1j)
    shift = np.ceil((sizes - pts.real.max(1)) / 2) + 1j * np.ceil((sizes - pts.imag.max(1)) / 2)
    offset = (canvas - sizes) // 2
    return pts + shift[:, None] + (offset + 1j * offset)[:, None]


def splat_psfs(points: np.ndarray, weights: np.ndarray, canvas: int) -> np.ndarray:
    """Bilinear splatting of (n, T) complex points (pixel coordinates) into (n, canvas, canvas) PSFs.

    Each point spreads its weight over its 4 neighbouring pixels; bilinear splatting keeps the
    weighted centroid of the points exactly. Points must lie inside [0, canvas - 1].
    """
    n = points.shape[0]
    x, y = points.real, points.imag
    x0 = np.clip(np.floor(x).astype(np.int64), 0, canvas - 2)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, canvas - 2)
    fx, fy = x - x0, y - y0
    base = (np.arange(n, dtype=np.int64) * canvas * canvas)[:, None]
    idx = np.concatenate(
        [
            base + y0 * canvas + x0,
            base + y0 * canvas + x0 + 1,
            base + (y0 + 1) * canvas + x0,
            base + (y0 + 1) * canvas + x0 + 1,
        ],
        axis=1,
    ).ravel()
    w = np.concatenate(
        [(1 - fx) * (1 - fy) * weights, fx * (1 - fy) * weights, (1 - fx) * fy * weights, fx * fy * weights], axis=1
    ).ravel()
    return np.bincount(idx, weights=w, minlength=n * canvas * canvas).reshape(n, canvas, canvas)


def gaussian_kernel(sigma1: float, sigma2: float, theta: float, size: int, canvas: int = 27) -> np.ndarray:
    """Anisotropic Gaussian PSF (SRMD) on a ``canvas`` grid, zero outside the odd ``size`` support, sum 1.

    ``sigma1``/``sigma2`` are the standard deviations along the principal axes, ``theta`` the
    rotation of the first axis (radians).
    """
    if size % 2 == 0 or size > canvas:
        raise ValueError(f"gaussian kernel size must be odd and <= {canvas}, got {size}")
    c = (canvas - 1) // 2
    ax = np.arange(canvas) - c
    xx, yy = np.meshgrid(ax, ax)
    cos, sin = math.cos(theta), math.sin(theta)
    u = cos * xx + sin * yy  # coordinates in the rotated frame
    v = -sin * xx + cos * yy
    k = np.exp(-0.5 * ((u / sigma1) ** 2 + (v / sigma2) ** 2))
    h = size // 2
    k[np.abs(xx) > h] = 0.0
    k[np.abs(yy) > h] = 0.0
    return k / k.sum()


def gaussian_size(sigma_max: float, sizes: Sequence[int]) -> int:
    """Smallest allowed size holding +-3 sigma (the largest allowed size if none does)."""
    need = 2 * math.ceil(3 * sigma_max) + 1
    ok = sorted(s for s in sizes if s >= need)
    return ok[0] if ok else max(sizes)


def gaussian_kernels(
    n: int,
    sizes: Sequence[int],
    rng: np.random.Generator,
    canvas: int = 27,
    sigma_range: tuple[float, float] = (1.0, 3.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random anisotropic Gaussians: (kernels (n, canvas, canvas), sizes (n,), params (n, 3)).

    params rows are (sigma1, sigma2, theta); sigma1, sigma2 ~ U(sigma_range), theta ~ U[0, pi).
    """
    s = rng.uniform(*sigma_range, (n, 2))
    th = rng.uniform(0.0, math.pi, n)
    ks = np.zeros((n, canvas, canvas))
    sz = np.zeros(n, dtype=np.int64)
    for i in range(n):
        sz[i] = gaussian_size(max(s[i]), sizes)
        ks[i] = gaussian_kernel(s[i, 0], s[i, 1], th[i], int(sz[i]), canvas)
    return ks, sz, np.column_stack([s, th])


def kernel_centroid(kernels: np.ndarray) -> np.ndarray:
    """(n, S, S) kernels -> (n, 2) centroids (x, y) in pixel coordinates of the canvas."""
    s = kernels.shape[-1]
    ax = np.arange(s)
    m = kernels.sum(axis=(1, 2))
    cx = (kernels.sum(axis=1) * ax).sum(1) / m
    cy = (kernels.sum(axis=2) * ax).sum(1) / m
    return np.column_stack([cx, cy])


@dataclass
class KernelBank:
    """A seeded set of blur kernels: motion kernels first, then anisotropic Gaussians.

    ``kernels`` (N, S, S) float32, each summing to 1 and centred (unless built in the
    'paper-compatible' mode); ``sizes`` (N,) int64 support;
    ``kinds`` list of 'motion' | 'gaussian'. Kernel id i indexes all three.
    """

    kernels: torch.Tensor
    sizes: torch.Tensor
    kinds: list[str]
    seed: int = 0
    #: 'centred' or 'paper-compatible': how the motion kernels were placed, and how the pipeline
    #: applies the bank (paper-compatible: zero padding and min-max rescaling, as DeblurGAN's
    #: ``blur_image``; see :func:`nasfe.degrade.pipeline.blur`).
    mode: str = "centred"

    def __len__(self) -> int:
        return int(self.kernels.shape[0])

    @property
    def canvas(self) -> int:
        return int(self.kernels.shape[-1])

    @classmethod
    def build(
        cls,
        motion: int,
        gaussian: int,
        sizes: Sequence[int] = (13, 15, 17, 19, 21, 23, 25, 27),
        seed: int = 0,
        progress: bool = False,
        mode: str = "centred",
    ) -> "KernelBank":
        """Generate ``motion`` motion kernels and ``gaussian`` Gaussians, deterministically from ``seed``.

        Motion kernel sizes cycle through ``sizes`` (so every size is equally represented).
        ``mode``: placement of the motion paths, 'centred' or 'paper-compatible' (see
        :func:`motion_kernels`); the same seed draws the same paths in both modes. Gaussians are
        centred in both (SRMD's kernels are).
        """
        sizes = [int(s) for s in sizes]
        if not sizes:
            raise ValueError("kernel sizes must not be empty")
        canvas = max(sizes)
        if motion < 0 or gaussian < 0:
            raise ValueError(f"kernel counts must be >= 0, got motion={motion}, gaussian={gaussian}")
        motion_sizes = np.array([sizes[i % len(sizes)] for i in range(motion)], dtype=np.int64)
        parts = []
        chunks = range(0, motion, CHUNK)
        if progress:
            chunks = tqdm(chunks, desc="motion kernels", unit="chunk")
        for ci, start in enumerate(chunks):
            sz = motion_sizes[start : start + CHUNK]
            parts.append(motion_kernels(sz, _rng(seed, 0, ci), canvas=canvas, mode=mode))
        mk = np.concatenate(parts) if parts else np.zeros((0, canvas, canvas))
        gk, gs, _ = gaussian_kernels(gaussian, sizes, _rng(seed, 1), canvas=canvas)
        kernels = torch.from_numpy(np.concatenate([mk, gk]).astype(np.float32))
        return cls(
            kernels=kernels,
            sizes=torch.from_numpy(np.concatenate([motion_sizes, gs])),
            kinds=["motion"] * motion + ["gaussian"] * gaussian,
            seed=seed,
            mode=mode,
        )

    @staticmethod
    def cache_key(motion: int, gaussian: int, sizes: Sequence[int], seed: int, mode: str = "centred") -> str:
        """Short hash of everything that defines a bank (generator version included)."""
        d = {"v": BANK_VERSION, "m": motion, "g": gaussian, "s": list(sizes), "seed": seed}
        if mode != "centred":  # default banks keep the keys (and caches) they had before modes existed
            d["mode"] = mode
        blob = json.dumps(d)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def load_or_build(cls, cfg, cache_dir: Optional[str | os.PathLike] = None, progress: bool = False) -> "KernelBank":
        """The bank described by a :class:`~nasfe.config.DegradeConfig`, from cache or freshly built.

        Cache: ``<cache_dir or cfg.cache_dir or ~/.cache/nasfe>/kernels/bank-<key>.pt``; written
        atomically; an unreadable cache file is rebuilt.
        """
        sizes = [int(s) for s in cfg.kernel_sizes]
        mode = cfg.kernel_mode
        key = cls.cache_key(cfg.motion_kernels, cfg.gaussian_kernels, sizes, cfg.bank_seed, mode)
        root = Path(cache_dir or cfg.cache_dir or Path.home() / ".cache" / "nasfe")
        path = root / "kernels" / f"bank-{key}.pt"
        if path.is_file():
            try:
                bank = cls.load(path)
                if len(bank) == cfg.motion_kernels + cfg.gaussian_kernels and bank.mode == mode:
                    return bank
            except (ValueError, RuntimeError, KeyError, EOFError, OSError):
                pass  # corrupt cache: rebuild below
        bank = cls.build(cfg.motion_kernels, cfg.gaussian_kernels, sizes, cfg.bank_seed, progress=progress, mode=mode)
        try:
            bank.save(path)
        except OSError:
            pass  # a read-only cache is not an error; the bank is still usable
        return bank

    def save(self, path: str | os.PathLike) -> None:
        """Save as a weights-only-loadable .pt file, atomically."""

        buf = io.BytesIO()
        torch.save(
            {
                "kernels": self.kernels.contiguous(),
                "sizes": self.sizes,
                "kinds": torch.tensor([KINDS.index(k) for k in self.kinds], dtype=torch.int64),
                "seed": torch.tensor(self.seed),
                "version": torch.tensor(BANK_VERSION),
                "mode": torch.tensor(KERNEL_MODES.index(self.mode)),
            },
            buf,
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KernelBank":
        """Load a bank written by :meth:`save`; raises ValueError naming the file when it is not one."""
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            kernels, sizes, kinds = d["kernels"], d["sizes"], d["kinds"]
        except (KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{path}: not a kernel bank file ({exc})") from None
        if kernels.ndim != 3 or len(sizes) != len(kernels) or len(kinds) != len(kernels):
            raise ValueError(f"{path}: kernel bank arrays have inconsistent shapes")
        mode = int(d.get("mode", torch.tensor(0)))  # files from before modes existed: centred
        if not 0 <= mode < len(KERNEL_MODES):
            raise ValueError(f"{path}: unknown kernel mode {mode}")
        return cls(
            kernels=kernels.float(),
            sizes=sizes.long(),
            kinds=[KINDS[int(k)] for k in kinds],
            seed=int(d.get("seed", torch.tensor(0))),
            mode=KERNEL_MODES[mode],
        )

    def subset(self, ids: Sequence[int]) -> "KernelBank":
        """A new bank holding the kernels ``ids`` (in that order)."""
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        return KernelBank(
            self.kernels[idx].clone(),
            self.sizes[idx].clone(),
            [self.kinds[i] for i in idx.tolist()],
            self.seed,
            self.mode,
        )
