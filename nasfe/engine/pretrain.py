"""Pre-training of the three task encoders on their single tasks, and of the classifier CN.

Section 4: "Encoders (E_B, E_N, E_L) are initially trained to address the corresponding individual
tasks". Each encoder trains alone, with its pre-training head, on images carrying only its
degradation (the degradation probabilities of the other two set to zero); CN then trains on the
full mixture with its multi-label BCE. Runs before the first step of a phase that starts fresh;
a resumed phase already holds these weights in its checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch

from nasfe.config import SpaceConfig
from nasfe.engine.dist import DistContext

log = logging.getLogger("nasfe.engine")

#: degradation probabilities (p_blur, p_noise, p_lowlight) of each single-task pre-training set
SINGLE_TASK = {"blur": (1.0, 0.0, 0.0), "noise": (0.0, 1.0, 0.0), "lowlight": (0.0, 0.0, 1.0)}


def single_task_space(space: SpaceConfig, task: str) -> SpaceConfig:
    """A copy of ``space`` whose degradations are only ``task``'s."""
    pb, pn, pl = SINGLE_TASK[task]
    degrade = dataclasses.replace(space.degrade, p_blur=pb, p_noise=pn, p_lowlight=pl)
    return dataclasses.replace(space, degrade=degrade)


def pretrain_parts(model, space: SpaceConfig, make_batches: Callable[[SpaceConfig], object], steps: int,
                   lr: float, dist: DistContext, grad_clip: float = 5.0) -> dict[str, float]:
    """Pre-train each encoder for ``steps`` steps on its single task, then CN; returns final losses.

    ``make_batches(space)`` gives an iterable of batches for a (modified) space on this rank.
    """
    from nasfe.engine.loop import cycle
    from nasfe.model.classifier import classification_loss
    from nasfe.model.nasfe import encoder_task_loss

    losses: dict[str, float] = {}
    if steps <= 0:
        return losses
    model.train()
    for task in SINGLE_TASK:
        params = model.pretrain_parameters(task)
        opt = torch.optim.Adam(params, lr=lr)
        batches = cycle(make_batches(single_task_space(space, task)))
        for _ in range(steps):
            batch = next(batches)
            opt.zero_grad(set_to_none=True)
            loss = encoder_task_loss(model, task, batch.y, batch.x)
            loss.backward()
            dist.all_reduce_grads(params)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
        losses[f"pretrain_{task}"] = float(loss.detach())
    cls_params = list(model.classifier.parameters())
    opt = torch.optim.Adam(cls_params, lr=lr)
    batches = cycle(make_batches(space))
    for _ in range(steps):
        batch = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = classification_loss(model.classify(batch.y), batch.c)
        loss.backward()
        dist.all_reduce_grads(cls_params)
        opt.step()
    losses["pretrain_cls"] = float(loss.detach())
    log.info("pre-training done: %s", ", ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    return losses
