"""Where a search step and a retraining step spend their time, and how far they are from the machine.

    nice -n 10 .venv/bin/python benchmarks/profile_step.py --space cpu --steps 8
    nice -n 10 .venv/bin/python benchmarks/profile_step.py --space rehearsal --steps 8

For the space's search phase (supernet, bilevel step: architecture step, then weight step) and its
retraining phase (the network derived from the supernet's initial alpha/beta after
``torch.manual_seed(0)``), the engine's own ``train_step`` runs on real batches (the space's faces,
``BatchMaker``, ``Degrader``) with manual timers (a device sync at every boundary):

* data: reading and resizing faces (``next`` of the batch maker's loader, degradation excluded)
* degradation: ``Degrader`` on the batch (the maker's, wrapped)
* forward: ``Phase.network_loss`` (network, identity features, L_final and CN's BCE)
* backward: the rest of ``train_step`` (``loss.backward`` and the zeroing of gradients)
* optimiser: gradient clipping, the divergence watch and ``Adam.step``
* logging: ``StepMeter.add`` and the callbacks' ``on_step``
* host reads: ``Phase.check_finite`` (the one read per ``log_every`` steps), amortised per step

Achieved FLOP/s: ``torch.utils.flop_counter.FlopCounterMode`` counts the convolutions and matmuls
of one ``train_step`` (forward and backward, 2 per multiply-add; elementwise ops and FFTs are not
counted) over forward + backward time. The machine's peak for the same kind of work is measured on
the same threads: a large 3x3 conv2d (forward + backward), a 3x3 conv2d at the network's own width
and size, and a large fp32 matmul; when a variant trains in bf16 (``amp``), the same convolutions
in bf16 too, and that variant's share of peak is taken against them. ``--set KEY=VALUE`` overrides the space (e.g.
``model.channels_last=true``); ``--variants`` profiles several settings interleaved. Keys under
``bench.`` are not the space's but how the benchmark runs the built network: ``bench.fold_bn=false``
runs the frozen MobileFaceNet with its batch norms (unfolded), as before they were folded;
``bench.warm_cache`` (on by default) fills the clean-photo cache (``identity.cache_mb``) with each
timed batch's targets and references before its step, untimed, so the profile shows the steady
state of a run past its first pass over the training photos (a variant with ``identity.cache_mb=0``
has no cache to fill).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from nasfe.data.batches import cycle  # noqa: E402

#: benchmark-only variant keys (``bench.<key>``) and their defaults
BENCH_OPTIONS = {"fold_bn": True, "warm_cache": True}


def split_bench_options(overrides: dict) -> tuple[dict, dict]:
    """(space overrides, benchmark options) of one variant's ``KEY=VALUE`` pairs."""
    bench = {k[len("bench.") :]: v for k, v in overrides.items() if k.startswith("bench.")}
    unknown = sorted(set(bench) - set(BENCH_OPTIONS))
    if unknown:
        raise SystemExit(f"unknown benchmark option(s) {unknown}; known: {sorted(BENCH_OPTIONS)}")
    return {k: v for k, v in overrides.items() if not k.startswith("bench.")}, {**BENCH_OPTIONS, **bench}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as every benchmark prints them beside its numbers."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def variant_spaces(space: str, base: dict, variants: dict[str, dict]):
    """``space`` loaded with ``base`` and each variant's overrides: ({name: space}, {name: bench
    options}); ``bench.`` keys are options of the run (:func:`split_bench_options`), not of the space."""
    from nasfe.config import load_space

    split = {n: split_bench_options(o) for n, o in variants.items()}
    spaces = {n: load_space(space, {**base, **o}) for n, (o, _) in split.items()}
    return spaces, {n: b for n, (_, b) in split.items()}


def apply_bench_options(phase, options: dict) -> None:
    """Apply benchmark options to a built phase: ``fold_bn`` on every MobileFaceNet it runs."""
    from nasfe.identity.backbones import MobileFaceNet

    for m in [*phase.model.modules(), *phase.loss_fn.modules()]:
        if isinstance(m, MobileFaceNet):
            m.fold_bn = bool(options["fold_bn"])


