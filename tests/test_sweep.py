"""A real local sweep on Ray (Tune + Optuna + ASHA, each trial a Ray Train search run).

One module-scoped sweep of 4 trials in a shrunken tiny space: it is interrupted (SIGUSR1, Tune's
Ctrl-C) after two trials finish, then resumed; every test reads that one sweep.
"""
from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

SWEEP = """
base: tiny
phase: search
num_samples: 4
max_concurrent: 1
workers_per_trial: 1
seed: 0
asha: {{grace_period: 1, reduction_factor: 2}}
storage: sqlite:///{db}
overrides:
  search.epochs: 3
  search.warmup_epochs: 1
  search.steps_per_epoch: 1
  search.batch_size: 4
  search.val_batches: 1
  search.checkpoint_every: 0
  identity.width: 0.25
  identity.refs: 1
  data.height: 32
  data.width: 32
  model.channels: 4
  model.encoder_channels: 4
  model.identity_channels: 4
params:
  loss.lambda_per: {{type: float, low: 0.01, high: 0.2, log: true}}
  model.blocks: {{type: int, low: 1, high: 2}}
  search.lr: {{type: float, low: 1.0e-5, high: 3.0e-2, log: true}}
"""


def _interrupt_after(n: int):
    from ray import tune

    class InterruptAfter(tune.Callback):
        """Sends Tune's interrupt signal once ``n`` trials have finished (a user's Ctrl-C)."""

        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if self.done == n:
                os.kill(os.getpid(), signal.SIGUSR1)

    return InterruptAfter()


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """(interrupted result, resumed result, sweep space): one Ray instance for the module."""
    ray = pytest.importorskip("ray")
    from nasfe.distributed.sweep import run_sweep
    from nasfe.distributed.sweep_space import load_sweep

    root = tmp_path_factory.mktemp("sweep")
    path = root / "sweep_test.yaml"
    path.write_text(SWEEP.format(db=root / "optuna.db"))
    sweep = load_sweep(path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "OMP_NUM_THREADS": "1"}})
    try:
        first = run_sweep(sweep, storage=str(root / "runs"), name="t", progress=False,
                          callbacks=[_interrupt_after(2)])
        finished_first = {r.trial for r in first.rows if r.status in ("COMPLETED", "STOPPED")}
        second = run_sweep(sweep, storage=str(root / "runs"), name="t", progress=False)
    finally:
        ray.shutdown()
    return first, finished_first, second, sweep


def test_interrupted_sweep_stops_early_and_says_so(sweep_runs):
    first, finished_first, second, _ = sweep_runs
    assert first.interrupted and not first.resumed
    assert len(finished_first) >= 2 and len(finished_first) < 4


def test_resumed_sweep_completes_without_rerunning_finished_trials(sweep_runs):
    first, finished_first, second, _ = sweep_runs
    assert second.resumed and not second.interrupted
    assert len(second.rows) == 4 and all(r.epochs >= 1 for r in second.rows)
    for row in second.rows:
        info = json.loads((Path(row.run_dir) / "trial.json").read_text())
        if row.trial in finished_first:
            assert info["starts"] == 1, f"finished trial {row.trial} was run again"


def test_trials_get_distinct_optuna_configs(sweep_runs):
    import optuna

    *_, second, sweep = sweep_runs
    configs = {tuple(sorted(r.params.items())) for r in second.rows}
    assert len(configs) == 4
    for r in second.rows:
        assert 0.01 <= r.params["loss.lambda_per"] <= 0.2 and r.params["model.blocks"] in (1, 2)
    # the persistent study (what optuna-dashboard reads) holds the same samples
    study = optuna.load_study(study_name="t", storage=sweep.storage)
    sampled = {tuple(sorted(t.params.items())) for t in study.trials}
    assert configs <= sampled


def test_asha_stops_at_least_one_trial_early(sweep_runs):
    *_, second, _ = sweep_runs
    stopped = [r for r in second.rows if r.status == "STOPPED"]
    assert stopped and all(r.epochs < 3 for r in stopped)
    assert any(r.status == "COMPLETED" and r.epochs == 3 for r in second.rows)


def test_metrics_reach_tune_once_per_epoch(sweep_runs):
    *_, second, _ = sweep_runs
    for row in second.rows:
        lines = (Path(second.sweep_dir) / f"trial_{row.trial}" / "result.json").read_text().splitlines()
        epochs = [json.loads(line)["epoch"] for line in lines]
        assert epochs == sorted(set(epochs)) and epochs[-1] == row.epochs, (row.trial, epochs)
        assert all("val_psnr" in json.loads(line) for line in lines)


def test_best_trial_genotype_config_and_table_saved(sweep_runs):
    from nasfe.config import load_space
    from nasfe.genotype import Genotype

    *_, second, _ = sweep_runs
    best = second.best
    completed = [r for r in second.rows if r.status == "COMPLETED"]
    assert best.metrics["val_psnr"] == max(r.metrics["val_psnr"] for r in completed)
    out = Path(second.sweep_dir)
    space = load_space(out / "best" / "config.yaml")
    genotype = Genotype.from_json(out / "best" / "genotype.json", space=space)  # checks it fits the space
    assert genotype.genotype_id() == best.genotype_id
    assert space.model.blocks == best.params["model.blocks"]
    assert space.loss.lambda_per == pytest.approx(best.params["loss.lambda_per"])
    assert json.loads((out / "best" / "trial.json").read_text())["trial"] == best.trial
    rows = list(csv.DictReader((out / "sweep_table.csv").open()))
    assert sorted(r["trial"] for r in rows) == sorted(r.trial for r in second.rows)
    assert all(r["genotype_id"] and r["parameters"] for r in rows)
    assert f"**{best.trial}** (best)" in (out / "sweep_table.md").read_text()
