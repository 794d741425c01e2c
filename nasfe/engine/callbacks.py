"""The engine's reporting interface: a loop calls callbacks, it never imports Ray or W&B."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional
from tqdm.auto import tqdm


@dataclass
class TrainState:
    """Where a loop stands; handed to every callback."""

    phase: str  # "search", "retrain" or "pretrain"
    epoch: int = 0
    step: int = 0  # global optimisation steps done in this phase
    steps_per_epoch: int = 0
    epochs: int = 0
    rank: int = 0
    world_size: int = 1
    run_dir: Optional[Path] = None
    started: float = field(default_factory=time.time)

    @property
    def total_steps(self) -> int:
        """Steps of the whole phase."""
        return self.epochs * self.steps_per_epoch

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs."""
        return self.rank == 0


class Callback:
    """Override what you need; every hook is called on every rank (check ``state.is_main``)."""

    def on_start(self, state: TrainState, config: dict[str, Any]) -> None:
        """Before the first step (after a resume, at the resumed step)."""

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        """After each optimisation step. ``metrics`` holds the means since the previous logging
        step (host floats) every ``log_every`` steps and at the end of an epoch, else it is empty:
        the loss terms stay on the device in between."""

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any], genotype: Any = None) -> None:
        """After each epoch with validation metrics; ``genotype`` during search, else None."""

    def on_checkpoint(self, state: TrainState, path: Optional[Path], metrics: dict[str, Any]) -> None:
        """After rank 0 saved ``path`` (None on the other ranks); called on all ranks together."""

    def on_images(self, state: TrainState, panels: dict[str, Any]) -> None:
        """Sample restorations: ``{'degraded','restored','clean'}`` tensors (N,3,H,W)."""

    def on_end(self, state: TrainState, summary: dict[str, Any]) -> None:
        """After the last step."""


class CallbackList(Callback):
    """Fans every hook out to several callbacks, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = [c for c in callbacks if c is not None]

    def __getattribute__(self, name: str):
        if name.startswith("on_"):

            def fan_out(*args, **kwargs):
                for cb in object.__getattribute__(self, "callbacks"):
                    getattr(cb, name)(*args, **kwargs)

            return fan_out
        return object.__getattribute__(self, name)


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class ConsoleProgress(Callback):
    """A tqdm bar over the phase's steps (rank 0) and one line per epoch with ETA."""

    def __init__(self, stream=None, bar: bool = True, write=None):
        self.stream = stream or sys.stderr
        self.bar_enabled = bar
        # where epoch lines go when there is no bar; Ray Train workers pass a logger's method,
        # because Ray echoes a worker's raw stdout/stderr twice but its log records once
        self.write = write
        self.bar = None
        self.t0 = None
        self.step0 = 0

    def on_start(self, state, config):
        if not state.is_main:
            return
        self.t0, self.step0 = time.time(), state.step
        if self.bar_enabled:
            self.bar = tqdm(
                total=state.total_steps,
                initial=state.step,
                desc=state.phase,
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
            )

    def on_step(self, state, metrics):
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "arch_loss")})

    def on_epoch_end(self, state, metrics, genotype=None):
        if not state.is_main:
            return
        done = state.step - self.step0
        rate = (time.time() - self.t0) / max(done, 1)
        eta = rate * (state.total_steps - state.step)
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        line = f"[{state.phase}] epoch {state.epoch}/{state.epochs} step {state.step}/{state.total_steps} {shown} eta {_fmt_eta(eta)}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif self.write is not None:
            self.write(line)
        else:
            print(line, file=self.stream, flush=True)

    def on_end(self, state, summary):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
