"""Camera model pieces: response curves (parametric family or DoRF), Bayer mosaic, demosaic.

A camera response function (CRF) f maps irradiance in [0, 1] to brightness in [0, 1]. Curves are
kept as tables on a uniform grid of ``TABLE_SIZE`` points, for both f and its inverse, so that a
batch with one curve per sample is applied with one gather and a linear interpolation, on any
device.

Parametric family (the default; needs no files): f_a(L) = log(1 + a L) / log(1 + a). Its slope at 0
is finite (a / log(1 + a)), like real cameras' toes and unlike a pure power law. Fitting this family
to each of the 201 DoRF curves by least squares gives a between 1.5 (10th percentile) and 43 (90th
percentile), median 12.5; the family here spans that range with ``PARAMETRIC_COUNT`` values of a on
a geometric grid, so it behaves like the DoRF set on average (see docs/DEGRADATION.md).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TABLE_SIZE = 1024
PARAMETRIC_A_RANGE = (1.5, 43.0)
PARAMETRIC_COUNT = 21
DORF_FILE = "201_CRF_data.mat"


def _invert_table(grid: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Tabulate the inverse of a non-decreasing ``curve`` (sampled on ``grid``) on the same grid."""
    # Strictly increasing x for np.interp: flat runs of the curve map to their first irradiance.
    c = np.maximum.accumulate(curve)
    c = c + np.arange(len(c)) * 1e-9
    return np.interp(grid, c, grid)


