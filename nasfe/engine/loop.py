"""What every training phase shares: data, loss, epochs, validation, checkpoints, resume.

A phase (search, retrain, pretrain) subclasses :class:`Phase` and supplies its model,
optimisers and one ``train_step``. The loop is plain PyTorch; progress, W&B and Ray reach it
only through :class:`~nasfe.engine.callbacks.Callback` objects.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn.functional as F

from nasfe.config import PhaseConfig, SpaceConfig
from nasfe.engine.callbacks import Callback, CallbackList, TrainState
from nasfe.engine.checkpoint import (
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from nasfe.engine.dist import DistContext
from nasfe.engine.meter import StepMeter
from nasfe.errors import DivergenceError
from nasfe.data.batches import BatchMaker
from nasfe.evaluate.metrics import psnr, ssim
from nasfe.engine.preflight import preflight
from nasfe.engine.pretrain import pretrain_parts
from nasfe.imageio import atomic_write_json

if TYPE_CHECKING:
    from nasfe.identity.losses import NASFELoss
    from nasfe.model.nasfe import NASFE

log = logging.getLogger("nasfe.engine")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a CPU whose oneDNN runs bf16 convolutions natively (AVX-512 BF16 or
    AMX), where they take about half the time of float32 ones (docs/BENCHMARKS.md)."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_amp(amp: bool | str, device: torch.device) -> bool:
    """``search.amp`` / ``retrain.amp`` for ``device``: true and false as given; ``"auto"`` is on
    for a CPU with native bf16 (:func:`native_bf16`) and off elsewhere (GPUs: until
    benchmarks/gpu_check.py shows bf16 training at the same quality there)."""
    if isinstance(amp, bool):
        return amp
    return native_bf16(torch.device(device))


def scheduled_lr(settings: PhaseConfig, step: int, total_steps: int) -> float:
    """The weights' learning rate for optimisation step ``step`` (0-based) of ``total_steps``.

    A pure function of the step, so a resumed phase continues the same curve.
    """
    if settings.lr_schedule == "constant":
        return settings.lr
    warm = settings.lr_warmup_steps
    if step < warm:
        return settings.lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return settings.lr_min + 0.5 * (settings.lr - settings.lr_min) * (1.0 + math.cos(math.pi * t))


class Phase:
    """One training phase with checkpoint/resume; subclasses implement :meth:`train_step`."""

    name = "phase"
    keep_checkpoints = 3
    # set by :meth:`build` in each subclass
    model: NASFE
    loss_fn: NASFELoss

    def __init__(
        self,
        space: SpaceConfig,
        settings: PhaseConfig,
        run_dir: str | Path,
        callbacks: Sequence[Callback] = (),
        device: str | torch.device = "cpu",
        dist: Optional[DistContext] = None,
        resume: bool = True,
        resume_from: Optional[str | Path] = None,
        faces=None,
    ):
        self.space = space
        self.cfg = settings
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.callbacks = CallbackList(callbacks)
        self.device = torch.device(device)
        self.dist = dist or DistContext.detect()
        self.resume = resume
        self.resume_from = Path(resume_from) if resume_from else None
        self.faces = faces
        if settings.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {settings.batch_size} is not divisible by {self.dist.world_size} workers")
        self.local_batch = settings.batch_size // self.dist.world_size
        self.state = TrainState(
            phase=self.name,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            run_dir=self.run_dir,
            epochs=settings.epochs,
        )
        self.last_metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.meter = StepMeter(self.device)
        self.last_good: Optional[str] = None  # the newest checkpoint written (or resumed from)
        self._checked_step = -1  # step at which the guard last read the device
        # whole steps without reference photos, drawn on the host (no device read)
        self._drop_rng = random.Random(settings.seed + 17)

    # ----- to be provided by phases -------------------------------------------------------
    def build(self) -> None:
        """Create ``self.model``, ``self.loss_fn`` and optimisers."""
        raise NotImplementedError

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch``; returns its scalar metrics as (device) tensors.

        Nothing in a step may read a device value on the host: the loop sums the metrics on the
        device and reads them once per ``log_every`` steps (:class:`~nasfe.engine.meter.StepMeter`).
        Non-finite losses and gradients are recorded with :meth:`watch`.
        """
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers whose state is checkpointed."""
        raise NotImplementedError

    def scheduled_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers whose learning rate follows ``lr_schedule`` (the weights'; not alpha/beta's)."""
        return [o for name, o in self.optimizers().items() if name != "arch"]

    def apply_lr(self) -> float:
        """Set the scheduled learning rate of the step about to run; returns it."""
        lr = scheduled_lr(self.cfg, self.state.step, self.cfg.epochs * self.state.steps_per_epoch)
        for opt in self.scheduled_optimizers():
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def extra_state(self) -> dict[str, Any]:
        """Phase-specific checkpoint entries."""
        return {}

    def load_extra_state(self, payload: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def on_epoch_end_extra(self, metrics: dict[str, Any]) -> Any:
        """Hook after validation (search derives its genotype here); returns the genotype or None."""
        return None

    # ----- shared machinery ---------------------------------------------------------------
    def make_batches(self, split: str, seed_offset: int = 0, space: Optional[SpaceConfig] = None, faces=None):
        """A batch maker for ``split`` on this rank (its shard, its share of the global batch)."""

        return BatchMaker(
            space or self.space,
            split,
            self.local_batch,
            device=self.device,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=self.cfg.seed + seed_offset,
            faces=faces if faces is not None else self.faces,
        )

    def weight_batches(self, seed_offset: int = 0, space: Optional[SpaceConfig] = None):
        """Batches the weights (and pre-training) train on: the training split here; the search
        keeps part of it for the architecture."""
        return self.make_batches("train", seed_offset, space=space)

    def drop_refs(self) -> bool:
        """Whether this step trains without reference photos (one host draw, the same on every rank)."""
        return self._drop_rng.random() < self.space.identity.drop_refs

    def watch(self, what: str, value: torch.Tensor) -> None:
        """Record the step being run as diverged if ``value`` is not finite (checked at the next read)."""
        self.meter.watch(self.state.step + 1, what, value)

    def guarded_parameters(self) -> list[torch.Tensor]:
        """Every trained tensor: weights, architecture parameters, pre-training heads."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def check_finite(self) -> None:
        """Read the device once: raise :class:`DivergenceError` if a watched value or a weight was
        not finite (every rank raises together); afterwards the meter's sums are on the host."""
        problem = self.meter.read(self.guarded_parameters())
        self._checked_step = self.state.step
        if self.dist.active and self.dist.mean(1.0 if problem else 0.0) > 0 and problem is None:
            problem = ("value on another worker", self.state.step)
        if problem is not None:
            what, step = problem
            raise DivergenceError(what, step if step >= 0 else self.state.step, self.name, self.last_good)

    def autocast(self):
        """bf16 autocast when the config enables it for this device (:func:`resolve_amp`)."""
        if not resolve_amp(self.cfg.amp, self.device) or getattr(self, "_strict_fp32", False):
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def clean_photo_keys(self, batch):
        """Bind the batch's photo keys to its clean images on the loss's backbone (a no-op for a
        batch without keys or a loss without a backbone)."""
        backbone = getattr(getattr(self, "loss_fn", None), "backbone", None)
        keys = getattr(batch, "keys", None)
        if backbone is None or keys is None or not hasattr(backbone, "image_keys"):
            return nullcontext()
        return backbone.image_keys((batch.x, keys), (batch.refs, getattr(batch, "ref_keys", None)))

    def network_loss(self, batch, drop_refs: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_final (Eq. 9) plus CN's BCE, and its detached parts (device tensors, no host read).

        With ``drop_refs`` the network restores without reference photos (so it learns to work
        without them at test time); the identity loss still uses them, as targets only.
        """
        # autocast: the loss's face backbone too (most of a step's convolutions); the photo keys let
        # the backbone reuse clean targets' and references' outputs from earlier steps
        with self.autocast(), self.clean_photo_keys(batch):
            out = self.model(batch.y, refs=None if drop_refs else batch.refs)
            total, parts = self.loss_fn(out.restored.float(), batch.x, batch.refs)
        metrics = dict(parts)
        if self.space.loss.lambda_cls > 0 and out.class_logits is not None:
            cls = F.binary_cross_entropy_with_logits(out.class_logits.float(), batch.c.float())
            total = total + self.space.loss.lambda_cls * cls
            metrics["cls"] = cls.detach()
        metrics["loss"] = total.detach()
        return total, metrics

    def clip_groups(self, params) -> list[list[int]]:
        """Indices into ``params`` of each group clipped together: one group, or (with
        ``grad_clip_per_part``) one per part of the network (``NASFE.weight_parts``)."""
        if not self.cfg.grad_clip_per_part or not hasattr(self.model, "weight_parts"):
            return [list(range(len(params)))]
        part = {id(p): name for name, ps in self.model.weight_parts().items() for p in ps}
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(part.get(id(p), "other"), []).append(i)
        return list(groups.values())

    def clip_coefficients(self, params, grads) -> tuple[list, list[torch.Tensor]]:
        """The factor each gradient of ``params`` is clipped by (``clip_grad_norm_``'s rule per
        group: min(1, grad_clip / (norm + 1e-6))), and each group's norm; differentiable in
        ``grads`` (the second-order look-ahead differentiates through it). None grads count as zero."""
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip and self.cfg.grad_clip > 0 else math.inf
        coefs: list = [1.0] * len(params)
        norms = []
        for idx in self.clip_groups(params):
            gs = [grads[i] for i in idx if grads[i] is not None]
            if not gs:
                continue
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gs]))
            norms.append(norm)
            if math.isfinite(max_norm):
                coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
                for i in idx:
                    coefs[i] = coef
        return coefs, norms

    def clip(self, params, what: str = "gradient") -> torch.Tensor:
        """Clip the gradient norm when configured (as a whole, or per part with
        ``grad_clip_per_part``); each group's norm (a device scalar) is watched for divergence and
        the norm of all of them is returned."""
        params = [p for p in params if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        with torch.no_grad():
            coefs, norms = self.clip_coefficients(params, [p.grad for p in params])
            for p, c in zip(params, coefs):
                if isinstance(c, torch.Tensor):
                    p.grad.mul_(c.to(p.grad.dtype))
        norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.device)
        self.watch(what, norm)
        return norm

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR/SSIM of restored and of degraded inputs against clean, on the validation split."""

        self.model.eval()
        keys = ("val_psnr", "val_ssim", "input_psnr", "input_ssim", "val_cls_acc")
        sums = {k: torch.zeros((), device=self.device) for k in keys}  # summed on the device, read once
        n = 0
        first = None
        self.val_maker.set_epoch(0)  # the same validation images every epoch
        for i, batch in enumerate(self.val_maker):
            if i >= self.cfg.val_batches:
                break
            out = self.model(batch.y, refs=None)  # float32, as evaluation and restoration run it
            restored = out.restored.float().clamp(0, 1)
            sums["val_psnr"] += psnr(restored, batch.x).clamp(max=100).sum().float()
            sums["val_ssim"] += ssim(restored, batch.x).sum().float()
            sums["input_psnr"] += psnr(batch.y, batch.x).clamp(max=100).sum().float()
            sums["input_ssim"] += ssim(batch.y, batch.x).sum().float()
            if out.class_logits is not None:
                pred = (out.class_logits.float() > 0).float()
                sums["val_cls_acc"] += (pred == batch.c).float().mean(dim=1).sum()
            n += len(batch.x)
            if first is None:
                first = {"degraded": batch.y[:4].cpu(), "restored": restored[:4].cpu(), "clean": batch.x[:4].cpu()}
        self.model.train()
        host = dict(zip(keys, torch.stack([sums[k] for k in keys]).tolist()))
        total_n = self.dist.mean(n) * self.dist.world_size
        metrics = {k: self.dist.mean(v) * self.dist.world_size / max(total_n, 1) for k, v in host.items()}
        if first is not None and self.state.is_main:
            self.callbacks.on_images(self.state, first)
        return metrics

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the phase stands."""
        return {
            "phase": self.name,
            "step": self.state.step,
            "epoch": self.state.epoch,
            "steps_per_epoch": self.state.steps_per_epoch,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "torch_rng": torch.get_rng_state(),
            "drop_rng": list(self._drop_rng.getstate()[1]),
            "space": self.space.to_dict(),
            "history": json.loads(json.dumps(self.history)),
            **self.extra_state(),
        }

    def ensure_finite(self) -> None:
        """The divergence guard before anything is written: nothing non-finite reaches a file."""
        if self._checked_step != self.state.step:
            self.check_finite()

    def save(self) -> Optional[Path]:
        """Rank 0 writes a checkpoint (after the divergence guard); every rank then calls
        ``on_checkpoint`` together."""
        self.ensure_finite()
        path = None
        target = self.ckpt_dir / checkpoint_name(self.name, self.state.step)
        if self.dist.is_main:
            path = save_checkpoint(target, self.checkpoint_payload())
            prune_checkpoints(self.ckpt_dir, self.name, self.keep_checkpoints)
        self.last_good = str(target)
        self.callbacks.on_checkpoint(self.state, path, dict(self.last_metrics))
        return path

    def maybe_resume(self) -> Optional[Path]:
        """Load ``resume_from`` or the newest checkpoint in the run directory, if any."""
        path = self.resume_from
        if path is None and self.resume:
            path = latest_checkpoint(self.ckpt_dir, self.name)
        if path is None:
            return None
        payload = load_checkpoint(path, required=("step", "epoch", "model", "optimizers"))
        if payload.get("phase") != self.name:
            raise CheckpointError(f"{path}: a {payload.get('phase')!r} checkpoint, not {self.name!r}")
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit this model ({exc})") from None
        for name, opt in self.optimizers().items():
            if name in payload["optimizers"]:
                opt.load_state_dict(payload["optimizers"][name])
        torch.set_rng_state(payload["torch_rng"])
        drop = payload.get("drop_rng")
        if isinstance(drop, (list, tuple)) and len(drop) == 625:  # older checkpoints hold a torch state: start anew
            self._drop_rng.setstate((3, tuple(int(v) for v in drop), None))
        self.last_good = str(path)
        self.state.step = int(payload["step"])
        self.state.epoch = int(payload["epoch"])
        self.history = list(payload.get("history", []))
        self.load_extra_state(payload)
        log.info("resumed %s from %s at step %d", self.name, path, self.state.step)
        return path

    def pretrain(self) -> None:
        """Each task encoder and CN trained alone for ``pretrain_steps`` (none when it is 0)."""
        if self.cfg.pretrain_steps > 0:
            pretrain_parts(
                self.model,
                self.space,
                lambda sp: self.weight_batches(3000, space=sp),
                self.cfg.pretrain_steps,
                self.cfg.lr,
                self.dist,
                self.cfg.grad_clip or 5.0,
                autocast=self.autocast,
            )

    def run(self) -> dict[str, Any]:
        """Train for the configured epochs (continuing a checkpoint), then return a summary."""
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        self.build()
        self.train_maker = self.weight_batches()
        self.val_maker = self.make_batches("val", seed_offset=1000)
        spe = self.cfg.steps_per_epoch or len(self.train_maker)
        if spe < 1:
            raise RuntimeError("the training split holds fewer images than one batch")
        self.state.steps_per_epoch = spe
        resumed = self.maybe_resume()
        if resumed is None:  # a fresh network must be finite before hours of pre-training go into it
            preflight(self.model, self.space.data.height, self.space.data.width, self.device, self.name)
        if resumed is None:
            self.pretrain()
        self.callbacks.on_start(
            self.state,
            {"phase": self.name, "space": self.space.to_dict(), "resumed_from": str(resumed) if resumed else None},
        )
        t_start = time.time()
        self.model.train()
        log_every = max(1, self.cfg.log_every)
        while self.state.epoch < self.cfg.epochs:
            epoch = self.state.epoch
            first_step = self.state.step - epoch * spe  # > 0 after a mid-epoch resume
            self.meter.start_epoch()
            self.train_maker.set_epoch(epoch)
            batches = iter(self.train_maker)
            for _ in range(first_step):
                # an epoch shorter than the loader cycles; skipping keeps the data order of a run
                # that never stopped
                next(batches, None)
            for i in range(first_step, spe):
                batch = next(batches, None)
                if batch is None:
                    self.train_maker.set_epoch(epoch + 10_000 * (self.state.step + 1))
                    batches = iter(self.train_maker)
                    batch = next(batches)
                self.apply_lr()
                self.meter.add(self.train_step(batch))
                self.state.step += 1
                step_metrics: dict[str, float] = {}
                if self.state.step % log_every == 0 or i == spe - 1:
                    self.check_finite()  # the one host read of this interval
                    step_metrics = self.meter.interval_means()
                    self.last_metrics = step_metrics
                self.callbacks.on_step(self.state, step_metrics)
                if (
                    self.cfg.checkpoint_every
                    and self.state.step % self.cfg.checkpoint_every == 0
                    and self.state.step % spe
                ):
                    self.save()
            self.ensure_finite()
            val = self.validate()
            metrics = {"epoch": epoch + 1, **self.meter.epoch_means(), **val}
            genotype = self.on_epoch_end_extra(metrics)
            self.history.append(
                {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            )
            self.state.epoch = epoch + 1
            self.callbacks.on_epoch_end(self.state, metrics, genotype)
            self.last_metrics = metrics
            self.save()
        summary = self.summary(time.time() - t_start)
        if self.dist.is_main:
            atomic_write_json(self.run_dir / f"{self.name}_summary.json", summary)
        self.callbacks.on_end(self.state, summary)
        return summary

    def summary(self, seconds: float) -> dict[str, Any]:
        """What the phase achieved (written to ``<phase>_summary.json``)."""
        last = self.history[-1] if self.history else {}
        best = max((h.get("val_psnr", -math.inf) for h in self.history), default=None)
        params = sum(p.numel() for p in self.model.weight_parameters())
        return {
            "phase": self.name,
            "steps": self.state.step,
            "epochs": self.state.epoch,
            "seconds": round(seconds, 2),
            "world_size": self.dist.world_size,
            "final": last,
            "best_val_psnr": best,
            "parameters": params,
            "run_dir": str(self.run_dir),
        }
