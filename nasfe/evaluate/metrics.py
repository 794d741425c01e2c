"""PSNR and SSIM with stated conventions, and a per-test-set accumulator of per-image values.

Conventions (BasicSR-style, on float images; nothing is quantised to uint8 first):

* Inputs are NCHW float tensors in [0, ``data_range``] (1.0 everywhere inside nasfe), RGB, on any
  device. A 3-D CHW tensor is treated as a batch of one. Values are not clipped: clamp the
  restored image to [0, 1] before measuring if the model can overshoot (the restore code does).
* ``crop_border`` pixels are removed from every side before measuring (0 = the full image, which is
  what the NASFE tables use).
* ``convention`` (``CONVENTIONS``) says which channels are measured: 'rgb' (default) all three RGB
  channels; 'y' the BT.601 luma used by BasicSR / MATLAB ``rgb2ycbcr`` on [0, 1] input:
  ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255`` (so Y lies in [16/255, 235/255]);
  'grey' MATLAB ``rgb2gray``: ``0.2989 R + 0.5870 G + 0.1140 B`` (no offset). ``data_range``
  stays 1.0. ``y_channel=True`` is the older spelling of ``convention='y'``.
* PSNR = ``10 log10(data_range**2 / MSE)`` with MSE averaged over channels and pixels of each
  image. Identical images give ``+inf`` (never a large finite stand-in); see
  ``MetricAccumulator`` and ``nasfe.evaluate.report`` for how that is summarised and printed.
* SSIM (Wang et al. 2004) as in BasicSR ``calculate_ssim``: 11x11 Gaussian window with
  sigma 1.5, ``C1 = (0.01 data_range)**2``, ``C2 = (0.03 data_range)**2``, "valid" filtering (no
  padding, so a 5-pixel margin of the SSIM map is dropped), SSIM map averaged over pixels and then
  over channels. Identical images give exactly 1.
* Both are computed in float64 (float32 on devices without float64, e.g. MPS; ``dtype=`` picks
  another, e.g. float32 for ~10x faster SSIM on CPU, within ~1e-6 of float64 on images) without
  autograd, and return one value per image: a tensor of shape (N,) on the input's device.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: BT.601 luma weights for [0, 1] RGB, BasicSR ``rgb2ycbcr(y_only=True)``.
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0
#: MATLAB ``rgb2gray`` weights.
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)
#: Which channels PSNR/SSIM measure: all RGB channels, BT.601 luma, or MATLAB's grey.
CONVENTIONS = ("rgb", "y", "grey")

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB images in [0, 1]: (N,3,H,W) -> (N,1,H,W), ``16/255 + (65.481 R + 128.553 G
    + 24.966 B)/255`` (BasicSR / MATLAB ``rgb2ycbcr`` convention)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects (N,3,H,W) RGB images, got shape {tuple(x.shape)}")
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b


def rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2gray`` of RGB images in [0, 1]: (N,3,H,W) -> (N,1,H,W), ``0.2989 R + 0.5870 G + 0.1140 B``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_grey expects (N,3,H,W) RGB images, got shape {tuple(x.shape)}")
    return GREY_WEIGHTS[0] * x[:, 0:1] + GREY_WEIGHTS[1] * x[:, 1:2] + GREY_WEIGHTS[2] * x[:, 2:3]


def _convention(y_channel: bool, convention: Optional[str], name: str) -> str:
    if convention is None:
        return "y" if y_channel else "rgb"
    if convention not in CONVENTIONS:
        raise ValueError(f"{name}: convention must be one of {CONVENTIONS}, got {convention!r}")
    if y_channel and convention != "y":
        raise ValueError(f"{name}: y_channel=True contradicts convention={convention!r}")
    return convention


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 avoids cancellation in E[x^2] - E[x]^2; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _prepare(
    a: torch.Tensor,
    b: torch.Tensor,
    y_channel: bool,
    crop_border: int,
    name: str,
    convention: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
):
    """Validate a pair of image batches and bring them to the measuring form."""
    convention = _convention(y_channel, convention, name)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{name}: expected two torch tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() == 3:
        a = a.unsqueeze(0)
    if b.dim() == 3:
        b = b.unsqueeze(0)
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"{name}: expected NCHW (or CHW) tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{name}: image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if crop_border < 0:
        raise ValueError(f"{name}: crop_border must be >= 0, got {crop_border}")
    h, w = a.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"{name}: crop_border={crop_border} leaves nothing of a {h}x{w} image")
    dtype = dtype or _work_dtype(a.device)
    a = a.detach().to(dtype)
    b = b.detach().to(device=a.device, dtype=dtype)
    if convention == "y":
        a, b = rgb_to_y(a), rgb_to_y(b)
    elif convention == "grey":
        a, b = rgb_to_grey(a), rgb_to_grey(b)
    if crop_border:
        c = crop_border
        a, b = a[..., c:-c, c:-c], b[..., c:-c, c:-c]
    return a, b


@torch.no_grad()
def psnr(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    convention: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Per-image PSNR in dB of two (N,C,H,W) batches: ``10 log10(data_range^2 / MSE)``, MSE over
    channels and pixels; ``+inf`` for identical images. Returns shape (N,). See module docstring."""
    a, b = _prepare(a, b, y_channel, crop_border, "psnr", convention, dtype)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    # mse == 0 -> division gives +inf, and log10(inf) = inf: identical images are +inf by design.
    return 10.0 * torch.log10((data_range**2) / mse)


