"""Sweep pieces without a cluster: divergence detection, Optuna FAIL/dead trials, placement arithmetic."""

from __future__ import annotations

import math
import textwrap

import pytest

from nasfe.distributed.sweep_space import load_sweep
from nasfe.errors import DivergenceError

SWEEP = """
base: tiny
overrides: {search.epochs: 2}
params:
  loss.lambda_per: {type: float, low: 0.01, high: 0.2, log: true}
"""


def test_divergence_is_found_in_any_wrapping():
    from nasfe.distributed.sweep_trial import divergence_reason

    exc = DivergenceError("loss", 12, "search")
    assert divergence_reason(exc) == "non-finite loss at search step 12"

    class TrainingFailedError(Exception):  # Ray Train's wrapper: the worker's error in its text or fields
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    assert divergence_reason(TrainingFailedError({0: exc})) == "non-finite loss at search step 12"
    text = RuntimeError("worker 0 ... nasfe.errors.DivergenceError: non-finite gradient at retrain step 7; stopped")
    assert divergence_reason(text) == "non-finite gradient at retrain step 7"
    try:
        try:
            raise exc
        except DivergenceError as inner:
            raise RuntimeError("worker group failed") from inner
    except RuntimeError as outer:
        assert divergence_reason(outer) == "non-finite loss at search step 12"
    assert divergence_reason(RuntimeError("out of memory")) is None


def test_an_epoch_report_without_a_finite_metric_is_a_divergence():
    from nasfe.distributed.sweep_trial import diverged_result, epoch_divergence, stop_diverged

    assert epoch_divergence({"val_psnr": 12.0, "loss": 1.0, "step": 4}, "val_psnr", "search") is None
    assert epoch_divergence({"val_ssim": 0.1, "step": 4}, "val_psnr", "search") == "non-finite loss at search step 4"
    assert (
        epoch_divergence({"val_psnr": math.nan, "loss": 2.0, "step": 6}, "val_psnr", "search")
        == "non-finite val_psnr at search step 6"
    )
    r = diverged_result("val_psnr", "max", "non-finite loss at search step 4", 2, 4)
    assert r["val_psnr"] == -math.inf and r["diverged"] and stop_diverged("t", r) and not stop_diverged("t", {})
    assert diverged_result("val_loss", "min", "x", 0)["val_loss"] == math.inf


def test_optuna_is_told_fail_with_the_reason_and_dead_trials_fail(tmp_path):
    pytest.importorskip("ray.tune")
    import optuna

    from nasfe.distributed.sweep import optuna_distributions
    from nasfe.distributed.sweep_optuna import fail_running, make_searcher

    p = tmp_path / "sweep_u.yaml"
    p.write_text(textwrap.dedent(SWEEP))
    sweep = load_sweep(p)
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    searcher = make_searcher(
        space=optuna_distributions(sweep),
        metric="val_psnr",
        mode="max",
        study_name="u",
        storage=optuna.storages.RDBStorage(storage),
    )
    for tid in ("a", "b", "c"):
        assert searcher.suggest(tid)
    searcher.on_trial_result("a", {"val_psnr": 11.0, "training_iteration": 1})
    searcher.on_trial_complete("a", {"val_psnr": 11.0, "training_iteration": 1})
    bad = {
        "val_psnr": -math.inf,
        "training_iteration": 1,
        "diverged": 1,
        "diverged_reason": "non-finite loss at search step 3",
    }
    searcher.on_trial_result("b", bad)
    searcher.on_trial_complete("b", bad)
    study = optuna.load_study(study_name="u", storage=storage)
    a, b, c = study.trials
    assert a.state == optuna.trial.TrialState.COMPLETE and a.value == 11.0
    assert b.state == optuna.trial.TrialState.FAIL and b.user_attrs["fail_reason"] == "non-finite loss at search step 3"
    assert b.intermediate_values == {}  # the stand-in value is not a measurement
    assert c.state == optuna.trial.TrialState.RUNNING
    assert searcher.live_numbers() == {c.number}
    dead = study.ask().number  # asked by a process that died
    assert fail_running(study, keep=searcher.live_numbers()) == [dead]
    states = {t.number: t.state for t in optuna.load_study(study_name="u", storage=storage).trials}
    assert states[dead] == optuna.trial.TrialState.FAIL and states[c.number] == optuna.trial.TrialState.RUNNING


def test_drivers_hold_no_cpu_and_concurrency_counts_per_node(tmp_path):
    pytest.importorskip("ray.tune")
    from nasfe.distributed.sweep import _trainable, default_max_concurrent, trials_that_fit

    p = tmp_path / "sweep_u.yaml"
    p.write_text(textwrap.dedent(SWEEP))
    sweep = load_sweep(p)
    resources = _trainable({"x": 1})._resources  # what tune.with_resources attached
    assert all(not b.get("CPU") and not b.get("GPU") for b in resources.bundles)
    # two 1.5-CPU nodes hold two 1-CPU trials, not three (the sum of CPUs would say 3)
    assert default_max_concurrent(sweep, [{"CPU": 1.5}, {"CPU": 1.5}], use_gpu=False) == 2
    assert default_max_concurrent(sweep, [{"CPU": 1.0}, {"CPU": 1.0}], use_gpu=False) == 2
    assert trials_that_fit([{"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 1}], [{"CPU": 1, "GPU": 1}] * 2) == 1
    assert trials_that_fit([{"CPU": 0.5}], [{"CPU": 1}]) == 0


def test_concurrency_follows_what_the_cluster_config_can_grow_to(monkeypatch):
    """A cold cluster (the head alone up) still runs as many trials as its declared workers hold."""
    from pathlib import Path

    import nasfe.distributed.sweep as sweep_mod
    from nasfe.distributed.sweep import declared_nodes, default_max_concurrent, sweep_nodes
    from nasfe.distributed.sweep_space import load_sweep

    config = Path(__file__).resolve().parents[1] / "cluster.yaml"  # 8 g5.xlarge: {CPU: 4, GPU: 1}
    assert declared_nodes(config) == [{"CPU": 0}] + [{"CPU": 4, "GPU": 1}] * 8
    sweep = load_sweep("tiny")  # 1 worker per trial
    monkeypatch.setattr(sweep_mod, "cluster_nodes", lambda: [{"CPU": 0}])  # nothing but the head is up
    monkeypatch.setenv("NASFE_CLUSTER_CONFIG", str(config))
    assert default_max_concurrent(sweep, sweep_nodes(), use_gpu=True) == 8
    monkeypatch.setenv("NASFE_CLUSTER_CONFIG", str(config.with_name("no-such-cluster.yaml")))
    assert sweep_nodes() == [{"CPU": 0}]  # no cluster config (a laptop): the nodes up are the cluster
