"""Second-order architecture gradient vs a central finite difference of the whole look-ahead
objective L_arch(w - AdamStep(clip(grad_w L_train(w, arch))), arch), in float64 on the tiny space.

    PYTHONPATH=. python benchmarks/check_second_order_fd.py CLIP PER_PART(0|1) H HVP_NORM

Prints the directional derivative along a random direction: analytic (SearchPhase.
second_order_gradient, its Hessian-vector product by finite differences of norm HVP_NORM) and
numeric (the objective at arch +- H * direction). docs/MODEL.md records what it gives.
"""
import sys, tempfile, time
from pathlib import Path
t0=time.time()
import torch
import tests.test_second_order as T
clip, pp = float(sys.argv[1]), sys.argv[2] == "1"; H = float(sys.argv[3])
phase, tb, ab = T._phase(Path(tempfile.mkdtemp()), clip, pp, double=True)
T._real_steps(phase, tb); phase.hvp_norm = float(sys.argv[4])
grads, _ = phase.second_order_gradient(tb, ab)
gen = torch.Generator().manual_seed(5)
d = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in phase.arch_params]
analytic = sum(float((g * di).sum()) for g, di in zip(grads, d))
a0 = [p.detach().clone() for p in phase.arch_params]
vals = []
for sign in (1.0, -1.0):
    with torch.no_grad():
        for p, a, di in zip(phase.arch_params, a0, d): p.copy_(a + sign * H * di)
    vals.append(float(phase.lookahead_objective(tb, ab)))
print("clip", clip, pp, "analytic", analytic, "numeric", (vals[0]-vals[1])/(2*H), "direct-only?", "s", time.time()-t0, flush=True)
