"""Time and peak memory of one second-order architecture gradient on the CPU: the mixed second
derivative by double backward (what the search runs) or by DARTS' central finite difference of
two architecture gradients at w +- eps z (perturbation norm 0.01), for comparison.

    PYTHONPATH=. python benchmarks/bench_second_order.py SPACE exact|finite_difference|both [BATCH] [REPS]

SPACE: tiny (32x32) or rehearsal (paper.yaml at small size: B = 12, all eleven operators, partial
channels 4, checkpointed cells; 48x40), synthetic data, batch BATCH (default 2), one thread.
Memory: run each mode in its own process; the peak is the process's maximum resident set size,
printed after a plain weight step (forward + backward) and again after the second-order steps.
Time: ``both`` alternates the two modes REPS times in one process (the same load for both) and
prints each one's median. docs/MODEL.md records it.
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from nasfe.config import load_space
from nasfe.engine.search import SearchPhase


def finite_difference(phase, norm=0.01):
    """The mixed derivative as DARTS computes it (for comparison only)."""

    def mixed(batch, z, drop=False):
        backup = [w.detach().clone() for w in phase.weights]
        z = [zi if zi is not None else torch.zeros_like(w) for zi, w in zip(z, phase.weights)]
        eps = norm / (torch.nn.utils.get_total_norm(z) + 1e-12)
        out = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, b, zi in zip(phase.weights, backup, z):
                    w.copy_(b + sign * eps * zi)
            loss, _ = phase.network_loss(batch, drop_refs=drop)
            g = torch.autograd.grad(loss, phase.arch_params, allow_unused=True)
            out.append([gi if gi is not None else torch.zeros_like(p) for gi, p in zip(g, phase.arch_params)])
        with torch.no_grad():
            for w, b in zip(phase.weights, backup):
                w.copy_(b)
        return [(gp - gm) / (2 * eps) for gp, gm in zip(*out)]

    return mixed


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
    name, mode = argv[0], argv[1]
    batch = int(argv[2]) if len(argv) > 2 else 2
    reps = int(argv[3]) if len(argv) > 3 else 3
    over = {
        "search.second_order": True,
        "search.batch_size": batch,
        "search.pretrain_steps": 0,
        "search.warmup_epochs": 0,
        "identity.drop_refs": 0.0,
        "data.source": "synthetic",
        "data.workers": 0,
    }
    if name == "tiny":
        over.update({"data.height": 32, "data.width": 32})
    space = load_space(name, over)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    phase = SearchPhase(space, Path(tempfile.mkdtemp()))
    phase.build()
    tb = next(iter(phase.weight_batches()))
    ab = phase._arch_batch()
    exact, fd = phase.mixed_second_derivative, finite_difference(phase)
    if mode == "finite_difference":
        phase.mixed_second_derivative = fd
    t = time.perf_counter()
    phase.opt_w.zero_grad(set_to_none=True)
    phase.network_loss(tb)[0].backward()
    phase.opt_w.step()
    plain_s, plain_peak = time.perf_counter() - t, peak_mib()
    if mode == "both":
        both: dict[str, list[float]] = {"exact": [], "finite_difference": []}
        for _ in range(reps):
            for m, fn in (("exact", exact), ("finite_difference", fd)):
                phase.mixed_second_derivative = fn
                t = time.perf_counter()
                phase.second_order_gradient(tb, ab)
                both[m].append(time.perf_counter() - t)
        med = {m: sorted(v)[len(v) // 2] for m, v in both.items()}
        print(
            f"{name} batch {batch}: second-order gradient exact {med['exact']:.2f} s, finite difference "
            f"{med['finite_difference']:.2f} s (medians of {reps}, alternating); weight step {plain_s:.2f} s",
            flush=True,
        )
        return
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        phase.second_order_gradient(tb, ab)
        times.append(time.perf_counter() - t)
    times.sort()
    print(
        f"{name} batch {batch} {mode}: second-order gradient {times[len(times) // 2]:.2f} s (median of {reps}), "
        f"weight step {plain_s:.2f} s; peak RSS {plain_peak:.0f} MiB after the weight step, "
        f"{peak_mib():.0f} MiB after the second-order steps",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
