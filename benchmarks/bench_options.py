"""model.channels_last and model.compile against NCHW without compiling, interleaved, on the derived paper network.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_options.py --height 88 --width 72 --batch 2 --repeats 5

Times one retraining step (forward, L_final, backward, Adam; the engine's ``RetrainPhase.train_step``)
of the network derived from the paper supernet's initial alpha/beta (seed 0), for each option,
round-robin (each repeat times every variant, order alternating) so a shared machine's changing
load hits them alike. Medians and the median of per-repeat ratios to the default are printed.
On the GPU, ``benchmarks/gpu_check.py`` measures the same options at batch 40 (its part b).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

from gpu_parts import build_retrain, initial_genotype, random_batch, sync  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=88)
    ap.add_argument("--width", type=int, default=72)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="default,channels_last,compile")
    args = ap.parse_args()
    from nasfe.config import load_space

    device = torch.device(args.device)
    size = {"data.height": args.height, "data.width": args.width}
    genotype = initial_genotype(load_space("paper", size))
    # "default": NCHW (channels_last false), the layout the other variants are compared with
    opts = {
        "default": {"model.channels_last": False},
        "channels_last": {"model.channels_last": True},
        "compile": {"model.compile": True, "model.channels_last": False},
    }
    names = args.variants.split(",")
    phases, first = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            space = load_space("paper", {**size, **opts[name], "retrain.batch_size": args.batch})
            phase = build_retrain(space, genotype, Path(tmp) / name, device)
            batch = random_batch(args.batch, space, device)
            t = time.perf_counter()
            phase.train_step(batch)  # compiles when model.compile
            sync(device)
            first[name] = time.perf_counter() - t
            phases[name] = (phase, batch)
        times = {n: [] for n in names}
        for rep in range(args.repeats):
            for name in names if rep % 2 == 0 else names[::-1]:
                phase, batch = phases[name]
                t = time.perf_counter()
                phase.train_step(batch)
                sync(device)
                times[name].append(time.perf_counter() - t)
    print(
        f"derived paper network {genotype.genotype_id()}, retrain step, batch {args.batch} at "
        f"{args.height}x{args.width}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}; {args.repeats} interleaved repeats\n"
    )
    print("| variant | first step s | median step s | speed vs default (median of per-repeat ratios) |")
    print("|---|---|---|---|")
    for name in names:
        ratio = statistics.median(d / t for d, t in zip(times["default"], times[name])) if "default" in times else 1
        print(f"| {name} | {first[name]:.2f} | {statistics.median(times[name]):.3f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
