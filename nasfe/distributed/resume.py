"""Where a run resumes from, decided before Ray starts; locks; ``--no-resume`` that deletes nothing.

Ray Train resumes a phase from the newest checkpoint in its own record of the run,
``<run>/ray/<phase>/checkpoint_manager_snapshot.json``. Folders beside it that the record does
not list (a copy a full disk cut short, a crash mid-upload) are never used, whatever their name,
and a resume removes them (local and remote storage alike: :func:`remove_orphans`).

Before any worker starts (local storage), :func:`plan_resume` reads that record and the
checkpoint it points to:

* the record is readable and its checkpoint loads: Ray resumes from it (and other folders are
  left alone);
* the record is unreadable (a truncated JSON) or its checkpoint does not load: the phase resumes
  from the newest checkpoint that loads among Ray's folders and the engine's ``checkpoints/``;
  Ray's folder is first moved aside under ``<run>/previous/`` (never deleted), so Ray starts a
  fresh record;
* checkpoints exist but none loads: a one-line :class:`~nasfe.errors.CheckpointError`;
* the checkpoint was made for another model space (``space_hash``) or genotype: a one-line
  :class:`~nasfe.errors.CheckpointError`, instead of a failure inside every worker.

``--no-resume`` moves the phase's checkpoints under ``<run>/previous/`` and says where.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nasfe.distributed.cluster import RunStorage, local_work_dir
from nasfe.engine.checkpoint import list_checkpoints, load_checkpoint
from nasfe.errors import CheckpointError
from nasfe.locks import FolderLock
from importlib.metadata import PackageNotFoundError, version
from nasfe.config import space_from_dict
from nasfe.genotype import Genotype

log = logging.getLogger("nasfe.distributed")

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints
RESUME_KEYS = ("step", "epoch", "model", "optimizers")


@dataclass
class ResumePlan:
    """What a phase resumes from: Ray's record (``source='ray'``), a checkpoint file (``'file'``) or nothing."""

    phase: str
    source: str  # "ray", "file" or "fresh"
    checkpoint: Optional[Path] = None  # the engine checkpoint it continues
    set_aside: Optional[Path] = None  # Ray's unusable folder, to move under previous/ before starting
    ignored: list[Path] = field(default_factory=list)  # checkpoint folders outside Ray's record
    unreported: list[Path] = field(default_factory=list)  # engine checkpoints newer than Ray's record

    @property
    def resume_from(self) -> Optional[str]:
        """The file the workers load when Ray has no record to give them."""
        return str(self.checkpoint) if self.source == "file" else None


def run_lock(storage: RunStorage) -> FolderLock:
    """The lock of run ``storage.name``: in its folder (local storage), else in this node's work folder."""
    if storage.is_local:
        return FolderLock(storage.root, f"run {storage.name!r}")
    return FolderLock(local_work_dir(storage.name, "").parent, f"run {storage.root!r}", name=f".{storage.name}.lock")


def _snapshot_latest(ray_dir: Path) -> tuple[Optional[str], list[str], Optional[str]]:
    """(latest folder name, every folder Ray's record lists, why the record is unusable or None)."""
    path = ray_dir / SNAPSHOT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        listed = [r["checkpoint_dir_name"] for r in data.get("checkpoint_results", [])]
        latest = data.get("latest_checkpoint_result")
        latest = latest["checkpoint_dir_name"] if latest else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        return None, [], f"{path}: Ray's record of the run is unreadable ({type(exc).__name__}: {exc})"
    # what else makes Ray refuse its record (CheckpointManagerInitializationError) inside the workers
    gone = [name for name in listed if not (ray_dir / name).is_dir()]
    if gone:
        return None, listed, f"{path}: Ray's record lists checkpoint folders that are gone ({gone[0]})"
    made_by, running = data.get("ray_version"), _ray_version()
    if made_by and running and made_by != running:
        return None, listed, f"{path}: Ray's record was written by Ray {made_by}, this is Ray {running}"
    return latest, listed, None


def _ray_version() -> Optional[str]:
    try:
        return version("ray")
    except PackageNotFoundError:
        return None


def _loads(path: Path, phase: str) -> dict[str, Any]:
    """The checkpoint's payload, or CheckpointError when it does not load or is another phase's."""
    payload = load_checkpoint(path, required=RESUME_KEYS)
    if payload.get("phase", phase) != phase:
        raise CheckpointError(f"{path}: a {payload.get('phase')!r} checkpoint, not {phase!r}")
    return payload