@dataclass
class ResponseCurves:
    """A set of camera response curves, tabulated forward (f) and inverse (f^-1).

    ``forward[i, j]`` = f_i(j / (K-1)); ``inverse[i, j]`` = f_i^-1(j / (K-1)); ``names[i]`` says
    where curve i comes from.
    """

    forward: torch.Tensor
    inverse: torch.Tensor
    names: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.forward.shape[0])

    @classmethod
    def from_tables(cls, irradiance: np.ndarray, brightness: np.ndarray, names: list[str]) -> "ResponseCurves":
        """Curves given as samples (irradiance (K0,), brightness (C, K0)), resampled to the table grid."""
        grid = np.linspace(0.0, 1.0, TABLE_SIZE)
        fwd = np.stack([np.interp(grid, irradiance, b) for b in brightness])
        # Pin the end points so black stays black and white stays white.
        fwd = (fwd - fwd[:, :1]) / np.maximum(fwd[:, -1:] - fwd[:, :1], 1e-12)
        inv = np.stack([_invert_table(grid, f) for f in fwd])
        return cls(torch.from_numpy(fwd.astype(np.float32)), torch.from_numpy(inv.astype(np.float32)), names)

    @classmethod
    def parametric(cls, count: int = PARAMETRIC_COUNT, a_range: tuple[float, float] = PARAMETRIC_A_RANGE) -> "ResponseCurves":
        """The built-in family f_a(L) = log(1 + aL) / log(1 + a), a on a geometric grid over ``a_range``."""
        grid = np.linspace(0.0, 1.0, TABLE_SIZE)
        a_values = np.geomspace(a_range[0], a_range[1], count)
        b = np.stack([np.log1p(a * grid) / math.log1p(a) for a in a_values])
        return cls.from_tables(grid, b, [f"log(1+{a:.3g}L)" for a in a_values])

    @classmethod
    def linear(cls) -> "ResponseCurves":
        """A single identity curve (useful for tests and for isolating the noise model)."""
        grid = np.linspace(0.0, 1.0, TABLE_SIZE)
        return cls.from_tables(grid, grid[None], ["linear"])

    @classmethod
    def from_dorf(cls, folder: str | os.PathLike) -> "ResponseCurves":
        """The 201 DoRF curves from ``folder/201_CRF_data.mat`` (arrays I and B, 201 x 1024)."""
        import scipy.io

        path = Path(folder) / DORF_FILE if Path(folder).is_dir() else Path(folder)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: DoRF response-curve file not found (expected {DORF_FILE})")
        try:
            d = scipy.io.loadmat(str(path))
            irr, bri = np.asarray(d["I"], np.float64), np.asarray(d["B"], np.float64)
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a DoRF curve file with arrays I and B ({exc})") from None
        if irr.shape != bri.shape or irr.ndim != 2:
            raise ValueError(f"{path}: I and B must be matching 2-D arrays, got {irr.shape} and {bri.shape}")
        if np.any(np.diff(irr, axis=1) < 0):
            raise ValueError(f"{path}: irradiance samples I must be increasing")
        curves = [cls.from_tables(irr[i], bri[i][None], [f"dorf{i}"]) for i in range(len(irr))]
        return cls(torch.cat([c.forward for c in curves]), torch.cat([c.inverse for c in curves]),
                   [f"dorf{i}" for i in range(len(irr))])

    @classmethod
    def from_spec(cls, spec: str) -> "ResponseCurves":
        """'parametric' (built in), 'linear', or a path to the DoRF folder / .mat file."""
        if spec == "parametric":
            return cls.parametric()
        if spec == "linear":
            return cls.linear()
        return cls.from_dorf(spec)

    def apply(self, img: torch.Tensor, ids: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Apply curve ``ids[i]`` (or its inverse) to sample i of ``img`` (N, C, H, W); values clamped to [0, 1]."""
        table = (self.inverse if inverse else self.forward).to(img.device)[ids.to(img.device).long()]  # (N, K)
        n = img.shape[0]
        k = table.shape[1]
        t = img.clamp(0.0, 1.0).reshape(n, -1) * (k - 1)
        i0 = t.floor().long().clamp_(0, k - 2)
        w = t - i0
        lo = torch.gather(table, 1, i0)
        hi = torch.gather(table, 1, i0 + 1)
        return (lo + w * (hi - lo)).reshape(img.shape)

    def to_irradiance(self, img: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """sRGB-like brightness -> irradiance, f^-1, per sample."""
        return self.apply(img, ids, inverse=True)

    def to_brightness(self, irr: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Irradiance -> brightness, f, per sample."""
        return self.apply(irr, ids, inverse=False)

    def numpy_curve(self, i: int, inverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(x grid, table) of curve i as float64 arrays, for ``np.interp`` in per-image code."""
        table = (self.inverse if inverse else self.forward)[i].double().numpy()
        return np.linspace(0.0, 1.0, len(table)), table


def bayer_masks(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """RGGB colour-filter masks, shape (3, H, W): R at (even, even), G at the two mixed sites, B at (odd, odd)."""
    yy = torch.arange(h, device=device)[:, None] % 2
    xx = torch.arange(w, device=device)[None, :] % 2
    r = (yy == 0) & (xx == 0)
    b = (yy == 1) & (xx == 1)
    g = ~(r | b)
    return torch.stack([r, g, b]).to(dtype)


def mosaic(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) RGGB Bayer raw: each pixel keeps the colour its filter passes."""
    m = bayer_masks(rgb.shape[-2], rgb.shape[-1], rgb.device, rgb.dtype)
    return (rgb * m).sum(1, keepdim=True)


# Bilinear demosaic kernels: green sites are cross neighbours, red/blue fill from 2 or 4 neighbours.
_K_G = torch.tensor([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=torch.float32) / 4.0
_K_RB = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32) / 4.0
DEMOSAIC_KERNELS = torch.stack([_K_RB, _K_G, _K_RB])  # (3, 3, 3), one per output channel


def demosaic(raw: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) RGGB raw -> (N, 3, H, W) by bilinear interpolation (a depthwise 3x3 conv).

    Reflect padding keeps the Bayer phase at the borders (index -1 mirrors to 1, same parity).
    """
    n, _, h, w = raw.shape
    m = bayer_masks(h, w, raw.device, raw.dtype)
    planes = raw * m  # (N, 3, H, W) sparse colour planes
    planes = F.pad(planes, (1, 1, 1, 1), mode="reflect")
    weight = DEMOSAIC_KERNELS.to(raw.device, raw.dtype)[:, None]
    return F.conv2d(planes, weight, groups=3)
