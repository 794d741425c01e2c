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
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch

from nasfe.config import SpaceConfig
from nasfe.data.batches import cycle
from nasfe.engine.dist import DistContext
from nasfe.errors import DivergenceError
from nasfe.engine.meter import StepMeter
from nasfe.model.classifier import classification_loss
from nasfe.model.nasfe import encoder_task_loss

log = logging.getLogger("nasfe.engine")

#: degradation probabilities (p_blur, p_noise, p_lowlight) of each single-task pre-training set
SINGLE_TASK = {"blur": (1.0, 0.0, 0.0), "noise": (0.0, 1.0, 0.0), "lowlight": (0.0, 0.0, 1.0)}


def single_task_space(space: SpaceConfig, task: str) -> SpaceConfig:
    """A copy of ``space`` whose degradations are only ``task``'s."""
    pb, pn, pl = SINGLE_TASK[task]
    degrade = dataclasses.replace(space.degrade, p_blur=pb, p_noise=pn, p_lowlight=pl)
    return dataclasses.replace(space, degrade=degrade)


def _train_part(
    part: str,
    params,
    loss_of,
    batches,
    steps: int,
    lr: float,
    dist: DistContext,
    grad_clip: float,
    autocast: Callable[[], ContextManager] = nullcontext,
) -> torch.Tensor:
    """``steps`` Adam steps of ``params`` on ``loss_of(batch)`` (computed inside ``autocast()``);
    returns the last loss (device).

    No host read inside the loop; at the end one read checks that every loss and gradient norm
    was finite and raises :class:`DivergenceError` (phase ``pretrain``) otherwise.
    """

    meter = StepMeter(params[0].device)
    opt = torch.optim.Adam(params, lr=lr)
    loss = None
    for step in range(1, steps + 1):
        batch = next(batches)
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of(batch)
        loss.backward()
        dist.all_reduce_grads(params)
        meter.watch(step, "loss", loss)
        meter.watch(step, "gradient", torch.nn.utils.clip_grad_norm_(params, grad_clip))
        opt.step()
    problem = meter.read(params)
    if dist.active and dist.mean(1.0 if problem else 0.0) > 0 and problem is None:
        problem = ("value on another worker", steps)
    if problem is not None:
        what, at = problem
        raise DivergenceError(f"{what} ({part})", at if at >= 0 else steps, "pretrain", None)
    if loss is None:
        raise ValueError(f"pretraining {part} needs at least one step, got steps = {steps}")
    return loss.detach()


def pretrain_parts(
    model,
    space: SpaceConfig,
    make_batches: Callable[[SpaceConfig], object],
    steps: int,
    lr: float,
    dist: DistContext,
    grad_clip: float = 5.0,
    autocast: Callable[[], ContextManager] = nullcontext,
) -> dict[str, float]:
    """Pre-train each encoder for ``steps`` steps on its single task, then CN; returns final losses.

    ``make_batches(space)`` gives an iterable of batches for a (modified) space on this rank;
    ``autocast()`` wraps each forward and loss (the phase's bf16 autocast, or none).
    """

    if steps <= 0:
        return {}
    model.train()
    last: dict[str, torch.Tensor] = {}
    for task in SINGLE_TASK:
        last[f"pretrain_{task}"] = _train_part(
            f"encoder {task}",
            model.pretrain_parameters(task),
            lambda b, t=task: encoder_task_loss(model, t, b.y, b.x),
            cycle(make_batches(single_task_space(space, task))),
            steps,
            lr,
            dist,
            grad_clip,
            autocast,
        )
    last["pretrain_cls"] = _train_part(
        "classifier",
        list(model.classifier.parameters()),
        lambda b: classification_loss(model.classify(b.y), b.c),
        cycle(make_batches(space)),
        steps,
        lr,
        dist,
        grad_clip,
        autocast,
    )
    keys = list(last)
    losses = dict(zip(keys, torch.stack([last[k] for k in keys]).tolist()))
    log.info("pre-training done: %s", ", ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    return losses
