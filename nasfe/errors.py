"""User-facing errors, on the ground floor so every room can raise them without importing the CLI.

The command line prints any :class:`NasfeError` as one line and exits with status 2 (no traceback).
Each error also keeps the built-in base it had before it moved here (``ValueError``,
``RuntimeError``, ``OSError``), so ``except ValueError`` around a library call still catches it.
"""

from __future__ import annotations

import os
from typing import Optional, Union


class NasfeError(Exception):
    """Base of every error that is the user's input or the run's state, not a bug."""


class CommandError(NasfeError):
    """A bad argument, file or setting: printed as one line, exit status 2."""


class ConfigError(NasfeError, ValueError):
    """A configuration file or field is invalid; the message names the file and the field."""


class CheckpointError(NasfeError, RuntimeError):
    """A checkpoint cannot be used; the message names the file and why."""


class GenotypeError(NasfeError, ValueError):
    """A genotype (file or data) is invalid; the message names the file and the field."""


class ImageReadError(NasfeError, ValueError):
    """An image file could not be read; the message names the file and the reason."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: cannot read image: {reason}")

    def __reduce__(self):  # picklable with its two fields (DataLoader and Ray workers)
        return (type(self), (self.path, self.reason))


class TestSetError(NasfeError, ValueError):
    """A test-set folder is inconsistent; the message names the file."""

    __test__ = False  # not a pytest class


class FaceSourceError(NasfeError, ValueError):
    """A face folder or dataset layout is unusable; the message names the file."""


class StorageError(NasfeError, ValueError):
    """Bad run name or storage location."""


class ExportError(NasfeError, RuntimeError):
    """The export failed or its outputs differ from PyTorch's; the message says which file and by how much."""


class WriteError(NasfeError, OSError):
    """A file could not be written (full disk, read-only or forbidden folder); names the file.

    Nothing is left half written under the final name (writes go through a temporary file).
    """


class LockedError(NasfeError):
    """Another process holds the lock of a run or output folder; names the lock and its holder."""


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


class NonFiniteNetworkError(DivergenceError):
    """A network gives non-finite values on its first forward, before any training step.

    A :class:`DivergenceError` (never retried: the same weights fail the same way); ``where`` names
    the first part that did it, e.g. ``fusion layer 2 (level 1) block 5 operator deveil_op on input 3``.
    """

    def __init__(self, where: str, phase: str = ""):
        self.where = where
        NasfeError.__init__(
            self,
            f"non-finite network at initialisation: {where} gives non-finite values "
            f"on the pre-flight forward of {phase or 'the run'}; nothing was trained "
            f"(model.stable_cells bounds every block)",
        )
        self.what, self.step, self.phase, self.last_good = f"output of {where}", 0, phase, None

    def __reduce__(self):
        return (type(self), (self.where, self.phase))


class DataFetchError(NasfeError):
    """The data URI cannot be read (no such prefix, no access)."""


class GpuUnavailableError(NasfeError):
    """A worker was given a GPU by Ray but its torch cannot use CUDA."""


class NoRoomError(NasfeError):
    """The workers found no room in the cluster for ``start_timeout_s`` in a row."""


def error_chain(exc: Optional[BaseException]):
    """Every error behind ``exc``, once each: Ray's wrappers (worker failures, ``cause``,
    controller failures), ``__cause__`` and ``__context__``.

    A wrapper that poses as its cause (Ray's ``RayTaskError`` subclasses the type it wraps) yields
    the cause instead of itself, so callers see the real error and its one-line message.
    """
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException) and cause is not e:
            todo.append(cause)
            continue
        yield e
        failures = getattr(e, "worker_failures", None)
        todo.extend(failures.values() if isinstance(failures, dict) else [])
        todo.extend([getattr(e, "controller_failure", None), e.__cause__, e.__context__])
