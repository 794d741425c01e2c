"""Ray Tune sweeps: Optuna's TPE samples, ASHA stops early, each trial is a Ray Train run.

The Train V2 pattern: every Tune trial runs :func:`~nasfe.distributed.sweep_trial.trial_driver`,
a small driver function that applies the sampled values to the base space, builds a
``TorchTrainer`` with :func:`nasfe.distributed.ray_train.build_trainer` and calls ``fit()``.

Placement. Ray Train V2 always reserves its workers in a placement group of its own (it cannot
reuse a Tune trial's group), so the trainer's group is the trial's one reservation: it is created
atomically, all workers or none. The driver holds no CPU or GPU (only a small ``memory``
reservation), so a trial waiting for its workers holds nothing another trial's workers need (on
two 1-CPU nodes, two drivers of 0.01 CPU each would leave no node with a whole CPU for either
trial: a deadlock). A sweep asking for more trials at once than the cluster holds waits (the
Train controller retries its group until resources free up). The default concurrency is the
number of trials whose worker bundles fit the cluster's nodes side by side.

Layout of a sweep named ``<name>`` in ``<storage>``::

    <storage>/<name>/                  Tune's experiment folder (its state: resume from here)
    <storage>/<name>/sweep.yaml        the sweep space it runs (a resume must use the same)
    <storage>/<name>/trials/trial_<id>/  each trial's nasfe run: genotype.json, space.yaml,
                                         trial.json, checkpoints/, ray/<phase>/ ...
    <storage>/<name>/sweep_table.csv, sweep_table.md    one row per trial (after every trial)
    <storage>/<name>/best/genotype.json, config.yaml, trial.json
    <storage>/<name>/wandb_sweep.json  the W&B summary run's id (and the W&B sweep id, online)

An interrupted sweep (Ctrl-C, a lost driver) is resumed by running it again with the same storage
and name: finished trials keep their results, unfinished ones continue from their last Ray Train
checkpoint, and the Optuna sampler continues from its saved state.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from nasfe.config import ConfigError
from nasfe.distributed.cluster import RunStorage, cluster_config_path
from nasfe.distributed.run_identity import differences, refuse
from nasfe.distributed.sweep_optuna import fail_running, make_searcher, open_storage
from nasfe.distributed.sweep_space import SweepSpace
from nasfe.distributed.sweep_summary import SweepReport, TrialRow, rows_from_grid, summary_callback, trial_run_name
from nasfe.distributed.sweep_trial import (
    reap_placement_groups,
    reaper_callback,
    stop_diverged,
    trial_context,
    trial_dirname,
    trial_driver,
)
from nasfe.imageio import atomic_write_text
from nasfe.tracking.wandb_sweep import SummaryRun, register_sweep

log = logging.getLogger("nasfe.sweep")

#: What each trial's driver function reserves: memory only (bytes), never a CPU its workers need.
DRIVER_RESOURCES = {"memory": 64 * 1024 * 1024}
#: Sweep-space fields a resumed sweep may change.
RESUMABLE_CHANGES = ("max_concurrent", "source")


# ----- sampling -----------------------------------------------------------------------------
def optuna_distributions(sweep: SweepSpace) -> dict[str, Any]:
    """The sweep's params as Optuna distributions (bounds inclusive, as in the YAML)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in sweep.params:
        if p.type == "choice":
            out[p.key] = CategoricalDistribution(list(p.values))
        elif p.type == "int":
            out[p.key] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.key] = FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)
    return out


# ----- placement ------------------------------------------------------------------------------
def worker_bundles(sweep: SweepSpace, use_gpu: bool) -> list[dict[str, float]]:
    """The resources of one trial's Train workers, one bundle per worker."""
    bundle = {"CPU": float(sweep.cpus_per_worker)}
    if use_gpu:
        bundle["GPU"] = float(sweep.gpus_per_worker or 1.0)
    return [dict(bundle) for _ in range(sweep.workers_per_trial)]


