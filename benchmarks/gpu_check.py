"""GPU check: the paper space on one GPU in one command (at most 8 minutes), printed as one table.

On the device (faces prepared here first, carried with the command; see docs/BENCHMARKS.md):

    python benchmarks/gpu_check.py --faces data/gpu_faces --out "$OUT/gpu_check"

Here (no GPU): ``--smoke`` runs every part at tiny size on the CPU in under a minute;
``--prepare data/gpu_faces`` copies a carry-sized set of real faces from ../shared.

Parts (``benchmarks/gpu_parts.py``), each with its own time box; an out-of-memory configuration
is a row marked OOM, a failing one a row marked FAIL, and the next one runs:

a. paper-space supernet search step (B = 12, all operators, 176x144, K = 4, cell checkpointing)
   at batch 40, fp32 and bf16: peak allocated/reserved memory, median step time, images/s; the
   warm-up step; the largest batch that fits (doubling, then bisection); the self-attention
   operator alone with PyTorch's fused-kernel checks; channels_last as an extra row.
b. the derived network (genotype from the supernet's initial alpha/beta, seed 0): retraining step
   at batch 40 (fp32, bf16, channels_last, torch.compile in a child process with a hard timeout)
   and inference at batch 1 and 40.
c. the degradation pipeline on the device at batch 40 against the steps it feeds, and the share
   of a real search loop (DataLoader workers, BatchMaker) spent waiting for data.
d. a torch.distributed group of one process (NCCL; gloo in --smoke) running search steps, a
   validation and a checkpoint through ``run_search``, with every collective of the engine.
e. the derived network retrained on the carried real faces for what is left of the time box
   (about 4 minutes), then PSNR/SSIM on Test-BN and Test-BNL built from the test identities,
   beside input, histeq and the classical baseline.

Targets are rows of the same table. ``--out DIR`` also writes gpu_check.md and gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import gpu_parts as parts  # noqa: E402
from gpu_parts import Row, log  # noqa: E402

#: Share of the time box each part may use (e takes what is left); compile runs in a child process.
SHARES = {"a": 0.19, "b": 0.07, "c": 0.05, "d": 0.05, "compile": 0.08}
PARTS = ("a", "b", "c", "d", "compile", "e")
SEARCH_EPOCHS, SEARCH_FACES = 40, 30_000  # the projection of the target

#: --smoke: the paper space's structure (all operators, partial channels, checkpointed cells) at toy size
SMOKE_MODEL = {
    "model.channels": 8,
    "model.encoder_channels": 8,
    "model.encoder_blocks": 1,
    "model.decoder_blocks": 1,
    "model.blocks": 1,
    "model.cells": 2,
    "model.levels": 2,
    "model.partial_channels": 2,
    "model.identity_channels": 8,
    "identity.width": 0.25,
    "identity.weights": None,  # a quarter-width backbone: the packaged weights are full width
    "identity.refs": 1,
    "degrade.motion_kernels": 64,
    "degrade.gaussian_kernels": 4,
    "data.height": 24,
    "data.width": 16,
}


class Context:
    """What the parts share: device, sizes, time box settings, faces, and results between parts."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.smoke = args.smoke
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.tmp = tmp
        self.batch = 2 if args.smoke else 40
        self.dist_batch = 2 if args.smoke else 8
        self.max_batch = 4 if args.smoke else 1024
        self.warmup = 0 if args.smoke else 1
        self.repeats = 1 if args.smoke else 3
        self.test_faces = args.test_faces
        self.variants = list(range(0, 104, 52)) if args.smoke else None  # None: the whole grid
        self.classical_seconds = 3.0 if args.smoke else 12.0  # per test set
        self.eval_reserve = 8.0 if args.smoke else 60.0
        self.log_every = 2 if args.smoke else 25
        self.compile_backend = args.compile_backend or ("eager" if args.smoke else None)
        self.faces_root: Optional[Path] = Path(args.faces) if args.faces else None
        self.workers = args.workers
        self.results: dict[str, Any] = {}
        self._genotype = None
        self._faces = None

    def space(self, extra: Optional[dict] = None):
        """A fresh paper space (tiny in --smoke) with this run's settings and ``extra`` overrides."""
        from nasfe.config import load_space

        over: dict[str, Any] = dict(SMOKE_MODEL) if self.smoke else {}
        over.update(
            {
                "degrade.cache_dir": str(self.tmp / "kernels"),
                "data.workers": self.workers,
                "search.warmup_epochs": 10,
                "search.checkpoint_every": 0,
                "retrain.checkpoint_every": 0,
                "search.batch_size": self.batch,
                "retrain.batch_size": self.batch,
                # no encoder pre-training before d's run_search and e's retraining: not what is timed
                "search.pretrain_steps": 0,
                "retrain.pretrain_steps": 0,
            }
        )
        over.update(extra or {})
        return load_space("paper", over)

    def genotype(self):
        if self._genotype is None:
            self._genotype = parts.initial_genotype(self.space())
        return self._genotype

    def train_faces(self, space):
        """The carried training faces (FolderFaces), else synthetic faces at the space's size."""
        if self._faces is None:
            from nasfe.data.faces import FolderFaces, SyntheticFaces

            if self.faces_root is not None:
                self._faces = FolderFaces(self.faces_root / "train", height=space.data.height, width=space.data.width)
            else:
                self._faces = SyntheticFaces(24, 6, space.data.height, space.data.width, 0)
        return self._faces


