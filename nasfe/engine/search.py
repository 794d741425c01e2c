"""DARTS bilevel search of the fusion network (first order by default, second order as an option).

Weights take Adam steps on the training split; alpha and beta take Adam steps on a held-out split
(the validation identities), after ``warmup_epochs`` of weight-only training (Auto-DeepLab's
schedule). Gradients are averaged over ranks, so alpha and beta stay identical on every worker;
the genotype is derived every epoch and checked equal across ranks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from nasfe.config import SpaceConfig
from nasfe.engine.callbacks import Callback
from nasfe.engine.dist import DistContext
from nasfe.engine.loop import Phase, PhaseSettings, cycle

log = logging.getLogger("nasfe.engine")


def build_network(space: SpaceConfig, genotype=None):
    """The model and its loss sharing one frozen face backbone."""
    from nasfe.identity.adain import IdentityInfo
    from nasfe.identity.backbones import build_backbone
    from nasfe.identity.losses import NASFELoss
    from nasfe.model.registry import create_model

    backbone = build_backbone(space.identity)
    identity = IdentityInfo(backbone) if space.model.use_identity else None
    model = create_model(space, genotype=genotype, identity=identity)
    loss = NASFELoss(backbone, space.loss)
    return model, loss


class SearchPhase(Phase):
    """The architecture search phase."""

    name = "search"

    def __init__(self, space: SpaceConfig, run_dir, **kwargs):
        settings = PhaseSettings.from_section(space.search)
        super().__init__(space, settings, run_dir, **kwargs)
        self.genotype = None

    def build(self) -> None:
        model, self.loss_fn = build_network(self.space)
        self.model = model.to(self.device)
        self.loss_fn = self.loss_fn.to(self.device)
        self.arch_params = list(self.model.arch_parameters())
        if not self.arch_params:
            raise ValueError(f"space {self.space.name!r} has no architecture to search (model.fusion = "
                             f"{self.space.model.fusion!r}); use `nasfe retrain` for fixed networks")
        self.weights = list(self.model.weight_parameters())
        self.dist.broadcast_parameters(self.weights + self.arch_params)
        s = self.space.search
        self.opt_w = torch.optim.Adam(self.weights, lr=s.lr)
        self.opt_a = torch.optim.Adam(self.arch_params, lr=s.arch_lr, betas=(0.5, 0.999),
                                      weight_decay=s.arch_weight_decay)
        self._arch_batches = None
        self._drop_gen = torch.Generator().manual_seed(s.seed + 17)

    def optimizers(self):
        return {"weights": self.opt_w, "arch": self.opt_a}

    def extra_state(self):
        return {"genotype": self.genotype.to_dict() if self.genotype is not None else None,
                "drop_rng": self._drop_gen.get_state()}

    def load_extra_state(self, payload):
        from nasfe.genotype import Genotype

        if payload.get("genotype"):
            self.genotype = Genotype.from_dict(payload["genotype"])
        if payload.get("drop_rng") is not None:
            self._drop_gen.set_state(payload["drop_rng"])

    def _drop_refs(self) -> bool:
        # one draw per step, the same on every rank (same seed): whole batches train without refs
        return bool(torch.rand((), generator=self._drop_gen) < self.space.identity.drop_refs)

    def _arch_batch(self):
        if self._arch_batches is None:
            self._arch_batches = cycle(self.make_batches("val", seed_offset=2000))
        return next(self._arch_batches)

    def train_step(self, batch) -> dict[str, float]:
        drop = self._drop_refs()
        metrics: dict[str, float] = {}
        if self.state.epoch >= self.space.search.warmup_epochs:
            arch_batch = self._arch_batch()
            if self.space.search.second_order:
                metrics.update(self._arch_step_second_order(batch, arch_batch, drop))
            else:
                metrics.update(self._arch_step_first_order(arch_batch, drop))
        self.opt_w.zero_grad(set_to_none=True)
        loss, parts = self.network_loss(batch, drop_refs=drop)
        loss.backward()
        self.dist.all_reduce_grads(self.weights)
        self.clip(self.weights)
        self.opt_w.step()
        metrics.update(parts)
        return metrics

    def _arch_step_first_order(self, batch, drop: bool) -> dict[str, float]:
        self.opt_a.zero_grad(set_to_none=True)
        loss, _ = self.network_loss(batch, drop_refs=drop)
        loss.backward()
        self.dist.all_reduce_grads(self.arch_params)
        self.opt_a.step()
        for p in self.weights:  # the arch step must not leak gradients into the weight step
            p.grad = None
        return {"arch_loss": float(loss.detach())}

    def _arch_step_second_order(self, train_batch, val_batch, drop: bool) -> dict[str, float]:
        """DARTS' unrolled step: grad_alpha L_val(w - xi grad_w L_train) by finite differences."""
        xi = self.opt_w.param_groups[0]["lr"]
        backup = [w.detach().clone() for w in self.weights]
        loss_t, _ = self.network_loss(train_batch, drop_refs=drop)
        g_train = torch.autograd.grad(loss_t, self.weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(self.weights, g_train):
                if g is not None:
                    w.sub_(xi * g)
        loss_v, _ = self.network_loss(val_batch, drop_refs=drop)
        grads = torch.autograd.grad(loss_v, self.arch_params + self.weights, allow_unused=True)
        d_alpha = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[:len(self.arch_params)], self.arch_params)]
        d_w = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[len(self.arch_params):], self.weights)]
        eps = 0.01 / (torch.sqrt(sum((g * g).sum() for g in d_w)) + 1e-12)
        implicit = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, b, g in zip(self.weights, backup, d_w):
                    w.copy_(b + sign * eps * g)
            loss_s, _ = self.network_loss(train_batch, drop_refs=drop)
            implicit.append(torch.autograd.grad(loss_s, self.arch_params, allow_unused=True))
        with torch.no_grad():
            for w, b in zip(self.weights, backup):
                w.copy_(b)
        self.opt_a.zero_grad(set_to_none=True)
        for p, da, gp, gm in zip(self.arch_params, d_alpha, *implicit):
            hess = ((gp if gp is not None else 0) - (gm if gm is not None else 0)) / (2 * eps)
            p.grad = da - xi * hess
        self.dist.all_reduce_grads(self.arch_params)
        self.opt_a.step()
        return {"arch_loss": float(loss_v.detach())}

    def on_epoch_end_extra(self, metrics: dict[str, Any]):
        from nasfe.genotype import derive_genotype

        genotype = derive_genotype(self.model.alphas.detach().cpu(), self.model.betas.detach().cpu(), self.space)
        genotype.meta.update({"epoch": self.state.epoch + 1, "step": self.state.step})
        metrics["alpha_rank_diff"] = self.dist.max_abs_diff(self.model.alphas)
        metrics["beta_rank_diff"] = self.dist.max_abs_diff(self.model.betas)
        if not self.dist.same_everywhere(str(genotype.to_dict()["cells"]) + str(genotype.path)):
            raise RuntimeError("ranks derived different genotypes: alpha/beta diverged across workers")
        self.genotype = genotype
        if self.dist.is_main:
            genotype.to_json(self.run_dir / "genotype.json")
            genotype.to_json(self.run_dir / "genotypes" / f"epoch_{self.state.epoch + 1:03d}.json")
        metrics["genotype_id"] = genotype.genotype_id()
        # for trackers (heatmaps); loggers and history keep only numbers, so these stay out of them
        metrics["alphas"] = self.model.alphas.detach().cpu()
        metrics["betas"] = self.model.betas.detach().cpu()
        return genotype

    def summary(self, seconds):
        out = super().summary(seconds)
        if self.genotype is not None:
            out["genotype"] = self.genotype.to_dict()
            out["genotype_id"] = self.genotype.genotype_id()
        return out


def run_search(space: SpaceConfig, run_dir: str | Path, callbacks: Sequence[Callback] = (),
               device: str = "cpu", dist: Optional[DistContext] = None, resume: bool = True,
               resume_from: Optional[str | Path] = None, faces=None) -> dict[str, Any]:
    """Search ``space``; writes ``genotype.json``, checkpoints and ``search_summary.json`` in ``run_dir``."""
    phase = SearchPhase(space, run_dir, callbacks=callbacks, device=device, dist=dist, resume=resume,
                        resume_from=resume_from, faces=faces)
    return phase.run()
