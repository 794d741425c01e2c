"""Ray Train wiring: one ``TorchTrainer`` runs one engine phase (search or retrain) data parallel.

Each worker runs :func:`train_worker`: Ray's TorchTrainer has already started ``torch.distributed``
(gloo on CPU, NCCL on GPU), so the engine's ``DistContext.detect()`` finds it and all-reduces the
gradients of the weights and of alpha/beta itself (alpha and beta stay identical on every rank; the
engine checks the derived genotype is equal on all ranks every epoch).

Checkpoints and resume. At every engine checkpoint all ranks call ``ray.train.report``; rank 0
attaches a Ray ``Checkpoint`` folder holding the engine's ``<phase>_step_XXXXXXXX.pt`` (weights,
alpha, beta, optimisers, random states, step) and the run's small artifacts (``genotype.json``,
``genotypes/``, summaries, ``model.pt``). Ray copies it to ``<storage>/<name>/ray/<phase>/``. A
worker (re)starting calls ``ray.train.get_checkpoint()``, which Ray Train fills from that folder
when the same run name is run again or when ``FailureConfig`` restarts a failed worker group, and
passes the ``.pt`` inside as the engine's ``resume_from``: Ray's record is the one source of truth.

Where rank 0's engine writes: with local storage (a folder of this machine or a shared mount),
straight into ``<storage>/<name>/`` so files appear live; with URI storage (``s3://``) into a
node-local working folder, and the driver publishes the final artifacts from the last Ray
checkpoint into the run root (:func:`fit_phase`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from nasfe.distributed.cluster import RunStorage, local_work_dir
from nasfe.engine.callbacks import Callback, ConsoleProgress
from nasfe.errors import GpuUnavailableError, NasfeError
from nasfe.engine.checkpoint import CheckpointError, list_checkpoints
from nasfe.tracking.wandb_logger import WandbLogger, WandbSettings
import torch
from nasfe.config import PHASES, space_from_dict
from nasfe.engine.dist import DistContext
from nasfe.data.remote import localize_space
from nasfe.engine.search import run_search
from nasfe.engine.retrain import run_retrain
from nasfe.genotype import Genotype
import socket
from nasfe.distributed.failure_policy import with_failure_policy
import hashlib
from nasfe.distributed.resume import prepare_phase
import dataclasses
import json
import uuid
from nasfe.distributed.resume import plan_resume
from nasfe.distributed.failure_policy import STARTUP, failure_kind, no_room_message
from nasfe.errors import NoRoomError
from nasfe.errors import error_chain

log = logging.getLogger("nasfe.distributed")

#: Small run artifacts carried by every Ray checkpoint (then published into the run root).
ARTIFACTS = (
    "genotype.json",
    "genotypes",
    "search_summary.json",
    "retrain_summary.json",
    "model.pt",
    "wandb_search.json",
    "wandb_retrain.json",
)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics Ray can record (tensors, strings and NaN-free check left out)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k] = float(v) if not math.isnan(v) else None
    return {k: v for k, v in out.items() if v is not None}


class RayReportCallback(Callback):
    """Engine checkpoints -> ``ray.train.report`` on every rank (the checkpoint from rank 0 only)."""

    def __init__(self, phase: str, work_dir: Path):
        self.phase = phase
        self.work_dir = Path(work_dir)
        self.last_pt: Optional[Path] = None

    def _report(self, state, pt: Optional[Path], metrics: dict[str, Any]) -> None:
        import ray.train

        numbers = {**_numbers(metrics), "step": state.step, "epoch": state.epoch}
        if not state.is_main or pt is None:
            ray.train.report(numbers, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="nasfe-ckpt-") as tmp:
            tmp = Path(tmp)
            _link_or_copy(pt, tmp / pt.name)
            for rel in ARTIFACTS:
                src = self.work_dir / rel
                if src.is_dir():
                    shutil.copytree(src, tmp / rel)
                elif src.is_file():
                    _link_or_copy(src, tmp / rel)
            ray.train.report(numbers, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))

    def on_checkpoint(self, state, path, metrics):
        if path is not None:
            self.last_pt = Path(path)
        self._report(state, self.last_pt if state.is_main else None, metrics)

    def on_end(self, state, summary):
        # one more report so the last Ray checkpoint also carries the summary (and model.pt)
        self._report(state, self.last_pt if state.is_main else None, summary.get("final", {}) or {})


class WandbMirror(Callback):
    """Rank 0: copy this phase's W&B run folder into the run's storage (``<root>/wandb/``) at every
    checkpoint, at the end and after a failure, so offline history survives the node (spot nodes).

    Each copy first waits (bounded) until the run's ``.wandb`` file holds everything logged so far
    (:meth:`WandbLogger.wait_flushed`), then uploads that file before the rest of the folder: a
    segment on storage always has its history, even when the job is stopped in the middle of a
    copy. :func:`train_worker` runs this callback before the Ray checkpoint report, so a Ray
    checkpoint on storage means its W&B history is there too.
    """

    def __init__(self, logger, storage: RunStorage, work_dir: Path):
        self.logger, self.storage, self.work_dir = logger, storage, Path(work_dir)

    def copy(self) -> None:
        """Upload the run folder (best effort: a failed copy is logged, training goes on)."""
        run = getattr(self.logger, "run", None)
        if run is None or self.storage.is_local:  # local storage: the folder is in the run root already
            return
        try:
            folder = Path(run.dir).parent  # <work_dir>/wandb/offline-run-<time>-<id>
            wait = getattr(self.logger, "wait_flushed", None)
            if wait is not None and not wait():
                log.warning(
                    "the W&B file of %s did not catch up with the last step in time; copying it as it is", folder
                )
            first = getattr(self.logger, "wandb_file", lambda: None)()
            if first is not None and first.is_file():
                self.storage.upload(self.work_dir, [str(first.relative_to(self.work_dir))])
            self.storage.upload(self.work_dir, [str(folder.relative_to(self.work_dir))])
        except Exception as exc:  # noqa: BLE001  (tracking never fails a run)
            log.warning("copying the W&B folder to %s failed: %s", self.storage.root, exc)

    def on_checkpoint(self, state, path, metrics):
        if state.is_main:
            self.copy()

    def on_end(self, state, summary):
        if state.is_main:
            self.copy()

    def abort(self) -> None:
        """After a failure: close the W&B run (its file is flushed), then copy it."""
        close = getattr(self.logger, "close", None)
        if close is not None:
            close(exit_code=1)
        self.copy()


class GenotypeMirror(Callback):
    """Rank 0 with remote storage: copy the current genotype into the run root at every checkpoint,
    as a local run root has it live (a sweep's table and ``nasfe compare`` read it there, also for a
    trial that ASHA stopped)."""

    FILES = ("genotype.json",)

    def __init__(self, storage: RunStorage, work_dir: Path):
        self.storage, self.work_dir = storage, Path(work_dir)

    def _copy(self) -> None:
        try:
            self.storage.upload(self.work_dir, [f for f in self.FILES if (self.work_dir / f).is_file()])
        except Exception as exc:  # noqa: BLE001  (the Ray checkpoint holds it anyway)
            log.warning("copying the genotype to %s failed: %s", self.storage.root, exc)

    def on_checkpoint(self, state, path, metrics):
        if state.is_main:
            self._copy()

    def on_end(self, state, summary):
        if state.is_main:
            self._copy()


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _quiet_ray_train_reports() -> None:
    """Raise Ray Train's per-report INFO lines ("Reporting training result ...", "Checkpoint
    successfully created ...", each printed for every report of every rank) to WARNING in this
    worker: nasfe's own progress lines say the same once. Warnings and errors still show."""

    for name in list(logging.root.manager.loggerDict):
        flat = name.replace("/", ".").replace("\\", ".")
        if "ray.train" in flat and (".execution.context" in flat or flat.endswith("storage") or ".storage." in flat):
            logging.getLogger(name).setLevel(logging.WARNING)


