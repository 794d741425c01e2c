"""The paper rehearsal, longer and with second order on: curves and numbers (docs/bench_parts/rehearsal.md).

    python benchmarks/rehearsal.py [--out benchmarks/out/rehearsal] [--set KEY=VALUE ...]

Runs ``search_spaces/rehearsal.yaml`` (paper.yaml at small sizes) in the plain engine, one
process, no Ray: pre-training, search (weight-only warm-up, then alternating steps with the
second-order architecture gradient), derivation, retraining and evaluation on the held-out test
identities. The defaults below lengthen the shipped rehearsal (more search and retraining steps);
``--set`` changes any space field on top of them. Writes into ``--out``:

* ``rehearsal.json``: the settings, every step's losses, every epoch's validation PSNR (restored
  without reference photos), the derived genotype, the test row (PSNR/SSIM of degraded inputs
  and of outputs restored with reference photos, and PSNR without them), seconds per phase;
* ``rehearsal.png``: training loss (L2 and L_final) per step and validation PSNR per epoch, for
  the search and the retraining.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from nasfe.config import load_space, parse_override
from nasfe.engine.callbacks import Callback
from nasfe.engine.retrain import run_retrain
from nasfe.engine.search import run_search
from nasfe.evaluate.split_eval import evaluate_restoration
from nasfe.genotype import Genotype

#: the shipped rehearsal, longer: second order on, more search and retraining steps
LONGER = {
    "search.second_order": True,
    "search.epochs": 3,
    "search.warmup_epochs": 1,
    "search.steps_per_epoch": 4,
    "search.log_every": 1,
    "search.checkpoint_every": 1000,
    "retrain.epochs": 6,
    "retrain.steps_per_epoch": 50,
    "retrain.log_every": 5,
    "retrain.checkpoint_every": 1000,
}


class Curves(Callback):
    """Step losses and epoch validation of one phase."""

    def __init__(self):
        self.steps: list[dict] = []
        self.epochs: list[dict] = []

    def on_step(self, state, metrics):
        if metrics:
            self.steps.append({"step": state.step, **{k: float(v) for k, v in metrics.items() if _number(v)}})

    def on_epoch_end(self, state, metrics, genotype=None):
        self.epochs.append({"step": state.step, **{k: float(v) for k, v in metrics.items() if _number(v)}})


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or (torch.is_tensor(v) and v.numel() == 1)


def psnr_without_refs(space, genotype, model_path: Path, max_images: int) -> float:
    """Mean PSNR of the restored test images when the network gets no reference photos (the
    images and seed of ``evaluate_restoration``, which restores with them)."""
    from nasfe.data.batches import BatchMaker
    from nasfe.engine.network import build_network
    from nasfe.evaluate.metrics import psnr

    model, _ = build_network(space, genotype=genotype, with_loss=False)
    model.load_state_dict(torch.load(model_path, weights_only=True)["model"])
    model.eval()
    maker = BatchMaker(space, "test", batch_size=min(16, max_images), seed=space.retrain.seed + 5000)
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in maker:
            if n >= max_images:
                break
            out = model(batch.y, refs=None).restored.float().clamp(0, 1)
            total += float(psnr(out, batch.x).clamp(max=100).sum())
            n += len(batch.x)
    return total / max(n, 1)


def plot(result: dict, path: Path) -> None:
    """Loss per step and validation PSNR per epoch, search and retraining side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for col, phase in enumerate(("search", "retrain")):
        curves = result[phase]
        ax = axes[0, col]
        for key in ("loss", "l2"):
            pts = [(r["step"], r[key]) for r in curves["steps"] if key in r and math.isfinite(r[key])]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_yscale("log")
        ax.set_title(f"{phase}: training loss (per image sum)")
        ax.set_xlabel("step")
        ax.legend()
        ax = axes[1, col]
        ep = [r for r in curves["epochs"] if "val_psnr" in r]
        if ep:
            ax.plot([r["step"] for r in ep], [r["val_psnr"] for r in ep], "o-", label="restored")
            ax.plot([r["step"] for r in ep], [r["input_psnr"] for r in ep], "x--", label="degraded input")
        test = result.get("test")
        if phase == "retrain" and test:
            ax.axhline(test["psnr"], color="g", lw=0.8, label=f"test restored {test['psnr']:.2f}")
            ax.axhline(test["input_psnr"], color="r", lw=0.8, label=f"test input {test['input_psnr']:.2f}")
        ax.set_title(f"{phase}: validation PSNR (dB)")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle("rehearsal of paper.yaml (B = 12, 4-layer trellis, 11 operators), second order")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/out/rehearsal")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--eval-images", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    overrides = dict(LONGER)
    overrides.update(dict(parse_override(s) for s in a.overrides))
    space = load_space("rehearsal", overrides)
    if space.data.root and not Path(space.data.root).is_absolute():
        space.data.root = str(Path(space.data.root).resolve())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"overrides": {k: v for k, v in overrides.items()}, "space": space.to_dict(), "seconds": {}}
    t0 = time.time()
    search = Curves()
    summary = run_search(space, out / "search", callbacks=[search], resume=False)
    result["seconds"]["search"] = round(time.time() - t0, 1)
    genotype = Genotype.from_json(out / "search" / "genotype.json")
    result["search"] = {"steps": search.steps, "epochs": search.epochs, "genotype": summary["genotype"]}
    t1 = time.time()
    retrain = Curves()
    run_retrain(space, genotype, out / "retrain", callbacks=[retrain], resume=False)
    result["seconds"]["retrain"] = round(time.time() - t1, 1)
    result["retrain"] = {"steps": retrain.steps, "epochs": retrain.epochs}
    t2 = time.time()
    result["test"] = evaluate_restoration(space, genotype, out / "retrain" / "model.pt", a.eval_images)
    result["test"]["psnr_without_refs"] = psnr_without_refs(
        space, genotype, out / "retrain" / "model.pt", a.eval_images
    )
    result["seconds"]["evaluate"] = round(time.time() - t2, 1)
    result["seconds"]["total"] = round(time.time() - t0, 1)
    (out / "rehearsal.json").write_text(json.dumps(result, indent=1, default=str))
    plot(result, out / "rehearsal.png")
    test = result["test"]
    print(f"path {genotype.path}; genotype {genotype.genotype_id()}")
    for phase in ("search", "retrain"):
        last = result[phase]["epochs"][-1] if result[phase]["epochs"] else {}
        print(
            f"{phase}: {result['seconds'][phase]:.0f} s, last epoch loss {last.get('loss', float('nan')):.4g}, "
            f"val PSNR {last.get('input_psnr', float('nan')):.2f} -> {last.get('val_psnr', float('nan')):.2f} dB"
        )
    print(
        f"test ({test['images']} images): PSNR {test['input_psnr']:.2f} -> {test['psnr']:.2f} dB "
        f"({test['psnr_without_refs']:.2f} dB without reference photos), "
        f"SSIM {test['input_ssim']:.4f} -> {test['ssim']:.4f}; total {result['seconds']['total']:.0f} s"
    )
    print(f"wrote {out / 'rehearsal.json'} and {out / 'rehearsal.png'}")


if __name__ == "__main__":
    main()