def _check_same_space(path: Path, payload: dict[str, Any], space, genotype) -> None:
    """Refuse to resume a checkpoint of another model space or genotype (it cannot fit the network)."""

    if space is not None and isinstance(payload.get("space"), dict):
        try:
            stored = space_from_dict(payload["space"], where=f"{path} (space)").space_hash()
        except Exception:  # an older or hand-edited space: its hash cannot match
            stored = "unreadable"
        if stored != space.space_hash():
            raise CheckpointError(
                f"{path}: made for model space {stored}, this run's space is {space.space_hash()} "
                "(the model section changed); resume with the same space, or use another "
                "--name or --no-resume"
            )
    if genotype is not None and isinstance(payload.get("genotype"), dict):
        try:
            stored_id = Genotype.from_dict(payload["genotype"]).genotype_id()
        except Exception:
            stored_id = "unreadable"
        if stored_id != genotype.genotype_id():
            raise CheckpointError(
                f"{path}: retrains genotype {stored_id}, not {genotype.genotype_id()}; "
                "use another --name or --no-resume"
            )


def _step(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[-1])


def plan_resume(storage: RunStorage, phase: str, space=None, genotype=None) -> ResumePlan:
    """Decide (reading only) where ``phase`` of a local run resumes; see the module docstring."""
    root = Path(storage.root)
    ray_dir = Path(storage.ray_run_path(phase))
    folders = sorted(d for d in ray_dir.glob("checkpoint_*") if d.is_dir()) if ray_dir.is_dir() else []
    latest, listed, broken = (None, [], None)
    if (ray_dir / SNAPSHOT).exists():
        latest, listed, broken = _snapshot_latest(ray_dir)
    ignored = [d for d in folders if d.name not in listed]
    if latest is not None:
        found = list_checkpoints(ray_dir / latest, phase)
        if not found:
            broken = f"{ray_dir / latest}: Ray's latest checkpoint holds no {phase} checkpoint"
        else:
            try:
                payload = _loads(found[-1], phase)
            except CheckpointError as exc:
                broken = str(exc)
            else:
                _check_same_space(found[-1], payload, space, genotype)
                newer = [p for p in list_checkpoints(root / "checkpoints", phase) if _step(p) > _step(found[-1])]
                return ResumePlan(phase, "ray", found[-1], ignored=ignored, unreported=newer)
    # no usable record: the newest checkpoint that loads, Ray's folders and the engine's alike
    candidates = [p for d in folders for p in list_checkpoints(d, phase)]
    candidates += list_checkpoints(root / "checkpoints", phase)
    aside = ray_dir if ray_dir.is_dir() and (broken or folders) else None
    if broken:
        log.warning("%s; resuming from the newest checkpoint that loads instead", broken)
    errors = []
    for path in sorted(candidates, key=lambda p: (_step(p), p.parent.name != "checkpoints"), reverse=True):
        try:
            payload = _loads(path, phase)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        _check_same_space(path, payload, space, genotype)
        return ResumePlan(phase, "file", path, set_aside=aside)
    if errors:
        raise CheckpointError(
            f"no {phase} checkpoint of run {storage.name!r} loads (newest: {errors[0]}); "
            "use --no-resume to start over (the old files are moved under "
            f"{root / 'previous'}, not deleted)"
        )
    return ResumePlan(phase, "fresh", set_aside=aside)


def _previous_dir(storage: RunStorage, phase: str) -> str:
    """A new folder name under ``<run>/previous/`` for ``phase``'s files set aside now."""
    base = f"{storage.root}/previous/{phase}-{time.strftime('%Y%m%d-%H%M%S')}"
    n, name = 1, base
    while storage.is_local and Path(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _move_aside_local(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dest))


