"""Benchmark the NASFE network: supernet training memory per image and the derived network at inference.

Supernet (search step = forward + backward of the weights): activation memory per image for each
partial-channel K (PC-DARTS), with and without ``model.checkpoint_cells``, and the batch that fits
in 24 GB and 80 GB, extrapolated linearly from the per-image memory. Memory per image is
(batch 2) - (batch 1), so weights and batch-independent parts cancel.

On CPU it is counted, not sampled (exact, independent of machine load; tracemalloc does not see
torch's allocator and RSS cannot isolate it):

* checkpointing off: bytes of the distinct storages autograd saves for backward during the forward
  (``saved_tensors_hooks``, deduplicated by storage);
* checkpointing on: the same count (the checkpointed cells save nothing; their inputs, which
  ``torch.utils.checkpoint`` keeps for the recomputation, are added by intercepting the call),
  plus the recomputation peak: the saved bytes of one level-0 cell (the largest) run alone at
  level-0 size, because in backward one cell at a time is recomputed for the whole batch.

Both counts leave out the gradient buffers that exist transiently during backward and allocator
fragmentation. Measured at --height x --width and scaled by the pixel ratio to 176 x 144. On
CUDA the allocator's peak (``torch.cuda.max_memory_allocated`` over forward + backward) is used
instead; it includes everything. The fixed part adds weights, gradients and Adam's two moments
(4 x the weight bytes).

Derived network (genotype derived from the supernet's initial alpha/beta, ``--genotypes`` seeds):
learnable parameters (Table 6 counting), FLOPs of one forward at --derived-height x
--derived-width (``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add of convs,
matmuls and attention; FFTs and elementwise ops are not counted) and images per second at
inference (no refs, ``torch.no_grad``; median of ``--infer-repeats`` timed batches, first seed).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_model.py --space paper --height 48 --width 40 \\
        --ks 1,4,8 --out benchmarks/out/model_paper.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.utils.checkpoint  # noqa: E402
from torch import nn  # noqa: E402

GB = 1e9


class StandInIdentity(nn.Module):
    """Frozen stand-in with VGGFace pool3's shape (256 ch at 1/8): the identity room's module is
    not part of this benchmark (it runs under no_grad and is the same for every fusion)."""

    out_channels = 256

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 8, stride=8)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, y, refs):
        return self.conv(refs.mean(dim=1))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class SavedTensorMeter:
    """Bytes of distinct storages kept for the backward pass (the activation memory of a training
    step): what autograd saves (``saved_tensors_hooks``) plus the inputs that activation
    checkpointing keeps for the recomputation (``nasfe.model.fusion.checkpoint`` is intercepted;
    inside a checkpointed cell autograd saves nothing, its own hooks take precedence)."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        self.storages[st.data_ptr()] = st.nbytes()

    def _pack(self, t: torch.Tensor):
        self.add(t)
        return t

    def _checkpoint(self, fn, *args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                self.add(a)
        return self._real_checkpoint(fn, *args, **kwargs)

    def __enter__(self):
        import nasfe.model.fusion as fusion

        self._fusion = fusion
        self._real_checkpoint = fusion.checkpoint
        fusion.checkpoint = self._checkpoint
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        self._fusion.checkpoint = self._real_checkpoint

    def discard(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self.storages.pop(t.untyped_storage().data_ptr(), None)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def _autocast(device: str, amp: bool):
    """bf16 autocast as ``search.amp`` does it (nasfe.engine.loop), or a no-op."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp)


def _cell_saved_per_image(model, height: int, width: int, amp: bool = False) -> int:
    """Saved bytes per image of the level-0 cell ``0_0`` run alone at level-0 size (its inputs
    excluded: the checkpointed forward already keeps them): the recomputation peak in backward."""
    from nasfe.model.cell import edge_softmax, softmax_ops

    fus, cfg = model.fusion, model.cfg
    cell = fus.cells["0_0"]
    m = model.pad_multiple
    h, w = -(-height // m) * m // 2, -(-width // m) * m // 2  # encoder output = level 0
    op_w = softmax_ops(fus.alphas)[0]
    edge_w = edge_softmax(fus.edge_gammas, cfg.blocks)[0] if fus.edge_gammas is not None else None
    saved = []
    for batch in (1, 2):
        s0 = torch.rand(batch, cfg.channels, h, w, requires_grad=True)
        s1 = torch.rand(batch, cfg.channels, h, w, requires_grad=True)
        meter = SavedTensorMeter()
        with meter, _autocast("cpu", amp):
            cell(s0, s1, op_w, edge_w)
        meter.discard(s0, s1)
        saved.append(meter.bytes)
    return saved[1] - saved[0]


def measure_search_step(
    space_name: str,
    k: int,
    height: int,
    width: int,
    device: str,
    repeats: int,
    time_batch: int,
    checkpoints=(False, True),
    amp: bool = False,
) -> list[dict]:
    """One row per checkpoint setting: activation bytes per image (batch 2 minus batch 1), the
    batch-independent remainder, weight bytes and (``repeats`` > 0) the median seconds per image of
    a forward+backward at ``time_batch``; on CUDA also the allocator's peak per image."""
    from nasfe.config import load_space
    from nasfe.model import create_model

    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    space = load_space(space_name, {"model.partial_channels": k})
    model = create_model(space, identity=StandInIdentity()).to(device).train()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def step(batch: int, meter=None) -> float:
        y = torch.rand(batch, 3, height, width, device=device)
        refs = torch.rand(batch, space.identity.refs, 3, height, width, device=device)
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        if meter is None:
            with _autocast(device, amp):
                out = model(y, refs)
        else:
            with meter, _autocast(device, amp):
                out = model(y, refs)
            if not cuda:  # what is kept for backward is known after the forward
                return time.perf_counter() - t0
        out.restored.float().square().mean().backward()
        _sync(device)
        return time.perf_counter() - t0

    rows = []
    cell_per_image = None
    for ckpt in checkpoints:
        model.cfg.checkpoint_cells = ckpt
        saved, peaks = [], []
        t0 = time.perf_counter()
        for batch in (1, 2):
            meter = SavedTensorMeter()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            step(batch, meter)
            saved.append(meter.bytes)
            peaks.append(torch.cuda.max_memory_allocated() if cuda else None)
        times = [step(time_batch) for _ in range(repeats)]  # repeats 0: memory only
        row = {
            "k": k,
            "checkpoint_cells": ckpt,
            "amp": amp,
            "weights_bytes": weights,
            "saved_per_image": saved[1] - saved[0],
            "saved_fixed": max(0, saved[0] - (saved[1] - saved[0])),
            "s_per_image": statistics.median(times) / time_batch if times else None,
            "time_batch": time_batch,
        }
        if ckpt and not cuda:
            if cell_per_image is None:
                cell_per_image = _cell_saved_per_image(model, height, width, amp)
            row["recompute_cell_per_image"] = cell_per_image
        if cuda:
            row["cuda_peak_per_image"] = peaks[1] - peaks[0]
            row["cuda_peak_batch1"] = peaks[0]
        row["measure_s"] = time.perf_counter() - t0
        rows.append(row)
    model.cfg.checkpoint_cells = False
    return rows


def _module_flops(by_module: dict, name: str) -> int:
    """FLOPs under module ``name`` (counts of nested modules include their children; a container
    that is never called itself, like a ModuleDict, is the sum of its direct children)."""
    if name in by_module:
        return sum(by_module[name].values())
    kids = [k for k in by_module if k.startswith(name + ".") and "." not in k[len(name) + 1 :]]
    return sum(sum(by_module[k].values()) for k in kids)


def derived_inference(
    space_name: str, height: int, width: int, device: str, repeats: int, batch: int, seeds: int = 1
) -> dict:
    """Parameters and FLOPs of the networks derived from the supernet's initial alpha/beta for
    ``seeds`` seeds, and images/s of the first one."""
    from torch.utils.flop_counter import FlopCounterMode

    from nasfe.config import load_space
    from nasfe.genotype import derive_genotype
    from nasfe.model import create_model

    space = load_space(space_name)
    nets = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        sup = create_model(space, identity=StandInIdentity())
        g = derive_genotype(sup.alphas, sup.betas, space)
        del sup
        model = create_model(space, g, identity=StandInIdentity()).to(device).eval()
        y = torch.rand(1, 3, height, width, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(y)  # refs=None: the inference path (the identity backbone is not run)
        by_module = fc.get_flop_counts()
        parts = {
            name: _module_flops(by_module, f"NASFE.{name}")
            for name in ("classifier", "encoders", "stem", "identity_proj", "fusion", "decoder")
        }
        nets.append(
            {
                "seed": seed,
                "genotype_id": g.genotype_id(),
                "path": list(g.path),
                "params": model.parameter_counts(),
                "flops_per_image": fc.get_total_flops(),
                "flops_by_part": parts,
                "genotype": g.to_dict(),
            }
        )
        if seed == 0:
            first = model
        else:
            del model
    yb = torch.rand(batch, 3, height, width, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first call warms up
            _sync(device)
            t0 = time.perf_counter()
            first(yb)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "size": [height, width],
        "nets": nets,
        "batch": batch,
        "times_s": times,
        "median_s_per_batch": med,
        "images_per_s": batch / med,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="paper")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--height", type=int, default=48, help="supernet measurement size (scaled to 176x144)")
    ap.add_argument("--width", type=int, default=40)
    ap.add_argument("--ks", default="1,4,8", help="partial_channels values to compare")
    ap.add_argument("--checkpoint", default="0,1", help="checkpoint_cells settings to measure (0 off, 1 on)")
    ap.add_argument("--amp-ks", default="", help="partial_channels values to measure again under bf16 autocast")
    ap.add_argument("--repeats", type=int, default=0, help="timed search steps per setting (0: memory only)")
    ap.add_argument("--time-batch", type=int, default=2, help="batch of the timed search steps")
    ap.add_argument("--derived-height", type=int, default=176)
    ap.add_argument("--derived-width", type=int, default=144)
    ap.add_argument("--genotypes", type=int, default=3, help="derived networks (seeds) for parameters and FLOPs")
    ap.add_argument("--infer-batch", type=int, default=4)
    ap.add_argument("--infer-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-derived", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "size": [args.height, args.width],
        "search": [],
    }
    if not args.skip_search:
        scale = (176 * 144) / (args.height * args.width)  # activations grow with the pixel count
        ckpts = tuple(bool(int(v)) for v in args.checkpoint.split(","))
        runs = [(int(v), False) for v in args.ks.split(",") if v] + [
            (int(v), True) for v in args.amp_ks.split(",") if v
        ]
        for k, amp in runs:
            for r in measure_search_step(
                args.space, k, args.height, args.width, args.device, args.repeats, args.time_batch, ckpts, amp
            ):
                per_img = r.get("cuda_peak_per_image", r["saved_per_image"] + r.get("recompute_cell_per_image", 0))
                per_img *= scale
                # fixed: weights + grads + Adam moments (4x weights) + batch-independent activations
                fixed = 4 * r["weights_bytes"] + r["saved_fixed"] * scale
                row = dict(
                    r,
                    mem_per_image_gb_176x144=per_img / GB,
                    boundary_gb_176x144=r["saved_per_image"] * scale / GB,
                    recompute_gb_176x144=r.get("recompute_cell_per_image", 0) * scale / GB,
                    s_per_image_176x144_est=r["s_per_image"] * scale if r["s_per_image"] else None,
                    fixed_gb=fixed / GB,
                    fit_24gb=int((24 * GB - fixed) // per_img),
                    fit_80gb=int((80 * GB - fixed) // per_img),
                    batch40_gb=(fixed + 40 * per_img) / GB,
                )
                report["search"].append(row)
                print(json.dumps(row), flush=True)
    if not args.skip_derived:
        report["derived"] = d = derived_inference(
            args.space,
            args.derived_height,
            args.derived_width,
            args.device,
            args.infer_repeats,
            args.infer_batch,
            args.genotypes,
        )
        for net in d["nets"]:
            print(
                json.dumps(
                    {
                        "seed": net["seed"],
                        "genotype_id": net["genotype_id"],
                        "path": net["path"],
                        "params_restoration": net["params"]["restoration"],
                        "gflops": net["flops_per_image"] / 1e9,
                        "gflops_by_part": {k: v / 1e9 for k, v in net["flops_by_part"].items()},
                    }
                ),
                flush=True,
            )
        print(json.dumps({"images_per_s": d["images_per_s"], "batch": d["batch"], "times_s": d["times_s"]}), flush=True)
    report["total_s"] = time.perf_counter() - t_start
    print(f"total {report['total_s']:.0f} s", flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
