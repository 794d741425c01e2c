"""Retraining of a derived network (or the BN baseline) with L_final: Adam 5e-4, batch 40."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from nasfe.config import SpaceConfig
from nasfe.engine.callbacks import Callback
from nasfe.engine.dist import DistContext
from nasfe.engine.loop import Phase
from nasfe.engine.network import build_network
from nasfe.engine.checkpoint import save_checkpoint


class RetrainPhase(Phase):
    """Train the discrete network built from ``genotype`` (None: the space's fixed fusion)."""

    name = "retrain"

    def __init__(self, space: SpaceConfig, genotype, run_dir, **kwargs):
        super().__init__(space, space.retrain, run_dir, **kwargs)
        self.genotype = genotype

    def build(self) -> None:
        model, loss = build_network(self.space, genotype=self.genotype, device=self.device)
        self.model = model.to(self.device)
        self.loss_fn = loss.to(self.device)
        self.weights = list(self.model.weight_parameters())
        self.dist.broadcast_parameters(self.weights)
        self.opt = torch.optim.Adam(self.weights, lr=self.cfg.lr)

    def optimizers(self):
        return {"weights": self.opt}

    def extra_state(self):
        return {"genotype": self.genotype.to_dict() if self.genotype is not None else None}

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        drop = self.drop_refs()
        self.opt.zero_grad(set_to_none=True)
        loss, metrics = self.network_loss(batch, drop_refs=drop)
        self.watch("loss", loss)
        loss.backward()
        self.dist.all_reduce_grads(self.weights)
        self.clip(self.weights)
        self.opt.step()
        return metrics

    def save(self):
        path = super().save()  # runs the divergence guard first: model.pt is never written non-finite
        if self.dist.is_main:
            # a small weights-only file for `nasfe evaluate` / `nasfe restore` / export

            save_checkpoint(
                self.run_dir / "model.pt",
                {
                    "step": self.state.step,
                    "model": self.model.state_dict(),
                    "space": self.space.to_dict(),
                    "genotype": self.genotype.to_dict() if self.genotype is not None else None,
                },
            )
        return path


def run_retrain(
    space: SpaceConfig,
    genotype,
    run_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    device: str = "cpu",
    dist: Optional[DistContext] = None,
    resume: bool = True,
    resume_from: Optional[str | Path] = None,
    faces=None,
) -> dict[str, Any]:
    """Retrain ``genotype`` in ``space``; writes checkpoints, ``model.pt`` and ``retrain_summary.json``."""
    phase = RetrainPhase(
        space,
        genotype,
        run_dir,
        callbacks=callbacks,
        device=device,
        dist=dist,
        resume=resume,
        resume_from=resume_from,
        faces=faces,
    )
    return phase.run()