RUNNERS = {
    "a": lambda c, d: parts.part_search(c, d) + parts.part_attention(c, d),
    "b": parts.part_derived,
    "c": parts.part_data,
    "d": parts.part_dist,
    "compile": parts.part_compile,
    "e": parts.part_train,
}


def run_part(name: str, ctx: Context, deadline: float) -> list[Row]:
    log(f"part {name}: {max(0.0, deadline - time.perf_counter()):.0f} s")
    try:
        return RUNNERS[name](ctx, deadline)
    except Exception as exc:  # noqa: BLE001 - a failed part is a row; the others still run
        import traceback

        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        return [
            Row(name if len(name) == 1 else "b", f"part {name}", status=f"FAIL: {type(exc).__name__}: {first[:160]}")
        ]


def run_compile_child(args: argparse.Namespace, ctx: Context, seconds: float) -> list[Row]:
    """The torch.compile row in a child process killed after ``seconds`` (compiling cannot be
    interrupted from inside)."""
    out = ctx.tmp / "compile"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        "compile",
        "--budget",
        f"{seconds:.0f}",
        "--out",
        str(out),
        "--test-faces",
        str(args.test_faces),
        "--workers",
        str(args.workers),
    ]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--compile-backend", ctx.compile_backend] if ctx.compile_backend else []
    cmd += ["--faces", args.faces] if args.faces else []
    label = f"retrain step fp32, batch {ctx.batch}, model.compile ({ctx.compile_backend or 'inductor'})"
    try:
        subprocess.run(cmd, timeout=seconds + 20, check=False, stdout=subprocess.DEVNULL)
        rows = [Row(**r) for r in json.loads((out / "gpu_check.json").read_text())["rows"]]
    except subprocess.TimeoutExpired:
        return [Row("b", label, status=f"TIMEOUT: not done in {seconds:.0f} s (compiling included)")]
    except (OSError, ValueError, KeyError) as exc:
        return [Row("b", label, status=f"FAIL: child gave no result ({exc})")]
    base = ctx.results.get("retrain_s_fp32")
    for r in rows:
        if r.step_s and base:
            r.note += f"; {base / r.step_s:.2f}x the speed of the uncompiled step"
    return rows


def target_rows(ctx: Context) -> list[Row]:
    """The issue's targets, judged from the measured rows (benchmarks, not timed tests)."""
    res, rows = ctx.results, []
    tag = " (smoke: tiny sizes, not a measurement)" if ctx.smoke else ""

    def judged(ok: Optional[bool]) -> str:
        return "not measured" if ok is None else ("met" if ok else "NOT met")

    for name in ("fp32", "bf16"):
        got = res.get(f"search_reserved_{name}")
        rows.append(
            Row(
                "target",
                f"batch-{ctx.batch} search step {name}: peak reserved < 70 GB",
                judged(None if got is None else got < 70),
                reserved_gb=got,
                note=tag,
            )
        )
    share = res.get("degrade_share_search")
    rows.append(
        Row(
            "target",
            "degradation <= 20% of a search step",
            judged(None if share is None else share <= 0.2),
            note=(f"{100 * share:.1f}%" if share is not None else "") + tag,
        )
    )
    for key, what in (("wait_share_search", "search loop"), ("wait_share_retrain", "retraining loop")):
        w = res.get(key)
        rows.append(
            Row(
                "target",
                f"data waiting < 5% of a step ({what})",
                judged(None if w is None else w < 0.05),
                note=(f"{100 * w:.1f}%" if w is not None else "") + tag,
            )
        )
    steps = -(-SEARCH_FACES // ctx.batch)
    for name in ("fp32", "bf16"):
        full, warm = res.get(f"search_s_{name}"), res.get(f"warmup_s_{name}")
        hours = None
        if full is not None:
            w_ep = 10 if warm is not None else 0  # paper.yaml: 10 warm-up (weights-only) epochs
            hours = steps * (w_ep * (warm or 0) + (SEARCH_EPOCHS - w_ep) * full) / 3600
        rows.append(
            Row(
                "target",
                f"full search {name} ({SEARCH_EPOCHS} epochs x {SEARCH_FACES} faces) <= 8 GPU-hours",
                judged(None if hours is None else hours <= 8),
                note=(
                    f"{hours:.1f} h projected from the step times (validation not counted)" if hours is not None else ""
                )
                + tag,
            )
        )
    r = res.get("retrain_s_fp32")
    rows.append(
        Row(
            "target",
            "retraining throughput (stated)",
            "measured" if r else "not measured",
            step_s=r,
            images_s=ctx.batch / r if r else None,
            note=tag.strip(),
        )
    )
    return rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows: list[Row]) -> str:
    head = "| part | configuration | status | peak alloc GB | peak reserved GB | median step s | images/s | notes |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.part} | {r.config} | {r.status} | {_fmt(r.alloc_gb)} | {_fmt(r.reserved_gb)} | "
            f"{_fmt(r.step_s)} | {_fmt(r.images_s)} | {r.note} |"
        )
    return "\n".join(lines)