def trials_that_fit(nodes: Sequence[dict[str, float]], bundles: Sequence[dict[str, float]]) -> int:
    """How many trials of ``bundles`` the ``nodes`` (resource dicts) hold at once (first fit per bundle)."""
    free = [dict(n) for n in nodes]
    count = 0
    while True:
        trial = [dict(n) for n in free]
        for bundle in bundles:
            node = next((n for n in trial if all(n.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())), None)
            if node is None:
                return count
            for k, v in bundle.items():
                node[k] = node.get(k, 0.0) - v
        free = trial
        count += 1
        if count >= 100_000:  # bundles of zero resources
            return count


def default_max_concurrent(sweep: SweepSpace, nodes, use_gpu: bool) -> int:
    """Trials at once: the sweep space's ``max_concurrent``, else how many fit the nodes side by side.

    ``nodes``: a list of per-node resource dicts (``ray.nodes()``' ``Resources``), or one dict
    for a single node.
    """
    if sweep.max_concurrent:
        return sweep.max_concurrent
    if isinstance(nodes, dict):
        nodes = [nodes]
    return max(1, trials_that_fit(nodes, worker_bundles(sweep, use_gpu)))


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def sweep_nodes() -> list[dict[str, float]]:
    """The nodes a sweep's concurrency is planned for: what the cluster config lets the cluster
    grow to (:func:`declared_nodes`), else the nodes up now (no cluster config: a laptop)."""
    return declared_nodes() or cluster_nodes()


def declared_nodes(config: Optional[Path] = None) -> Optional[list[dict[str, float]]]:
    """Every node the cluster config lets the cluster grow to (the head, then each worker type up to
    its ``max_workers``, all of them together up to the cluster's ``max_workers``), as resource
    dicts; None without a cluster config (a laptop: the nodes up are the cluster)."""

    config = config or cluster_config_path()
    if config is None:
        return None
    data = yaml.safe_load(Path(config).read_text()) or {}
    types = data.get("available_node_types") or {}
    head = data.get("head_node_type")
    nodes = [dict((types.get(head) or {}).get("resources") or {})]
    room = int(data.get("max_workers", 0) or 0)
    # GPU types first: they bound a GPU sweep; for a CPU sweep they still count their CPUs
    workers = sorted(
        ((n, t) for n, t in types.items() if n != head),
        key=lambda nt: -float((nt[1].get("resources") or {}).get("GPU", 0)),
    )
    for _, t in workers:
        count = min(int(t.get("max_workers", room) or 0), room)
        nodes += [dict(t.get("resources") or {}) for _ in range(count)]
        room -= count
    return nodes


# ----- the tuner ------------------------------------------------------------------------------
def _trainable(ctx: dict[str, Any]):
    """The Tune trainable: the trial driver with the sweep context, holding no CPU (see module doc)."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(trial_driver, ctx=ctx), tune.PlacementGroupFactory([dict(DRIVER_RESOURCES)])
    )


def _new_tuner(sweep: SweepSpace, trainable, storage: str, name: str, max_concurrent: int, callbacks):
    """A fresh Tuner: Optuna TPE (seeded, optional RDB storage), ASHA on ``epoch``, bounded concurrency."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    searcher = make_searcher(
        space=optuna_distributions(sweep),
        metric=sweep.metric,
        mode=sweep.mode,
        sampler=optuna.samplers.TPESampler(seed=sweep.seed),
        study_name=sweep.study_name or name,
        storage=open_storage(sweep.storage, sweep.source),
    )
    # a trial that reaches its last epoch finishes on its own (summary, final checkpoint); ASHA
    # only stops the last trials itself when asha.max_t is shorter than the phase
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=sweep.max_t(),
        grace_period=sweep.asha.grace_period,
        reduction_factor=sweep.asha.reduction_factor,
        stop_last_trials=sweep.max_t() < sweep.phase_epochs(),
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=sweep.num_samples,
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=list(callbacks),
            stop=stop_diverged,
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


def _restore_tuner(sweep_dir: Path, trainable, max_concurrent: int, callbacks):
    """``Tuner.restore`` with this run's callbacks and concurrency (private attributes: restore takes neither)."""
    from ray import tune

    tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    internal = getattr(tuner, "_local_tuner", None)
    if internal is not None:
        internal._run_config.callbacks = list(callbacks)
        internal._tune_config.max_concurrent_trials = max_concurrent
    return tuner


