"""Time to quality: cpu.yaml's retraining with the settings before the CPU defaults and with them, side by side.

    nice -n 10 .venv/bin/python benchmarks/time_to_quality.py --quick      # at most 20 min on the idle 2-core VM
    nice -n 10 .venv/bin/python benchmarks/time_to_quality.py              # the space's own 4200 steps

Both variants retrain the same network (the genotype read off cpu.yaml's supernet at its initial
alpha/beta, ``torch.manual_seed(0)``: no search is run) from the same seed on the same data in one
process, in interleaved chunks (old, new, new, old, ...), so the machine's load hits them alike;
a throw-away copy of each variant first takes ``--warmup`` untimed steps, so the process's one-time
costs fall on neither.
Each variant's encoder and CN pre-training is one chunk. After every chunk each variant is
validated on the same ``--val-batches`` validation batches (not timed). The variants:

* ``old``: the execution settings as they were before the CPU defaults (``model.channels_last:
  false``: NCHW convolutions; the frozen MobileFaceNet run with its batch norms, unfolded;
  ``retrain.amp: false``: float32 throughout; ``identity.cache_mb: 0``: every clean photo through
  the backbone at every step);
* ``new``: the defaults (``model.channels_last: auto``, on for the CPU; the MobileFaceNet's batch
  norms folded into its convolutions; ``retrain.amp: auto``, bf16 autocast on a CPU with native
  bf16; ``identity.cache_mb: auto``, the clean photos' backbone outputs kept across steps on the
  CPU). Validation runs in float32 for both.

Quality ``p`` = the old variant's final validation PSNR minus 0.1 dB; each variant's time is the
training time (pre-training included, validation excluded) until the first validation after a
training chunk from which on every validation is at or above ``p`` (the validation before the
first step never counts). Prints ``time to quality: <ratio>x (<old> s -> <new> s to reach val
PSNR <p> dB)``, both final PSNRs and the CPU-time ratio of the whole run; when the network before
retraining already validates at ``p`` or above (a run too short to raise val PSNR), a note says so:
the ratio is then that of the training time until the PSNR holds at ``p``, which for two curves
that agree is a ratio of equal step counts. ``--quick``: 800 steps (cosine over them), 50
pre-training steps per part, chunks of 100 steps, 8 validation batches (32 images) after each: 1600 retraining steps in
all, about 10 minutes at the idle 2-core VM's step times (docs/BENCHMARKS.md); a loaded machine
stretches it.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

#: the settings before the CPU defaults, and the defaults (overrides of cpu.yaml; ``bench.`` keys:
#: how the built network runs, profile_step.BENCH_OPTIONS)
VARIANTS = {
    "old": {"model.channels_last": False, "bench.fold_bn": False, "retrain.amp": False, "identity.cache_mb": 0},
    "new": {},
}
#: validation PSNR within this many dB of the old final counts as reached
TOLERANCE_DB = 0.1


class Run:
    """One variant's retraining, advanced chunk by chunk, with its own RNG state."""

    def __init__(self, name: str, space, genotype, faces, run_dir: Path, val_batches: int, options: dict):
        from nasfe.engine.retrain import RetrainPhase
        from profile_step import apply_bench_options

        self.name = name
        space = copy.deepcopy(space)  # its own settings: val_batches below must not reach another run
        torch.manual_seed(space.retrain.seed)
        self.phase = RetrainPhase(space, genotype, run_dir, resume=False, faces=faces)
        self.phase.build()
        apply_bench_options(self.phase, options)
        self.phase.cfg.val_batches = val_batches
        self.train_maker = self.phase.weight_batches()
        self.phase.val_maker = self.phase.make_batches("val", seed_offset=1000)
        self.phase.state.steps_per_epoch = space.retrain.steps_per_epoch
        self.total_steps = space.retrain.epochs * space.retrain.steps_per_epoch
        self.rng = torch.get_rng_state()
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.curve: list[tuple[int, float, float]] = []  # (step, training seconds, val PSNR)
        self.epoch = 0
        self.batches = None

    def _timed(self, fn) -> None:
        torch.set_rng_state(self.rng)
        t, c = time.perf_counter(), time.process_time()
        fn()
        self.seconds += time.perf_counter() - t
        self.cpu_seconds += time.process_time() - c
        self.rng = torch.get_rng_state()

    def pretrain(self) -> None:
        self._timed(self.phase.pretrain)
        self.phase.model.train()

    def _next_batch(self):
        if self.batches is None:
            self.train_maker.set_epoch(self.epoch)
            self.batches = iter(self.train_maker)
        batch = next(self.batches, None)
        if batch is None:
            self.epoch += 1
            self.batches = None
            return self._next_batch()
        return batch

    def train(self, steps: int) -> None:
        ph = self.phase
        log_every = max(1, ph.cfg.log_every)

        def chunk():
            for _ in range(steps):
                batch = self._next_batch()
                ph.apply_lr()
                ph.meter.add(ph.train_step(batch))
                ph.state.step += 1
                if ph.state.step % log_every == 0:
                    ph.check_finite()
                    ph.meter.interval_means()

        self._timed(chunk)

    def validate(self) -> float:
        torch.set_rng_state(self.rng)
        psnr = self.phase.validate()["val_psnr"]
        self.rng = torch.get_rng_state()
        self.curve.append((self.phase.state.step, self.seconds, psnr))
        return psnr

    def time_to(self, p: float):
        """Training seconds until the first validation after a training chunk from which on every
        validation is at or above ``p`` (None: the last one is below ``p``). The validation before
        any step does not count; "from which on" keeps one lucky validation from counting."""
        after = [(s, v) for step, s, v in self.curve if step > 0]
        for i, (s, _) in enumerate(after):
            if all(v >= p for _, v in after[i:]):
                return s
        return None

    def untrained_psnr(self) -> float:
        """Validation PSNR before the first retraining step (after pre-training)."""
        return next(v for step, _, v in self.curve if step == 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="800 steps, 50 pre-training steps, chunks of 100")
    ap.add_argument("--steps", type=int, default=None, help="retraining steps (default: the space's)")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="per part (default: the space's)")
    ap.add_argument("--chunk", type=int, default=None, help="steps per interleaved chunk (default 300; quick 100)")
    ap.add_argument("--val-batches", type=int, default=None, help="validation batches after every chunk (default 8)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of a throw-away copy of each variant first")
    ap.add_argument("--space", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nasfe.config import load_space
    from nasfe.data.faces import open_faces
    from gpu_parts import initial_genotype
    from profile_step import load_average, variant_spaces

    base = load_space(args.space)
    steps = args.steps or (800 if args.quick else base.retrain.epochs * base.retrain.steps_per_epoch)
    pre = (
        args.pretrain_steps if args.pretrain_steps is not None else (50 if args.quick else base.retrain.pretrain_steps)
    )
    chunk = args.chunk or (100 if args.quick else 300)
    args.val_batches = args.val_batches or 8
    over = {"retrain.epochs": 1, "retrain.steps_per_epoch": steps, "retrain.pretrain_steps": pre}
    spaces, options = variant_spaces(args.space, over, VARIANTS)
    faces = open_faces(base.data)
    genotype = initial_genotype(base)
    print(
        f"space {args.space}, retraining {steps} steps (cosine), pre-training {pre} steps per part, chunks of "
        f"{chunk}, validation on {args.val_batches} batches of {base.retrain.batch_size}; genotype "
        f"{genotype.genotype_id()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average at start {load_average()}",
        flush=True,
    )
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: Run(n, sp, genotype, faces, Path(tmp) / n, args.val_batches, options[n]) for n, sp in spaces.items()}
        order = list(runs)
        # untimed: a throw-away copy of each variant takes a few steps first, so the process's
        # one-time costs (reading the faces, kernel set-up for each layout) fall on neither timed run
        for n, sp in spaces.items():
            warm = Run(n, sp, genotype, faces, Path(tmp) / f"warm-{n}", 1, options[n])
            warm.train(args.warmup)
            warm.validate()
            del warm
        for n in order:
            runs[n].pretrain()
            runs[n].validate()
        done, k = 0, 0
        while done < steps:
            n_steps = min(chunk, steps - done)
            for n in order if k % 2 == 0 else order[::-1]:
                runs[n].train(n_steps)
                runs[n].validate()
            done += n_steps
            k += 1
            line = ", ".join(
                f"{n} {r.seconds:.0f} s ({r.cpu_seconds:.0f} CPU-s) {r.curve[-1][2]:.2f} dB" for n, r in runs.items()
            )
            print(f"step {done}: {line}; load {os.getloadavg()[0]:.2f}", flush=True)
    old, new = runs["old"], runs["new"]
    p = old.curve[-1][2] - TOLERANCE_DB
    t_old, t_new = old.time_to(p), new.time_to(p)
    print(
        f"final val PSNR: old {old.curve[-1][2]:.2f} dB, new {new.curve[-1][2]:.2f} dB "
        f"(difference {new.curve[-1][2] - old.curve[-1][2]:+.2f} dB); training time old {old.seconds:.0f} s "
        f"({old.cpu_seconds:.0f} CPU-s), new {new.seconds:.0f} s ({new.cpu_seconds:.0f} CPU-s); wall "
        f"{time.time() - t_start:.0f} s; load average at end {load_average()}"
    )
    cpu_ratio = old.cpu_seconds / new.cpu_seconds if new.cpu_seconds else float("nan")
    print(f"CPU time ratio (old / new, whole run): {cpu_ratio:.2f}x")
    if old.untrained_psnr() >= p:
        print(
            f"note: the network before retraining already validates at {old.untrained_psnr():.2f} dB >= {p:.2f} dB: "
            "retraining this long does not raise val PSNR, so the ratio below is that of the training "
            "time until the PSNR stays at or above the threshold (equal steps for both when their curves agree)"
        )
    if t_old is None or t_new is None:
        print(f"time to quality: not reached by {'new' if t_new is None else 'old'} (val PSNR {p:.2f} dB)")
    else:
        print(f"time to quality: {t_old / t_new:.2f}x ({t_old:.0f} s -> {t_new:.0f} s to reach val PSNR {p:.2f} dB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
