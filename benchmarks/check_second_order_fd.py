"""Second-order architecture gradient vs a central finite difference of the whole look-ahead
objective L_arch(w - AdamStep(clip(grad_w L_train(w, arch))), arch), in float64 on the tiny space.

    PYTHONPATH=. python benchmarks/check_second_order_fd.py CLIP PER_PART(0|1) H HVP_NORM

Prints the directional derivative along a random direction: analytic (SearchPhase.
second_order_gradient, its Hessian-vector product by finite differences of norm HVP_NORM) and
numeric (the objective at arch +- H * direction). docs/MODEL.md records what it gives.
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

import tests.test_second_order as T


def main(argv: list[str]) -> None:
    t0 = time.time()
    clip, per_part, h, hvp_norm = float(argv[0]), argv[1] == "1", float(argv[2]), float(argv[3])
    phase, tb, ab = T._phase(Path(tempfile.mkdtemp()), clip, per_part, double=True)
    T._real_steps(phase, tb)
    phase.hvp_norm = hvp_norm
    grads, _ = phase.second_order_gradient(tb, ab)
    gen = torch.Generator().manual_seed(5)
    d = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in phase.arch_params]
    analytic = sum(float((g * di).sum()) for g, di in zip(grads, d))
    a0 = [p.detach().clone() for p in phase.arch_params]
    vals = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, a, di in zip(phase.arch_params, a0, d):
                p.copy_(a + sign * h * di)
        vals.append(float(phase.lookahead_objective(tb, ab)))
    numeric = (vals[0] - vals[1]) / (2 * h)
    print(
        f"clip {clip} per_part {per_part}: analytic {analytic:.7g}  numeric {numeric:.7g}  ({time.time() - t0:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
