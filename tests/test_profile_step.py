"""benchmarks/profile_step.py profiles any space, however few training batches its split holds."""

from __future__ import annotations

from pathlib import Path

from nasfe.config import load_space
from nasfe.data.faces import open_faces


def test_a_profile_runs_more_steps_than_one_pass_over_a_small_split(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from profile_step import BENCH_OPTIONS, StepProfile

    space = load_space("tiny", {"model.blocks": 1, "model.cells": 1, "model.levels": 1})
    faces = open_faces(space.data)
    run = StepProfile("retrain", space, None, faces, tmp_path, warmup=0, options=BENCH_OPTIONS)
    per_pass = len(run.phase.weight_batches())
    for i in range(per_pass + 2):
        run.step(i, last=i == per_pass + 1)
    assert len(run.step_times) == per_pass + 2