def warm_clean_cache(phase, batch) -> None:
    """Put the batch's clean targets' and references' backbone outputs into the phase's clean-photo
    cache, as computed in its step (same autocast), so the step finds them there."""
    backbone = getattr(phase.loss_fn, "backbone", None)
    if backbone is None or backbone.clean_cache is None or batch.keys is None:
        return
    # a copy of the references: the step's own pass must read the cache, not this pass's per-batch memo
    refs = batch.refs.clone() if batch.refs is not None else None
    with phase.autocast(), backbone.image_keys((batch.x, batch.keys), (refs, batch.ref_keys)):
        backbone.target_features(batch.x)
        if refs is not None:
            backbone.reference_features(refs)
            n = phase.loss_fn.iden_samples or len(batch.x)
            backbone.reference_embeddings(refs, tuple(batch.x.shape[-2:]), samples=n)


PARTS = ("data", "degradation", "forward", "backward", "optimiser", "logging", "host reads")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timers:
    """Seconds per part, summed over the timed steps."""

    def __init__(self, device: torch.device):
        self.device = device
        self.total: dict[str, float] = defaultdict(float)
        self.on = True

    def wrap(self, part: str, fn: Callable) -> Callable:
        def timed(*a, **k):
            if not self.on:
                return fn(*a, **k)
            _sync(self.device)
            t = time.perf_counter()
            out = fn(*a, **k)
            _sync(self.device)
            self.total[part] += time.perf_counter() - t
            return out

        return timed


def _timed_maker(maker, timers: Timers):
    """Time the maker's degradation separately from its loader (the degrader call is wrapped)."""
    maker._degrader = timers.wrap("degradation", maker.degrader)
    return maker


def _instrument(phase, timers: Timers) -> None:
    """Wrap the phase's forward, clipping and optimiser steps; everything else in ``train_step``
    is backward (and gradient zeroing)."""
    phase.network_loss = timers.wrap("forward", phase.network_loss)
    phase.clip = timers.wrap("optimiser", phase.clip)
    arch_update = hasattr(phase, "_arch_update")
    for name, opt in phase.optimizers().items():
        if not (arch_update and name == "arch"):
            opt.step = timers.wrap("optimiser", opt.step)
    if arch_update:  # the architecture step's watch, gradient norm and Adam step
        phase._arch_update = timers.wrap("optimiser", phase._arch_update)
    if hasattr(phase, "_arch_batch"):  # the search's architecture batch: data (+ degradation inside)
        phase._arch_batch = timers.wrap("data", phase._arch_batch)


def _phase(kind: str, space, run_dir: Path, faces, genotype):
    from nasfe.engine.retrain import RetrainPhase
    from nasfe.engine.search import SearchPhase

    torch.manual_seed(space.search.seed if kind == "search" else space.retrain.seed)
    if kind == "search":
        phase = SearchPhase(space, run_dir, resume=False, faces=faces)
    else:
        phase = RetrainPhase(space, genotype, run_dir, resume=False, faces=faces)
    phase.build()
    phase.state.steps_per_epoch = 10_000
    if kind == "search":
        phase.state.epoch = space.search.warmup_epochs  # the bilevel step (architecture + weights)
    return phase


