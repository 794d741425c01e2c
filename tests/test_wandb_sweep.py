"""W&B side of sweeps: summary run (stable id, table, genotype artifact, flat config), W&B sweep wiring."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from nasfe.distributed.sweep_space import load_sweep
from nasfe.distributed.sweep_summary import TrialRow, table_columns, table_data
from nasfe.tracking import wandb_sweep
from nasfe.tracking.wandb_logger import WandbSettings, read_offline_records

SWEEP = """
base: tiny
overrides: {search.epochs: 2}
params:
  loss.lambda_per: {type: float, low: 0.01, high: 0.2, log: true}
  model.blocks: {type: int, low: 1, high: 3}
  search.arch_lr: {type: choice, values: [1.0e-4, 3.0e-4]}
"""


@pytest.fixture
def sweep(tmp_path):
    p = tmp_path / "sweep_w.yaml"
    p.write_text(textwrap.dedent(SWEEP))
    return load_sweep(p)


def _records(folder: Path, timeout=30.0):
    files = sorted(folder.glob("*.wandb"))
    assert len(files) == 1, files
    deadline = time.time() + timeout
    while True:
        records = read_offline_records(files[0])
        if "exit" in {r.WhichOneof("record_type") for r in records} or time.time() > deadline:
            return records


def _row(trial, status, psnr, run_dir=None):
    return TrialRow(
        trial=trial,
        status=status,
        params={"loss.lambda_per": 0.05, "model.blocks": 2, "search.arch_lr": 1e-4},
        epochs=2,
        stopped_early=False,
        metrics={"val_psnr": psnr} if psnr else {},
        parameters=100,
        genotype_id="g" + trial,
        run_dir=run_dir,
        note="non-finite loss at search step 3" if status == "DIVERGED" else "",
    )


def test_summary_run_logs_table_best_artifact_and_flat_config_and_resumes_by_id(tmp_path, sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = WandbSettings(project="nasfe-test", mode="offline")
    best_file = tmp_path / "best" / "genotype.json"
    best_file.parent.mkdir()
    best_file.write_text(json.dumps({"cells": [], "path": [0]}))
    rows = [_row("a1", "COMPLETED", 12.5), _row("b2", "DIVERGED", None)]
    for _ in range(2):  # the sweep process, then its resume
        run = wandb_sweep.SummaryRun(settings, sweep, "s1", tmp_path)
        run.update(rows[:1], rows[0], table_columns(sweep), table_data(rows[:1], sweep), best_file)
        run.update(rows, rows[0], table_columns(sweep), table_data(rows, sweep), best_file)
        run.close()
    state = json.loads((tmp_path / "wandb_sweep.json").read_text())
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(state["summary_id"] in f.name for f in folders)  # "-1" when in the same second
    records = _records(folders[-1])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_id == state["summary_id"] and run.job_type == "sweep-summary" and run.run_group == "s1"
    config = {i.key: json.loads(i.value_json) for i in run.config.update if not i.key.startswith("_")}
    value = lambda v: v["value"] if isinstance(v, dict) and "value" in v else v  # noqa: E731
    config = {k: value(v) for k, v in config.items()}
    assert config["sweep.metric"] == "val_psnr" and config["sweep.params.model.blocks.high"] == 3
    assert not any(isinstance(v, dict) for v in config.values())
    history = [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [h["trials_finished"] for h in history] == [1, 2] and history[-1]["trials_diverged"] == 1
    assert history[-1]["sweep_table/_type"] == "table-file" and history[-1]["sweep_table/nrows"] == 2
    arts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "genotype"]
    assert len(arts) == 1  # logged once per process: the best did not change
    assert json.loads(arts[0].metadata)["trial"] == "a1"
    assert [e.path for e in arts[0].manifest.contents] == ["genotype.json"]
    summary = {
        i.key: json.loads(i.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for i in r.summary.update
    }
    assert summary.get("best_trial") == "a1" and summary.get("best.model.blocks") == 2


def test_a_broken_wandb_never_fails_the_sweep(tmp_path, sweep, monkeypatch, caplog):
    import wandb

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(wandb, "init", broken)
    run = wandb_sweep.SummaryRun(WandbSettings(mode="offline"), sweep, "s1", tmp_path)
    with caplog.at_level("WARNING", logger="nasfe.tracking"):
        for _ in range(3):
            run.update([], None, [], [], tmp_path / "none.json")
        run.close()
    assert run.disabled and sum("disk full" in r.getMessage() for r in caplog.records) == 1


def test_online_sweep_is_registered_once_with_the_sweep_space(tmp_path, sweep, monkeypatch):
    import wandb

    calls = []
    monkeypatch.setattr(wandb_sweep, "resolve_mode", lambda mode: "online")
    monkeypatch.setattr(wandb, "sweep", lambda config, project=None: calls.append((config, project)) or "swp123")
    settings = WandbSettings(project="nasfe-test", mode="online")
    assert wandb_sweep.register_sweep(sweep, "s1", settings, tmp_path) == "swp123"
    assert wandb_sweep.register_sweep(sweep, "s1", settings, tmp_path) == "swp123"  # a resume reuses it
    assert len(calls) == 1
    config, project = calls[0]
    assert project == "nasfe-test" and config["controller"] == {"type": "local"}
    assert config["metric"] == {"name": "search/val_psnr", "goal": "maximize"}
    assert config["parameters"] == {
        "loss.lambda_per": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.2},
        "model.blocks": {"distribution": "int_uniform", "min": 1, "max": 3},
        "search.arch_lr": {"values": [1e-4, 3e-4]},
    }


def test_offline_sweep_is_not_registered(tmp_path, sweep, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "sweep", lambda *a, **k: pytest.fail("offline must not call the W&B API"))
    assert wandb_sweep.register_sweep(sweep, "s1", WandbSettings(mode="offline"), tmp_path) is None


def test_a_trial_run_joins_the_wandb_sweep_with_its_stable_id(tmp_path, monkeypatch):
    """The trial's run carries the sweep id (and keeps its own id) in what W&B records."""
    from nasfe.config import load_space
    from nasfe.engine.callbacks import TrainState
    from nasfe.tracking.wandb_logger import WandbLogger

    logger = WandbLogger(
        WandbSettings(
            project="nasfe-test",
            mode="offline",
            group="s1",
            name="trial_x",
            run_id="abcdef0123456789",
            sweep_id="swp123",
        )
    )
    st = TrainState(phase="search", run_dir=tmp_path, epochs=1, steps_per_epoch=1)
    logger.on_start(st, {"space": load_space("tiny").to_dict()})
    logger.on_end(st, {"steps": 1})
    folder = next((tmp_path / "wandb").glob("offline-run-*"))
    run = next(r.run for r in _records(folder) if r.WhichOneof("record_type") == "run")
    assert run.sweep_id == "swp123" and run.run_id == "abcdef0123456789"
