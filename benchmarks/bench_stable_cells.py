"""Scale of derived paper-space fusion networks at initialisation (docs/MODEL.md, "Stable cells").

    python benchmarks/bench_stable_cells.py SIZE [--legacy] [--supernet]

Builds DerivedFusion of the paper space for chains of one operator (block i reads blocks i-1 and
i-2) and random cells, on paths [0,0,0,0] and [1,2,1,0], seeds 0 and 1, and prints whether the
output on a unit-variance SIZE x SIZE input is finite and its std. ``--legacy`` turns
``model.stable_cells`` off (sums, unbounded deveil); ``--supernet`` also prints the supernet's std
(slow: minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import random

import torch

from nasfe.config import load_space
from nasfe.genotype import BlockGene, Genotype
from nasfe.model.fusion import DerivedFusion, SearchFusion

KINDS = [
    "deveil_op",
    "fft_op",
    "skip_connect",
    "res_op",
    "res2block",
    "self_attn",
    "sep_conv_5x5",
    "dil_conv_5x5",
    "random",
]


def genotype(space, kind: str, path, rng: random.Random) -> Genotype:
    m = space.model
    live = [o for o in m.operators if o != "zero"]
    genes = []
    for i in range(m.blocks):
        if kind == "random":
            genes.append(BlockGene(sorted(rng.sample(range(i + 2), 2)), [rng.choice(live), rng.choice(live)]))
        else:
            genes.append(BlockGene([i, i + 1], [kind, kind]))
    return Genotype([genes], list(path), list(m.operators), m.blocks, space.space_hash())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("size", type=int)
    ap.add_argument("--legacy", action="store_true")
    ap.add_argument("--supernet", action="store_true")
    a = ap.parse_args()
    space = load_space("paper", overrides={"model.stable_cells": not a.legacy})
    torch.manual_seed(0)
    x = torch.randn(1, space.model.channels, a.size, a.size)
    if a.supernet:
        with torch.no_grad():
            print(f"supernet std {SearchFusion(space.model).eval()(x).std().item():.3g}", flush=True)
    for kind in KINDS:
        for path in ([0, 0, 0, 0], [1, 2, 1, 0]):
            for seed in (0, 1):
                torch.manual_seed(seed)
                net = DerivedFusion(space.model, genotype(space, kind, path, random.Random(seed))).eval()
                with torch.no_grad():
                    out = net(x)
                print(kind, path, seed, bool(torch.isfinite(out).all()), f"{out.std().item():.3g}", flush=True)


if __name__ == "__main__":
    main()
