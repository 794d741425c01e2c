"""User-facing errors, on the ground floor so every room can raise them without importing the CLI.

The command line prints any :class:`NasfeError` as one line and exits with status 2 (no traceback).
"""
from __future__ import annotations

from typing import Optional


class NasfeError(Exception):
    """Base of every error that is the user's input or the run's state, not a bug."""


class CommandError(NasfeError):
    """A bad argument, file or setting: printed as one line, exit status 2."""


class DivergenceError(NasfeError):
    """Training produced a non-finite loss, gradient or weight.

    ``str(exc)`` always starts with ``"non-finite"`` (sweeps match on it to mark a trial
    diverged); it names the phase, the step and the last good checkpoint.
    """

    def __init__(self, what: str, step: int, phase: str = "", last_good: Optional[str] = None):
        self.what = what
        self.step = int(step)
        self.phase = phase
        self.last_good = last_good
        where = f"{phase} " if phase else ""
        good = f"last good checkpoint: {last_good}" if last_good else "no good checkpoint yet"
        super().__init__(f"non-finite {what} at {where}step {self.step}; stopped ({good})")

    def __reduce__(self):  # survives pickling across Ray workers with its fields
        return (type(self), (self.what, self.step, self.phase, self.last_good))