def _restore_from_ray(phase: str, work_dir: Path, is_main: bool, scratch: Path) -> Optional[Path]:
    """The engine checkpoint of Ray's latest checkpoint, copied to ``scratch`` (None: fresh start).

    Rank 0 also puts the checkpoint's artifacts (genotype history ...) back into ``work_dir``.
    """
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    local = Path(ckpt.to_directory(str(scratch / "restored")))
    found = list_checkpoints(local, phase)
    if not found:
        raise CheckpointError(f"{ckpt.path}: Ray checkpoint holds no {phase} checkpoint")
    if is_main:
        for rel in ARTIFACTS:
            src = local / rel
            if src.is_dir():
                shutil.copytree(src, work_dir / rel, dirs_exist_ok=True)
            elif src.is_file() and not (work_dir / rel).exists():
                shutil.copy2(src, work_dir / rel)
        # engine files newer than Ray's record were never reported: drop them so pruning stays sane
        step = int(found[-1].stem.rsplit("_", 1)[-1])
        for p in list_checkpoints(work_dir / "checkpoints", phase):
            if int(p.stem.rsplit("_", 1)[-1]) > step:
                p.unlink(missing_ok=True)
    return found[-1]


def worker_callbacks(
    config: dict[str, Any], rank: int, phase: str, storage: RunStorage, work_dir: Path
) -> list[Callback]:
    """The engine callbacks of one Train worker, in the order they run."""
    callbacks: list[Callback] = []
    if config.get("wandb") is not None and rank == 0:
        settings = WandbSettings(**config["wandb"])
        settings.dir = settings.dir or str(work_dir)
        logger = WandbLogger(settings)
        # before the Ray report: a checkpoint on storage (what a resume continues from) never
        # gets ahead of the W&B history copied there
        callbacks += [logger, WandbMirror(logger, storage, work_dir)]
    callbacks.append(RayReportCallback(phase, work_dir))
    if rank == 0 and not storage.is_local:
        callbacks.append(GenotypeMirror(storage, work_dir))
    if config.get("progress", True):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        _quiet_ray_train_reports()
        callbacks.append(ConsoleProgress(bar=False, write=logging.getLogger("nasfe.progress").info))
    callbacks.extend(config.get("extra_callbacks") or [])
    return callbacks


