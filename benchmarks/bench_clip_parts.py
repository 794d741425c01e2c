"""Share of each part's gradients below Adam's eps (1e-8) after clipping, one global clip vs one
clip per part (docs/MODEL.md, "Gradient clipping per part").

    python benchmarks/bench_clip_parts.py [--size 176x144] [--batch 2] [--steps 0]

A derived network of the paper space (a random genotype, seed 0; paper widths; the paper's loss:
summed L2 + perceptual + identity with the packaged MobileFaceNet) on CelebA faces of
../shared/data/celeba-id degraded by the paper's pipeline. Prints the raw gradient norm per part,
then for each setting the share of each part's gradient entries whose magnitude after clipping
(grad_clip 5) lies in (0, 1e-8), and the share exactly zero (dead units: no clip changes them). ``--steps`` Adam steps (global clip) first, to measure later in training.
"""

from __future__ import annotations

import argparse
import random
import tempfile

import torch

from nasfe.config import load_space
from nasfe.engine.retrain import RetrainPhase
from nasfe.genotype import BlockGene, Genotype

EPS = 1e-8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="176x144")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0)
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    space = load_space(
        "paper",
        overrides={
            "data.source": "folder",
            "data.root": "../shared/data/celeba-id",
            "data.height": h,
            "data.width": w,
            "data.workers": 0,
            "retrain.batch_size": a.batch,
            "model.checkpoint_cells": False,
        },
    )
    m = space.model
    live = [o for o in m.operators if o != "zero"]
    rng = random.Random(0)
    genes = [
        BlockGene(sorted(rng.sample(range(i + 2), 2)), [rng.choice(live), rng.choice(live)]) for i in range(m.blocks)
    ]
    genotype = Genotype([genes], [0, 1, 1, 0], list(m.operators), m.blocks, space.space_hash())
    phase = RetrainPhase(space, genotype, tempfile.mkdtemp())
    torch.manual_seed(0)
    phase.build()
    batch = next(iter(phase.weight_batches()))
    parts = phase.model.weight_parts()
    for _ in range(a.steps):
        phase.opt.zero_grad(set_to_none=True)
        phase.network_loss(batch)[0].backward()
        phase.clip(phase.weights)
        phase.opt.step()
    phase.opt.zero_grad(set_to_none=True)
    loss, _ = phase.network_loss(batch)
    loss.backward()
    raw = {k: [p.grad.detach().clone() if p.grad is not None else None for p in ps] for k, ps in parts.items()}
    print(
        f"loss {float(loss.detach()):.4g}; raw gradient norm per part: "
        + ", ".join(
            f"{k} {torch.linalg.vector_norm(torch.cat([g.flatten() for g in gs if g is not None])):.3g}"
            for k, gs in raw.items()
        )
    )
    for per_part in (False, True):
        phase.cfg.grad_clip_per_part = per_part
        for k, ps in parts.items():
            for p, g in zip(ps, raw[k]):
                p.grad = None if g is None else g.clone()
        phase.clip(phase.weights)
        shares, zeros = {}, {}
        for k, ps in parts.items():
            flat = torch.cat([p.grad.flatten() for p in ps if p.grad is not None]).abs()
            zeros[k] = float((flat == 0).float().mean())
            shares[k] = float(((flat > 0) & (flat < EPS)).float().mean())
        print(
            ("per part" if per_part else "global  ")
            + " clip 5: share in (0, eps): "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())
            + "; exactly zero: "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in zeros.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
