"""Benchmark: the full blur + low-light + noise pipeline, batched torch vs per-image NumPy/OpenCV.

    .venv/bin/python benchmarks/bench_degrade.py [--repeats 5] [--batch 40] [--bank 25000]

Images per second at 176x144, batch 40, every sample blurred, darkened and noisy, on CPU (and on
GPU when one is available), side by side with :mod:`nasfe.degrade.reference` on the same cores and
the same parameters. Also times building the 25,000-kernel motion bank (no cache). Prints a
Markdown table (medians over ``--repeats`` runs, ratios from the same run).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
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


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--height", type=int, default=176)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--bank", type=int, default=25000, help="motion kernels to time (0: skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DegradeConfig(motion_kernels=1000, gaussian_kernels=8, p_blur=1.0, p_noise=1.0, p_lowlight=1.0)
    bank = KernelBank.build(cfg.motion_kernels, cfg.gaussian_kernels, cfg.kernel_sizes, seed=0)
    curves = ResponseCurves.parametric()
    x = _faces(args.batch, args.height, args.width)
    params = sample_params(args.batch, cfg, bank, curves, torch.Generator().manual_seed(1))
    eps = torch.randn(args.batch, 1, args.height, args.width, generator=torch.Generator().manual_seed(2))
    rows = []

    t_cpu = _median_time(lambda: degrade(x, params, bank, curves, noise=eps), args.repeats)
    rows.append(("batched torch, CPU", t_cpu))
    if torch.cuda.is_available():
        xg = x.cuda()

        def gpu():
            degrade(xg, params, bank, curves, noise=eps)
            torch.cuda.synchronize()
        rows.append((f"batched torch, GPU ({torch.cuda.get_device_name()})", _median_time(gpu, args.repeats)))

    xs = [x[i].permute(1, 2, 0).numpy().copy() for i in range(args.batch)]
    recs = params.records()
    ks = [bank.kernels[r["kernel_id"]].numpy() for r in recs]
    es = [eps[i, 0].numpy() for i in range(args.batch)]

    def per_image():
        for xi, r, k, e in zip(xs, recs, ks, es):
            degrade_image(xi, k, r["r"], r["sigma_s"], r["sigma_c"], curves, r["crf_id"], eps=e)
    t_ref = _median_time(per_image, args.repeats)
    rows.append(("per-image NumPy/OpenCV, CPU", t_ref))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads; {args.batch} images {args.height}x{args.width}, "
          f"blur + low light + noise on every image; median of {args.repeats}\n")
    print("| implementation | s / batch | images / s | vs per-image |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.4f} | {args.batch / t:.1f} | {t_ref / t:.1f}x |")
    if args.bank:
        t = time.perf_counter()
        KernelBank.build(args.bank, 8, cfg.kernel_sizes, seed=123)
        print(f"\nkernel bank: {args.bank} motion + 8 Gaussian kernels built in {time.perf_counter() - t:.1f} s "
              f"(no cache)")


if __name__ == "__main__":
    main()