# ----- a sweep on S3 (no shared file system) ------------------------------------------------------
#: What the driver writes locally and copies to the sweep's storage after every update.
STAGED = ("sweep.yaml", "sweep_table.csv", "sweep_table.md", "best", "wandb_sweep.json", "wandb")
#: What the table needs of each trial's run (copied from storage before each update).
TRIAL_FILES = ("genotype.json", "space.yaml", "trial.json", "placement_groups.json")


def staging_dir(run, kind: str = "sweep") -> Path:
    """The driver's local folder of a sweep (or another ``kind`` of study) whose storage is a URI."""

    return Path(os.environ.get("NASFE_WORK_DIR", Path.home() / "nasfe-work")) / f"{run.name}-{kind}"


def mirror_trials(run, local_trials: Path, names: Sequence[str]) -> None:
    """Copy the small files of the trials ``names`` from the sweep's storage into ``local_trials``."""

    trials = RunStorage(f"{run.root}/trials", "x")
    for name in names:
        st = RunStorage(trials.storage, name)
        for rel in TRIAL_FILES:
            try:
                st.download(rel, local_trials / name)
            except Exception as exc:  # noqa: BLE001  (a table cell must not stop the sweep)
                log.debug("%s/%s not copied: %s", name, rel, exc)


def delete_study(run, local_dir: Path) -> None:
    """--no-resume: the earlier sweep or study of this name goes (storage and the driver's local folder)."""
    if local_dir.exists():
        log.info("--no-resume: deleting the earlier run in %s", local_dir)
        shutil.rmtree(local_dir)
    if not run.is_local:
        import pyarrow.fs

        fs, path = run._fs()
        if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
            log.info("--no-resume: deleting the earlier run in %s", run.root)
            fs.delete_dir(path)


def _holds_other_files(run, sweep_dir: Path) -> bool:
    """True when the sweep's folder holds files of something else than a sweep (a wrong --name)."""
    if run.is_local:
        return sweep_dir.exists() and any(p.name != "wandb_sweep.json" for p in sweep_dir.iterdir())
    import pyarrow.fs

    fs, path = run._fs()
    found = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return any(Path(i.path).name not in ("wandb_sweep.json", "sweep.yaml") for i in found)


# ----- the whole sweep --------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`run_sweep` hands back."""

    name: str
    sweep_dir: str
    rows: list[TrialRow]
    best: Optional[TrialRow]
    interrupted: bool
    resumed: bool
    files: list[Path] = field(default_factory=list)
    wandb: Optional[str] = None
    max_concurrent: Optional[int] = None
    local_dir: Optional[str] = None  # the table and best trial on this machine (sweep_dir when local)


def check_same_sweep(sweep: SweepSpace, sweep_dir: Path, where: Optional[str] = None) -> None:
    """A sweep name stands for one sweep space: a re-run with another is refused in one line.

    Only ``max_concurrent`` may change on resume. ``where``: the sweep's storage when ``sweep_dir``
    holds a copy of its ``sweep.yaml``.
    """

    saved = Path(sweep_dir) / "sweep.yaml"
    if not saved.is_file():
        return
    diffs = differences(yaml.safe_load(saved.read_text()) or {}, sweep.to_dict(), ignore=RESUMABLE_CHANGES)
    if diffs:
        refuse(where or sweep_dir, f"sweep {Path(where or sweep_dir).name!r}", diffs)


def _finish_study(sweep: SweepSpace, name: str) -> None:
    """After a sweep that ran to the end, no trial of its study may stay RUNNING."""
    if not sweep.storage:
        return
    try:
        import optuna

        fail_running(optuna.load_study(study_name=sweep.study_name or name, storage=sweep.storage), set())
    except Exception as exc:  # the study is a view of the sweep; it must not fail it
        log.warning("Optuna study not tidied (%s)", exc)