def train_worker(config: dict[str, Any]) -> None:
    """Per-worker entry point of the TorchTrainer: restore, run the engine phase, report."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, int(config.get("threads") or torch.get_num_threads())))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    phase = config["phase"]
    if config.get("need_cuda"):
        require_cuda()

    space = localize_space(space_from_dict(config["space"], where=f"space {config['space'].get('name')!r}"))
    storage = RunStorage(config["storage"], config["name"])
    work_dir = Path(storage.root) if storage.is_local else local_work_dir(storage.name, phase)
    scratch = Path(tempfile.mkdtemp(prefix=f"nasfe-{phase}-r{rank}-"))
    if rank != 0:
        work_dir = scratch / "run"  # other ranks write nothing, but keep them away from rank 0's files
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        resume_from = _restore_from_ray(phase, work_dir, rank == 0, scratch) or config.get("resume_from")
        callbacks = worker_callbacks(config, rank, phase, storage, work_dir)
        device = ray.train.torch.get_device()
        dist = DistContext.detect(device=device)
        try:
            if phase == "search":
                run_search(
                    space,
                    work_dir,
                    callbacks=callbacks,
                    device=str(device),
                    dist=dist,
                    resume=False,
                    resume_from=resume_from,
                )
            else:
                genotype = Genotype.from_dict(config["genotype"], space=space) if config.get("genotype") else None
                run_retrain(
                    space,
                    genotype,
                    work_dir,
                    callbacks=callbacks,
                    device=str(device),
                    dist=dist,
                    resume=False,
                    resume_from=resume_from,
                )
        except BaseException:
            for cb in callbacks:  # keep what W&B recorded so far: the resumed run continues it
                if hasattr(cb, "abort"):
                    cb.abort()
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class PhaseResult:
    """What :func:`fit_phase` hands back."""

    phase: str
    summary: dict[str, Any]
    run_root: str  # the run's folder or URI
    local_dir: Path  # a local folder holding the published artifacts (the run root when local)
    checkpoint_path: Optional[str]  # Ray's last checkpoint (a path in storage)
    metrics: dict[str, Any] = field(default_factory=dict)


def require_cuda() -> None:
    """On a worker promised a GPU: stop with one line unless torch can use CUDA there."""

    if torch.cuda.is_available():
        return
    import ray

    gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    why = (
        "a CPU-only torch build: install the CUDA build (docs/CLUSTER.md, NASFE_TORCH)"
        if torch.version.cuda is None
        else f"torch is built for CUDA {torch.version.cuda} but no device is usable (driver?)"
    )
    raise GpuUnavailableError(
        f"a Train worker on {socket.gethostname()} was given GPU {gpu_ids} by Ray but "
        f"torch {torch.__version__} cannot see CUDA ({why})"
    )


def _checked_torch_config(backend: str, need_cuda: bool):
    """Ray Train's TorchConfig; with ``need_cuda`` every worker checks CUDA before NCCL starts (a
    broken GPU node then says so in one line instead of failing inside NCCL's setup)."""
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    if not need_cuda:
        return TorchConfig(backend=backend)

    class _CudaCheckedBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            worker_group.execute(require_cuda)
            super().on_start(worker_group, backend_config)

    class CudaCheckedTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _CudaCheckedBackend

    return CudaCheckedTorchConfig(backend=backend)


