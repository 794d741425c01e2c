"""benchmarks/time_to_quality.py compares like with like: each variant's run keeps its own settings."""

from __future__ import annotations

import sys
from pathlib import Path

from nasfe.config import load_space
from nasfe.data.faces import open_faces

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_each_run_validates_on_the_batches_it_was_given_whatever_runs_are_built_after_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import time_to_quality

    space = load_space("tiny", {"model.fusion": "res2", "retrain.val_batches": 5})
    faces = open_faces(space.data)
    options = {"fold_bn": True}
    timed = time_to_quality.Run("new", space, None, faces, tmp_path / "timed", 3, options)
    time_to_quality.Run("new", space, None, faces, tmp_path / "warm", 1, options)  # the throw-away warm-up run
    assert timed.phase.cfg.val_batches == 3
    assert space.retrain.val_batches == 5
    sys.modules.pop("time_to_quality", None)
