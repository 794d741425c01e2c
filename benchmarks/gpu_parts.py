"""The measurements of ``benchmarks/gpu_check.py``, one function per part; each returns table rows.

Every part drives the engine's public pieces (``SearchPhase``, ``RetrainPhase``, ``run_search``,
``DistContext``, ``create_model``, ``Degrader``, ``BatchMaker``), never Ray, W&B or Optuna. A part
gets a deadline and stops measuring when it passes (at least one timed step is always kept).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import socket
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from nasfe.data.batches import Batch
from nasfe.engine.retrain import RetrainPhase
from nasfe.engine.search import SearchPhase

GB = 1e9


@dataclass
class Row:
    """One line of the table: a measured configuration (or a target) and what came out."""

    part: str
    config: str
    status: str = "ok"
    alloc_gb: Optional[float] = None
    reserved_gb: Optional[float] = None
    step_s: Optional[float] = None
    images_s: Optional[float] = None
    note: str = ""


def log(msg: str) -> None:
    """Progress on stderr, so a device run's output tail shows how far it got."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True, file=__import__("sys").stderr)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Free what can be freed and start a new peak-memory window."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> tuple[Optional[float], Optional[float]]:
    """(peak allocated, peak reserved) in GB since the last ``reset_peak``; (None, None) on CPU."""
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / GB, torch.cuda.max_memory_reserved(device) / GB


def time_steps(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, deadline: float) -> list[float]:
    """Seconds of each of up to ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    for _ in range(repeats):
        if times and time.perf_counter() > deadline:
            break
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def attempt(row: Row, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; an out-of-memory error marks ``row`` "OOM", any other error "FAIL: ..."."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        row.status = "OOM"
    except Exception as exc:  # noqa: BLE001 - a failed configuration is a result, the next one still runs
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        row.status = f"FAIL: {type(exc).__name__}: {first[:160]}"
    return None


def fill(row: Row, times: list[float], batch: int, device: torch.device) -> Row:
    """Median step time, images/s and the memory peaks into ``row``."""
    row.step_s = statistics.median(times)
    row.images_s = batch / row.step_s
    row.alloc_gb, row.reserved_gb = peaks(device)
    return row


def random_batch(n: int, space, device: torch.device, seed: int = 0) -> Batch:
    """A training batch of uniform noise at the space's size (timing and memory do not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    h, w, k = space.data.height, space.data.width, space.identity.refs
    x = torch.rand(n, 3, h, w, generator=g)
    return Batch(
        y=torch.rand(n, 3, h, w, generator=g),
        x=x,
        c=(torch.rand(n, 3, generator=g) < 0.5).float(),
        refs=torch.rand(n, k, 3, h, w, generator=g) if k else None,
        identity=torch.zeros(n, dtype=torch.int64),
    ).to(device)


class TimedSearch(SearchPhase):
    """The search phase with the architecture step's batch either fixed (pure compute timing) or
    fetched by the engine as usual, timing how long that fetch waits (``arch_wait``)."""

    fixed_arch_batch: Optional[Batch] = None
    arch_wait = 0.0

    def _arch_batch(self):
        if self.fixed_arch_batch is not None:
            return self.fixed_arch_batch
        t = time.perf_counter()
        batch = super()._arch_batch()
        self.arch_wait += time.perf_counter() - t
        return batch


def search_step(phase: SearchPhase, batch: Batch, bilevel: bool = True):
    """One engine search step: architecture step + weight step (``bilevel``) or the warm-up's weight step."""
    phase.state.epoch = phase.space.search.warmup_epochs if bilevel else 0
    return phase.train_step(batch)


def build_search(space, run_dir: Path, device: torch.device, faces=None, dist=None) -> TimedSearch:
    torch.manual_seed(0)
    phase = TimedSearch(space, run_dir, device=device, resume=False, faces=faces, dist=dist)
    phase.build()
    return phase


def build_retrain(space, genotype, run_dir: Path, device: torch.device, faces=None) -> RetrainPhase:
    torch.manual_seed(0)
    phase = RetrainPhase(space, genotype, run_dir, device=device, resume=False, faces=faces)
    phase.build()
    return phase


