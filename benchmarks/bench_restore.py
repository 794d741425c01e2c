"""Restoration throughput of the packaged model (``nasfe restore``'s default), NCHW against the CPU default.

    nice -n 10 .venv/bin/python benchmarks/bench_restore.py --repeats 5

Loads ``nasfe/pretrained/cpu_default.pt`` as ``nasfe restore`` does (``load_trained``) in two
layouts: ``nchw`` (``model.channels_last: false``, the layout the model was trained in) and
``default`` (``auto``: NHWC on the CPU), and times, round-robin (every repeat times both, the order
alternating) so a shared machine's load hits them alike:

* a batch of 16 faces at 176x144 (the training size; ``run_network``),
* one 512x512 photo (one forward: not above the 512 px tile),
* one 2000x1500 photo (``restore_tiled``: 512 px tiles, 32 px overlap, 4 tiles per forward),

on random images (the time does not depend on the content). Prints medians, images/s and the
median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nasfe.evaluate.model_io import build_and_load, load_trained
    from nasfe.evaluate.restore import DEFAULT_OVERLAP, DEFAULT_TILE, restore_tiled, run_network
    from nasfe.pretrained import DEFAULT_MODEL

    default, space, genotype = load_trained(DEFAULT_MODEL)
    nchw_space = dataclasses.replace(space, model=dataclasses.replace(space.model, channels_last=False))
    nchw = build_and_load(nchw_space, genotype, default.state_dict(), "nchw", "cpu")
    assert default.channels_last and not nchw.channels_last
    models = {"nchw": nchw, "default": default}
    g = torch.Generator().manual_seed(0)
    work = {
        "16 x 176x144 (batch 16)": (torch.rand(16, 3, 176, 144, generator=g), 16, run_network),
        "1 x 512x512": (torch.rand(1, 3, 512, 512, generator=g), 1, run_network),
        "1 x 2000x1500 (tiled)": (
            torch.rand(1, 3, 2000, 1500, generator=g),
            1,
            lambda m, y: restore_tiled(m, y, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP, batch_size=4),
        ),
    }
    names = list(models)
    same = {}
    for w, (y, _, fn) in work.items():  # warm-up, and the layouts agree
        outs = [fn(models[n], y) for n in names]
        same[w] = float((outs[0] - outs[1]).abs().max())
    times = {(w, n): [] for w in work for n in names}
    load0 = os.getloadavg()
    for rep in range(args.repeats):
        for w, (y, _, fn) in work.items():
            for n in names if rep % 2 == 0 else names[::-1]:
                t = time.perf_counter()
                fn(models[n], y)
                times[(w, n)].append(time.perf_counter() - t)
    load1 = os.getloadavg()
    print(
        f"packaged model {DEFAULT_MODEL.name}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved repeats; load average {load0[0]:.2f} before, {load1[0]:.2f} after\n"
    )
    print(
        "| work | nchw s (median) | default s (median) | nchw images/s | default images/s | speed-up (median of per-repeat ratios) | max abs difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for w, (_, n_img, _) in work.items():
        a, b = times[(w, "nchw")], times[(w, "default")]
        ratio = statistics.median(x / y for x, y in zip(a, b))
        print(
            f"| {w} | {statistics.median(a):.3f} | {statistics.median(b):.3f} | {n_img / statistics.median(a):.2f} | "
            f"{n_img / statistics.median(b):.2f} | {ratio:.2f}x | {same[w]:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