def apply_plan(storage: RunStorage, plan: ResumePlan) -> Optional[str]:
    """Move Ray's unusable folder aside (if the plan says so); returns the file the workers resume from."""
    for d in plan.ignored:  # a copy cut short (a killed upload, a full disk): never resumed from
        shutil.rmtree(d, ignore_errors=True)
        print(
            f"[nasfe] {plan.phase}: removed {d}, a checkpoint folder not in Ray's record of the run (a copy cut short)",
            flush=True,
        )
    if plan.unreported:  # Ray resumes before them and the worker would drop them: keep them aside instead
        dest = Path(_previous_dir(storage, plan.phase)) / "checkpoints"
        for p in plan.unreported:
            _move_aside_local(p, dest / p.name)
        print(
            f"[nasfe] {plan.phase}: {len(plan.unreported)} checkpoint(s) newer than Ray's record moved to {dest}",
            flush=True,
        )
    if plan.set_aside is None:
        return plan.resume_from
    dest = Path(_previous_dir(storage, plan.phase)) / "ray"
    checkpoint = plan.checkpoint
    if checkpoint is not None and plan.set_aside in checkpoint.parents:
        checkpoint = dest / checkpoint.relative_to(plan.set_aside)
    _move_aside_local(plan.set_aside, dest)
    print(
        f"[nasfe] {plan.phase}: Ray's record of the run could not be used; moved {plan.set_aside} to {dest}", flush=True
    )
    if checkpoint is not None:
        print(f"[nasfe] {plan.phase}: resuming from {checkpoint}", flush=True)
    return str(checkpoint) if checkpoint is not None else None


def set_aside_phase(storage: RunStorage, phase: str) -> Optional[str]:
    """``--no-resume``: move ``phase``'s checkpoints (Ray's and the engine's) under ``<run>/previous/``.

    Nothing is deleted; returns where they went (None when there was nothing). Remote storage:
    the Ray folder is copied there, then removed from its place. The phase's ``<phase>_done.json``
    goes too: the old result no longer stands for this run.
    """
    storage.delete(f"{phase}_done.json")
    dest = _previous_dir(storage, phase)
    if storage.is_local:
        ray_dir = Path(storage.ray_run_path(phase))
        engine = list_checkpoints(Path(storage.root) / "checkpoints", phase)
        if not ray_dir.exists() and not engine:
            return None
        if ray_dir.exists():
            _move_aside_local(ray_dir, Path(dest) / "ray")
        for p in engine:
            _move_aside_local(p, Path(dest) / "checkpoints" / p.name)
    else:
        import pyarrow.fs

        fs, path = storage._fs()
        src = f"{path}/ray/{phase}"
        if fs.get_file_info(src).type == pyarrow.fs.FileType.NotFound:
            return None
        dest_path = f"{path}/previous/{Path(dest).name}/ray"
        pyarrow.fs.copy_files(src, dest_path, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)
    print(f"[nasfe] --no-resume: the earlier {phase} checkpoints were moved to {dest} (not deleted)", flush=True)
    return dest


def prepare_phase(storage: RunStorage, phase: str, resume: bool, space=None, genotype=None) -> Optional[str]:
    """Before a phase's trainer starts: ``--no-resume`` sets the old checkpoints aside; a resume is
    planned and applied (local storage). Returns the checkpoint file the workers resume from when
    Ray's record cannot give them one."""
    if not resume:
        set_aside_phase(storage, phase)
        return None
    if not storage.is_local:
        remove_orphans(storage, phase)
        return None
    return apply_plan(storage, plan_resume(storage, phase, space, genotype))


def remove_orphans(storage: RunStorage, phase: str) -> list[str]:
    """Remote storage, before a resume: delete ``phase``'s checkpoint folders that Ray's record does
    not list (uploads cut short by a lost node or a killed driver; Ray never resumes from them, and
    nothing else would ever remove them). Nothing is removed when the record is missing or
    unreadable. Returns the folders removed."""
    import pyarrow.fs

    fs, path = storage._fs()
    ray_dir = f"{path}/ray/{phase}"
    try:
        with fs.open_input_stream(f"{ray_dir}/{SNAPSHOT}") as fh:
            data = json.loads(fh.read().decode())
        listed = {r["checkpoint_dir_name"] for r in data.get("checkpoint_results", [])}
    except Exception:  # noqa: BLE001  (no record, or one Ray cannot use either: leave everything)
        return []
    found = fs.get_file_info(pyarrow.fs.FileSelector(ray_dir, allow_not_found=True))
    removed = []
    for info in found:
        name = Path(info.path).name
        if info.type == pyarrow.fs.FileType.Directory and name.startswith("checkpoint_") and name not in listed:
            fs.delete_dir(info.path)
            removed.append(f"{storage.ray_run_path(phase)}/{name}")
    if removed:
        print(
            f"[nasfe] {phase}: removed {len(removed)} checkpoint folder(s) not in Ray's record of the run "
            f"(uploads cut short): {', '.join(removed)}",
            flush=True,
        )
    return removed
