"""Checkpoints: atomic writes, ``weights_only`` loads, and clear errors for broken files."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import torch

from nasfe.errors import CheckpointError
from nasfe.imageio import atomic_output

log = logging.getLogger("nasfe.engine")

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^(?P<phase>[a-z]+)_step_(?P<step>\d{8})\.pt$")


def checkpoint_name(phase: str, step: int) -> str:
    """File name of the checkpoint of ``phase`` at ``step`` (sorts by step)."""
    return f"{phase}_step_{step:08d}.pt"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` to a temp file in the same folder, then rename.

    An interrupted save (or a full disk: :class:`~nasfe.errors.WriteError`) never leaves a
    truncated file under the final name; the file gets the usual mode (0644 under the usual umask).
    """

    path = Path(path)
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **payload}
    with atomic_output(path) as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ("step",)) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean the same thing to a user
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run to many lines
        raise CheckpointError(f"{path}: not a readable nasfe checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(payload).__name__}")
    version = payload.get("checkpoint_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r}, this nasfe reads {CHECKPOINT_VERSION}")
    missing = [k for k in required if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return payload


def list_checkpoints(folder: str | Path, phase: str) -> list[Path]:
    """Checkpoints of ``phase`` in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if (m := _NAME.match(p.name)) and m["phase"] == phase]
    return sorted(found)


def latest_checkpoint(folder: str | Path, phase: str, required: tuple[str, ...] = ("step",)) -> Optional[Path]:
    """The newest checkpoint of ``phase`` in ``folder`` that loads, or None when none is there.

    A newer file that does not load (half written by a full disk, corrupted) is passed over with a
    warning and left in place, never deleted. When files exist but none loads, the newest one's
    :class:`CheckpointError` is raised (a resume must not silently start over).
    """
    found = list_checkpoints(folder, phase)
    first_error: Optional[CheckpointError] = None
    for path in reversed(found):
        try:
            load_checkpoint(path, required=required)
        except CheckpointError as exc:
            first_error = first_error or exc
            log.warning("passing over %s: %s", path, exc)
            continue
        return path
    if first_error is not None:
        raise CheckpointError(f"no checkpoint of {phase!r} in {folder} loads; newest: {first_error}")
    return None


def prune_checkpoints(folder: str | Path, phase: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of ``phase``."""
    for old in list_checkpoints(folder, phase)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
