"""``nasfe sweep`` with no arguments: the built-in default (sweep_tiny) runs to the end.

Its second trial (TPE seed 0: search.lr = 0.0224) diverges to NaN; the sweep records it and goes
on. The heaviest test of the suite (4 short Ray Train trials, about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]


def test_default_sweep_runs_to_the_end_with_a_diverging_trial(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")  # a local Ray instance of its own
    proc = subprocess.run(
        [sys.executable, "-m", "nasfe.cli", "sweep"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "runs" / "sweep-tiny"
    rows = list(csv.DictReader((out / "sweep_table.csv").open()))
    assert len(rows) == 4
    diverged = [r for r in rows if r["status"] == "DIVERGED"]
    assert diverged and all(r["note"].startswith("non-finite") and " step " in r["note"] for r in diverged)
    assert all(r["status"] in ("COMPLETED", "STOPPED", "DIVERGED") for r in rows)
    assert (out / "best" / "genotype.json").is_file() and "(best)" in (out / "sweep_table.md").read_text()
    assert "DIVERGED" in proc.stdout  # the printed table lists it
    assert list((out / "wandb").glob("offline-run-*/*.wandb"))  # the W&B summary run
