"""Shared fixtures: ../shared (skip cleanly when absent), small seeded tensors, thread limits."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two-core CI: keep torch from oversubscribing when several tests' workers run at once.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SHARED = Path(os.environ.get("NASFE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared, or skip the test when it is not there."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (../shared is not present)")
    return p


@pytest.fixture
def shared():
    """The ../shared folder; skips the test when it is absent."""
    return shared_path()
