"""DARTS bilevel search of the fusion network (first order by default, second order as an option).

Data (``nasfe.engine.arch_data``): the training identities are split in two; weights take Adam
steps on one part, alpha and beta (and the PC-DARTS edge weights) take Adam steps on the other,
reshuffled with fresh degradations every batch, after ``warmup_epochs`` of weight-only training
(Auto-DeepLab's schedule). The validation split only gives the validation metrics. With
``search.pretrain_steps`` the task encoders and CN are first pre-trained on their own tasks
(section 4), so the architecture is not chosen on random features.

Gradients are averaged over ranks, so the architecture stays identical on every worker; the
genotype is derived every epoch from everything the search learned (``derive_from_arch``) and
checked equal across ranks, with the search's health (entropies, share of parameter-free edges).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from nasfe.config import SpaceConfig
from nasfe.engine.callbacks import Callback
from nasfe.engine.dist import DistContext
from nasfe.engine.loop import Phase
from nasfe.engine.network import build_network
from nasfe.data.faces import open_faces
from nasfe.engine.arch_data import split_for_architecture, whole_split_space
from nasfe.engine.arch_data import ArchBatches
from nasfe.genotype import Genotype
from nasfe.genotype import arch_entropies, derive_from_arch, param_free_share
from nasfe.engine.selection import choice_strengths
from nasfe.genotype import derive_from_strength, diff_genotypes
from nasfe.imageio import atomic_write_json

log = logging.getLogger("nasfe.engine")

#: above this share of parameter-free derived edges the search has likely collapsed (DARTS)
COLLAPSE_SHARE = 0.5


class strict_fp32:
    """Within: no TF32 matmuls/convolutions, no autocast in ``phase.network_loss`` and attention by
    the math kernel (the fused ones have no double backward); all restored after."""

    def __init__(self, phase):
        self.phase = phase

    def __enter__(self):
        self.saved = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            getattr(self.phase, "_strict_fp32", False),
        )
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.phase._strict_fp32 = True
        self.sdpa = sdpa_kernel(SDPBackend.MATH)
        self.sdpa.__enter__()
        return self

    def __exit__(self, *exc):
        self.sdpa.__exit__(*exc)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, self.phase._strict_fp32 = self.saved
        return False


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


class SearchPhase(Phase):
    """The architecture search phase."""

    name = "search"

    def __init__(self, space: SpaceConfig, run_dir, **kwargs):
        super().__init__(space, space.search, run_dir, **kwargs)
        self.genotype: Optional[Genotype] = None
        self._parts = None
        self._arch_batches = None
        self._arch_state: Optional[list[int]] = None  # where a resumed search's arch batches continue

    def build(self) -> None:
        model, self.loss_fn = build_network(self.space, device=self.device)
        self.model = model.to(self.device)
        self.loss_fn = self.loss_fn.to(self.device)
        self.arch_params = list(self.model.arch_parameters())
        if not self.arch_params:
            raise ValueError(
                f"space {self.space.name!r} has no architecture to search (model.fusion = "
                f"{self.space.model.fusion!r}); use `nasfe retrain` for fixed networks"
            )
        self.weights = list(self.model.weight_parameters())
        self.dist.broadcast_parameters(self.weights + self.arch_params)
        s = self.space.search
        self.opt_w = torch.optim.Adam(self.weights, lr=s.lr)
        self.opt_a = torch.optim.Adam(
            self.arch_params, lr=s.arch_lr, betas=(0.5, 0.999), weight_decay=s.arch_weight_decay
        )

    # ---- data: weights and architecture on disjoint parts of the training identities ----------
    def _split(self):
        if self._parts is None:
            faces = self.faces if self.faces is not None else open_faces(self.space.data)
            w_faces, a_faces, counts = split_for_architecture(faces, self.space)
            self._parts = (w_faces, a_faces, whole_split_space(self.space))
            if self.dist.is_main:
                log.info(
                    "search data: weights on %(weight_identities)d identities (%(weight_images)d images), "
                    "architecture on %(arch_identities)d (%(arch_images)d images)",
                    counts,
                )
        return self._parts

    def weight_batches(self, seed_offset: int = 0, space: Optional[SpaceConfig] = None):
        w_faces, _, whole = self._split()
        return self.make_batches(
            "train", seed_offset, space=whole_split_space(space) if space else whole, faces=w_faces
        )

    def _arch_batch(self):
        if self._arch_batches is None:
            _, a_faces, whole = self._split()
            self._arch_batches = ArchBatches(self.make_batches("train", 2000, space=whole, faces=a_faces))
            if self._arch_state is not None:
                self._arch_batches.load_state(self._arch_state)
        return next(self._arch_batches)

    def optimizers(self):
        return {"weights": self.opt_w, "arch": self.opt_a}

    def extra_state(self):
        pos = self._arch_batches.state() if self._arch_batches is not None else self._arch_state
        return {"genotype": self.genotype.to_dict() if self.genotype is not None else None, "arch_batches": pos}

    def load_extra_state(self, payload):
        if payload.get("genotype"):
            self.genotype = Genotype.from_dict(payload["genotype"])
        if payload.get("arch_batches") is not None:
            self._arch_state = list(payload["arch_batches"])

    # ---- steps --------------------------------------------------------------------------------
    def train_step(self, batch) -> dict[str, torch.Tensor]:
        drop = self.drop_refs()
        metrics: dict[str, torch.Tensor] = {}
        if self.state.epoch >= self.space.search.warmup_epochs:
            arch_batch = self._arch_batch()
            if self.space.search.second_order:
                metrics.update(self._arch_step_second_order(batch, arch_batch, drop))
            else:
                metrics.update(self._arch_step_first_order(arch_batch, drop))
        self.opt_w.zero_grad(set_to_none=True)
        loss, parts = self.network_loss(batch, drop_refs=drop)
        self.watch("loss", loss)
        loss.backward()
        self.dist.all_reduce_grads(self.weights)
        self.clip(self.weights)
        self.opt_w.step()
        metrics.update(parts)
        return metrics

    def _arch_update(self, loss: torch.Tensor) -> None:
        self.watch("architecture loss", loss)
        self.dist.all_reduce_grads(self.arch_params)
        self.watch("architecture gradient", _grad_norm(self.arch_params))
        self.opt_a.step()

    def _arch_step_first_order(self, batch, drop: bool) -> dict[str, torch.Tensor]:
        self.opt_a.zero_grad(set_to_none=True)
        loss, _ = self.network_loss(batch, drop_refs=drop)
        loss.backward()
        self._arch_update(loss)
        for p in self.weights:  # the arch step must not leak gradients into the weight step
            p.grad = None
        return {"arch_loss": loss.detach()}

    def _adam_lookahead(self, grads: Sequence[Optional[torch.Tensor]]) -> list[torch.Tensor]:
        """The step the weight optimiser (Adam) would take for the raw gradients ``grads``, as a
        differentiable function of them: clipped as the weight step clips them (per group, the
        coefficient depending on the gradient), each weight's own step count for the bias
        correction, and weights without a gradient not moving (Adam skips them). DARTS' look-ahead
        w - xi * grad assumes SGD; with Adam that step is unbounded in the gradient's scale."""
        group = self.opt_w.param_groups[0]
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        coefs, _ = self.clip_coefficients(self.weights, grads)
        steps = []
        for w, gi, c in zip(self.weights, grads, coefs):
            if gi is None:
                steps.append(torch.zeros_like(w))
                continue
            g = gi * c
            st = self.opt_w.state.get(w, {})
            t = int(st["step"]) + 1 if "step" in st else 1
            m = b1 * st["exp_avg"] + (1 - b1) * g if "exp_avg" in st else (1 - b1) * g
            v = b2 * st["exp_avg_sq"] + (1 - b2) * g * g if "exp_avg_sq" in st else (1 - b2) * g * g
            vh = v / (1 - b2**t)
            # sqrt's derivative is infinite at 0 (a weight whose gradients were all zero): no flow there
            root = torch.where(vh > 0, torch.where(vh > 0, vh, torch.ones_like(vh)).sqrt(), torch.zeros_like(vh))
            steps.append(lr * (m / (1 - b1**t)) / (root + eps))
        return steps

    def lookahead_objective(self, train_batch, arch_batch, drop: bool = False) -> torch.Tensor:
        """L_arch(w', alpha) with w' = w - AdamStep(grad_w L_train(w, alpha)): what the second-order
        architecture gradient differentiates (weights restored afterwards; for tests and checks)."""
        backup = [w.detach().clone() for w in self.weights]
        with strict_fp32(self):
            loss_t, _ = self.network_loss(train_batch, drop_refs=drop)
            g = torch.autograd.grad(loss_t, self.weights, allow_unused=True)
            with torch.no_grad():
                step = self._adam_lookahead([gi.detach() if gi is not None else None for gi in g])
                for w, d in zip(self.weights, step):
                    w.sub_(d)
            try:
                with torch.no_grad():
                    loss_v, _ = self.network_loss(arch_batch, drop_refs=drop)
            finally:
                with torch.no_grad():
                    for w, b in zip(self.weights, backup):
                        w.copy_(b)
        return loss_v.detach()

    def second_order_gradient(self, train_batch, arch_batch, drop: bool = False):
        """d/d(arch) of ``lookahead_objective``: the direct term grad_arch L_arch(w') minus the
        implicit term (d AdamStep / d arch)^T grad_w' L_arch(w'). With g = grad_w L_train(w, arch)
        and J the Jacobian of ``_adam_lookahead`` at g (clip coefficients and second moments
        included), the implicit term is grad_arch (g . z) with z = J^T u, u = grad_w' L_arch: z by
        autograd through the step, the mixed second derivative exactly by double backward
        (``mixed_second_derivative``), all in ``strict_fp32``.
        Returns (gradients like ``arch_params``, L_arch(w')); the weights are restored."""
        backup = [w.detach().clone() for w in self.weights]
        with strict_fp32(self):
            loss_t, _ = self.network_loss(train_batch, drop_refs=drop)
            g_train = torch.autograd.grad(loss_t, self.weights, allow_unused=True)
            del loss_t
            g_var = [gi.detach().requires_grad_(True) if gi is not None else None for gi in g_train]
            with torch.enable_grad():
                step = self._adam_lookahead(g_var)
            with torch.no_grad():
                for w, d in zip(self.weights, step):
                    w.sub_(d)
            try:
                loss_v, _ = self.network_loss(arch_batch, drop_refs=drop)
                grads = torch.autograd.grad(loss_v, self.arch_params + self.weights, allow_unused=True)
                n_a = len(self.arch_params)
                d_alpha = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[:n_a], self.arch_params)]
                u = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads[n_a:], self.weights)]
                live = [(s, gv, ui) for s, gv, ui in zip(step, g_var, u) if gv is not None]
                jt = torch.autograd.grad(
                    [s for s, _, _ in live],
                    [gv for _, gv, _ in live],
                    grad_outputs=[ui for _, _, ui in live],
                    allow_unused=True,
                )
                it = iter(jt)
                z = [(next(it) if gv is not None else None) for gv in g_var]
                del step, g_var, grads, u, jt
            finally:
                with torch.no_grad():
                    for w, b in zip(self.weights, backup):
                        w.copy_(b)
            mixed = self.mixed_second_derivative(train_batch, z, drop)
        return [da - m for da, m in zip(d_alpha, mixed)], loss_v.detach()

    def mixed_second_derivative(self, batch, z: Sequence[Optional[torch.Tensor]], drop: bool = False):
        """grad_arch (grad_w L(w, arch) . z) at the current weights, by double backward (the
        gradient's graph kept, then differentiated along ``z``; None entries of ``z`` count as
        zero). Exact up to fp32 rounding, unlike a finite difference of two gradients at w +- eps z,
        whose truncation error grows with eps and whose rounding error grows as eps shrinks.
        Every operator of the paper space has a double backward (attention through the math
        kernel, which ``strict_fp32`` selects; checkpointed cells recompute with the graph kept)."""
        loss, _ = self.network_loss(batch, drop_refs=drop)
        live = [(w, zi) for w, zi in zip(self.weights, z) if zi is not None]
        g = torch.autograd.grad(loss, [w for w, _ in live], create_graph=True, allow_unused=True)
        terms = [(gi * zi.detach()).sum() for gi, (_, zi) in zip(g, live) if gi is not None and gi.requires_grad]
        if not terms:  # no weight's gradient depends on the architecture
            return [torch.zeros_like(p) for p in self.arch_params]
        dot = torch.stack(terms).sum()
        mixed = torch.autograd.grad(dot, self.arch_params, allow_unused=True)
        return [m if m is not None else torch.zeros_like(p) for m, p in zip(mixed, self.arch_params)]

    def _arch_step_second_order(self, train_batch, arch_batch, drop: bool) -> dict[str, torch.Tensor]:
        """DARTS' unrolled step with the weight optimiser's own look-ahead (``second_order_gradient``)."""
        grads, loss_v = self.second_order_gradient(train_batch, arch_batch, drop)
        self.opt_a.zero_grad(set_to_none=True)
        for p, g in zip(self.arch_params, grads):
            p.grad = g
        self._arch_update(loss_v)
        return {"arch_loss": loss_v.detach()}

    # ---- every epoch: derive, check, report ------------------------------------------------------
    def on_epoch_end_extra(self, metrics: dict[str, Any]):
        arch = [p.detach().cpu() for p in self.arch_params]
        genotype = derive_from_arch(arch, self.space)
        if self.space.search.selection == "strength" and self.state.epoch + 1 == self.cfg.epochs:
            genotype = self._select_by_strength(genotype, metrics)
        genotype.meta.update({"epoch": self.state.epoch + 1, "step": self.state.step})
        alphas, betas = self._alphas_betas()
        metrics["alpha_rank_diff"] = self.dist.max_abs_diff(alphas)
        metrics["beta_rank_diff"] = self.dist.max_abs_diff(betas)
        if not self.dist.same_everywhere(str(genotype.to_dict()["cells"]) + str(genotype.path)):
            raise RuntimeError("ranks derived different genotypes: alpha/beta diverged across workers")
        metrics.update(arch_entropies(arch, self.space))
        share = param_free_share(genotype)
        metrics["param_free_share"] = share
        if share > COLLAPSE_SHARE and self.dist.is_main:
            log.warning(
                "search epoch %d: %.0f%% of the derived edges are parameter-free (skip connections), "
                "more than half: the DARTS skip-connection collapse; consider fewer epochs, more "
                "warm-up or a lower search.arch_lr",
                self.state.epoch + 1,
                100 * share,
            )
        self.genotype = genotype
        if self.dist.is_main:
            genotype.to_json(self.run_dir / "genotype.json")
            genotype.to_json(self.run_dir / "genotypes" / f"epoch_{self.state.epoch + 1:03d}.json")
        metrics["genotype_id"] = genotype.genotype_id()
        # for trackers (heatmaps); loggers and history keep only numbers, so these stay out of them
        metrics["alphas"] = alphas.detach().cpu()
        metrics["betas"] = betas.detach().cpu()
        return genotype

    def _alphas_betas(self) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """The supernet's cell and transition logits (a searched fusion always has both)."""
        alphas, betas = self.model.alphas, self.model.betas
        if alphas is None or betas is None:
            raise RuntimeError(f"fusion {self.space.model.fusion!r} has architecture parameters but no alphas/betas")
        return alphas, betas

    def _select_by_strength(self, by_alpha, metrics: dict[str, Any]):
        """The final genotype by DARTS-PT strength (``nasfe.engine.selection``); the tables go to
        ``strength.json`` beside the genotype, with the genotype alpha would have given."""

        m, n = self.space.model, self.space.search.selection_batches
        batches = [self._arch_batch() for _ in range(n)]
        self.model.eval()
        try:
            alphas, betas = self._alphas_betas()
            ops, trans = choice_strengths(
                alphas,
                betas,
                m.operators,
                m.cells,
                m.levels,
                lambda b: self.network_loss(b)[0],
                batches,
                average=self.dist.average,
            )
        finally:
            self.model.train()
        genotype = derive_from_strength(ops, trans, self.space)
        changed = diff_genotypes(by_alpha, genotype)
        metrics["selection_changes"] = len(changed)
        if self.dist.is_main:
            log.info(
                "genotype by strength (%d batches): %s; by alpha it would differ in %d place(s)%s",
                n,
                genotype.genotype_id(),
                len(changed),
                (": " + "; ".join(changed)) if changed else "",
            )
            atomic_write_json(
                self.run_dir / "strength.json",
                {
                    "operators": list(m.operators),
                    "batches": n,
                    "step": self.state.step,
                    "op_strength": ops.tolist(),
                    "transition_strength": trans.tolist(),
                    "genotype": genotype.to_dict(),
                    "by_alpha": by_alpha.to_dict(),
                },
            )
        return genotype

    def summary(self, seconds):
        out = super().summary(seconds)
        if self.genotype is not None:
            out["genotype"] = self.genotype.to_dict()
            out["genotype_id"] = self.genotype.genotype_id()
        return out


def run_search(
    space: SpaceConfig,
    run_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    device: str = "cpu",
    dist: Optional[DistContext] = None,
    resume: bool = True,
    resume_from: Optional[str | Path] = None,
    faces=None,
) -> dict[str, Any]:
    """Search ``space``; writes ``genotype.json``, checkpoints and ``search_summary.json`` in ``run_dir``."""
    phase = SearchPhase(
        space,
        run_dir,
        callbacks=callbacks,
        device=device,
        dist=dist,
        resume=resume,
        resume_from=resume_from,
        faces=faces,
    )
    return phase.run()
