"""Checkpoints: atomic writes, weights_only loads, clear errors, pruning."""

from __future__ import annotations

import pytest
import torch

from nasfe.engine.checkpoint import (
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def test_round_trip(tmp_path):
    p = save_checkpoint(tmp_path / "a.pt", {"step": 3, "w": torch.arange(4.0), "meta": {"x": [1, 2]}})
    got = load_checkpoint(p)
    assert got["step"] == 3 and torch.equal(got["w"], torch.arange(4.0)) and got["meta"] == {"x": [1, 2]}
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]


def test_corrupt_file_names_the_file(tmp_path):
    p = tmp_path / "search_step_00000010.pt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="search_step_00000010.pt: not a readable"):
        load_checkpoint(p)


def test_truncated_file(tmp_path):
    p = save_checkpoint(tmp_path / "b.pt", {"step": 1, "w": torch.randn(1000)})
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="b.pt"):
        load_checkpoint(p)


def test_missing_and_incomplete(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    p = save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="lacks \\['step'\\]"):
        load_checkpoint(p)


class Evil:
    """A class that weights_only loading must refuse to rebuild."""


def test_arbitrary_pickles_are_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"checkpoint_version": 1, "step": 1, "obj": Evil()}, p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_latest_and_prune(tmp_path):
    for s in (5, 20, 10, 30):
        save_checkpoint(tmp_path / checkpoint_name("search", s), {"step": s})
    save_checkpoint(tmp_path / checkpoint_name("retrain", 99), {"step": 99})
    assert latest_checkpoint(tmp_path, "search").name == checkpoint_name("search", 30)
    prune_checkpoints(tmp_path, "search", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path, "search")] == [
        checkpoint_name("search", 20),
        checkpoint_name("search", 30),
    ]
    assert latest_checkpoint(tmp_path, "retrain") is not None
    assert latest_checkpoint(tmp_path / "nothing", "search") is None
