"""Second-order architecture gradient vs a central finite difference of the whole look-ahead
objective L_arch(w - AdamStep(clip(grad_w L_train(w, arch))), arch) on the tiny space, 32x32,
batch 2, after 2 Adam steps (the setting of tests/test_second_order.py).

    PYTHONPATH=. python benchmarks/check_second_order_fd.py CLIP PER_PART(0|1) [H] [paper]

Prints the directional derivative along a random direction: analytic (SearchPhase.
second_order_gradient in float32 as the search runs it) and numeric (the objective in float64 at
arch +- H * direction, H = 1e-5 by default). ``paper``: all eleven operators of paper.yaml,
partial channels 4, checkpointed and stable cells. docs/MODEL.md records what it gives.
"""

import sys
import tempfile
import time
from pathlib import Path

import tests.test_second_order as T


def main(argv: list[str]) -> None:
    t0 = time.time()
    clip, per_part = float(argv[0]), argv[1] == "1"
    h = float(argv[2]) if len(argv) > 2 else 1e-5
    paper = "paper" in argv[3:]
    extra = dict(ops=T.PAPER_OPS, partial_channels=4, checkpoint_cells=True, stable_cells=True) if paper else {}
    phase, tb, ab = T._phase(Path(tempfile.mkdtemp()), clip, per_part, **extra)
    T._real_steps(phase, tb)
    analytic, numeric = T._directional_derivatives(phase, tb, ab, h=h)
    print(
        f"clip {clip} per_part {per_part}{' paper operators' if paper else ''}: analytic {analytic:.7g}  "
        f"numeric {numeric:.7g}  rel. error {abs(analytic - numeric) / abs(numeric):.1e}  ({time.time() - t0:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
