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
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import scipy.io

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
    def parametric(
        cls, count: int = PARAMETRIC_COUNT, a_range: tuple[float, float] = PARAMETRIC_A_RANGE
    ) -> "ResponseCurves":
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
        return cls(
            torch.cat([c.forward for c in curves]),
            torch.cat([c.inverse for c in curves]),
            [f"dorf{i}" for i in range(len(irr))],
        )

    @classmethod
    def from_spec(cls, spec: str) -> "ResponseCurves":
        """'parametric' (built in), 'linear', or a path to the DoRF folder / .mat file."""
        if spec == "parametric":
            return cls.parametric()
        if spec == "linear":
            return cls.linear()
        return cls.from_dorf(spec)

    def lookup_tables(
        self, ids: torch.Tensor, inverse: bool = False, scale: Optional[torch.Tensor] = None, device=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (values, slopes) tables, each (N, K), for :func:`interp_tables`.

        ``slopes[:, j]`` = values[:, j + 1] - values[:, j], with a last slope of 0, so that an input
        of exactly K - 1 needs no index clamping. ``scale`` (N,) multiplies each curve (the low-light
        factor folded into f^-1 costs nothing here, instead of a pass over the image).
        """
        table = (self.inverse if inverse else self.forward)[ids.long().cpu()]
        if scale is not None:
            table = table * scale.reshape(-1, 1).to(table.dtype).cpu()
        slope = torch.zeros_like(table)
        slope[:, :-1] = table[:, 1:] - table[:, :-1]
        return table.to(device), slope.to(device)

    def apply(self, img: torch.Tensor, ids: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Apply curve ``ids[i]`` (or its inverse) to sample i of ``img`` (N, C, H, W); values clamped to [0, 1]."""
        values, slopes = self.lookup_tables(ids, inverse, device=img.device)
        k = values.shape[1]
        t = img.clamp(0.0, 1.0).mul_(k - 1)
        return interp_tables(t, values, slopes)

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


def interp_tables(
    t: torch.Tensor, values: torch.Tensor, slopes: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Piecewise-linear table lookup, per sample: ``values[i]`` interpolated at ``t[i]`` (table units).

    ``t`` (N, ...) must lie in [0, K - 1] (it is consumed: used as scratch space); ``values`` and
    ``slopes`` (N, K) come from :meth:`ResponseCurves.lookup_tables`. ``out`` (contiguous, t's
    shape) receives the result when given. Five passes over ``t``: the index, the fraction (in
    place), two gathers, one fused multiply-add.
    """
    n = t.shape[0]
    flat = t.reshape(n, -1)
    i = flat.long()  # truncation is floor for t >= 0
    frac = flat.frac_()  # t - floor(t) for t >= 0, without converting the index back to float
    res = torch.gather(values, 1, i, out=None if out is None else out.view(n, -1))
    return res.addcmul_(frac, torch.gather(slopes, 1, i)).view(t.shape)


def mosaic(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) RGGB Bayer raw: each pixel keeps the colour its filter passes."""
    n, _, h, w = rgb.shape
    raw = rgb.new_empty(n, 1, h, w)
    # Four strided copies (a quarter of the pixels each) instead of a masked sum over 3 channels.
    raw[:, 0, 0::2, 0::2] = rgb[:, 0, 0::2, 0::2]
    raw[:, 0, 0::2, 1::2] = rgb[:, 1, 0::2, 1::2]
    raw[:, 0, 1::2, 0::2] = rgb[:, 1, 1::2, 0::2]
    raw[:, 0, 1::2, 1::2] = rgb[:, 2, 1::2, 1::2]
    return raw


# Malvar, He and Cutler (2004) gradient-corrected bilinear demosaic, the one CBDNet's synthesis
# uses (its ISP calls demosaicing_CFA_Bayer_Malvar2004): 5x5 kernels, weights / 8, each summing to 1.
_M_G = [[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]]  # G at R or B
_M_ROW = [
    [0, 0, 0.5, 0, 0],
    [0, -1, 0, -1, 0],
    [-1, 4, 5, 4, -1],
    [0, -1, 0, -1, 0],
    [0, 0, 0.5, 0, 0],
]  # colour left/right
_M_DIAG = [
    [0, 0, -1.5, 0, 0],
    [0, 2, 0, 2, 0],
    [-1.5, 0, 6, 0, -1.5],
    [0, 2, 0, 2, 0],
    [0, 0, -1.5, 0, 0],
]  # B at R, R at B
MALVAR_KERNELS = torch.tensor([_M_G, _M_ROW, list(map(list, zip(*_M_ROW))), _M_DIAG], dtype=torch.float32) / 8.0
#: Which kernel makes channel c at Bayer site (py, px) of RGGB: -1 = the raw sample itself,
#: else an index into MALVAR_KERNELS (0: G at R/B, 1: same colour left/right, 2: up/down, 3: diagonal).
DEMOSAIC_PLAN = {(0, 0): (-1, 0, 3), (0, 1): (1, -1, 2), (1, 0): (2, -1, 1), (1, 1): (3, 0, -1)}


def _subgrid_weight(scale: float, device, dtype) -> torch.Tensor:
    """The demosaic as one 3x3 conv on the 4 Bayer sub-images: weight (12, 4, 3, 3).

    Output channel c * 4 + py * 2 + px holds channel c at sites (py, px) (pixel_shuffle order); a
    5x5 full-resolution tap (dy, dx) at such a site reads sub-image ((py+dy) % 2, (px+dx) % 2) at
    half-resolution offset ((py+2+dy) // 2, (px+2+dx) // 2) of the valid conv window.
    """
    w = torch.zeros(12, 4, 3, 3, dtype=torch.float64)
    eye = torch.zeros(5, 5, dtype=torch.float64)
    eye[2, 2] = 1.0
    for (py, px), plan in DEMOSAIC_PLAN.items():
        for c, k in enumerate(plan):
            k5 = eye if k < 0 else MALVAR_KERNELS[k].double()
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    if k5[dy + 2, dx + 2] != 0:
                        w[
                            c * 4 + py * 2 + px,
                            ((py + dy) % 2) * 2 + (px + dx) % 2,
                            (py + 2 + dy) // 2,
                            (px + 2 + dx) // 2,
                        ] += k5[dy + 2, dx + 2]
    return (w * scale).to(device, dtype)


_WEIGHTS: dict = {}


def demosaic_subgrids(raw: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(N, 1, H, W) RGGB raw -> (N, 12, ceil(H/2), ceil(W/2)): ``scale`` x the demosaiced sub-images.

    ``pixel_shuffle(., 2)[..., :H, :W]`` of the result is the RGB image. Working on the four
    half-resolution Bayer sub-images makes the whole demosaic one small dense conv (no per-channel
    masks, no wasted taps on zeros). Reflect padding by 2 keeps the Bayer phase at the borders.
    """
    n, _, h, w = raw.shape
    if h < 3 or w < 3:
        raise ValueError(f"demosaic: raw image {h}x{w} is too small (needs at least 3x3)")
    key = (float(scale), raw.device, raw.dtype)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _subgrid_weight(scale, raw.device, raw.dtype)
    # Odd sizes get one more reflected row / column so that the sub-images have equal sizes.
    padded = F.pad(raw, (2, 2 + w % 2, 2, 2 + h % 2), mode="reflect")
    return F.conv2d(F.pixel_unshuffle(padded, 2), _WEIGHTS[key])


def demosaic(raw: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) RGGB raw -> (N, 3, H, W), Malvar-He-Cutler demosaic (may leave [0, 1] slightly)."""
    h, w = raw.shape[-2:]
    return F.pixel_shuffle(demosaic_subgrids(raw), 2)[..., :h, :w]
