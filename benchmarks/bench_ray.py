"""Search-step throughput: a plain single-process loop vs Ray Train with 1 and 2 workers, one run.

    .venv/bin/python benchmarks/bench_ray.py                       # tiny space, CPU
    .venv/bin/python benchmarks/bench_ray.py --set data.height=176 --set data.width=144 --gpu

Every variant runs the real engine (``run_search``) for ``--steps`` bilevel steps (weights and
alpha/beta, no warm-up epoch, no mid-epoch checkpoint); a callback stamps each step's end, and the
first ``--skip`` steps are dropped (start-up, allocator warm-up). Reported per variant: seconds per
step (median), images per second (global batch / step time). Ray's overhead per step is
``(median step with 1 Ray worker - median plain step) / median plain step``: the same work in one
process, so the difference is what Ray adds (its process, its report calls, the gloo/NCCL group).
With 2 workers each rank does half the batch and gradients are all-reduced.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasfe.engine.callbacks import Callback  # noqa: E402


class StepClock(Callback):
    """Rank 0 appends ``time.perf_counter()`` of every step end to a file."""

    def __init__(self, path: str):
        self.path = path

    def on_step(self, state, metrics):
        if state.is_main:
            with open(self.path, "a") as fh:
                fh.write(f"{time.perf_counter()}\n")


def step_times(path: str, skip: int) -> list[float]:
    """Durations between consecutive step ends, after ``skip`` steps."""
    stamps = [float(x) for x in Path(path).read_text().split()]
    diffs = [b - a for a, b in zip(stamps, stamps[1:])]
    return diffs[skip:]


def bench_space(args):
    from nasfe.config import load_space

    overrides = {
        "search.epochs": 1,
        "search.warmup_epochs": 0,
        "search.steps_per_epoch": args.steps,
        "search.checkpoint_every": 0,
        "search.val_batches": 1,
    }
    if args.batch:
        overrides["search.batch_size"] = args.batch
    for text in args.set:
        import yaml

        key, _, value = text.partition("=")
        overrides[key] = yaml.safe_load(value)
    return load_space(args.space, overrides)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--batch", type=int, help="global batch size (default: the space's)")
    p.add_argument("--set", action="append", default=[], help="space override key=value")
    p.add_argument("--gpu", action="store_true", help="run the variants on CUDA")
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import ray
    import torch

    from nasfe.distributed.cluster import worker_env
    from nasfe.distributed.ray_train import fit_search
    from nasfe.engine.search import run_search

    space = bench_space(args)
    batch = space.search.batch_size
    device = "cuda" if args.gpu else "cpu"
    results = {
        "space": space.name,
        "batch": batch,
        "steps": args.steps,
        "skip": args.skip,
        "device": device,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        "variants": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="nasfe-bench-"))

    def record(name, times):
        med = statistics.median(times)
        results["variants"][name] = {
            "step_s_median": med,
            "step_s_mean": statistics.mean(times),
            "images_per_s": batch / med,
            "n": len(times),
        }
        print(f"{name:>14}: {med:.3f} s/step  {batch / med:7.1f} img/s  (n={len(times)})", flush=True)

    clock = tmp / "plain.txt"
    run_search(space, tmp / "plain", callbacks=[StepClock(str(clock))], device=device, resume=False)
    record("plain", step_times(str(clock), args.skip))

    ray.init(
        num_cpus=max(2, os.cpu_count() or 2),
        log_to_driver=False,
        include_dashboard=False,
        runtime_env={"env_vars": worker_env()},
    )
    try:
        for n in [int(x) for x in args.workers.split(",")]:
            clock = tmp / f"ray{n}.txt"
            fit_search(
                space,
                f"bench-{n}",
                str(tmp / "runs"),
                num_workers=n,
                use_gpu=args.gpu,
                progress=False,
                max_failures=0,
                threads_per_worker=max(1, torch.get_num_threads() // n),
                extra_callbacks=[StepClock(str(clock))],
                resume=False,
            )
            record(f"ray_{n}_worker" + ("s" if n > 1 else ""), step_times(str(clock), args.skip))
    finally:
        ray.shutdown()
    v = results["variants"]
    if "plain" in v and "ray_1_worker" in v:
        plain, one = v["plain"]["step_s_median"], v["ray_1_worker"]["step_s_median"]
        results["ray_overhead_s_per_step"] = one - plain
        results["ray_overhead_fraction"] = (one - plain) / plain
        print(f"Ray overhead per step: {one - plain:+.3f} s ({100 * (one - plain) / plain:+.1f}% of a plain step)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