class StepProfile:
    """One phase (search or retrain) of one variant, stepped by :meth:`step` with every part timed."""

    def __init__(self, kind: str, space, genotype, faces, tmp: Path, warmup: int, options: dict):
        self.device = torch.device("cpu")
        self.warmup = warmup
        self.warm_cache = bool(options["warm_cache"])
        self.phase = phase = _phase(kind, space, tmp, faces, genotype)
        apply_bench_options(phase, options)
        self.timers = Timers(self.device)
        maker = _timed_maker(phase.weight_batches(), self.timers)
        if kind == "search":
            phase._arch_batch()  # builds the architecture batch maker, then time its degradation
            _timed_maker(phase._arch_batches.maker, self.timers)
        _instrument(phase, self.timers)
        self.log_every = max(1, phase.cfg.log_every)
        self.batches = cycle(maker)  # a small space's split may hold fewer batches than the steps
        self.step_times: list[float] = []
        self.step_cpu: list[float] = []  # CPU seconds of the process (all threads) per step
        self.batch = None

    def step(self, i: int, last: bool) -> None:
        """Step ``i`` (timed from ``warmup`` on); ``last`` forces the host read of the final step."""
        phase, timers, device = self.phase, self.timers, self.device
        timers.on = i >= self.warmup
        if i == self.warmup:
            timers.total.clear()
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.batch = batch = next(self.batches)
        if timers.on:
            timers.total["data"] += time.perf_counter() - t0  # degradation inside: subtracted in result()
        if self.warm_cache:  # untimed: shifted out of the step's wall and CPU time
            tw, cw = time.perf_counter(), time.process_time()
            warm_clean_cache(phase, batch)
            t0 += time.perf_counter() - tw
            c0 += time.process_time() - cw
        phase.apply_lr()
        before = dict(timers.total)
        t = time.perf_counter()
        metrics = phase.train_step(batch)
        _sync(device)
        inside = time.perf_counter() - t
        if timers.on:
            # the architecture fetch (data) holds its own degradation: not subtracted twice
            wrapped = sum(timers.total[k] - before.get(k, 0.0) for k in ("forward", "optimiser", "data"))
            timers.total["backward"] += inside - wrapped
        t = time.perf_counter()
        phase.meter.add(metrics)
        phase.state.step += 1
        phase.callbacks.on_step(phase.state, {})
        if timers.on:
            timers.total["logging"] += time.perf_counter() - t
        t = time.perf_counter()
        if phase.state.step % self.log_every == 0 or last:
            phase.check_finite()
            phase.meter.interval_means()
        if timers.on:
            timers.total["host reads"] += time.perf_counter() - t
            self.step_times.append(time.perf_counter() - t0)
            self.step_cpu.append(time.process_time() - c0)

    def result(self, steps: int) -> dict[str, Any]:
        """Per-step seconds of each part, FLOPs of one step (counted on the last batch, untimed)."""
        total = dict(self.timers.total)
        # degradation ran inside the loader's next() and inside the architecture fetch: not data
        total["data"] = total.get("data", 0.0) - total.get("degradation", 0.0)
        self.timers.on = False
        with FlopCounterMode(display=False) as counter:
            self.phase.train_step(self.batch)
        return {
            "per_step": {p: total.get(p, 0.0) / steps for p in PARTS},
            "step": statistics.median(self.step_times),
            "cpu": statistics.median(self.step_cpu),
            "flops": counter.get_total_flops(),
        }


