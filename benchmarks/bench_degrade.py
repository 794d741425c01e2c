"""Benchmark: the full blur + low-light + noise pipeline, batched torch vs per-image NumPy/OpenCV.

    .venv/bin/python benchmarks/bench_degrade.py [--repeats 9] [--batch 40] [--bank 25000] [--threads 2]

Images per second at 176x144, batch 40, every sample blurred, darkened and noisy, on CPU (and on
GPU when one is available), side by side with :mod:`nasfe.degrade.reference` on the same cores and
the same parameters and noise field. The implementations are *interleaved* (each repeat times all
of them, in alternating order), so a shared machine's changing load hits them alike; medians over
``--repeats`` and the median of the per-repeat ratios are printed, with the load average. Also
times building the 25,000-kernel motion bank (no cache). Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import cv2
import torch

from nasfe.config import DegradeConfig
from nasfe.degrade.camera import ResponseCurves
from nasfe.degrade.kernels import KernelBank
from nasfe.degrade.pipeline import degrade, sample_params
from nasfe.degrade.reference import degrade_image


def _faces(n: int, h: int, w: int) -> torch.Tensor:
    """Smooth random RGB images (face-like spectra are not needed for timing)."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--height", type=int, default=176)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--bank", type=int, default=25000, help="motion kernels to time (0: skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--crf", default="parametric", help="'parametric' or the DoRF folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)  # the same cores for both implementations
    cfg = DegradeConfig(motion_kernels=1000, gaussian_kernels=8, p_blur=1.0, p_noise=1.0, p_lowlight=1.0)
    bank = KernelBank.build(cfg.motion_kernels, cfg.gaussian_kernels, cfg.kernel_sizes, seed=0)
    curves = ResponseCurves.from_spec(args.crf)
    x = _faces(args.batch, args.height, args.width)
    params = sample_params(args.batch, cfg, bank, curves, torch.Generator().manual_seed(1))
    eps = torch.randn(args.batch, 1, args.height, args.width, generator=torch.Generator().manual_seed(2))

    xs = [x[i].permute(1, 2, 0).numpy().copy() for i in range(args.batch)]
    recs = params.records()
    ks = [bank.kernels[r["kernel_id"]].numpy() for r in recs]
    es = [eps[i, 0].numpy() for i in range(args.batch)]

    def per_image():
        for xi, r, k, e in zip(xs, recs, ks, es):
            degrade_image(xi, k, r["r"], r["sigma_s"], r["sigma_c"], curves, r["crf_id"], eps=e)

    impls = {
        "batched torch (`nasfe.degrade.degrade`), CPU": lambda: degrade(x, params, bank, curves, noise=eps),
        # The same code in one pass over the whole batch: what chunking to cache-sized pieces buys.
        f"batched torch, whole batch in one pass (chunk={args.batch}), CPU": lambda: degrade(
            x, params, bank, curves, noise=eps, chunk=args.batch
        ),
    }
    if torch.cuda.is_available():
        xg = x.cuda()

        def gpu():
            degrade(xg, params, bank, curves, noise=eps)
            torch.cuda.synchronize()

        impls[f"batched torch, GPU ({torch.cuda.get_device_name()})"] = gpu
    ref_name = "per-image NumPy/OpenCV (`nasfe.degrade.reference`), CPU"
    impls[ref_name] = per_image

    load0 = os.getloadavg()[0]
    for fn in impls.values():
        fn()  # warm-up
    times = {name: [] for name in impls}
    names = list(impls)
    for rep in range(args.repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            impls[name]()
            times[name].append(time.perf_counter() - t)
    load1 = os.getloadavg()[0]

    t_ref = statistics.median(times[ref_name])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads; load average {load0:.1f} before, {load1:.1f} after; "
        f"{args.batch} images {args.height}x{args.width}, blur + low light + noise on every image, "
        f"curves {args.crf}; {args.repeats} interleaved repeats after one warm-up\n"
    )
    print(
        "| implementation | median s / batch | images / s | vs per-image (ratio of medians) | median of per-repeat ratios |"
    )
    print("|---|---|---|---|---|")
    for name in names:
        t = statistics.median(times[name])
        ratio = statistics.median(r / b for r, b in zip(times[ref_name], times[name]))
        print(f"| {name} | {t:.4f} | {args.batch / t:.1f} | {t_ref / t:.2f}x | {ratio:.2f}x |")
    if args.bank:
        t = time.perf_counter()
        KernelBank.build(args.bank, 8, cfg.kernel_sizes, seed=123)
        print(
            f"\nkernel bank: {args.bank} motion + 8 Gaussian kernels built in {time.perf_counter() - t:.1f} s "
            f"(no cache)"
        )


if __name__ == "__main__":
    main()