def build_trainer(
    space,
    run_name: str,
    storage: Optional[str] = None,
    num_workers: int = 2,
    use_gpu: bool = False,
    phase: str = "search",
    genotype=None,
    extra_callbacks: Sequence[Callback] = (),
    wandb=None,
    wandb_group: Optional[str] = None,
    max_failures: int = 2,
    keep_checkpoints: int = 3,
    threads_per_worker: Optional[int] = None,
    progress: bool = True,
    cpus_per_worker: Optional[float] = None,
    resume_from: Optional[str] = None,
    gpus_per_worker: Optional[float] = None,
    start_timeout_s: Optional[float] = None,
):
    """A ``TorchTrainer`` for one phase of run ``run_name`` (usable as is inside a Tune trial).

    ``space`` is a SpaceConfig; ``genotype`` a Genotype (retrain); ``wandb`` a
    :class:`~nasfe.tracking.wandb_logger.WandbSettings` or None (no W&B); ``extra_callbacks`` engine
    callbacks run on every worker (picklable). Re-using ``run_name`` and ``storage`` resumes.
    ``resume_from``: the engine checkpoint to start from when Ray's record gives none
    (:func:`nasfe.distributed.resume.prepare_phase`).
    ``gpus_per_worker`` (default: 1 with ``use_gpu``, else 0) is the GPU demand each worker declares:
    Ray schedules (and the autoscaler starts) nodes for it.
    Failures: your errors and divergence end the run at once, a lost node is retried without a
    limit, anything else up to ``max_failures`` times; ``start_timeout_s`` bounds the wait for
    room for the workers (None: no bound) (:mod:`nasfe.distributed.failure_policy`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if phase not in PHASES:
        raise ValueError(f"phase {phase!r}; expected one of {PHASES}")
    batch = space.phase(phase).batch_size
    if num_workers < 1 or batch % num_workers:
        raise ValueError(f"{phase}.batch_size {batch} is not divisible by {num_workers} workers")
    st = storage if isinstance(storage, RunStorage) else RunStorage.create(storage, run_name)
    wb = None
    if wandb is not None:
        wb = asdict(wandb)
        wb["group"] = wb.get("group") or wandb_group or run_name
        wb["name"] = wb.get("name") or f"{run_name}-{phase}"
        wb["run_id"] = wb.get("run_id") or _wandb_id(f"{st.root}-{phase}")
    config = {
        "phase": phase,
        "space": space.to_dict(),
        "name": st.name,
        "storage": st.storage,
        "genotype": genotype.to_dict() if genotype is not None else None,
        "wandb": wb,
        "extra_callbacks": list(extra_callbacks),
        "threads": threads_per_worker,
        "progress": progress,
        "resume_from": resume_from,
    }
    gpus = float(gpus_per_worker) if gpus_per_worker is not None else (1.0 if use_gpu else 0.0)
    use_gpu = gpus > 0
    config["need_cuda"] = use_gpu
    resources = {"CPU": cpus_per_worker} if cpus_per_worker else {}
    if use_gpu:
        resources["GPU"] = gpus
    demand = f"{num_workers} x {resources or {'CPU': 1}}"
    return with_failure_policy(TorchTrainer)(
        train_worker,
        start_timeout_s=start_timeout_s,
        demand=demand,
        train_loop_config=config,
        torch_config=_checked_torch_config("nccl" if use_gpu else "gloo", need_cuda=use_gpu),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources or None),
        run_config=RunConfig(
            name=phase,
            storage_path=st.ray_storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
    )


def _wandb_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fit_phase(
    space, run_name: str, storage: Optional[str] = None, phase: str = "search", resume: bool = True, **trainer_kwargs
) -> PhaseResult:
    """Build the trainer, ``fit()`` it, publish the artifacts into the run root, return the summary.

    A phase that finished earlier (``<root>/<phase>_done.json``, same space) returns at once with
    its published results instead of starting a worker group. ``--no-resume`` sets the old
    checkpoints aside (never deletes them); a resume is planned before Ray starts
    (:func:`nasfe.distributed.resume.prepare_phase`).
    """

    st = storage if isinstance(storage, RunStorage) else RunStorage.create(storage, run_name)
    if resume:
        done = finished_phase(st, phase, space)
        if done is not None:
            return done
    resume_from = prepare_phase(st, phase, resume, space, trainer_kwargs.get("genotype"))
    wandb = trainer_kwargs.get("wandb")
    if wandb is not None and not wandb.run_id:
        trainer_kwargs["wandb"] = dataclasses.replace(wandb, run_id=wandb_run_id(st, phase, fresh=not resume))
    trainer_kwargs.setdefault("start_timeout_s", start_timeout())
    trainer = build_trainer(space, run_name, st, phase=phase, resume_from=resume_from, **trainer_kwargs)
    try:
        result = trainer.fit()
    except (KeyboardInterrupt, SystemExit):
        # Ray Train's own Ctrl-C handler aborts the worker group, then leaves through sys.exit(0)
        raise KeyboardInterrupt(f"the {phase} of {run_name!r} was interrupted") from None
    except Exception as exc:
        raise _run_error(exc, trainer)  # noqa: B904 (its own chain: the cause is inside it or is it)
    if result.error is not None:
        raise _run_error(result.error, trainer)
    if result.checkpoint is None:
        raise RuntimeError(f"{phase} of run {run_name!r} finished without a checkpoint")
    local_dir = _published_dir(st, phase)
    if not st.is_local:
        publish_artifacts(st, result.checkpoint, local_dir)
    summary = _read_summary(local_dir, phase)
    if not summary or int((result.metrics or {}).get("step", -1)) != int(summary.get("steps", -2)):
        # no error, yet the phase did not reach its end: an abort (Ctrl-C before the workers ran)
        raise KeyboardInterrupt(f"the {phase} of {run_name!r} stopped before its end")
    st.write_json(
        f"{phase}_done.json",
        {
            "config_hash": _config_hash(space),
            "space_name": space.name,
            "checkpoint": result.checkpoint.path,
            "finished": time.time(),
            "metrics": _numbers(dict(result.metrics or {})),
        },
    )
    return PhaseResult(phase, summary, st.root, local_dir, result.checkpoint.path, dict(result.metrics or {}))


def publish_artifacts(st: RunStorage, checkpoint, local_dir: Path) -> None:
    """Remote storage: Ray's last ``checkpoint`` into ``local_dir`` and its artifacts (model.pt, the
    phase's summary ...) into the run root, where a run in a local folder has them."""
    checkpoint.to_directory(str(local_dir))
    st.upload(local_dir, [a for a in ARTIFACTS if (local_dir / a).exists()])


