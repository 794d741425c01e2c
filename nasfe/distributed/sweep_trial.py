"""One Tune trial of a sweep: a driver function that builds and fits a Ray Train ``TorchTrainer``.

The trainer's workers report after every engine checkpoint; :class:`EpochTuneReport` (a Ray Train
``UserCallback`` on the Train controller, built on Ray's ``TuneReportCallback``) forwards to Tune
only the reports that close an epoch, so ASHA sees exactly one result per epoch.

Divergence. A trial diverges in one of two ways: the engine raises
:class:`~nasfe.errors.DivergenceError` (it reaches the driver wrapped in Ray Train's
``TrainingFailedError``; its text starts with "non-finite"), or an epoch closes with the metric
missing or non-finite (NaN metrics are dropped on their way to Ray). Either way the trial reports
one result with ``diverged: 1``, ``diverged_reason`` ("non-finite loss at search step 12") and the
worst value of the metric, then ends: Tune's strict metric check and ASHA are satisfied, Optuna is
told FAIL (:mod:`nasfe.distributed.sweep_optuna`), and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import yaml

from nasfe.config import load_space
from nasfe.distributed.cluster import RunStorage
from nasfe.distributed.ray_train import build_trainer, publish_artifacts
from nasfe.distributed.sweep_summary import trial_run_name
from nasfe.errors import DivergenceError, error_chain
from nasfe.genotype import Genotype
from nasfe.imageio import atomic_write_json, atomic_write_text
from nasfe.tracking.wandb_logger import WandbSettings

log = logging.getLogger("nasfe.sweep")

PG_FILE = "placement_groups.json"
_NON_FINITE = re.compile(r"non-finite [^;\n]*?\bstep \d+")


def worst_value(mode: str) -> float:
    """The value a diverged trial reports: worse than any real one."""
    return -math.inf if mode == "max" else math.inf


def divergence_reason(exc: Optional[BaseException]) -> Optional[str]:
    """``"non-finite <what> at <phase> step N"`` when ``exc`` (or an error it wraps) is a divergence."""

    for e in error_chain(exc):
        if isinstance(e, DivergenceError):
            return str(e).split(";")[0]
        found = _NON_FINITE.search(str(e))
        if found:
            return found.group(0)
    return None


def epoch_divergence(report: dict[str, Any], metric: str, phase: str) -> Optional[str]:
    """The reason an epoch-closing report shows divergence (metric or loss missing/non-finite), or None."""
    value = report.get(metric)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return None
    step = int(report.get("step", 0) or 0)
    loss = report.get("loss")
    what = "loss" if not (isinstance(loss, (int, float)) and math.isfinite(loss)) else metric
    return f"non-finite {what} at {phase} step {step}"


def diverged_result(metric: str, mode: str, reason: str, epoch: int, step: int = 0) -> dict[str, Any]:
    """The one result a diverged trial reports to Tune."""
    return {metric: worst_value(mode), "epoch": int(epoch), "step": int(step), "diverged": 1, "diverged_reason": reason}


def stop_diverged(trial_id: str, result: dict) -> bool:
    """Tune stopper: end a trial once it reported divergence (its weights are NaN from then on)."""
    return bool(result.get("diverged"))


def tune_report_callback(metric: str, mode: str = "max", phase: str = "search"):
    """An :class:`EpochTuneReport` (defined lazily: it subclasses a Ray class)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochTuneReport(TuneReportCallback):
        """Forward to Tune only the Train reports that close an epoch (the epoch count moved on).

        The engine also reports at mid-epoch checkpoints (the epoch count is still the last
        finished one) and once more at the end (the last epoch again); ASHA and Optuna must see
        one result per epoch. An epoch that closes without a finite ``metric`` is a divergence.
        """

        def __init__(self):
            super().__init__()
            self.last_epoch = 0

        def after_report(self, run_context, metrics, checkpoint):
            first = metrics[0] if metrics else {}
            epoch = int(first.get("epoch", 0))
            if epoch <= self.last_epoch:
                return
            self.last_epoch = epoch
            reason = epoch_divergence(first, metric, phase)
            if reason is not None:
                first = {**first, **diverged_result(metric, mode, reason, epoch, first.get("step", 0))}
            super().after_report(run_context, [first, *metrics[1:]], None)  # Train keeps its own checkpoints

    return EpochTuneReport()


class PlacementGroupRecorder:
    """Engine callback (rank 0): note the worker group's placement group in the trial's run folder.

    When ASHA stops a trial, Tune kills the trial's driver and with it the Train controller, so
    the controller never removes its workers' placement group. Ray Train's own cleaner actor does,
    but it needs the state API, which fails on a node running several Ray instances. The sweep
    removes the recorded groups of finished trials itself (:func:`reap_placement_groups`).
    """

    def __init__(self, storage):
        self.storage = storage  # the trial's RunStorage (a local folder or a URI)

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
        ids = self.storage.read_json(PG_FILE) or []
        ids.append(pg.id.hex())
        self.storage.write_json(PG_FILE, ids)


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


def reaper_callback(trials_dir: Path, delay_s: float = 2.0, refresh=None):
    """A Tune callback that reaps a trial's placement groups shortly after the trial ends
    (``refresh(names)`` first copies the trials' files from storage into ``trials_dir``)."""
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
            if due and refresh is not None:
                refresh(due)
            for name in due:
                reap_placement_groups(trials_dir / name)

    return PlacementGroupReaper()


def trial_dirname(trial) -> str:
    """Tune's folder name for a trial (short and stable)."""
    return trial_run_name(trial.trial_id)


