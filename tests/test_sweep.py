"""A real local sweep on Ray (Tune + Optuna + ASHA, each trial a Ray Train search run).

One module-scoped sweep of 4 trials in a shrunken tiny space, W&B offline and an SQLite Optuna
study: it is interrupted (SIGUSR1, Tune's Ctrl-C) after two trials finish, a crashed trial is left
RUNNING in the study, then the sweep is resumed with another max_concurrent; every test reads
that one sweep. Trial 4 (TPE seed 0) samples search.lr = 1e12 and diverges.
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
  identity.backbone: vggface   # a quarter-width random backbone (real weights are full width)
  identity.weights: null
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
  search.lr: {{type: choice, values: [1.0e-3, 3.0e-3, 1.0e+12]}}   # 1e12: the 4th trial diverges
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
    """(interrupted result, its finished trials, resumed result, sweep space, summary after the interrupt)."""
    ray = pytest.importorskip("ray")
    import dataclasses

    import optuna

    from nasfe.distributed.sweep import run_sweep
    from nasfe.distributed.sweep_space import load_sweep
    from nasfe.tracking.wandb_logger import WandbSettings

    root = tmp_path_factory.mktemp("sweep")
    path = root / "sweep_test.yaml"
    path.write_text(SWEEP.format(db=root / "optuna.db"))
    sweep = load_sweep(path)
    wandb = WandbSettings(project="nasfe-test", mode="offline")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "RAY_TRAIN_V2_ENABLED": "1",
                "OMP_NUM_THREADS": "1",
                "WANDB_MODE": "offline",
                "WANDB_SILENT": "true",
            }
        },
    )
    try:
        first = run_sweep(
            sweep, storage=str(root / "runs"), name="t", progress=False, wandb=wandb, callbacks=[_interrupt_after(2)]
        )
        finished_first = {r.trial for r in first.rows if r.status in ("COMPLETED", "STOPPED")}
        table = root / "runs" / "t" / "sweep_table.csv"
        after_interrupt = table.read_text() if table.is_file() else None
        # a trial whose process died without telling Optuna: RUNNING forever unless the resume fails it
        study = optuna.load_study(study_name="t", storage=sweep.storage)
        dead = study.ask().number
        second = run_sweep(
            dataclasses.replace(sweep, max_concurrent=2),
            storage=str(root / "runs"),
            name="t",
            progress=False,
            wandb=wandb,
        )
    finally:
        ray.shutdown()
    return first, finished_first, second, sweep, {"table": after_interrupt, "dead": dead}


def test_interrupted_sweep_stops_early_and_says_so(sweep_runs):
    first, finished_first, second, *_ = sweep_runs
    assert first.interrupted and not first.resumed
    assert len(finished_first) >= 2 and len(finished_first) < 4


def test_resumed_sweep_completes_without_rerunning_finished_trials(sweep_runs):
    first, finished_first, second, *_ = sweep_runs
    assert second.resumed and not second.interrupted
    assert second.max_concurrent == 2  # changed on resume
    assert len(second.rows) == 4 and all(r.epochs >= 1 for r in second.rows if r.status != "DIVERGED")
    for row in second.rows:
        info = json.loads((Path(row.run_dir) / "trial.json").read_text())
        if row.trial in finished_first:
            assert info["starts"] == 1, f"finished trial {row.trial} was run again"


def test_trials_get_distinct_optuna_configs(sweep_runs):
    import optuna

    _, _, second, sweep, _ = sweep_runs
    configs = {tuple(sorted(r.params.items())) for r in second.rows}
    assert len(configs) == 4
    for r in second.rows:
        assert 0.01 <= r.params["loss.lambda_per"] <= 0.2 and r.params["model.blocks"] in (1, 2)
    # the persistent study (what optuna-dashboard reads) holds the same samples
    study = optuna.load_study(study_name="t", storage=sweep.storage)
    sampled = {tuple(sorted(t.params.items())) for t in study.trials}
    assert configs <= sampled


def test_asha_stops_at_least_one_trial_early(sweep_runs):
    _, _, second, *_ = sweep_runs
    stopped = [r for r in second.rows if r.status == "STOPPED"]
    assert stopped and all(r.epochs < 3 for r in stopped)
    assert any(r.status == "COMPLETED" and r.epochs == 3 for r in second.rows)


def test_metrics_reach_tune_once_per_epoch(sweep_runs):
    _, _, second, *_ = sweep_runs
    for row in second.rows:
        lines = (Path(second.sweep_dir) / f"trial_{row.trial}" / "result.json").read_text().splitlines()
        epochs = [json.loads(line)["epoch"] for line in lines]
        assert epochs == sorted(set(epochs)) and epochs[-1] == row.epochs, (row.trial, epochs)
        assert all("val_psnr" in json.loads(line) for line in lines)


def test_best_trial_genotype_config_and_table_saved(sweep_runs):
    from nasfe.config import load_space
    from nasfe.genotype import Genotype

    _, _, second, *_ = sweep_runs
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
    assert all(r["genotype_id"] and r["parameters"] for r in rows if r["status"] != "DIVERGED")
    assert f"**{best.trial}** (best)" in (out / "sweep_table.md").read_text()


def _records(wandb_file):
    from nasfe.tracking.wandb_logger import read_offline_records

    return read_offline_records(wandb_file)


def _kind(records, kind):
    return [r for r in records if r.WhichOneof("record_type") == kind]


def _config(records):
    run = _kind(records, "run")[0].run
    value = lambda v: v["value"] if isinstance(v, dict) and "value" in v else v  # noqa: E731
    return run, {i.key: value(json.loads(i.value_json)) for i in run.config.update}


def test_diverged_trial_is_recorded_and_the_sweep_goes_on(sweep_runs):
    import re

    import optuna

    _, _, second, sweep, _ = sweep_runs
    diverged = [r for r in second.rows if r.status == "DIVERGED"]
    assert [r.params["search.lr"] for r in diverged] == [1e12]
    reason = diverged[0].note
    assert re.fullmatch(r"non-finite \w+ at search step \d+", reason), reason
    assert second.best is not None and second.best.trial != diverged[0].trial
    md = (Path(second.sweep_dir) / "sweep_table.md").read_text()
    assert f"| {diverged[0].trial} | DIVERGED |" in md and reason in md
    # Optuna learns nothing from it: FAIL, with the reason optuna-dashboard shows
    study = optuna.load_study(study_name="t", storage=sweep.storage)
    trial = next(t for t in study.trials if t.params.get("search.lr") == 1e12)
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["fail_reason"] == reason


def test_dead_running_optuna_trials_are_failed_on_resume(sweep_runs):
    import optuna

    _, _, second, sweep, extra = sweep_runs
    study = optuna.load_study(study_name="t", storage=sweep.storage)
    states = {t.number: t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states.values()
    dead = study.trials[extra["dead"]]
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("interrupted")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == 3  # the other trials (ASHA-stopped ones included) told their last value


def test_summary_is_written_after_every_trial_and_resumed_in_the_same_wandb_run(sweep_runs):
    first, _, second, sweep, extra = sweep_runs
    assert extra["table"] is not None and extra["table"].count("\n") >= 3  # header + the finished trials
    state = json.loads((Path(second.sweep_dir) / "wandb_sweep.json").read_text())
    runs = sorted((Path(second.sweep_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(state["summary_id"] in r.name for r in runs)  # interrupted + resumed
    tables, artifacts = 0, []
    for run_dir in runs:
        records = _records(next(run_dir.glob("*.wandb")))
        run, config = _config(records)
        assert run.run_id == state["summary_id"] and run.job_type == "sweep-summary" and run.run_group == "t"
        assert config["sweep.metric"] == "val_psnr" and config["sweep.params.loss.lambda_per.low"] == 0.01
        assert not any(isinstance(v, dict) for k, v in config.items() if not k.startswith("_"))  # flat keys
        for h in _kind(records, "history"):
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in h.history.item}
            tables += items.get("sweep_table/_type") == "table-file"
        artifacts += [a.artifact for a in _kind(records, "artifact") if a.artifact.type == "genotype"]
    assert tables >= 5  # one per finished trial (4) and one at the end of each run
    assert artifacts and json.loads(artifacts[-1].metadata)["trial"] == second.best.trial


def test_trial_runs_are_grouped_offline_with_the_swept_values_as_flat_keys(sweep_runs):
    _, _, second, _, _ = sweep_runs
    # trials that ran to the end (a trial Tune stops is killed with its W&B process: offline, its
    # .wandb file stays empty; see docs/SWEEPS.md)
    for row in [r for r in second.rows if r.status == "COMPLETED"]:
        files = sorted(Path(row.run_dir).glob("wandb/offline-run-*/*.wandb"))
        assert files, row.trial
        run, config = _config(_records(files[0]))
        assert run.run_group == "t" and "sweep" in run.tags and not run.sweep_id  # offline: no W&B sweep
        assert config["loss.lambda_per"] == pytest.approx(row.params["loss.lambda_per"])
        assert config["search.lr"] == row.params["search.lr"]