def _published_dir(st: RunStorage, phase: str) -> Path:
    """A local folder holding the run's published artifacts: the run root itself when local."""
    if st.is_local:
        return Path(st.root)
    local_dir = local_work_dir(st.name, phase).with_name(f"{st.name}-published")
    local_dir.mkdir(parents=True, exist_ok=True)
    return local_dir


def _read_summary(local_dir: Path, phase: str) -> dict[str, Any]:
    summary_file = local_dir / f"{phase}_summary.json"
    return json.loads(summary_file.read_text()) if summary_file.is_file() else {}


def finished_phase(st: RunStorage, phase: str, space) -> Optional[PhaseResult]:
    """The published result of ``phase`` when it finished earlier for this space, else None."""
    done = st.read_json(f"{phase}_done.json")
    if not done or done.get("config_hash") != _config_hash(space):
        return None  # never finished, or finished with other settings: Ray Train resumes or starts
    local_dir = _published_dir(st, phase)
    if not st.is_local:
        for rel in ARTIFACTS:
            st.download(rel, local_dir)
    summary = _read_summary(local_dir, phase)
    if not summary:
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(done.get("finished", 0)))
    print(
        f"[nasfe] the {phase} of {st.name!r} finished on {when}: using its results (--no-resume starts it over)",
        flush=True,
    )
    return PhaseResult(phase, summary, st.root, local_dir, done.get("checkpoint"), done.get("metrics") or {})


