"""Reading pretrained face-backbone weights: one loader, one check, errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch


def read_state_dict(path, what: str) -> dict:
    """``torch.load(..., weights_only=True)`` of a state dict (or ``{'state_dict': ...}``) at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor content
        raise ValueError(f"{path}: cannot read as a tensor state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(state).__name__}")
    return state


def check_state_dict(
    own: dict, state: dict, path, what: str, ignored: Callable[[str], bool] = lambda key: False
) -> None:
    """Raise ``ValueError`` naming ``path`` and every missing, unexpected or mis-shaped key."""
    missing = sorted(k for k in own if k not in state)
    unknown = sorted(k for k in state if k not in own and not ignored(k))
    bad_shape = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unknown:
        parts.append(f"unexpected keys {unknown}")
    if bad_shape:
        parts.append(f"shape mismatches {bad_shape} (width must be 1.0 with real weights)")
    if parts:
        raise ValueError(f"{path}: not {what}: " + "; ".join(parts))