def initial_genotype(space):
    """The genotype derived from the paper supernet's initial alpha/beta after ``torch.manual_seed(0)``:
    the one ``benchmarks/bench_model.py`` calls seed 0 (59ab26fb7b for paper.yaml)."""
    from bench_model import StandInIdentity

    from nasfe.genotype import derive_genotype
    from nasfe.model.registry import create_model

    torch.manual_seed(0)
    sup = create_model(space, identity=StandInIdentity())
    return derive_genotype(sup.alphas.detach(), sup.betas.detach(), space)


# ---- part a: the supernet search step -------------------------------------------------------------


def largest_batch(step: Callable[[int], list[float]], start: int, cap: int, deadline: float, device) -> tuple:
    """Doubling from ``start`` (known to fit), then bisection, until the first OOM is pinned to
    within 1/16 or ``deadline`` (one try at least): (largest fitting batch, its times, its peaks,
    first OOM or None)."""
    best, best_times, best_peaks, oom = start, None, (None, None), None
    b = min(2 * start, cap)
    tries = 0
    while b > best and (tries == 0 or time.perf_counter() < deadline):
        tries += 1
        try:
            reset_peak(device)
            times = step(b)
            best, best_times, best_peaks = b, times, peaks(device)
        except torch.cuda.OutOfMemoryError:
            oom = b
        reset_peak(device)
        if oom is not None and oom - best <= max(1, best // 16):
            break
        b = min(2 * best, cap) if oom is None else (best + oom) // 2
    return best, best_times, best_peaks, oom


def part_search(ctx, deadline: float) -> list[Row]:
    """a. Paper-space supernet search step (arch + weight step) at batch B, fp32 and bf16, the
    warm-up step (weights only), the largest batch that fits, and channels_last as an extra row."""
    rows: list[Row] = []
    space = ctx.space()
    B = ctx.batch
    phase = build_search(space, ctx.tmp / "a", ctx.device)
    t_part = time.perf_counter()
    span = deadline - t_part
    for i, amp in enumerate((False, True)):
        name = "bf16" if amp else "fp32"
        phase.cfg.amp = amp
        start = t_part + 0.45 * i * span  # fp32 and bf16 get 45% each, channels_last the rest

        def until(frac: float) -> float:
            return start + frac * 0.45 * span

        batch = random_batch(B, space, ctx.device)
        phase.fixed_arch_batch = batch
        row = Row("a", f"search step {name}, batch {B} (arch + weight step)")
        reset_peak(ctx.device)
        times = attempt(
            row, lambda: time_steps(lambda: search_step(phase, batch), ctx.device, ctx.warmup, ctx.repeats, until(0.35))
        )
        rows.append(fill(row, times, B, ctx.device) if times else row)
        if times:
            ctx.results[f"search_s_{name}"] = row.step_s
            ctx.results[f"search_reserved_{name}"] = row.reserved_gb
        warm = Row("a", f"warm-up step {name}, batch {B} (weights only)")
        times = attempt(
            warm,
            lambda: time_steps(
                lambda: search_step(phase, batch, bilevel=False), ctx.device, 0, ctx.repeats, until(0.45)
            ),
        )
        rows.append(fill(warm, times, B, ctx.device) if times else warm)
        if times:
            ctx.results[f"warmup_s_{name}"] = warm.step_s
        if row.status != "ok":
            continue
        del batch
        phase.fixed_arch_batch = None

        def step_at(b: int) -> list[float]:
            big = random_batch(b, space, ctx.device)
            phase.fixed_arch_batch = big
            try:  # one step: its peak is what the size needs; its time includes the allocator growing
                return time_steps(lambda: search_step(phase, big), ctx.device, 0, 1, 0)
            finally:
                phase.fixed_arch_batch = None
                phase.opt_w.zero_grad(set_to_none=True)
                phase.opt_a.zero_grad(set_to_none=True)

        best, times, pk, oom = largest_batch(step_at, B, ctx.max_batch, until(1.0), ctx.device)
        big = Row("a", f"search step {name}, largest batch that fits: {best}")
        if times:
            fill(big, times, best, ctx.device)
            big.alloc_gb, big.reserved_gb = pk
        big.note = (
            f"first OOM at {oom}"
            if oom
            else f"no OOM up to {best} (cap {ctx.max_batch})"
            if best >= ctx.max_batch
            else f"time box reached; >= {best}"
        )
        rows.append(big)
    phase.cfg.amp = False
    del phase
    reset_peak(ctx.device)
    if time.perf_counter() < deadline or ctx.smoke:  # --smoke runs every row once
        rows.append(_channels_last_search(ctx, deadline))
    return rows


def _channels_last_search(ctx, deadline: float) -> Row:
    """Extra row: the fp32 search step at batch B with ``model.channels_last``."""
    B = ctx.batch
    row = Row("a", f"search step fp32, batch {B}, model.channels_last")

    def run():
        space = ctx.space({"model.channels_last": True})
        phase = build_search(space, ctx.tmp / "a_cl", ctx.device)
        phase.fixed_arch_batch = batch = random_batch(B, space, ctx.device)
        reset_peak(ctx.device)
        return time_steps(lambda: search_step(phase, batch), ctx.device, ctx.warmup, ctx.repeats, deadline)

    times = attempt(row, run)
    if times:
        fill(row, times, B, ctx.device)
        base = ctx.results.get("search_s_fp32")
        row.note = f"{base / row.step_s:.2f}x the speed of the default layout" if base else ""
    reset_peak(ctx.device)
    return row


def part_attention(ctx, deadline: float) -> list[Row]:
    """a'. The self-attention operator alone at the width the paper supernet gives it (C/K) and
    level-0 size, batch B, forward + backward: the fused kernels PyTorch accepts for the tensors it
    is handed (``can_use_efficient_attention`` / ``can_use_flash_attention``) and the peak memory,
    beside what the math kernel's HW x HW/4 matrix alone would take."""
    import torch.nn.functional as F

    from nasfe.model.ops import OPS

    space = ctx.space()
    m = space.model
    c = m.channels // m.partial_channels
    mult = 2 * (1 << (m.levels - 1))
    h, w = -(-space.data.height // mult) * mult // 2, -(-space.data.width // mult) * mult // 2
    B = ctx.batch
    math_gb = B * (h * w) * ((h // 2) * (w // 2)) * 4 / GB
    rows = []
    for amp in (False, True):
        name = "bf16" if amp else "fp32"
        row = Row("a", f"self_attn alone, C/K = {c} channels, {name}, batch {B} at {h}x{w}")
        seen = []
        real = F.scaled_dot_product_attention

        def spy(q, k, v, *a, **kw):
            seen.append((q, k, v))
            return real(q, k, v, *a, **kw)

        def run():
            torch.manual_seed(0)
            op = OPS["self_attn"](c).to(ctx.device)
            torch.nn.init.constant_(op.gamma, 0.5)
            x = torch.randn(B, c, h, w, device=ctx.device, requires_grad=True)
            reset_peak(ctx.device)
            F.scaled_dot_product_attention = spy
            try:

                def once():
                    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
                        op(x).float().square().mean().backward()

                return time_steps(once, ctx.device, 1, ctx.repeats, deadline)
            finally:
                F.scaled_dot_product_attention = real

        times = attempt(row, run)
        if times:
            fill(row, times, B, ctx.device)
            q, k, v = seen[-1]
            row.note = (
                f"head {q.shape[-1]} {str(q.dtype).replace('torch.', '')}; {_kernels(q, k, v)}; "
                f"the math kernel's matrix alone: {math_gb:.2f} GB"
            )
        rows.append(row)
    reset_peak(ctx.device)
    return rows


def _kernels(q, k, v) -> str:
    """Which fused kernels PyTorch's own selection checks accept for (q, k, v)."""
    if q.device.type != "cuda":
        return "kernel checks need CUDA"
    from torch.backends.cuda import SDPAParams, can_use_efficient_attention, can_use_flash_attention

    try:
        params = SDPAParams(q, k, v, None, 0.0, False, False)
    except TypeError:  # torch < 2.5: no enable_gqa argument
        params = SDPAParams(q, k, v, None, 0.0, False)
    return f"efficient={can_use_efficient_attention(params, False)} flash={can_use_flash_attention(params, False)}"


# ---- part b: the derived network ------------------------------------------------------------------


def part_derived(ctx, deadline: float) -> list[Row]:
    """b. The derived paper network: retraining step at batch B (fp32, bf16, channels_last) and
    inference (refs = None, no_grad) at batch 1 and B."""
    rows: list[Row] = []
    space = ctx.space()
    B = ctx.batch
    genotype = ctx.genotype()
    phase = build_retrain(space, genotype, ctx.tmp / "b", ctx.device)
    batch = random_batch(B, space, ctx.device)
    t0 = time.perf_counter()
    for amp in (False, True):
        name = "bf16" if amp else "fp32"
        phase.cfg.amp = amp
        row = Row("b", f"retrain step {name}, batch {B} (genotype {genotype.genotype_id()})")
        reset_peak(ctx.device)
        times = attempt(
            row,
            lambda: time_steps(
                lambda: phase.train_step(batch),
                ctx.device,
                ctx.warmup,
                ctx.repeats,
                t0 + (deadline - t0) * (0.3 if not amp else 0.5),
            ),
        )
        rows.append(fill(row, times, B, ctx.device) if times else row)
        if times:
            ctx.results[f"retrain_s_{name}"] = row.step_s
    phase.cfg.amp = False
    model = phase.model.eval()
    for n in (1, B):
        row = Row("b", f"inference fp32, batch {n} (refs = None)")
        y = torch.rand(n, 3, space.data.height, space.data.width, device=ctx.device)

        def infer():
            with torch.no_grad():
                model(y)

        reset_peak(ctx.device)
        times = attempt(
            row,
            lambda: time_steps(
                infer, ctx.device, 1, max(3, ctx.repeats), t0 + (deadline - t0) * (0.6 if n == 1 else 0.7)
            ),
        )
        rows.append(fill(row, times, n, ctx.device) if times else row)
    del phase, model, batch
    reset_peak(ctx.device)
    row = Row("b", f"retrain step fp32, batch {B}, model.channels_last")

    def channels_last():
        sp = ctx.space({"model.channels_last": True})
        ph = build_retrain(sp, genotype, ctx.tmp / "b_cl", ctx.device)
        bt = random_batch(B, sp, ctx.device)
        reset_peak(ctx.device)
        return time_steps(lambda: ph.train_step(bt), ctx.device, ctx.warmup, ctx.repeats, deadline)

    times = attempt(row, channels_last) if time.perf_counter() < deadline or ctx.smoke else None
    if times:
        fill(row, times, B, ctx.device)
        base = ctx.results.get("retrain_s_fp32")
        row.note = f"{base / row.step_s:.2f}x the speed of the default layout" if base else ""
    elif row.status == "ok":
        row.status = "skipped: time box"
    rows.append(row)
    reset_peak(ctx.device)
    rows.append(_clean_cache_row(ctx, genotype, deadline))
    reset_peak(ctx.device)
    return rows


def _clean_cache_row(ctx, genotype, deadline: float) -> Row:
    """The retraining step with the clean-photo cache warm (``identity.cache_mb``) against none, both
    on new target and reference tensors every step (as a real loop brings them)."""
    B = ctx.batch
    row = Row("b", f"retrain step fp32, batch {B}, identity.cache_mb warm")
    steps = {}

    def run():
        for mb in (0, 4096):
            sp = ctx.space({"identity.cache_mb": mb})
            ph = build_retrain(sp, genotype, ctx.tmp / f"b_cache{mb}", ctx.device)
            bt = random_batch(B, sp, ctx.device)
            bt.keys = list(range(B))
            bt.ref_keys = [[B + i * sp.identity.refs + j for j in range(sp.identity.refs)] for i in range(B)]

            def step(ph=ph, bt=bt):
                fresh = dataclasses.replace(bt, x=bt.x.clone(), refs=bt.refs.clone() if bt.refs is not None else None)
                ph.train_step(fresh)

            reset_peak(ctx.device)
            steps[mb] = time_steps(step, ctx.device, ctx.warmup, ctx.repeats, deadline)
        return steps[4096]

    times = attempt(row, run) if time.perf_counter() < deadline or ctx.smoke else None
    if times and steps.get(0):
        fill(row, times, B, ctx.device)
        row.note = f"{statistics.median(steps[0]) / row.step_s:.2f}x the speed without the cache"
    elif row.status == "ok":
        row.status = "skipped: time box"
    return row


def part_compile(ctx, deadline: float) -> list[Row]:
    """b'. The retraining step with ``model.compile`` (run in a child process with a hard timeout by
    gpu_check.py: compiling has no deadline of its own). First step = compile time."""
    import nasfe.model.nasfe as nasfe_model

    if ctx.compile_backend:
        nasfe_model.COMPILE_KWARGS = {**nasfe_model.COMPILE_KWARGS, "backend": ctx.compile_backend}
    B = ctx.batch
    row = Row("b", f"retrain step fp32, batch {B}, model.compile ({ctx.compile_backend or 'inductor'})")

    def run():
        sp = ctx.space({"model.compile": True})
        ph = build_retrain(sp, ctx.genotype(), ctx.tmp / "b_compile", ctx.device)
        bt = random_batch(B, sp, ctx.device)
        t = time.perf_counter()
        ph.train_step(bt)
        sync(ctx.device)
        first = time.perf_counter() - t
        reset_peak(ctx.device)
        return first, time_steps(lambda: ph.train_step(bt), ctx.device, 1, ctx.repeats, deadline)

    got = attempt(row, run)
    if got:
        first, times = got
        fill(row, times, B, ctx.device)
        row.note = f"first step (compiling) {first:.1f} s"
    return [row]


# ---- part c: degradation and data waiting -----------------------------------------------------------


def part_data(ctx, deadline: float) -> list[Row]:
    """c. The degradation pipeline on the device at batch B against the steps it feeds, and the share
    of a real search loop (DataLoader workers, BatchMaker, degradation on the device) spent waiting."""
    from nasfe.degrade.pipeline import Degrader
    from nasfe.data.batches import cycle

    rows: list[Row] = []
    space = ctx.space()
    B = ctx.batch
    faces = ctx.train_faces(space)
    t0 = time.perf_counter()
    row = Row("c", f"degradation (blur + noise + low light draws of training), batch {B}, {ctx.device.type}")

    def degrade_only():
        deg = Degrader(space.degrade)
        deg.bank, deg.curves  # build (or load) the 25,000-kernel bank outside the timing
        x = torch.stack([_face(faces, i, space) for i in range(B)]).to(ctx.device)
        g = torch.Generator().manual_seed(0)
        reset_peak(ctx.device)
        return time_steps(lambda: deg(x, g), ctx.device, 2, max(5, ctx.repeats), t0 + (deadline - t0) * 0.3)

    times = attempt(row, degrade_only)
    if times:
        fill(row, times, B, ctx.device)
        t_deg = row.step_s
        ctx.results["degrade_s"] = t_deg
        notes = []
        if "search_s_fp32" in ctx.results:  # a bilevel step degrades two batches (weights + arch)
            s = ctx.results["search_s_fp32"]
            ctx.results["degrade_share_search"] = 2 * t_deg / (s + 2 * t_deg)
            notes.append(f"{100 * 2 * t_deg / (s + 2 * t_deg):.1f}% of an fp32 search step (2 batches)")
        if "retrain_s_fp32" in ctx.results:
            r = ctx.results["retrain_s_fp32"]
            ctx.results["degrade_share_retrain"] = t_deg / (r + t_deg)
            notes.append(f"{100 * t_deg / (r + t_deg):.1f}% of an fp32 retrain step")
        row.note = "; ".join(notes)
    rows.append(row)

    loop = Row(
        "c", f"search loop fp32 on {faces.name} ({len(faces.records)} faces), batch {B}, {space.data.workers} workers"
    )

    def real_loop():
        phase = build_search(space, ctx.tmp / "c", ctx.device, faces=faces)
        batches = cycle(phase.make_batches("train"))
        waits, totals = [], []
        while len(totals) < ctx.repeats + 1 and (len(totals) < 2 or time.perf_counter() < deadline):
            phase.arch_wait = 0.0
            t = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            search_step(phase, batch)
            sync(ctx.device)
            waits.append(t1 - t + phase.arch_wait)
            totals.append(time.perf_counter() - t)
        return waits[1:], totals[1:]  # the first pass starts the workers

    got = attempt(loop, real_loop)
    if got:
        waits, totals = got
        fill(loop, totals, B, ctx.device)
        share = sum(waits) / sum(totals)
        ctx.results["wait_share_search"] = share
        loop.note = f"waiting for data {100 * share:.1f}% of each step ({len(totals)} steps)"
    rows.append(loop)
    reset_peak(ctx.device)
    return rows


def _face(faces, i: int, space) -> torch.Tensor:
    from nasfe.data.faces import fit_to_size
    from nasfe.imageio import to_tensor

    rec = faces.records[i % len(faces.records)]
    return to_tensor(fit_to_size(faces.load(rec), space.data.height, space.data.width))


# ---- part d: a process group of one ----------------------------------------------------------------

_COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "barrier",
    "all_gather",
    "all_gather_into_tensor",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "scatter",
    "all_gather_object",
    "broadcast_object_list",
    "all_to_all",
)


class CollectiveCounter:
    """Counts calls of each ``torch.distributed`` collective and the devices of their tensors."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.calls: dict[str, int] = {}
        self.saved: dict[str, Any] = {}

    def __enter__(self):
        for name in _COLLECTIVES:
            fn = getattr(self.dist, name, None)
            if fn is None:
                continue
            self.saved[name] = fn

            def wrapped(*args, _fn=fn, _name=name, **kwargs):
                devs = sorted({a.device.type for a in args if isinstance(a, torch.Tensor)})
                key = f"{_name}({','.join(devs)})" if devs else _name
                self.calls[key] = self.calls.get(key, 0) + 1
                return _fn(*args, **kwargs)

            setattr(self.dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(self.dist, name, fn)

    def summary(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.calls.items())) or "none"


def always_collective(ctx_cls):
    """A DistContext subclass whose collectives run even in a world of one (the engine skips them
    there), so a group of one process exercises every collective the engine makes."""
    return type("CollectiveDistContext", (ctx_cls,), {"active": property(lambda self: True)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_dist(ctx, deadline: float) -> list[Row]:
    """d. A torch.distributed group of one process (NCCL on CUDA, gloo on CPU) running a few search
    steps, a validation, the genotype agreement checks and a checkpoint through ``run_search``."""
    import torch.distributed as dist

    from nasfe.engine.dist import DistContext
    from nasfe.engine.search import run_search

    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    bd = ctx.dist_batch
    row = Row("d", f"{backend} group of one: 2 search steps (batch {bd}) + validation + checkpoint")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    counter = CollectiveCounter()

    def run():
        kwargs: dict[str, Any] = {"backend": backend, "rank": 0, "world_size": 1}
        if ctx.device.type == "cuda":
            kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group(**kwargs)
        try:
            forced = copy.copy(DistContext.detect())  # whatever the context holds (rank, size, device ...)
            forced.__class__ = always_collective(type(forced))
            space = ctx.space(
                {
                    "search.epochs": 1,
                    "search.warmup_epochs": 0,
                    "search.steps_per_epoch": 2,
                    "search.batch_size": bd,
                    "search.val_batches": 1,
                    "search.checkpoint_every": 0,
                }
            )
            t = time.perf_counter()
            with counter:
                summary = run_search(
                    space,
                    ctx.tmp / "d",
                    device=str(ctx.device),
                    dist=forced,
                    resume=False,
                    faces=ctx.train_faces(space),
                )
            return time.perf_counter() - t, summary
        finally:
            dist.destroy_process_group()

    got = attempt(row, run)
    if got:
        seconds, summary = got
        row.step_s = seconds
        row.note = (
            f"whole run_search {seconds:.1f} s; genotype {summary.get('genotype_id')}; collectives: {counter.summary()}"
        )
    else:
        row.note = f"collectives before the failure: {counter.summary()}"
    reset_peak(ctx.device)
    return [row]


# ---- part e: a short real training and the test sets ----------------------------------------------


def part_train(ctx, deadline: float) -> list[Row]:
    """e. Retrain the derived network on the carried real faces until the time box, then PSNR/SSIM
    on Test-BN and Test-BNL built from the test identities, beside input, histeq and classical."""
    from nasfe.data.faces import FolderFaces
    from nasfe.data.batches import cycle

    if ctx.faces_root is None:
        return [Row("e", "retrain on real faces", status="skipped: no --faces folder (see --prepare)")]
    over = {
        "data.source": "folder",
        "data.root": str(ctx.faces_root / "train"),
        "data.val_fraction": 0.1,
        "data.test_fraction": 0.0,
        "data.max_images": None,
        "retrain.pretrain_steps": 0,
    }
    weights = ctx.faces_root / "mobilefacenet.pt"
    if weights.is_file():  # meaningful identity and perceptual losses (the paper's VGGFace weights are not public)
        over.update({"identity.backbone": "mobilefacenet", "identity.weights": str(weights), "identity.width": 1.0})
    space = ctx.space(over)
    B = ctx.batch
    faces = FolderFaces(ctx.faces_root / "train", height=space.data.height, width=space.data.width)
    genotype = ctx.genotype()
    train_until = deadline - ctx.eval_reserve
    row = Row(
        "e",
        f"retrain genotype {genotype.genotype_id()} on {len(faces.records)} real faces, batch {B}, "
        f"{space.identity.backbone}",
    )

    def train():
        phase = build_retrain(space, genotype, ctx.tmp / "e", ctx.device, faces=faces)
        batches = cycle(phase.make_batches("train"))
        waits, totals, losses = [], [], []
        t_start = time.perf_counter()
        while time.perf_counter() < train_until or len(totals) < 2:
            t = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            metrics = phase.train_step(batch)
            if len(totals) % ctx.log_every == 0 and isinstance(metrics, dict) and "loss" in metrics:
                losses.append(float(metrics["loss"]))  # one host read per logging interval
            sync(ctx.device)
            waits.append(t1 - t)
            totals.append(time.perf_counter() - t)
        return phase, waits, totals, losses, time.perf_counter() - t_start

    got = attempt(row, train)
    rows = [row]
    if not got:
        return rows
    phase, waits, totals, losses, seconds = got
    fill(row, totals[1:] or totals, B, ctx.device)
    share = sum(waits[1:]) / max(sum(totals[1:]), 1e-9)
    ctx.results["wait_share_retrain"] = share
    trend = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; " if losses else ""
    row.note = f"{len(totals)} steps in {seconds:.0f} s; {trend}waiting for data {100 * share:.1f}% of each step"
    rows += evaluate_testsets(ctx, phase.model.eval(), space, deadline)
    return rows


def evaluate_testsets(ctx, model, space, deadline: float) -> list[Row]:
    """PSNR/SSIM (RGB, no crop) of the model, input, histeq and classical on Test-BN and Test-BNL of
    ``ctx.test_faces`` clean test faces (``nasfe.data.testsets`` grids, seed 0, parametric curves)."""
    from gpu_faces import load_test_faces

    from nasfe.data.testsets import degrade_face, test_bank
    from nasfe.degrade.camera import ResponseCurves
    from nasfe.evaluate.baselines import BASELINES
    from nasfe.evaluate.metrics import psnr, ssim

    x, ids = load_test_faces(ctx.faces_root, space.data.height, space.data.width, ctx.test_faces)
    bank, curves = test_bank(0), ResponseCurves.parametric()
    rows = []
    for set_name in ("Test-BN", "Test-BNL"):
        sums: dict[str, list[float]] = {}
        classical_until = time.perf_counter() + ctx.classical_seconds

        def add(key, out, clean):
            s = sums.setdefault(key, [0.0, 0.0, 0])
            s[0] += float(psnr(out, clean).clamp(max=100).sum())
            s[1] += float(ssim(out, clean).sum())
            s[2] += out.shape[0]

        for i in range(x.shape[0]):
            y, _, _ = degrade_face(x[i], set_name, i, 0, bank, curves, only=ctx.variants)
            clean = x[i].expand_as(y).to(ctx.device)
            yd = y.to(ctx.device)
            with torch.no_grad():
                out = torch.cat([model(yd[j : j + ctx.batch]).restored.float() for j in range(0, len(yd), ctx.batch)])
            add("NASFE (retrained above)", out.clamp(0, 1), clean)
            add("input", yd, clean)
            add("histeq", BASELINES["histeq"](y).to(ctx.device), clean)
            if time.perf_counter() < classical_until:
                add("classical", BASELINES["classical"](y).to(ctx.device), clean)
                add("input, classical's subset", yd, clean)
        for key, (p, s, n) in sums.items():
            rows.append(
                Row(
                    "e",
                    f"{set_name}: {key}",
                    note=f"PSNR {p / n:.2f} dB, SSIM {s / n:.4f} ({n} images of "
                    f"{len(set(ids[: x.shape[0]]))} test identities)",
                )
            )
    return rows