def _gaussian_1d(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian of length 11, sigma 1.5 (the 11x11 window is its outer product, like OpenCV's)."""
    half = SSIM_WINDOW // 2
    t = torch.arange(-half, half + 1, device=device, dtype=dtype)
    g = torch.exp(-(t**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


@torch.no_grad()
def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    convention: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Per-image SSIM of two (N,C,H,W) batches (Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03,
    valid filtering, mean over pixels then channels). Returns shape (N,); 1 for identical images.
    ``convention``: 'rgb' (default), 'y' or 'grey' (module docstring)."""
    a, b = _prepare(a, b, y_channel, crop_border, "ssim", convention, dtype)
    n, c, h, w = a.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} after cropping, got {h}x{w}")
    g = _gaussian_1d(a.device, a.dtype)
    rows, cols = g.view(1, 1, 1, -1).expand(c, 1, 1, SSIM_WINDOW), g.view(1, 1, -1, 1).expand(c, 1, SSIM_WINDOW, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        # The window is separable: two 1-D passes give the 2-D "valid" filter (~10x faster).
        return F.conv2d(F.conv2d(t, rows, groups=c), cols, groups=c)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    # Equal-size maps per channel: the flat mean is the mean over channels of per-channel means.
    return ssim_map.flatten(1).mean(dim=1)


class MetricAccumulator:
    """Per-image metric values grouped by test set, with mean / std / count summaries.

    ``add`` records values you computed; ``update`` computes PSNR and SSIM of a batch and records
    them. Values are kept as Python floats in insertion order, so the per-image table can be
    written out later (``rows``). ``summary`` uses the population std (ddof=0). An infinite PSNR
    (identical images) makes the mean ``inf``; ``summary`` reports how many values were infinite
    (``n_inf``) so a report can say so instead of hiding it.
    """

    def __init__(self) -> None:
        self._values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self._names: dict[str, list[Optional[str]]] = defaultdict(list)

    def add(
        self,
        test_set: str,
        values: Mapping[str, "torch.Tensor | Sequence[float]"],
        names: Optional[Sequence[str]] = None,
    ) -> None:
        """Record one batch of per-image values, e.g. ``{'psnr': Tensor(N,), 'ssim': Tensor(N,)}``.

        Every metric must have the same number N of values; ``names`` (optional, length N) labels
        the images. A test set's metrics must be the same in every call.
        """
        if not values:
            raise ValueError(f"MetricAccumulator.add({test_set!r}): no metrics given")
        lists = {}
        for metric, v in values.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().reshape(-1).to("cpu", torch.float64).tolist()
            lists[metric] = [float(x) for x in v]
        sizes = {len(v) for v in lists.values()}
        if len(sizes) != 1:
            raise ValueError(
                f"MetricAccumulator.add({test_set!r}): metrics have different lengths "
                f"{ {k: len(v) for k, v in lists.items()} }"
            )
        n = sizes.pop()
        if names is not None and len(names) != n:
            raise ValueError(f"MetricAccumulator.add({test_set!r}): {len(names)} names for {n} values")
        known = self._values.get(test_set)
        if known and set(known) != set(lists):
            raise ValueError(
                f"MetricAccumulator.add({test_set!r}): metrics {sorted(lists)} differ from earlier {sorted(known)}"
            )
        for metric, v in lists.items():
            self._values[test_set][metric].extend(v)
        self._names[test_set].extend(list(names) if names is not None else [None] * n)

    def update(
        self,
        test_set: str,
        restored: torch.Tensor,
        clean: torch.Tensor,
        names: Optional[Sequence[str]] = None,
        y_channel: bool = False,
        crop_border: int = 0,
    ) -> None:
        """Compute PSNR and SSIM of ``restored`` against ``clean`` (N,3,H,W) and record them."""
        self.add(
            test_set,
            {
                "psnr": psnr(restored, clean, y_channel=y_channel, crop_border=crop_border),
                "ssim": ssim(restored, clean, y_channel=y_channel, crop_border=crop_border),
            },
            names,
        )

    @property
    def test_sets(self) -> list[str]:
        """Test-set names in the order they were first seen."""
        return list(self._values)

    def values(self, test_set: str, metric: str) -> list[float]:
        """All per-image values of one metric on one test set (a copy)."""
        if test_set not in self._values:
            raise KeyError(f"no values for test set {test_set!r}; known: {self.test_sets}")
        if metric not in self._values[test_set]:
            raise KeyError(f"no metric {metric!r} on {test_set!r}; known: {sorted(self._values[test_set])}")
        return list(self._values[test_set][metric])

    def count(self, test_set: str) -> int:
        """Number of images recorded for a test set (0 if never seen)."""
        return len(self._names.get(test_set, []))

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{test_set: {metric: {'mean', 'std', 'count', 'n_inf'}}}`` over the recorded images."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for ts, metrics in self._values.items():
            out[ts] = {}
            for metric, vals in metrics.items():
                arr = np.asarray(vals, dtype=np.float64)
                n_inf = int(np.isinf(arr).sum())
                with np.errstate(invalid="ignore"):
                    std = float(arr.std()) if n_inf == 0 else math.nan
                out[ts][metric] = {"mean": float(arr.mean()), "std": std, "count": int(arr.size), "n_inf": n_inf}
        return out

    def rows(self) -> list[dict]:
        """One dict per recorded image: ``{'test_set', 'image', <metric>: value, ...}``."""
        out = []
        for ts, metrics in self._values.items():
            names = self._names[ts]
            for i, name in enumerate(names):
                row = {"test_set": ts, "image": name if name is not None else str(i)}
                row.update({m: v[i] for m, v in metrics.items()})
                out.append(row)
        return out

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Append every value of ``other`` (e.g. from another worker) to this accumulator."""
        for ts in other.test_sets:
            self.add(ts, {m: v for m, v in other._values[ts].items()}, other._names[ts])
        return self


def mean_metrics(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], y_channel: bool = False) -> dict[str, float]:
    """Mean PSNR and SSIM over an iterable of (restored, clean) batches (a one-off convenience)."""
    acc = MetricAccumulator()
    for restored, clean in pairs:
        acc.update("_", restored, clean, y_channel=y_channel)
    if acc.count("_") == 0:
        raise ValueError("mean_metrics: no images given")
    s = acc.summary()["_"]
    return {"psnr": s["psnr"]["mean"], "ssim": s["ssim"]["mean"]}