def run_sweep(
    sweep: SweepSpace,
    storage: Optional[str] = None,
    name: Optional[str] = None,
    resume: bool = True,
    use_gpu: Optional[bool] = None,
    wandb=None,
    progress: bool = True,
    max_failures: int = 1,
    callbacks: Sequence[Any] = (),
) -> SweepResult:
    """Run (or resume) ``sweep`` on the connected Ray cluster; write the table and the best trial.

    ``storage``: local folder (default ``./runs``) holding ``<name>/``; ``name`` defaults to
    ``sweep-<sweep name>``; ``use_gpu`` None means "when the cluster has GPUs"; ``wandb`` a
    :class:`~nasfe.tracking.wandb_logger.WandbSettings` or None; ``callbacks`` extra Tune callbacks.
    The summary (table, best trial, W&B summary run) is rewritten after every finished trial.
    """
    from ray import tune

    run = RunStorage.create(storage, name or f"sweep-{sweep.name}")
    # on S3 (no shared file system) Tune and every trial write to storage; the table, best trial and
    # W&B summary are made in a local folder of the driver and copied to storage after each update
    sweep_dir = Path(run.root) if run.is_local else staging_dir(run)
    nodes = sweep_nodes()
    if use_gpu is None:
        use_gpu = sum(n.get("GPU", 0) for n in nodes) >= 1 and sweep.gpus_per_worker != 0
    max_concurrent = default_max_concurrent(sweep, nodes, use_gpu)
    if not resume:
        delete_study(run, sweep_dir)
    elif not run.is_local:
        for rel in STAGED:  # a sweep resumed from another driver node continues its summary
            run.download(rel, sweep_dir)
    resumed = resume and tune.Tuner.can_restore(run.root)
    if resumed:
        check_same_sweep(sweep, sweep_dir)
    elif _holds_other_files(run, sweep_dir):
        raise ConfigError(f"{run.root}: exists but holds no resumable sweep; pick another --name or delete the folder")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write_text(sweep_dir / "sweep.yaml", yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        if not run.is_local:
            run.upload(sweep_dir, ["sweep.yaml"])
    ctx = trial_context(sweep, run, use_gpu, wandb, progress, max_failures)
    summary_run = None
    if wandb is not None:
        ctx["wandb_sweep_id"] = register_sweep(sweep, run.name, wandb, sweep_dir)
        summary_run = SummaryRun(wandb, sweep, run.name, sweep_dir, ctx["wandb_sweep_id"])
    publish = None if run.is_local else (lambda: run.upload(sweep_dir, [r for r in STAGED if (sweep_dir / r).exists()]))
    refresh = None if run.is_local else (lambda names: mirror_trials(run, sweep_dir / "trials", names))
    report = SweepReport(sweep, sweep_dir, summary_run, publish=publish)
    trainable = _trainable(ctx)
    all_callbacks = [
        summary_callback(report, sweep_dir / "trials", refresh),
        *callbacks,
        reaper_callback(sweep_dir / "trials", refresh=refresh),
    ]
    if resumed:
        log.info("resuming the sweep in %s (finished trials are kept)", run.root)
        tuner = _restore_tuner(run.root, trainable, max_concurrent, all_callbacks)
    else:
        tuner = _new_tuner(sweep, trainable, run.storage, run.name, max_concurrent, all_callbacks)
    log.info(
        "sweep %r: %d trials, %d at a time, %d worker(s) each on %s",
        sweep.name,
        sweep.num_samples,
        max_concurrent,
        sweep.workers_per_trial,
        "GPU" if use_gpu else "CPU",
    )
    t0 = time.time()
    try:
        grid = tuner.fit()
        if refresh is not None:
            refresh(
                [trial_run_name(r.metrics.get("trial_id") or Path(r.path).name.replace("trial_", "")) for r in grid]
            )
        for run_dir in sorted((sweep_dir / "trials").glob("trial_*")):  # nothing runs now
            reap_placement_groups(run_dir)
        finished = grid.num_terminated + grid.num_errors
        interrupted = finished < sweep.num_samples or len(grid) < sweep.num_samples
        rows = rows_from_grid(grid, sweep, sweep_dir / "trials")
        best, files = report.update(rows)
        if not interrupted:
            _finish_study(sweep, run.name)
        where = summary_run.where() if summary_run is not None else None
    finally:
        if summary_run is not None:
            summary_run.close()
    log.info(
        "sweep %r: %d trials in %.0fs%s",
        sweep.name,
        len(rows),
        time.time() - t0,
        " (interrupted)" if interrupted else "",
    )
    return SweepResult(
        run.name, run.root, rows, best, interrupted, resumed, files, where, max_concurrent, str(sweep_dir)
    )