def _config_hash(space) -> str:
    """Hash of every setting of the space (the file it came from aside)."""

    data = {k: v for k, v in space.to_dict().items() if k != "source"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def wandb_run_id(st: RunStorage, phase: str, fresh: bool = False) -> str:
    """The W&B run id of ``phase``, kept in ``<root>/wandb_ids.json`` so that every resumed segment
    (same name, any node) continues the same W&B run; ``fresh`` (``--no-resume``) makes a new one."""

    ids = st.read_json("wandb_ids.json") or {}
    if fresh or not ids.get(phase):
        ids[phase] = uuid.uuid4().hex[:16]
        st.write_json("wandb_ids.json", ids)
    return ids[phase]


def check_resumable(storage: RunStorage, phase: str, space=None, genotype=None) -> None:
    """Check, reading only, that ``phase`` of a local run can resume (before Ray starts).

    Raises :class:`~nasfe.engine.checkpoint.CheckpointError` naming the file when no checkpoint
    loads or the checkpoint belongs to another model space; see :mod:`nasfe.distributed.resume`.
    """

    plan_resume(storage, phase, space, genotype)


def start_timeout() -> Optional[float]:
    """Seconds a job's workers may wait for room in a row: ``NASFE_START_TIMEOUT_MIN`` (default 30;
    0 or less: no bound)."""
    minutes = float(os.environ.get("NASFE_START_TIMEOUT_MIN", "30"))
    return minutes * 60 if minutes > 0 else None


def _run_error(exc: BaseException, trainer) -> BaseException:
    """What a failed ``fit()`` raises: your error, the end of a wait for room, else Ray's error."""

    user = _user_error(exc)
    if user is not None:
        return user
    if failure_kind(exc) == STARTUP:
        return NoRoomError(
            no_room_message(
                trainer.scaling_config.num_workers, trainer.nasfe_demand, trainer.nasfe_start_timeout_s or 0
            )
        )
    return exc


def _user_error(exc: BaseException) -> Optional[BaseException]:
    """The user-input error (bad checkpoint, genotype, config, data, a full disk) behind a Ray worker failure."""

    return next((e for e in error_chain(exc) if isinstance(e, (NasfeError, FileNotFoundError))), None)


def fit_search(space, run_name: str, storage: Optional[str] = None, **kwargs) -> PhaseResult:
    """Search on Ray Train; the summary holds the genotype (``summary['genotype']``)."""
    return fit_phase(space, run_name, storage, phase="search", **kwargs)


def fit_retrain(space, genotype, run_name: str, storage: Optional[str] = None, **kwargs) -> PhaseResult:
    """Retrain ``genotype`` on Ray Train; ``model.pt`` lands in the run root."""
    return fit_phase(space, run_name, storage, phase="retrain", genotype=genotype, **kwargs)