def header(args: argparse.Namespace, seconds: float) -> str:
    dev = (
        f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 1e9:.0f} GB)"
        if torch.cuda.is_available() and not args.smoke
        else f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    return (
        f"gpu_check on {dev}; torch {torch.__version__}, CUDA {torch.version.cuda}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {seconds:.0f} s; "
        f"command: python benchmarks/gpu_check.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}"
    )


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="every part at tiny size on the CPU (under a minute)")
    ap.add_argument("--out", help="folder for gpu_check.md and gpu_check.json")
    ap.add_argument("--faces", help="folder made by --prepare (train/, test/); default data/gpu_faces if present")
    ap.add_argument("--budget", type=float, help="seconds for the whole run (default 450; --smoke 45)")
    ap.add_argument("--only", help=f"comma-separated parts to run, of {','.join(PARTS)}")
    ap.add_argument("--test-faces", type=int, default=None, help="clean test faces for Test-BN/BNL (24; smoke 2)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 6; smoke 1)")
    ap.add_argument("--compile-backend", help="torch.compile backend (default inductor; smoke eager)")
    ap.add_argument("--prepare", metavar="DEST", help="copy faces from --source into DEST and exit")
    ap.add_argument("--source", help="face folder for --prepare (default ../shared/data/celeba-id)")
    ap.add_argument("--train-images", type=int, default=3000)
    ap.add_argument("--test-images", type=int, default=100)
    ap.add_argument("--max-mib", type=float, default=48.0, help="size cap of the prepared folder")
    ap.add_argument("--no-weights", action="store_true", help="--prepare: do not copy MobileFaceNet weights")
    args = ap.parse_args(argv)
    args.budget = args.budget or (45.0 if args.smoke else 450.0)
    args.test_faces = args.test_faces or (2 if args.smoke else 24)
    args.workers = args.workers if args.workers is not None else (1 if args.smoke else 6)
    if args.faces is None and (ROOT / "data" / "gpu_faces" / "train").is_dir():
        args.faces = str(ROOT / "data" / "gpu_faces")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare:
        from gpu_faces import DEFAULT_SOURCE, prepare_faces

        info = prepare_faces(
            args.prepare,
            args.source or DEFAULT_SOURCE,
            args.train_images,
            args.test_images,
            args.max_mib,
            weights=None if args.no_weights else parts_weights(),
        )
        print(json.dumps(info, indent=1))
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU, or --smoke on the CPU", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    todo = args.only.split(",") if args.only else list(PARTS)
    with tempfile.TemporaryDirectory(prefix="nasfe-gpu-check-") as tmp:
        ctx = Context(args, Path(tmp))
        if args.smoke:  # one thread: spinning OpenMP threads on a shared 2-core machine stall for minutes
            torch.set_num_threads(1)
        rows: list[Row] = []
        for name in todo:
            now = time.perf_counter()
            if name == "e" or len(todo) == 1:
                part_deadline = deadline
            else:  # this part's share, leaving the later parts theirs
                later = sum(SHARES.get(n, 0.0) for n in todo[todo.index(name) + 1 :]) * args.budget
                part_deadline = min(now + SHARES[name] * args.budget, deadline - later)
            if name == "compile" and len(todo) > 1:  # --smoke: time to start a second interpreter
                rows += run_compile_child(args, ctx, max(25.0 if args.smoke else 5.0, part_deadline - now))
            else:
                rows += run_part(name, ctx, part_deadline)
        if len(todo) > 1:
            rows += target_rows(ctx)
        seconds = time.perf_counter() - t0
    text = header(args, seconds) + "\n\n" + table(rows)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text(text + "\n")
        (out / "gpu_check.json").write_text(
            json.dumps(
                {
                    "header": header(args, seconds),
                    "seconds": seconds,
                    "smoke": args.smoke,
                    "results": ctx.results,
                    "rows": [asdict(r) for r in rows],
                },
                indent=1,
                default=str,
            )
        )
    return 0


def parts_weights():
    from gpu_faces import DEFAULT_WEIGHTS

    return DEFAULT_WEIGHTS


if __name__ == "__main__":
    sys.exit(main())
