"""Benchmark the NASFE network: supernet training cost per image and the derived network at inference.

Supernet (search step = forward + backward of the weights): seconds per image and activation
memory per image, full channels against partial channels (PC-DARTS K), and the batch that fits in
24 GB and 80 GB, extrapolated linearly from the per-image memory. Memory per image is
(batch 2) - (batch 1), so weights and batch-independent parts cancel. On CPU it is the bytes of
the distinct storages autograd saves for backward (``saved_tensors_hooks``: exact, independent of
machine load; tracemalloc and RSS do not see or do not isolate torch's allocator), measured at
--height x --width and scaled by the pixel ratio to 176 x 144. On CUDA it is the allocator's
peak (``torch.cuda.max_memory_allocated``), which also includes transient workspaces. The fixed
part adds weights, gradients and Adam's two moments (4 x the weight bytes).

Derived network: learnable parameters, FLOPs of one forward (``torch.utils.flop_counter``) and
images per second at inference (median of ``--repeats`` timed batches).

    .venv/bin/python benchmarks/bench_model.py --space paper --device cpu --out benchmarks/out/model.json
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
from torch import nn  # noqa: E402


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
    """Bytes of distinct storages autograd keeps for the backward pass (the activation memory of a
    training step), counted with ``saved_tensors_hooks``; exact and independent of machine load."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def _pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        self.storages[st.data_ptr()] = st.nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def measure_search_step(space_name: str, k: int, height: int, width: int, device: str, repeats: int,
                        time_batch: int) -> dict:
    """Activation bytes per image (batch 2 minus batch 1), weight bytes, and the median seconds of
    a forward+backward at ``time_batch``; on CUDA also the allocator's peak per image."""
    from nasfe.config import load_space
    from nasfe.model import create_model

    torch.manual_seed(0)
    space = load_space(space_name, {"model.partial_channels": k})
    model = create_model(space, identity=StandInIdentity()).to(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def step(batch: int, meter=None) -> float:
        y = torch.rand(batch, 3, height, width, device=device)
        refs = torch.rand(batch, space.identity.refs, 3, height, width, device=device)
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        if meter is None:
            out = model(y, refs)
        else:
            with meter:
                out = model(y, refs)
            if not device.startswith("cuda"):  # what autograd keeps is known after the forward
                return time.perf_counter() - t0
        out.restored.square().mean().backward()
        _sync(device)
        return time.perf_counter() - t0

    saved, peaks = [], []
    for batch in (1, 2):
        meter = SavedTensorMeter()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step(batch, meter)
        saved.append(meter.bytes)
        peaks.append(torch.cuda.max_memory_allocated() if device.startswith("cuda") else None)
    times = [step(time_batch) for _ in range(repeats)]  # repeats 0: memory only
    row = {"k": k, "weights_bytes": weights, "saved_per_image": saved[1] - saved[0],
           "saved_fixed": max(0, saved[0] - (saved[1] - saved[0])),
           "s_per_image": statistics.median(times) / time_batch if times else None, "time_batch": time_batch}
    if peaks[0] is not None:
        row["cuda_peak_per_image"] = peaks[1] - peaks[0]
        row["cuda_peak_batch1"] = peaks[0]
    return row


def derived_inference(space_name: str, height: int, width: int, device: str, repeats: int, batch: int) -> dict:
    """Parameters, FLOPs and images/s of the network derived from the supernet's initial alpha/beta."""
    from torch.utils.flop_counter import FlopCounterMode

    from nasfe.config import load_space
    from nasfe.genotype import derive_genotype
    from nasfe.model import create_model

    torch.manual_seed(0)
    space = load_space(space_name)
    sup = create_model(space, identity=StandInIdentity())
    g = derive_genotype(sup.alphas, sup.betas, space)
    del sup
    model = create_model(space, g, identity=StandInIdentity()).to(device).eval()
    counts = model.parameter_counts()
    y = torch.rand(1, 3, height, width, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(y)  # refs=None: the inference path (the identity backbone is not run)
    flops = fc.get_total_flops()
    yb = torch.rand(batch, 3, height, width, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            model(yb)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"genotype": g.to_dict(), "genotype_id": g.genotype_id(), "params": counts, "flops_per_image": flops,
            "batch": batch, "median_s_per_batch": med, "images_per_s": batch / med}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="paper")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--height", type=int, default=176)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--ks", default="1,4", help="partial_channels values to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--infer-batch", type=int, default=8)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--time-batch", type=int, default=2, help="batch of the timed search steps")
    args = ap.parse_args(argv)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"threads {torch.get_num_threads()}",
              "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
              "size": [args.height, args.width], "search": []}
    if not args.skip_search:
        scale = (176 * 144) / (args.height * args.width)  # activations grow with the pixel count
        for k in (int(v) for v in args.ks.split(",")):
            r = measure_search_step(args.space, k, args.height, args.width, args.device, args.repeats,
                                    args.time_batch)
            per_img = r.get("cuda_peak_per_image", r["saved_per_image"]) * scale
            # fixed: weights + grads + Adam moments (4x weights) + batch-independent activations
            fixed = 4 * r["weights_bytes"] + r["saved_fixed"] * scale
            row = dict(r, mem_per_image_gb_176x144=per_img / 1e9, s_per_image_176x144_est=r["s_per_image"] * scale if r["s_per_image"] else None, fixed_gb=fixed / 1e9,
                       fit_24gb=int((24e9 - fixed) // per_img), fit_80gb=int((80e9 - fixed) // per_img),
                       batch40_gb=(fixed + 40 * per_img) / 1e9)
            report["search"].append(row)
            print(json.dumps(row), flush=True)
    report["derived"] = derived_inference(args.space, args.height, args.width, args.device, args.repeats,
                                          args.infer_batch)
    d = report["derived"]
    print(json.dumps({"params": d["params"], "gflops": d["flops_per_image"] / 1e9,
                      "images_per_s": d["images_per_s"]}), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
