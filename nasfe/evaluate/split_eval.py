"""PSNR/SSIM of a trained network on the space's held-out test identities (the jobs' last step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nasfe.data.batches import BatchMaker
from nasfe.data.remote import localize_space
from nasfe.engine.checkpoint import load_checkpoint
from nasfe.engine.network import build_network
from nasfe.evaluate.metrics import psnr, ssim


def evaluate_restoration(
    space, genotype, model_path: str | Path, max_images: int = 256, device: str = "cpu"
) -> dict[str, Any]:
    """Mean PSNR/SSIM on the test identities: degraded input vs clean, restored vs clean.

    The test split is identity-disjoint from training; its degradations are seeded (the same
    images every call). The restored output uses the references of the same identity when the
    space gives references.
    """
    payload = load_checkpoint(model_path, required=("model",))
    model, _ = build_network(space, genotype=genotype, device=device)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    maker = BatchMaker(space, "test", batch_size=min(16, max_images), device=device, seed=space.retrain.seed + 5000)
    sums = {"input_psnr": 0.0, "input_ssim": 0.0, "psnr": 0.0, "ssim": 0.0}
    n = 0
    with torch.no_grad():
        for batch in maker:
            if n >= max_images:
                break
            out = model(batch.y, refs=batch.refs).restored.float().clamp(0, 1)
            sums["input_psnr"] += float(psnr(batch.y, batch.x).clamp(max=100).sum())
            sums["input_ssim"] += float(ssim(batch.y, batch.x).sum())
            sums["psnr"] += float(psnr(out, batch.x).clamp(max=100).sum())
            sums["ssim"] += float(ssim(out, batch.x).sum())
            n += len(batch.x)
    return {"images": n, **{k: v / max(n, 1) for k, v in sums.items()}}


def evaluate_and_report(space, genotype, model_path, max_images: int, use_gpu: bool = False) -> dict[str, Any]:
    """Evaluate (on this machine) and print one line per measure."""
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    res = evaluate_restoration(localize_space(space), genotype, model_path, max_images, device)
    print(
        f"[nasfe] test split ({res['images']} images, held-out identities):\n"
        f"          PSNR  degraded {res['input_psnr']:.2f} dB -> restored {res['psnr']:.2f} dB\n"
        f"          SSIM  degraded {res['input_ssim']:.4f}    -> restored {res['ssim']:.4f}",
        flush=True,
    )
    return res
