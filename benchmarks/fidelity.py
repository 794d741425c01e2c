"""Benchmark: how close the test sets are to the paper's, and how far each set can be restored at best.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fidelity.py --faces ../shared/data/celeba-id \
        --crf ../shared/isp/dorf --images 120 --seed 0 [--parts inputs noise kernels oracle] [--threads 2]

Faces: the *test* identities of the face folder's identity-disjoint split (``split_identities``
with the default ``DataConfig``: seed 0, 10 % test), a seeded sample of ``--images`` of them.
Per face and set, ``--per-face`` variants of the Table 4 grid, offset by the face index so the
faces together cover the whole grid (as ``tests/test_fidelity.py`` does). Images are quantised to
8 bits (what the PNG files hold). Scores: per-image PSNR / SSIM against the clean face, averaged.

Parts (Markdown tables on stdout, also written to ``--out``):

* ``inputs``: input PSNR and SSIM of every set under three channel conventions of
  ``nasfe.evaluate.metrics`` (rgb, y, grey) and one extra reading (``skimage7``: scikit-image's
  ``structural_similarity`` defaults, 7x7 uniform window, sample covariance, RGB mean), beside
  the paper's input columns;
* ``noise``: Test-L and Test-BNL inputs under every ``NOISE_MODELS`` reading;
* ``kernels``: Test-B inputs with centred and paper-compatible kernels (``--kernel-mode``), and
  each half of the paper-compatible mode alone (off-centre placement; zero padding + min-max);
* ``oracle``: restoration knowing every true parameter (see :func:`oracle`) in three orders; per
  set, each order's two strengths are tuned on faces of the *validation* identities, and the order
  that restores those best is measured on the test faces.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import nasfe.data.testsets as ts
from nasfe.config import DataConfig
from nasfe.degrade.camera import ResponseCurves
from nasfe.degrade.kernels import KernelBank
from nasfe.degrade.pipeline import NOISE_MODELS, blur, noise_terms
from nasfe.evaluate.metrics import CONVENTIONS, psnr, ssim

#: The paper's input columns (Tables 1, 2, 3, 5) and its NASFE rows (Tables 1-3, Table 6 last row),
#: CelebA: (PSNR, SSIM). Test-BN's input is not printed in the paper.
PAPER_INPUT = {"Test-B": (19.64, 0.61), "Test-N": (17.63, 0.50), "Test-L": (8.25, 0.14), "Test-BNL": (8.17, 0.22)}
PAPER_NASFE = {
    "Test-B": (27.90, 0.92),
    "Test-N": (29.23, 0.90),
    "Test-L": (23.04, 0.80),
    "Test-BN": (25.57, 0.87),
    "Test-BNL": (23.80, 0.85),
}
ORDERS = ("denoise-linear", "gain-denoise-deblur", "gain-deblur-denoise")
H_FACTORS = (0.5, 0.8, 1.2)  # NLM strength h = factor x the true noise std (8-bit units)
LAMBDA_FACTORS = (0.3, 1.0, 3.0)  # Wiener regularisation = factor x noise variance left / GRAD_VAR
GRAD_VAR = 3e-3  # mean squared horizontal difference of clean 176x144 CelebA faces (validation identities)


# ---- faces ------------------------------------------------------------------------------------------
def split_faces(root: str, split: str, n: int, seed: int) -> list[torch.Tensor]:
    """A seeded sample of ``n`` faces (3, H, W) of one identity-disjoint split of a face folder."""
    from nasfe.data.faces import FolderFaces
    from nasfe.data.splits import split_identities
    from nasfe.imageio import to_tensor

    src = FolderFaces(root)
    recs = split_identities(src, DataConfig(source="folder", root=root))[split]
    idx = sorted(np.random.default_rng([seed, 15]).choice(len(recs), min(n, len(recs)), replace=False).tolist())
    return [to_tensor(src.load(recs[i])) for i in idx]


def share(name: str, face: int, per_face: int) -> list[int]:
    """Variant indices of ``name`` for one face: ``per_face`` evenly spread, offset by the face."""
    nv = len(ts.variants(name))
    step = max(1, nv // per_face)
    return sorted({(face + j * step) % nv for j in range(min(per_face, nv))})


def quantise(y: torch.Tensor) -> torch.Tensor:
    return (y.clamp(0, 1) * 255).round() / 255


# ---- SSIM as scikit-image's defaults (a reading of "SSIM" the paper may have used) -------------------
def ssim_skimage7(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """scikit-image ``structural_similarity(channel_axis=...)`` defaults: 7x7 uniform window, sample
    covariance (N / (N - 1)), K1 0.01, K2 0.03, data range 1, 3-pixel margin dropped, mean over channels."""
    c = a.shape[1]
    w = torch.full((c, 1, 7, 7), 1 / 49, dtype=torch.float32)
    a, b = a.float(), b.float()

    def filt(t):
        return F.conv2d(t, w, groups=c)

    ma, mb = filt(a), filt(b)
    k = 49 / 48
    va, vb, cov = k * (filt(a * a) - ma**2), k * (filt(b * b) - mb**2), k * (filt(a * b) - ma * mb)
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    return m.flatten(1).mean(1)


def scores(y: torch.Tensor, x: torch.Tensor, extra: bool = False) -> dict[str, torch.Tensor]:
    """Per-image PSNR (RGB) and SSIM under every convention (+ skimage7 when ``extra``)."""
    out = {"psnr": psnr(y, x)}
    for conv in CONVENTIONS:
        out[f"ssim_{conv}"] = ssim(y, x, convention=conv, dtype=torch.float32)
    if extra:
        out["ssim_skimage7"] = ssim_skimage7(y, x)
    return out


# ---- degraded sets ------------------------------------------------------------------------------------
def degraded(
    name: str,
    faces: list[torch.Tensor],
    per_face: int,
    seed: int,
    bank: KernelBank,
    curves: ResponseCurves,
    noise_model: str = "after-r",
):
    """Yield (face index, clean x (3,H,W), degraded y (n,3,H,W) quantised, params) per face."""
    for fi, x in enumerate(faces):
        y, p, _ = ts.degrade_face(
            x, name, fi, seed, bank, curves, only=share(name, fi, per_face), noise_model=noise_model
        )
        yield fi, x, quantise(y), p


def mean_scores(name, faces, per_face, seed, bank, curves, noise_model="after-r", extra=False) -> dict[str, float]:
    acc: dict[str, list[torch.Tensor]] = {}
    for _, x, y, _ in degraded(name, faces, per_face, seed, bank, curves, noise_model):
        for k, v in scores(y, x[None].expand_as(y), extra).items():
            acc.setdefault(k, []).append(v)
    out = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    out["images"] = sum(len(v) for v in acc["psnr"])
    return out


# ---- the oracle --------------------------------------------------------------------------------------------
def _curve(curves: ResponseCurves, crf_id: int, inverse: bool):
    grid, table = curves.numpy_curve(crf_id, inverse=inverse)
    return lambda v: np.interp(np.clip(v, 0, 1), grid, table)


def _fast_len(n: int) -> int:
    return int(cv2.getOptimalDFTSize(n))


def wiener(img: np.ndarray, kernel: np.ndarray, lam: float, iters: int = 80) -> np.ndarray:
    """Deconvolve (H, W, C) ``img`` by ``kernel`` (odd S x S, true convolution): the regularised
    least-squares (Wiener with a 1/|w|^2 image spectrum) solution of
    min_x |valid(k * x) - img|^2 + lam |grad x|^2 over an image x larger than ``img`` by S - 1, so no
    boundary is assumed (a reflect-padded FFT deconvolution rings from the borders inwards on long
    motion kernels). Conjugate gradients, ``iters`` steps, from the edge-padded image."""
    s = kernel.shape[0]
    h, w, c = img.shape
    hx, wx = h + s - 1, w + s - 1
    n, m = _fast_len(hx), _fast_len(wx)
    kf = np.zeros((n, m))
    kf[:s, :s] = kernel
    K = np.fft.rfft2(kf)[..., None]
    dx = np.zeros((n, m))
    dx[0, 0], dx[0, 1] = 1, -1
    dy = np.zeros((n, m))
    dy[0, 0], dy[1, 0] = 1, -1
    D = (np.abs(np.fft.rfft2(dx)) ** 2 + np.abs(np.fft.rfft2(dy)) ** 2)[..., None]
    fft = lambda t: np.fft.rfft2(t, axes=(0, 1))
    ifft = lambda t: np.fft.irfft2(t, s=(n, m), axes=(0, 1))

    def normal(x):  # (A^T A + lam D^T D) x
        r = np.zeros_like(x)
        r[s - 1 : hx, s - 1 : wx] = ifft(fft(x) * K)[s - 1 : hx, s - 1 : wx]
        return ifft(fft(r) * np.conj(K) + lam * D * fft(x))

    r0 = np.zeros((n, m, c))
    r0[s - 1 : hx, s - 1 : wx] = img
    b = ifft(fft(r0) * np.conj(K))
    p = s // 2
    x = np.pad(img, ((p, n - h - p), (p, m - w - p), (0, 0)), mode="edge")
    r = b - normal(x)
    d = r.copy()
    rr = float((r * r).sum())
    for _ in range(iters):
        q = normal(d)
        alpha = rr / float((d * q).sum())
        x += alpha * d
        r -= alpha * q
        rr_new = float((r * r).sum())
        if rr_new < 1e-20:
            break
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x[p : p + h, p : p + w]


def _nlm(img: np.ndarray, sigma: float, factor: float, colored: bool) -> np.ndarray:
    """OpenCV non-local means on an image in [0, 1] whose noise std is ``sigma`` (same units)."""
    u8 = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    h = float(max(1.0, factor * sigma * 255))
    if colored:
        out = cv2.fastNlMeansDenoisingColored(u8, None, h, h, 7, 21)
    else:  # joint patch distances over the three channels, no colour-space change
        out = cv2.fastNlMeansDenoising(u8, None, h, 7, 21)
    return out.astype(np.float64) / 255


def oracle(
    y: np.ndarray,
    kernel: Optional[np.ndarray],
    r: float,
    sigma_s: float,
    sigma_c: float,
    curves: Optional[ResponseCurves],
    crf_id: int,
    order: str,
    h_factor: float,
    lam_factor: float,
    noise_model: str = "after-r",
) -> np.ndarray:
    """Restore one degraded image ``y`` (H, W, 3) in [0, 1] knowing its true parameters.

    The camera stage is undone with the exact curve inverse f^-1 and the exact gain 1/r; noise is
    removed by OpenCV non-local means with h from the true noise level; blur by Wiener
    deconvolution with the true kernel. ``order``:

    * 'denoise-linear': f^-1, generalised Anscombe transform with the true sigma_s, sigma_c (noise
      std 1 everywhere), NLM, inverse transform, / r, f, Wiener;
    * 'gain-denoise-deblur': f^-1, / r, f, NLM in the display domain with h from the image's RMS noise
      std (propagated through the curve's slope), Wiener;
    * 'gain-deblur-denoise': as the previous, Wiener before NLM.

    Strengths: NLM h = ``h_factor`` x the noise std; Wiener lam = ``lam_factor`` x the variance of
    the noise left (8-bit quantisation, plus (std / 4)^2 after NLM, a guess the tuning absorbs)
    / ``GRAD_VAR`` (the image-gradient variance of the 1/|w|^2 prior). ``noise_model``: the
    reading the image was made with ('display-r' is not handled), whose raw noise variance
    a L + b (``noise_terms``) sets the transform and the noise std.
    """
    if noise_model == "display-r":
        raise ValueError("oracle: the 'display-r' reading is not handled")
    va, vb, _ = noise_terms(noise_model, *(torch.tensor([float(v)]) for v in (r, sigma_s, sigma_c)))
    a, b = max(float(va), 1e-10), float(vb)  # raw noise variance a L + b at darkened irradiance L

    x = y.astype(np.float64)
    noisy = sigma_s > 0 or sigma_c > 0
    left = 1 / (12 * 255**2)  # noise variance left for the Wiener step: 8-bit quantisation
    if curves is not None and crf_id >= 0:
        finv, f = _curve(curves, crf_id, True), _curve(curves, crf_id, False)
        lin = finv(x)
        if noisy:
            # display-domain noise std after the gain: slope of f at the (smoothed) irradiance x the
            # raw std / r, RMS over the image; a quarter of it is the guess of what NLM leaves
            L = np.clip(cv2.GaussianBlur(lin, (5, 5), 0) / r, 0, 1)
            slope = (f(L + 1e-3) - f(L - 1e-3)) / 2e-3
            std = min(0.5, float(np.sqrt(np.mean((slope * np.sqrt(a * r * L + b) / r) ** 2))))
            left += (std / 4) ** 2
        if noisy and order == "denoise-linear":
            z = (2 / a) * np.sqrt(np.maximum(a * lin + b, 0))  # generalised Anscombe: unit noise std
            lo, hi = (2 / a) * np.sqrt(b) - 3, (2 / a) * np.sqrt(a * min(1.0, 1.5 * r) + b) + 3
            scale = hi - lo
            zd = _nlm((z - lo) / scale, 1 / scale, h_factor, colored=False) * scale + lo
            lin = np.maximum((a * zd / 2) ** 2 - b, 0) / a
        x = f(np.clip(lin / r, 0, 1))
        if noisy and order != "denoise-linear":
            if order == "gain-denoise-deblur" or kernel is None:
                x = _nlm(x, std, h_factor, colored=True)
            else:
                x = np.clip(wiener(x, kernel, lam_factor * std**2 / GRAD_VAR), 0, 1)
                return _nlm(x, std, h_factor, colored=True)
    if kernel is not None:
        x = wiener(x, kernel, lam_factor * left / GRAD_VAR)
    return np.clip(x, 0, 1)


def kernel_of(bank: KernelBank, kid: int) -> Optional[np.ndarray]:
    """The true kernel, cropped to its support (odd size)."""
    if kid < 0:
        return None
    k = bank.kernels[kid].double().numpy()
    s, c = int(bank.sizes[kid]), bank.canvas // 2
    return k[c - s // 2 : c + s // 2 + 1, c - s // 2 : c + s // 2 + 1]


def oracle_set(
    name, faces, per_face, seed, bank, curves, order, h_factor, lam_factor, noise_model: str = "after-r"
) -> dict[str, float]:
    acc: dict[str, list] = {}
    for _, x, y, p in degraded(name, faces, per_face, seed, bank, curves, noise_model):
        outs = []
        for i, rec in enumerate(p.records()):
            yi = y[i].permute(1, 2, 0).numpy()
            o = oracle(
                yi,
                kernel_of(bank, rec["kernel_id"]),
                rec["r"],
                rec["sigma_s"],
                rec["sigma_c"],
                curves,
                rec["crf_id"],
                order,
                h_factor,
                lam_factor,
                noise_model,
            )
            outs.append(torch.from_numpy(o).permute(2, 0, 1).float())
        out = quantise(torch.stack(outs))
        for k, v in scores(out, x[None].expand_as(out)).items():
            acc.setdefault(k, []).append(v)
    res = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    res["images"] = sum(len(v) for v in acc["psnr"])
    return res


def tune(name, faces, per_face, seed, bank, curves, order, noise_model="after-r") -> tuple[float, float, float]:
    """Best (h_factor, lam_factor) for one set and order on tuning faces; returns them and the PSNR."""
    has_noise = name != "Test-B"
    has_blur = name in ("Test-B", "Test-BN", "Test-BNL")
    best = None
    for hf in H_FACTORS if has_noise else (1.0,):
        for lf in LAMBDA_FACTORS if has_blur else (1.0,):
            p = oracle_set(name, faces, per_face, seed, bank, curves, order, hf, lf, noise_model)["psnr"]
            if best is None or p > best[2]:
                best = (hf, lf, p)
    return best


# ---- report -------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: (
        f"{v:.2f}" if isinstance(v, float) and abs(v) >= 1.5 else (f"{v:.3f}" if isinstance(v, float) else str(v))
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def pair(p, s) -> str:
    return f"{p:.2f} / {s:.3f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", default="../shared/data/celeba-id")
    ap.add_argument("--crf", default="../shared/isp/dorf")
    ap.add_argument("--images", type=int, default=120, help="test faces (seeded sample of the test identities)")
    ap.add_argument("--per-face", type=int, default=2, help="variants per face and set")
    ap.add_argument("--tune-images", type=int, default=6, help="validation faces for the oracle's strengths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", nargs="+", default=["inputs", "noise", "kernels", "oracle"])
    ap.add_argument("--sets", nargs="+", default=list(ts.TEST_SETS))
    ap.add_argument(
        "--oracle-noise-models",
        nargs="+",
        default=["after-r", "before-r"],
        help="readings to run the oracle on (Test-L and Test-BNL only for readings other than after-r)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the Markdown here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    t0 = time.time()
    faces = split_faces(args.faces, "test", args.images, args.seed)
    curves = ResponseCurves.from_spec(args.crf)
    bank = ts.test_bank(args.seed)
    md: list[str] = []

    def emit(text: str) -> None:
        md.append(text)
        print(text, flush=True)

    emit(
        f"# Test-set fidelity ({datetime.date.today()})\n\n{len(faces)} test-identity faces of `{args.faces}`, "
        f"{args.per_face} variants per face and set, curves `{args.crf}`, seed {args.seed}; {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}.\n"
    )
    if "inputs" in args.parts:
        rows = []
        for name in args.sets:
            s = mean_scores(name, faces, args.per_face, args.seed, bank, curves, extra=True)
            pp = PAPER_INPUT.get(name)
            rows.append(
                [
                    name,
                    s["images"],
                    pair(*pp) if pp else "-",
                    f"{s['psnr']:.2f}",
                    f"{s['ssim_rgb']:.3f}",
                    f"{s['ssim_y']:.3f}",
                    f"{s['ssim_grey']:.3f}",
                    f"{s['ssim_skimage7']:.3f}",
                ]
            )
        emit(
            "## Input SSIM conventions\n\n"
            + table(
                ["set", "images", "paper input", "PSNR (RGB)", "SSIM rgb", "SSIM y", "SSIM grey", "SSIM skimage7"], rows
            )
            + "\n"
        )
    if "noise" in args.parts:
        rows = []
        for model in NOISE_MODELS:
            row = [model]
            for name in ("Test-L", "Test-BNL"):
                s = mean_scores(name, faces, args.per_face, args.seed, bank, curves, noise_model=model)
                row += [pair(s["psnr"], s["ssim_rgb"]), f"{s['ssim_y']:.3f}", f"{s['ssim_grey']:.3f}"]
            rows.append(row)
        rows.append(["paper", pair(*PAPER_INPUT["Test-L"]), "", "", pair(*PAPER_INPUT["Test-BNL"]), "", ""])
        emit(
            "## Noise model readings under low light (inputs)\n\n"
            + table(
                [
                    "noise model",
                    "Test-L PSNR / SSIM rgb",
                    "SSIM y",
                    "SSIM grey",
                    "Test-BNL PSNR / SSIM rgb",
                    "SSIM y",
                    "SSIM grey",
                ],
                rows,
            )
            + "\n"
        )
    if "kernels" in args.parts:
        emit(kernel_part(faces, args))
    if "oracle" in args.parts:
        tune_faces = split_faces(args.faces, "val", args.tune_images, args.seed)
        for model in args.oracle_noise_models:
            names = args.sets if model == "after-r" else [n for n in args.sets if n in ("Test-L", "Test-BNL")]
            rows = []
            for name in names:
                cells, best = [], None
                for order in ORDERS:
                    if name == "Test-B" and order != ORDERS[0]:  # no noise: one order
                        cells.append("-")
                        continue
                    hf, lf, tp = tune(name, tune_faces, 1, args.seed + 1, bank, curves, order, model)
                    cells.append(f"{tp:.2f} (h {hf}, lam {lf})")
                    if best is None or tp > best[0]:
                        best = (tp, order, hf, lf)
                _, order, hf, lf = best
                s = oracle_set(name, faces, args.per_face, args.seed, bank, curves, order, hf, lf, model)
                used = "Wiener only" if name == "Test-B" else order
                rows.append(
                    [
                        name,
                        s["images"],
                        *cells,
                        used,
                        pair(s["psnr"], s["ssim_rgb"]),
                        f"{s['ssim_grey']:.3f}",
                        pair(*PAPER_NASFE[name]),
                    ]
                )
            emit(
                f"## Oracle restoration (true parameters; noise model {model})\n\n"
                + table(
                    [
                        "set",
                        "test images",
                        *(f"{o}: tuning PSNR" for o in ORDERS),
                        "order used",
                        "test PSNR / SSIM rgb",
                        "test SSIM grey",
                        "paper NASFE",
                    ],
                    rows,
                )
                + "\n"
            )
    emit(f"Total {time.time() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.")
    if args.out:
        from nasfe.imageio import atomic_write_text

        atomic_write_text(args.out, "\n".join(md) + "\n")


def kernel_part(faces, args) -> str:
    """Test-B inputs: centred vs paper-compatible kernels, and each half of the paper-compatible mode
    alone (the off-centre placement; zero padding with min-max rescaling)."""
    banks = {m: ts.test_bank(args.seed, m) for m in ("centred", "paper-compatible")}
    cases = [
        ("centred (default)", "centred", "centred"),
        ("centred kernels, zero padding + min-max rescale", "centred", "paper-compatible"),
        ("off-centre kernels, reflect padding, sum 1", "paper-compatible", "centred"),
        ("paper-compatible (off-centre + zero padding + min-max)", "paper-compatible", "paper-compatible"),
    ]
    acc: dict[str, list] = {c[0]: [] for c in cases}
    for fi, x in enumerate(faces):
        kids = share("Test-B", fi, args.per_face * 2)
        xs = x[None].expand(len(kids), -1, -1, -1).contiguous()
        for what, kernels, blur_mode in cases:
            y = blur(xs, banks[kernels].kernels[kids], blur_mode)
            acc[what].append(scores(quantise(y), xs))
    # the real path (test-set code) for the two modes, as a check of the rows above
    for m in banks:
        y, _, _ = ts.degrade_face(
            faces[0],
            "Test-B",
            0,
            args.seed,
            banks[m],
            ResponseCurves.linear(),
            only=share("Test-B", 0, 2 * args.per_face),
        )
        assert torch.allclose(
            quantise(y),
            quantise(
                blur(
                    faces[0][None].expand(len(y), -1, -1, -1).contiguous(),
                    banks[m].kernels[share("Test-B", 0, 2 * args.per_face)],
                    m,
                )
            ),
        )
    rows = []
    for what, lst in acc.items():
        cat = {k: torch.cat([d[k] for d in lst]) for k in lst[0]}
        rows.append(
            [
                what,
                len(cat["psnr"]),
                pair(float(cat["psnr"].mean()), float(cat["ssim_rgb"].mean())),
                f"{float(cat['ssim_y'].mean()):.3f}",
                f"{float(cat['ssim_grey'].mean()):.3f}",
            ]
        )
    rows.append(["paper", "", pair(*PAPER_INPUT["Test-B"]), "", ""])
    return (
        "## Test-B kernels\n\n"
        + table(["kernels and blur", "images", "PSNR / SSIM rgb", "SSIM y", "SSIM grey"], rows)
        + "\n"
    )


if __name__ == "__main__":
    main()
