"""Ray Tune sweeps: Optuna's TPE samples, ASHA stops early, each trial is a Ray Train run.

The Train V2 pattern: every Tune trial runs :func:`trial_driver`, a small driver function that
applies the sampled values to the base space, builds a ``TorchTrainer`` with
:func:`nasfe.distributed.ray_train.build_trainer` and calls ``fit()``. The trainer's workers
report after every engine checkpoint; :class:`EpochTuneReport` (a Ray Train ``UserCallback`` on
the Train controller, built on Ray's ``TuneReportCallback``) forwards to Tune only the reports
that close an epoch, so ASHA sees exactly one result per epoch with ``time_attr='epoch'``.

Layout of a sweep named ``<name>`` in ``<storage>``::

    <storage>/<name>/                  Tune's experiment folder (its state: resume from here)
    <storage>/<name>/sweep.yaml        the sweep space it runs (a resume must use the same)
    <storage>/<name>/trials/trial_<id>/  each trial's nasfe run: genotype.json, space.yaml,
                                         trial.json, checkpoints/, ray/<phase>/ ...
    <storage>/<name>/sweep_table.csv, sweep_table.md    one row per trial
    <storage>/<name>/best/genotype.json, config.yaml, trial.json

An interrupted sweep (Ctrl-C, a lost driver) is resumed by running it again with the same storage
and name: finished trials keep their results, unfinished ones continue from their last Ray Train
checkpoint, and the Optuna sampler continues from its saved state.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from nasfe.config import ConfigError
from nasfe.distributed.sweep_space import SweepSpace

log = logging.getLogger("nasfe.sweep")

#: CPU reserved by each trial's driver function; the TorchTrainer's workers reserve their own.
DRIVER_CPUS = 0.01


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


def default_max_concurrent(sweep: SweepSpace, resources: dict[str, float], use_gpu: bool) -> int:
    """Trials that fit side by side: the cluster's GPUs (or CPUs) over one trial's workers."""
    if sweep.max_concurrent:
        return sweep.max_concurrent
    if use_gpu:
        per_trial = sweep.workers_per_trial * (sweep.gpus_per_worker or 1.0)
        return max(1, int(resources.get("GPU", 0) // per_trial))
    per_trial = sweep.workers_per_trial * sweep.cpus_per_worker
    return max(1, int(resources.get("CPU", 1) // per_trial))


# ----- the trial ------------------------------------------------------------------------------
def _tune_report_callback(metric: str):
    """An :class:`EpochTuneReport` (defined lazily: it subclasses a Ray class)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochTuneReport(TuneReportCallback):
        """Forward to Tune only the Train reports that close an epoch (they carry ``metric``).

        The engine also reports at mid-epoch checkpoints (no validation metric yet) and once more
        at the end (the last epoch again); ASHA and Optuna must see one result per epoch.
        """

        def __init__(self):
            super().__init__()
            self.last_epoch = 0

        def after_report(self, run_context, metrics, checkpoint):
            first = metrics[0] if metrics else {}
            epoch = int(first.get("epoch", 0))
            if metric not in first or epoch <= self.last_epoch:
                return
            self.last_epoch = epoch
            super().after_report(run_context, metrics, None)  # Train keeps its own checkpoints

    return EpochTuneReport()


class PlacementGroupRecorder:
    """Engine callback (rank 0): note the worker group's placement group in the trial's run folder.

    When ASHA stops a trial, Tune kills the trial's driver and with it the Train controller, so
    the controller never removes its workers' placement group. Ray Train's own cleaner actor does,
    but it needs the state API, which fails on a node running several Ray instances. The sweep
    removes the recorded groups of finished trials itself (:func:`reap_placement_groups`).
    """

    def __init__(self, path: str):
        self.path = path

    def __getattr__(self, name):  # every other engine hook is a no-op
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_start(self, state, config):
        if not state.is_main:
            return
        import ray.util

        pg = ray.util.get_current_placement_group()
        if pg is None:
            return
        path = Path(self.path)
        ids = json.loads(path.read_text()) if path.is_file() else []
        ids.append(pg.id.hex())
        from nasfe.imageio import atomic_write_json

        atomic_write_json(path, ids)


