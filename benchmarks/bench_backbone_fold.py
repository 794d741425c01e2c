"""The frozen MobileFaceNet's share of a retraining step, with its batch norms and with them folded.

    nice -n 10 .venv/bin/python benchmarks/bench_backbone_fold.py --repeats 5

The backbone work of one ``cpu.yaml`` retraining step's loss on a batch of 4 176x144 images
(the packaged weights): features of the restored image (with graph) and of the target (no graph),
the embedding of the restored image, and the backward pass of both to the restored image. The two
forms run interleaved (order alternating) in one process, in the layout ``model.channels_last:
auto`` gives on the CPU (NHWC) and in NCHW; the medians of wall and CPU seconds (the process, all
threads) are printed. CPU seconds are the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    from nasfe.identity.backbones import MobileFaceNet
    from nasfe.identity.packaged import MOBILEFACENET
    from profile_step import load_average

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 176, 144, generator=g)
    target = torch.rand(args.batch, 3, 176, 144, generator=g)
    backbones = {}
    for layout in ("NCHW", "NHWC"):
        b = MobileFaceNet(str(MOBILEFACENET))
        if layout == "NHWC":
            b.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        backbones[layout] = b
    variants = [(layout, fold) for layout in backbones for fold in (False, True)]

    def work(layout: str, fold: bool) -> tuple[float, float]:
        b = backbones[layout]
        b.fold_bn = fold
        inp = x.contiguous(memory_format=torch.channels_last) if layout == "NHWC" else x
        restored = inp.clone().requires_grad_(True)
        t, c = time.perf_counter(), time.process_time()
        f_hat = b.features(restored)
        with torch.no_grad():
            f_x = b.features(target)
        loss = (f_hat - f_x).abs().mean() + b.embedding(restored).square().mean()
        loss.backward()
        return time.perf_counter() - t, time.process_time() - c

    print(
        f"batch {args.batch} x 176x144, {args.repeats} repeats after 1 warm-up, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load_average()}",
        flush=True,
    )
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {v: [] for v in variants}
    for i in range(args.repeats + 1):
        for v in variants if i % 2 == 0 else variants[::-1]:
            r = work(*v)
            if i:
                times[v].append(r)
    print("| layout | batch norms | wall s (median) | CPU s (median) |")
    print("|---|---|---|---|")
    for (layout, fold), rs in times.items():
        wall, cpu = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
        print(f"| {layout} | {'folded' if fold else 'unfolded'} | {wall:.3f} | {cpu:.3f} |")
    for layout in backbones:
        u = statistics.median(r[1] for r in times[(layout, False)])
        f = statistics.median(r[1] for r in times[(layout, True)])
        print(f"{layout}: folded {u / f:.2f}x in CPU time")
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
