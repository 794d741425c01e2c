"""Checkpoints: atomic writes, ``weights_only`` loads, and clear errors for broken files."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^(?P<phase>[a-z]+)_step_(?P<step>\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and why."""


def checkpoint_name(phase: str, step: int) -> str:
    """File name of the checkpoint of ``phase`` at ``step`` (sorts by step)."""
    return f"{phase}_step_{step:08d}.pt"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` to a temp file in the same folder, then rename.

    An interrupted save never leaves a truncated file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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


def latest_checkpoint(folder: str | Path, phase: str) -> Optional[Path]:
    """The newest checkpoint of ``phase`` in ``folder``, or None."""
    found = list_checkpoints(folder, phase)
    return found[-1] if found else None


def prune_checkpoints(folder: str | Path, phase: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of ``phase``."""
    for old in list_checkpoints(folder, phase)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