PG_FILE = "placement_groups.json"


def reap_placement_groups(run_dir: Path) -> int:
    """Remove the placement groups a finished trial left behind; returns how many."""
    import ray.util
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    path = Path(run_dir) / PG_FILE
    if not path.is_file():
        return 0
    removed = 0
    for hex_id in json.loads(path.read_text()):
        try:
            pg = PlacementGroup(PlacementGroupID.from_hex(hex_id))
            if ray.util.placement_group_table(pg).get("state") in ("CREATED", "PENDING", "RESCHEDULING"):
                ray.util.remove_placement_group(pg)
                removed += 1
        except Exception as exc:  # already gone, or another cluster's id
            log.debug("placement group %s: %s", hex_id, exc)
    if removed:
        log.info("%s: removed %d placement group(s) of its stopped Train run", run_dir.name, removed)
    return removed


def _reaper_callback(trials_dir: Path, delay_s: float = 2.0):
    """A Tune callback that reaps a trial's placement groups shortly after the trial ends."""
    from ray import tune

    class PlacementGroupReaper(tune.Callback):
        def __init__(self):
            self.pending: list[tuple[float, str]] = []

        def _ended(self, trial):
            self.pending.append((time.time() + delay_s, trial_run_name(trial.trial_id)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._ended(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._ended(trial)

        def on_step_begin(self, iteration, trials, **info):
            # after a delay: the killed driver's controller must be gone before its group goes
            now = time.time()
            due = [name for t, name in self.pending if t <= now]
            self.pending = [(t, name) for t, name in self.pending if t > now]
            for name in due:
                reap_placement_groups(trials_dir / name)

    return PlacementGroupReaper()


def trial_run_name(trial_id: str) -> str:
    """The nasfe run name of a trial (also its W&B run name)."""
    return f"trial_{trial_id}"


def trial_dirname(trial) -> str:
    """Tune's folder name for a trial (short and stable)."""
    return trial_run_name(trial.trial_id)


def trial_driver(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One Tune trial: sampled values -> space -> ``TorchTrainer.fit()`` (metrics reach Tune per epoch).

    ``ctx`` holds the plain-data context of the sweep (see :func:`_trial_context`).
    """
    import ray.tune

    from nasfe.config import load_space
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.ray_train import build_trainer
    from nasfe.imageio import atomic_write_json, atomic_write_text

    sampled = {k: config[k] for k in ctx["param_keys"]}
    space = load_space(ctx["base"], {**ctx["overrides"], **sampled})
    trial_id = ray.tune.get_context().get_trial_id()
    name = trial_run_name(trial_id)
    storage = RunStorage.create(ctx["trials_storage"], name)
    genotype = None
    if ctx.get("genotype"):
        from nasfe.genotype import Genotype

        genotype = Genotype.from_dict(ctx["genotype"], space=space)
    if storage.is_local:
        root = Path(storage.root)
        root.mkdir(parents=True, exist_ok=True)
        # the space and the sampled values travel with the run: `nasfe compare` and resumes read them
        atomic_write_text(root / "space.yaml", yaml.safe_dump(space.to_dict(), sort_keys=False))
        info_path = root / "trial.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"starts": 0}
        info.update({"trial_id": trial_id, "sweep": ctx["sweep_name"], "params": sampled,
                     "phase": ctx["phase"], "starts": info["starts"] + 1})
        atomic_write_json(info_path, info)
    wandb = None
    if ctx.get("wandb") is not None:
        from nasfe.tracking.wandb_logger import WandbSettings

        wandb = WandbSettings(**{**ctx["wandb"], "group": ctx["sweep_name"], "name": name,
                                 "tags": ["sweep", ctx["sweep_name"]],
                                 "extra_config": {"sweep": ctx["sweep_name"], "trial_id": trial_id,
                                                  **{f"sweep/{k}": v for k, v in sampled.items()}}})
    trainer = build_trainer(space, name, storage, num_workers=ctx["workers"], use_gpu=ctx["use_gpu"],
                            phase=ctx["phase"], genotype=genotype, wandb=wandb,
                            max_failures=ctx["max_failures"], threads_per_worker=ctx["threads"],
                            progress=ctx["progress"], cpus_per_worker=ctx["cpus_per_worker"],
                            extra_callbacks=[PlacementGroupRecorder(str(Path(storage.root) / PG_FILE))]
                            if storage.is_local else [])
    # build_trainer has no parameter for Ray Train UserCallbacks; RunConfig is read at fit() time
    trainer.run_config.callbacks = [*(trainer.run_config.callbacks or []), _tune_report_callback(ctx["metric"])]
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _trial_context(sweep: SweepSpace, trials_storage: str, use_gpu: bool, wandb, progress: bool,
                   max_failures: int) -> dict[str, Any]:
    """Plain data every trial driver needs (it travels to the trial's actor)."""
    from dataclasses import asdict

    genotype = None
    if sweep.genotype:
        from nasfe.genotype import Genotype

        genotype = Genotype.from_json(sweep.genotype).to_dict()
    return {
        "base": sweep.base, "overrides": dict(sweep.overrides), "param_keys": [p.key for p in sweep.params],
        "phase": sweep.phase, "metric": sweep.metric, "sweep_name": sweep.name,
        "trials_storage": trials_storage, "workers": sweep.workers_per_trial, "use_gpu": use_gpu,
        "cpus_per_worker": sweep.cpus_per_worker, "threads": max(1, int(sweep.cpus_per_worker)),
        "genotype": genotype, "wandb": asdict(wandb) if wandb is not None else None,
        "progress": progress, "max_failures": max_failures,
    }


# ----- the tuner ------------------------------------------------------------------------------
def _trainable(ctx: dict[str, Any]):
    """The Tune trainable: :func:`trial_driver` with the sweep context, reserving a sliver of CPU."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_driver, ctx=ctx), {"CPU": DRIVER_CPUS})


def _new_tuner(sweep: SweepSpace, trainable, storage: str, name: str, max_concurrent: int, callbacks):
    """A fresh Tuner: Optuna TPE (seeded, optional RDB storage), ASHA on ``epoch``, bounded concurrency."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    study_storage = None
    if sweep.storage:
        try:
            study_storage = optuna.storages.RDBStorage(sweep.storage)
        except Exception as exc:  # bad URL, missing driver, unwritable folder
            raise ConfigError(f"{sweep.source}: storage {sweep.storage!r}: cannot open ({exc})") from None
    searcher = OptunaSearch(space=optuna_distributions(sweep), metric=sweep.metric, mode=sweep.mode,
                            sampler=optuna.samplers.TPESampler(seed=sweep.seed),
                            study_name=sweep.study_name or name, storage=study_storage)
    # a trial that reaches its last epoch finishes on its own (summary, final checkpoint); ASHA
    # only stops the last trials itself when asha.max_t is shorter than the phase
    scheduler = ASHAScheduler(time_attr="epoch", max_t=sweep.max_t(), grace_period=sweep.asha.grace_period,
                              reduction_factor=sweep.asha.reduction_factor,
                              stop_last_trials=sweep.max_t() < sweep.phase_epochs())
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=sweep.num_samples,
                                    max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_dirname,
                                    trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=list(callbacks),
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=1),
    )


# ----- results --------------------------------------------------------------------------------
@dataclass
class TrialRow:
    """One row of the sweep table."""

    trial: str
    status: str
    params: dict[str, Any]
    epochs: int
    stopped_early: bool
    metrics: dict[str, Any]
    parameters: Optional[int]
    genotype_id: Optional[str]
    run_dir: Optional[str]


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


def _derived_parameters(run_dir: Path) -> Optional[int]:
    """Trainable parameters of the trial's derived network (from its genotype and space)."""
    gfile, sfile = run_dir / "genotype.json", run_dir / "space.yaml"
    if not gfile.is_file() or not sfile.is_file():
        return None
    try:
        from nasfe.config import load_space
        from nasfe.genotype import Genotype
        from nasfe.model.registry import create_model

        space = load_space(sfile)
        model = create_model(space, Genotype.from_json(gfile, space=space))
        return int(sum(p.numel() for p in model.weight_parameters()))
    except Exception as exc:  # a table cell must not fail the sweep's report
        log.warning("%s: parameters not counted (%s)", run_dir, exc)
        return None


def collect_rows(grid, sweep: SweepSpace, trials_dir: Optional[Path]) -> list[TrialRow]:
    """The sweep table from Tune's ResultGrid and the trials' run folders."""
    rows = []
    max_t = sweep.max_t()
    for result in grid:
        m = dict(result.metrics or {})
        cfg = result.config or {}
        trial_id = m.get("trial_id") or Path(result.path).name.replace("trial_", "")
        run_dir = trials_dir / trial_run_name(trial_id) if trials_dir is not None else None
        gid = None
        if run_dir is not None and (run_dir / "genotype.json").is_file():
            try:
                from nasfe.genotype import Genotype

                gid = Genotype.from_json(run_dir / "genotype.json").genotype_id()
            except Exception:  # an unreadable genotype only leaves the cell empty
                gid = None
        epochs = int(m.get("epoch", 0) or 0)
        if result.error is not None:
            status = "ERROR"
        elif epochs >= max_t:
            status = "COMPLETED"
        elif epochs > 0:
            status = "STOPPED"  # by ASHA (or an interrupted sweep: see SweepResult.interrupted)
        else:
            status = "PENDING"
        metrics = {k: m[k] for k in ("val_psnr", "val_ssim", "input_psnr") if isinstance(m.get(k), (int, float))}
        rows.append(TrialRow(
            trial=trial_id, status=status, params={p.key: cfg.get(p.key) for p in sweep.params},
            epochs=epochs, stopped_early=status == "STOPPED", metrics=metrics,
            parameters=_derived_parameters(run_dir) if run_dir is not None else None,
            genotype_id=gid, run_dir=str(run_dir) if run_dir is not None else None))
    rows.sort(key=lambda r: r.trial)
    return rows


def pick_best(rows: Sequence[TrialRow], metric: str, mode: str) -> Optional[TrialRow]:
    """The best trial by its last ``metric``, among those that ran to the end (else all that reported)."""
    scored = [r for r in rows if isinstance(r.metrics.get(metric), (int, float)) and not math.isnan(r.metrics[metric])]
    finished = [r for r in scored if r.status == "COMPLETED"]
    pool = finished or scored
    if not pool:
        return None
    sign = 1 if mode == "max" else -1
    return max(pool, key=lambda r: sign * r.metrics[metric])


def table_columns(sweep: SweepSpace) -> list[str]:
    """Columns of the sweep table."""
    return ["trial", "status", "epochs", *[p.key for p in sweep.params], "val_psnr", "val_ssim",
            "parameters", "genotype_id"]


def table_data(rows: Sequence[TrialRow], sweep: SweepSpace) -> list[list[Any]]:
    """The sweep table as plain rows (numbers stay numbers: a W&B dashboard can chart them)."""
    return [[r.trial, r.status, r.epochs, *[r.params.get(p.key) for p in sweep.params],
             r.metrics.get("val_psnr"), r.metrics.get("val_ssim"), r.parameters, r.genotype_id] for r in rows]


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_table(rows: Sequence[TrialRow], sweep: SweepSpace, best: Optional[TrialRow]) -> tuple[str, str]:
    """``(csv, markdown)`` of the sweep table; the best trial is marked in the Markdown."""
    cols = table_columns(sweep)
    data = table_data(rows, sweep)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows([["" if v is None else v for v in r] for r in data])
    md = [f"# Sweep {sweep.name}", "",
          f"{len(rows)} trials, metric {sweep.metric} ({sweep.mode}); phase {sweep.phase} of space {sweep.base}.", "",
          "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r, vals in zip(rows, data):
        cells = [_cell(v) for v in vals]
        if best is not None and r.trial == best.trial:
            cells[0] = f"**{cells[0]}** (best)"
        md.append("| " + " | ".join(cells) + " |")
    return buf.getvalue(), "\n".join(md) + "\n"


def save_best(best: TrialRow, sweep: SweepSpace, out: Path) -> list[Path]:
    """``best/genotype.json``, ``best/config.yaml`` (a loadable space) and ``best/trial.json``."""
    from nasfe.config import load_space
    from nasfe.imageio import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    files = []
    run_dir = Path(best.run_dir) if best.run_dir else None
    if run_dir is not None and (run_dir / "genotype.json").is_file():
        shutil.copy2(run_dir / "genotype.json", out / "genotype.json")
        files.append(out / "genotype.json")
    elif sweep.genotype:  # a retrain sweep: the genotype it retrained
        shutil.copy2(sweep.genotype, out / "genotype.json")
        files.append(out / "genotype.json")
    space = load_space(sweep.base, {**sweep.overrides, **best.params})
    atomic_write_text(out / "config.yaml", yaml.safe_dump(space.to_dict(), sort_keys=False))
    atomic_write_json(out / "trial.json", {"trial": best.trial, "params": best.params, "metrics": best.metrics,
                                           "epochs": best.epochs, "parameters": best.parameters,
                                           "genotype_id": best.genotype_id, "run_dir": best.run_dir,
                                           "metric": sweep.metric, "mode": sweep.mode})
    files += [out / "config.yaml", out / "trial.json"]
    return files


def log_sweep_summary(rows, sweep: SweepSpace, best: Optional[TrialRow], settings, sweep_dir: Path,
                      group: Optional[str] = None) -> Optional[str]:
    """A ``sweep-summary`` W&B run in the sweep's group holding the sweep table; returns where it is.

    Never raises: W&B trouble is a warning.
    """
    if settings is None:
        return None
    try:
        import wandb

        from nasfe.tracking.wandb_logger import resolve_mode

        mode = resolve_mode(settings.mode)
        if mode == "disabled":
            return None
        group = group or sweep.name
        run = wandb.init(project=settings.project, mode=mode, dir=str(sweep_dir), group=group,
                         job_type="sweep-summary", name=f"{group}-summary", reinit="create_new",
                         config={"sweep": sweep.to_dict()}, settings=wandb.Settings(silent=True, console="off"))
        table = wandb.Table(columns=table_columns(sweep), data=table_data(rows, sweep))
        run.log({"sweep_table": table})
        if best is not None:
            run.summary["best_trial"] = best.trial
            run.summary[f"best_{sweep.metric}"] = best.metrics.get(sweep.metric)
            run.summary["best_genotype_id"] = best.genotype_id
        where = run.url if mode == "online" else str(Path(run.dir).parent)
        run.finish()
        return f"{mode}: {where}"
    except Exception as exc:  # tracking never fails a sweep
        log.warning("W&B sweep summary failed (%s: %s)", type(exc).__name__, exc)
        return None


# ----- the whole sweep --------------------------------------------------------------------------
def _check_same_sweep(sweep: SweepSpace, saved: Path) -> None:
    """A resumed sweep must run the sweep space it started with."""
    old = yaml.safe_load(saved.read_text()) or {}
    new = sweep.to_dict()
    for key in ("source",):
        old.pop(key, None)
        new.pop(key, None)
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{saved}: this sweep started with a different sweep space (changed: {changed}); "
                          f"resume with the same one, or pick a new --name")


def run_sweep(sweep: SweepSpace, storage: Optional[str] = None, name: Optional[str] = None,
              resume: bool = True, use_gpu: Optional[bool] = None, wandb=None, progress: bool = True,
              max_failures: int = 1, callbacks: Sequence[Any] = ()) -> SweepResult:
    """Run (or resume) ``sweep`` on the connected Ray cluster; write the table and the best trial.

    ``storage``: local folder (default ``./runs``) holding ``<name>/``; ``name`` defaults to
    ``sweep-<sweep name>``; ``use_gpu`` None means "when the cluster has GPUs"; ``wandb`` a
    :class:`~nasfe.tracking.wandb_logger.WandbSettings` or None; ``callbacks`` extra Tune callbacks.
    """
    import ray
    from ray import tune

    from nasfe.distributed.cluster import RunStorage
    from nasfe.imageio import atomic_write_text

    run = RunStorage.create(storage, name or f"sweep-{sweep.name}")
    if not run.is_local:
        raise ConfigError(f"sweep storage {run.storage!r}: sweeps write their table and best trial to a local or "
                          f"shared folder; use a path (a shared mount on a cluster)")
    sweep_dir = Path(run.root)
    resources = ray.cluster_resources()
    if use_gpu is None:
        use_gpu = resources.get("GPU", 0) >= 1 and sweep.gpus_per_worker != 0
    max_concurrent = default_max_concurrent(sweep, resources, use_gpu)
    ctx = _trial_context(sweep, str(sweep_dir / "trials"), use_gpu, wandb, progress, max_failures)
    ctx["sweep_name"] = run.name  # the W&B group: unique per sweep run, not per sweep space
    trainable = _trainable(ctx)
    saved = sweep_dir / "sweep.yaml"
    if not resume and sweep_dir.exists():
        log.info("--no-resume: deleting the earlier sweep in %s", sweep_dir)
        shutil.rmtree(sweep_dir)
    resumed = resume and tune.Tuner.can_restore(str(sweep_dir))
    if resumed:
        if saved.is_file():
            _check_same_sweep(sweep, saved)
        log.info("resuming the sweep in %s (finished trials are kept)", sweep_dir)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        # the saved state pickles the old run's callbacks; this run's replace them (private
        # attribute: Tuner.restore takes no callbacks)
        internal = getattr(tuner, "_local_tuner", None)
        if internal is not None:
            internal._run_config.callbacks = [*callbacks, _reaper_callback(sweep_dir / "trials")]
    else:
        if sweep_dir.exists() and any(sweep_dir.iterdir()):
            raise ConfigError(f"{sweep_dir}: exists but holds no resumable sweep; pick another --name "
                              f"or delete the folder")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        tuner = _new_tuner(sweep, trainable, run.storage, run.name, max_concurrent,
                           [*callbacks, _reaper_callback(sweep_dir / "trials")])
    log.info("sweep %r: %d trials, %d at a time, %d worker(s) each on %s", sweep.name, sweep.num_samples,
             max_concurrent, sweep.workers_per_trial, "GPU" if use_gpu else "CPU")
    t0 = time.time()
    grid = tuner.fit()
    for run_dir in sorted((sweep_dir / "trials").glob("trial_*")):  # nothing runs now
        reap_placement_groups(run_dir)
    finished = grid.num_terminated + grid.num_errors
    interrupted = finished < sweep.num_samples or len(grid) < sweep.num_samples
    rows = collect_rows(grid, sweep, sweep_dir / "trials")
    best = pick_best(rows, sweep.metric, sweep.mode)
    text_csv, text_md = render_table(rows, sweep, best)
    atomic_write_text(sweep_dir / "sweep_table.csv", text_csv)
    atomic_write_text(sweep_dir / "sweep_table.md", text_md)
    files = [sweep_dir / "sweep_table.csv", sweep_dir / "sweep_table.md"]
    if best is not None:
        files += save_best(best, sweep, sweep_dir / "best")
    where = None if interrupted else log_sweep_summary(rows, sweep, best, wandb, sweep_dir, group=run.name)
    log.info("sweep %r: %d trials in %.0fs%s", sweep.name, len(rows), time.time() - t0,
             " (interrupted)" if interrupted else "")
    return SweepResult(run.name, str(sweep_dir), rows, best, interrupted, resumed, files, where)
