"""Measure the balance of L_final's three terms (Eq. 9) and of their gradients.

    PYTHONPATH=. .venv/bin/python benchmarks/studies/loss_balance.py \
        --faces ../shared/data/celeba-id --weights ../shared/models/mobilefacenet/mobilefacenet.pt \
        [--steps 60] [--batch 4] [--l2 sum|mean|both]

For each L2 normalisation (``sum``: the paper's per-image ||x_hat - x||^2, nasfe's default;
``mean``: per-pixel MSE, the old default) and the paper's lambdas (0.04, 0.003), prints the
weighted terms L2, lambda_per * L_per and lambda_iden * L_iden and the norms of their gradients:

* at two reference points, with respect to the image: the degraded input (x_hat = y) and near
  the solution (x_hat = x + N(0, 0.02^2));
* for the network (tiny widths, a derived cell, 176x144 real faces, MobileFaceNet features),
  with respect to its weights: at initialisation and after ``--steps`` Adam steps (lr 5e-4,
  batch ``--batch``) of training with that loss.

Prints Markdown rows: where, L2 mode, the three terms, term ratios, gradient ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def _space(faces: str, weights: str, l2: str, batch: int):
    from nasfe.config import load_space

    return load_space(
        "tiny",
        {
            "data.source": "folder",
            "data.root": faces,
            "data.height": 176,
            "data.width": 144,
            "identity.backbone": "mobilefacenet",
            "identity.weights": weights,
            "identity.refs": 2,
            "identity.drop_refs": 0.0,
            "loss.l2": l2,
            "retrain.batch_size": batch,
            "retrain.pretrain_steps": 0,
        },
    )


def _term(name, loss, restored, x, refs):
    from nasfe.identity.losses import identity_loss, l2_loss, perceptual_loss

    if name == "l2":
        return l2_loss(restored, x, loss.l2_mode)
    if name == "per":
        return loss.lambda_per * perceptual_loss(loss.backbone, restored, x)
    return loss.lambda_iden * identity_loss(loss.backbone, restored, refs)


def _grad_norms(make_term, wrt) -> tuple[dict[str, float], dict[str, float]]:
    values, norms = {}, {}
    for name in ("l2", "per", "iden"):
        term = make_term(name)
        grads = torch.autograd.grad(term, wrt, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
        values[name] = float(term.detach())
    return values, norms


def _row(where: str, mode: str, values: dict, norms: dict) -> str:
    def r(a, b):
        return f"{a / b:.3g}" if b > 0 else "inf"

    return (
        f"| {where} | {mode} | {values['l2']:.4g} | {values['per']:.4g} | {values['iden']:.4g} | "
        f"{r(values['l2'], values['per'])} | {r(values['l2'], values['iden'])} | "
        f"{r(norms['l2'], norms['per'])} | {r(norms['l2'], norms['iden'])} |"
    )


def measure(faces: str, weights: str, mode: str, steps: int, batch: int) -> list[str]:
    """Rows for one L2 mode."""
    from nasfe.data.batches import BatchMaker
    from nasfe.engine.network import build_network
    from nasfe.genotype import derive_from_arch
    from nasfe.model.registry import create_model

    space = _space(faces, weights, mode, batch)
    torch.manual_seed(0)
    genotype = derive_from_arch(create_model(space).arch_parameters(), space)
    torch.manual_seed(0)
    model, loss = build_network(space, genotype)
    maker = BatchMaker(space, "train", batch, seed=0)
    batches = iter(maker)
    probe = next(batches)
    rows = []
    noise = 0.02 * torch.randn(probe.x.shape, generator=torch.Generator().manual_seed(1))
    for where, start in (
        ("degraded input (x_hat = y)", probe.y),
        ("near the solution (x + 0.02 noise)", probe.x + noise),
    ):
        img = start.clone().requires_grad_()
        rows.append(_row(where, mode, *_grad_norms(lambda n: _term(n, loss, img, probe.x, probe.refs), [img])))
    weights_ = list(model.weight_parameters())

    def net_terms(name):
        return _term(name, loss, model(probe.y, refs=probe.refs).restored, probe.x, probe.refs)

    rows.append(_row("network at initialisation (grad wrt weights)", mode, *_grad_norms(net_terms, weights_)))
    opt = torch.optim.Adam(weights_, lr=5e-4)
    for _ in range(steps):
        b = next(batches, None)
        if b is None:
            maker.set_epoch(maker.epoch + 1)
            batches = iter(maker)
            b = next(batches)
        opt.zero_grad(set_to_none=True)
        total, _ = loss(model(b.y, refs=b.refs).restored, b.x, b.refs)
        total.backward()
        torch.nn.utils.clip_grad_norm_(weights_, 5.0)
        opt.step()
    rows.append(_row(f"network after {steps} steps (grad wrt weights)", mode, *_grad_norms(net_terms, weights_)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--l2", choices=("sum", "mean", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    print(
        "| where | L2 | L2 term | 0.04 L_per | 0.003 L_iden | L2 / per | L2 / iden | grad L2 / per | grad L2 / iden |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in ("sum", "mean") if args.l2 == "both" else (args.l2,):
        for row in measure(args.faces, args.weights, mode, args.steps, args.batch):
            print(row, flush=True)
    print(
        f"\n{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads; "
        f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after; {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