def _wandb_settings(ctx: dict[str, Any], name: str, trial_id: str, sampled: dict[str, Any]):
    # flat top-level keys named like the sweep's parameters: W&B's sweep page and parallel
    # coordinates chart them; sweep/<key> keeps the earlier name
    extra = {
        "sweep": ctx["sweep_name"],
        "trial_id": trial_id,
        **sampled,
        **{f"sweep/{k}": v for k, v in sampled.items()},
    }
    return WandbSettings(
        **{
            **ctx["wandb"],
            "group": ctx["sweep_name"],
            "name": name,
            "tags": ["sweep", ctx["sweep_name"]],
            "sweep_id": ctx.get("wandb_sweep_id"),
            "extra_config": extra,
        }
    )


def trial_driver(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One Tune trial: sampled values -> space -> ``TorchTrainer.fit()`` (metrics reach Tune per epoch).

    ``ctx`` holds the plain-data context of the sweep (see :func:`trial_context`).
    """
    import ray.tune

    sampled = {k: config[k] for k in ctx["param_keys"]}
    # a rank study's trial: one candidate genotype (and its overrides) of ctx["candidates"]
    cand = ctx.get("candidates", {}).get(config.get("candidate"), {})
    if cand:
        sampled = {"candidate": config["candidate"]}
    space = load_space(
        ctx["base"],
        {
            **ctx["overrides"],
            **cand.get("overrides", {}),
            **{k: v for k, v in sampled.items() if k in ctx["param_keys"]},
        },
    )
    trial_id = ray.tune.get_context().get_trial_id()
    # a candidate's run is named for it: a later study retraining it resumes its Ray Train checkpoint
    name = config["candidate"] if cand else trial_run_name(trial_id)
    storage = RunStorage.create(ctx["trials_storage"], name)
    genotype = None
    if cand.get("genotype") or (ctx.get("genotype") and not cand):
        genotype = Genotype.from_dict(cand.get("genotype") or ctx["genotype"], space=space)
    # the space and the sampled values travel with the run: `nasfe compare` and resumes read them
    info = storage.read_json("trial.json") or {"starts": 0}
    info.update(
        {
            "trial_id": trial_id,
            "sweep": ctx["sweep_name"],
            "params": sampled,
            "phase": ctx["phase"],
            "starts": info["starts"] + 1,
        }
    )

    with tempfile.TemporaryDirectory(prefix="nasfe-trial-") as tmp:
        root = Path(storage.root) if storage.is_local else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "space.yaml", yaml.safe_dump(space.to_dict(), sort_keys=False))
        atomic_write_json(root / "trial.json", info)
        if not storage.is_local:
            storage.upload(root, ["space.yaml", "trial.json"])
    wandb = _wandb_settings(ctx, name, trial_id, sampled) if ctx.get("wandb") is not None else None
    trainer = build_trainer(
        space,
        name,
        storage,
        num_workers=ctx["workers"],
        use_gpu=ctx["use_gpu"],
        phase=ctx["phase"],
        genotype=genotype,
        wandb=wandb,
        max_failures=ctx["max_failures"],
        threads_per_worker=ctx["threads"],
        progress=ctx["progress"],
        cpus_per_worker=ctx["cpus_per_worker"],
        extra_callbacks=[PlacementGroupRecorder(storage)],
    )
    # build_trainer has no parameter for Ray Train UserCallbacks; RunConfig is read at fit() time
    trainer.run_config.callbacks = [
        *(trainer.run_config.callbacks or []),
        tune_report_callback(ctx["metric"], ctx["mode"], ctx["phase"]),
    ]
    try:
        result = trainer.fit()
        error = result.error
    except Exception as exc:  # Train V2 raises the run's error from fit()
        error = exc
    if error is None:
        if not storage.is_local and result.checkpoint is not None:  # model.pt etc. where a local run has them
            with tempfile.TemporaryDirectory(prefix="nasfe-trial-") as tmp:
                publish_artifacts(storage, result.checkpoint, Path(tmp))
        return
    reason = divergence_reason(error)
    if reason is None:
        raise error
    step = int(m.group(1)) if (m := re.search(r"step (\d+)", reason)) else 0
    spe = space.phase(ctx["phase"]).steps_per_epoch or 1
    log.warning("trial %s diverged: %s", trial_id, reason)
    ray.tune.report(diverged_result(ctx["metric"], ctx["mode"], reason, step // spe, step))


def trial_context(sweep, run: RunStorage, use_gpu: bool, wandb, progress: bool, max_failures: int) -> dict[str, Any]:
    """Plain data every trial driver needs (it travels to the trial's actor); the trials' runs go
    to ``<run>/trials/``, and the run's name is the trials' W&B group (unique per sweep run)."""

    genotype = None
    if sweep.genotype:
        genotype = Genotype.from_json(sweep.genotype).to_dict()
    return {
        "base": sweep.base,
        "overrides": dict(sweep.overrides),
        "param_keys": [p.key for p in sweep.params],
        "phase": sweep.phase,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "sweep_name": run.name,
        "trials_storage": f"{run.root}/trials",
        "workers": sweep.workers_per_trial,
        "use_gpu": use_gpu,
        "cpus_per_worker": sweep.cpus_per_worker,
        "threads": max(1, int(sweep.cpus_per_worker)),
        "genotype": genotype,
        "wandb": asdict(wandb) if wandb is not None else None,
        "progress": progress,
        "max_failures": max_failures,
        "wandb_sweep_id": None,
    }
