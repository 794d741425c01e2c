#!/usr/bin/env python
"""The searches and test sets of the CPU rank study (docs/RANK.md): the BN-NAS row of
``search_spaces/cpu.yaml`` (searched fusion, no CN, no identity, L2 only) searched at the space's
own search budget, one search per seed, in this process (no Ray), and Test-BN/Test-BNL built from
20 faces of the space's test identities (seed 0, as docs/RESULTS.md builds them).

    OMP_NUM_THREADS=1 python benchmarks/studies/rank_searches.py runs/rank 0 1 2
"""

import sys
import time
from pathlib import Path

try:
    import nasfe  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nasfe.config import load_space
from nasfe.engine.search import run_search
from nasfe.evaluate.ablation import ROWS, build_ablation_testsets


def main(out: str, seeds: list[int]) -> None:
    row = {r.slug: r for r in ROWS}["bn_nas"]
    out = Path(out)
    if not (out / "testsets").is_dir():
        t = time.time()
        build_ablation_testsets("search_spaces/cpu.yaml", out, 20)
        print("testsets", round(time.time() - t, 1), "s", flush=True)
    for seed in seeds:
        space = load_space("search_spaces/cpu.yaml", {**row.overrides, "search.seed": seed})
        t0, c0 = time.time(), time.process_time()
        run_search(space, out / f"search_seed{seed}", device="cpu")
        print("seed", seed, "wall", round(time.time() - t0, 1), "cpu", round(time.process_time() - c0, 1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]])