def profile(
    kind: str, spaces: dict, genotype, faces, steps: int, warmup: int, options: dict | None = None
) -> dict[str, dict]:
    """Profile ``kind`` for every variant in ``spaces``, interleaved step by step (the order
    alternating), so a shared machine's changing load hits the variants alike."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = options or {}
        profs = {
            n: StepProfile(kind, sp, genotype, faces, Path(tmp) / n, warmup, opts.get(n, BENCH_OPTIONS))
            for n, sp in spaces.items()
        }
        names = list(profs)
        for i in range(warmup + steps):
            for n in names if i % 2 == 0 else names[::-1]:
                profs[n].step(i, last=i == warmup + steps - 1)
        return {n: p.result(steps) for n, p in profs.items()}


def _bench(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def conv_rate(
    n: int, c: int, h: int, w: int, channels_last: bool, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """FLOP/s of a 3x3 conv2d c->c (padding 1, ``dtype``) forward + backward (input and weight grads)."""
    conv = torch.nn.Conv2d(c, c, 3, padding=1).to(dtype)
    x = torch.randn(n, c, h, w, dtype=dtype, requires_grad=True)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def step():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).sum().backward()

    flops = 3 * 2 * n * c * c * 9 * h * w  # forward, grad input, grad weight
    return flops / _bench(step, repeats)


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size x size fp32 matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / _bench(lambda: a @ b, repeats)


def _fmt_ms(s: float) -> str:
    return f"{1000 * s:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="cpu", help="a built-in space or a YAML file (cpu, rehearsal ...)")
    ap.add_argument("--phases", default="search,retrain")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per phase (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="space override")
    ap.add_argument(
        "--variants",
        default="",
        help="named override sets profiled interleaved, e.g. 'today:model.channels_last=false;"
        "channels_last:model.channels_last=true' (';' between variants, ',' between keys)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nasfe.config import parse_override
    from nasfe.data.faces import open_faces

    base = dict(parse_override(s) for s in args.set)
    variants: dict[str, dict] = {"as given": {}}
    if args.variants:
        variants = {}
        for spec in args.variants.split(";"):
            name, _, keys = spec.partition(":")
            variants[name.strip()] = dict(parse_override(k) for k in keys.split(",") if k.strip())
    spaces, options = variant_spaces(args.space, base, variants)
    first = next(iter(spaces.values()))
    faces = open_faces(first.data)
    from gpu_parts import initial_genotype

    genotype = initial_genotype(first)
    print(
        f"space {args.space} ({first.space_hash()}), {first.data.height}x{first.data.width}, "
        f"search batch {first.search.batch_size}, retrain batch {first.retrain.batch_size}, genotype "
        f"{genotype.genotype_id()} (initial alpha/beta, seed 0); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()} {os.cpu_count()} cores; "
        f"{args.steps} timed steps after {args.warmup}; load average {load_average()}"
    )
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    results: dict[tuple[str, str], dict] = {}
    for kind in phases:
        for name, r in profile(kind, spaces, genotype, faces, args.steps, args.warmup, options).items():
            results[(kind, name)] = r
    h, w = first.data.height, first.data.width
    n, c = first.retrain.batch_size, first.model.channels
    rates = {
        "conv 3x3 64->64 ch, 4x64x176x144, NCHW": conv_rate(4, 64, 176, 144, False),
        "conv 3x3 64->64 ch, 4x64x176x144, NHWC": conv_rate(4, 64, 176, 144, True),
        f"conv 3x3 {c}->{c} ch, {n}x{c}x{h}x{w}, NCHW": conv_rate(n, c, h, w, False),
        f"conv 3x3 {c}->{c} ch, {n}x{c}x{h}x{w}, NHWC": conv_rate(n, c, h, w, True),
        "matmul 2048x2048 fp32": matmul_rate(),
    }
    peak = max(rates.values())
    from nasfe.engine.loop import resolve_amp

    amp = {v: {k: resolve_amp(sp.phase(k).amp, torch.device("cpu")) for k in phases} for v, sp in spaces.items()}
    if any(a for per in amp.values() for a in per.values()):  # bf16 steps are measured against bf16 convolutions
        bf16_rates = {
            "conv 3x3 64->64 ch, 4x64x176x144, NHWC, bf16": conv_rate(4, 64, 176, 144, True, dtype=torch.bfloat16),
            f"conv 3x3 {c}->{c} ch, {n}x{c}x{h}x{w}, NHWC, bf16": conv_rate(n, c, h, w, True, dtype=torch.bfloat16),
        }
        rates.update(bf16_rates)
    peak_of = {False: peak, True: max(rates.values())}
    print()
    print(
        "| phase | variant | step s (median) | CPU s (median) | "
        + " | ".join(PARTS)
        + " | GFLOP / step | achieved GFLOP/s (fwd+bwd) | of peak |"
    )
    print("|---|---|---|---|" + "---|" * len(PARTS) + "---|---|---|")
    for (kind, name), r in results.items():
        total = sum(r["per_step"].values())
        shares = " | ".join(f"{_fmt_ms(r['per_step'][p])} ms ({100 * r['per_step'][p] / total:.0f} %)" for p in PARTS)
        compute = r["per_step"]["forward"] + r["per_step"]["backward"]
        achieved = r["flops"] / compute if compute else 0.0
        bf16 = amp[name][kind]
        print(
            f"| {kind} | {name}{' (bf16)' if bf16 else ''} | {r['step']:.3f} | {r['cpu']:.3f} | {shares} | "
            f"{r['flops'] / 1e9:.2f} | {achieved / 1e9:.1f} | {100 * achieved / peak_of[bf16]:.0f} % |"
        )
    print()
    print("| microbenchmark (same threads, fwd+bwd for convs) | GFLOP/s |")
    print("|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {v / 1e9:.1f} |")
    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
